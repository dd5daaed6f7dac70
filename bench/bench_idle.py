"""Daemon footprint with 100 instances of `sleep`: memory, and CPU and wake-ups when idle.

procsupd and supervisord run side by side (each with 100 instances, stdout/stderr captured to
files as by default), so both are measured over the same window. Once every instance is
running (stable for 1 s, the default of both) and --settle seconds more have passed, with no
request made to either daemon during the window:
- RSS of the daemon process alone (psutil; its children are not counted), and USS/PSS;
- CPU: utime + stime from /proc/<pid>/stat (clock ticks), and the finer sum of run time in
  /proc/<pid>/task/*/schedstat, over --seconds (default 60), as % of one core;
- wake-ups: the increase of voluntary + nonvoluntary context switches summed over every thread
  (/proc/<pid>/task/*/status), per second. Each is one time a thread stopped running, i.e. at
  least one wake-up.
After the window each daemon answers one status request and its RSS is taken again (procsup
imports its metrics code lazily, supervisord builds XML-RPC replies).

    .venv/bin/python bench/bench_idle.py [--instances 100] [--seconds 60] [--settle 5]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
from _common import Results, Session, begin, parser, table
from _proc import task_counters
from _subjects import SLEEP, Procsup, Supervisor, Supervisord

MB = 1024 * 1024


def memory(pid: int) -> dict[str, float]:
    full = psutil.Process(pid).memory_full_info()
    return {"rss": full.rss / MB, "uss": full.uss / MB, "pss": full.pss / MB}


def threads(pid: int) -> dict[str, dict[str, int]]:
    """Context switches per thread (name: tid), to see which thread wakes up."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n = sum(
                    int(line.split()[1])
                    for line in f
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt"))
                )
        except OSError:
            continue
        out[f"{name}:{tid}"] = {"switches": n}
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60, help="length of the idle window")
    p.add_argument("--settle", type=float, default=5, help="seconds to wait after all run")
    args = begin(
        p, "daemon footprint with {instances} instances, idle over {seconds:g} s",
        quick={"seconds": 10, "settle": 2},
    )
    n = args.instances
    res = Results("idle")
    with Session("idle", args.budget or 120 + args.seconds + args.settle) as s:
        sups: list[Supervisor] = [
            Procsup(s, "procsup", {"s": {"command": SLEEP, "instances": n}}),
            Supervisord(
                s,
                "supervisord",
                {
                    "s": {
                        "command": SLEEP,
                        "numprocs": n,
                        "process_name": "%(program_name)s_%(process_num)d",
                    }
                },
            ),
        ]
        for sup in sups:
            sup.launch()
        for sup in sups:
            sup.wait_serving()
            sup.wait_states("running", n, timeout=60, interval=0.1)
        time.sleep(args.settle)
        mem = {sup.name: memory(sup.pid) for sup in sups}
        before = {sup.name: (task_counters(sup.pid), threads(sup.pid)) for sup in sups}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        after = {sup.name: (task_counters(sup.pid), threads(sup.pid)) for sup in sups}
        elapsed = time.monotonic() - t0
        for sup in sups:
            sup.processes()  # one status request
        mem_after = {sup.name: memory(sup.pid) for sup in sups}
    data: dict[str, dict[str, float]] = {}
    for name in before:
        b, a = before[name][0], after[name][0]
        data[name] = {
            "rss_mb": mem[name]["rss"],
            "uss_mb": mem[name]["uss"],
            "pss_mb": mem[name]["pss"],
            "rss_after_status_mb": mem_after[name]["rss"],
            "cpu_pct_ticks": (a["cpu_ticks"] - b["cpu_ticks"])
            / os.sysconf("SC_CLK_TCK")
            / elapsed
            * 100,
            "cpu_pct": (a["cpu_ns"] - b["cpu_ns"]) / 1e9 / elapsed * 100,
            "wakeups_per_s": (a["switches"] - b["switches"]) / elapsed,
            "voluntary_per_s": (a["voluntary"] - b["voluntary"]) / elapsed,
            "threads": a["threads"],
        }
    print(
        table(
            [
                "",
                "RSS MiB",
                "USS MiB",
                "PSS MiB",
                "RSS after status",
                "threads",
                "CPU % (schedstat)",
                "CPU % (ticks)",
                "wake-ups/s",
            ],
            [
                [
                    name,
                    f"{d['rss_mb']:.1f}",
                    f"{d['uss_mb']:.1f}",
                    f"{d['pss_mb']:.1f}",
                    f"{d['rss_after_status_mb']:.1f}",
                    int(d["threads"]),
                    f"{d['cpu_pct']:.4f}",
                    f"{d['cpu_pct_ticks']:.3f}",
                    f"{d['wakeups_per_s']:.2f}",
                ]
                for name, d in data.items()
            ],
        )
    )
    for name in before:
        per = {
            t: after[name][1][t]["switches"] - before[name][1][t]["switches"]
            for t in after[name][1]
            if t in before[name][1]
        }
        print(f"   {name}: context switches per thread over the window: {per}")
    ps, sv = data["procsup"], data["supervisord"]
    res.add(
        f"daemon RSS, {n} instances",
        "MiB",
        ps["rss_mb"],
        sv["rss_mb"],
        target="<= 30 MB" if n == 100 else "",
        met=ps["rss_mb"] * MB <= 30e6 if n == 100 else None,  # the target is for 100
    )
    res.add(
        "daemon RSS after a status request",
        "MiB",
        ps["rss_after_status_mb"],
        sv["rss_after_status_mb"],
    )
    res.add(
        f"idle CPU over {elapsed:.0f} s",
        "% core",
        ps["cpu_pct"],
        sv["cpu_pct"],
        target="<= 0.1 %",
        met=ps["cpu_pct"] <= 0.1,
    )
    res.add(
        "idle wake-ups",
        "per s",
        ps["wakeups_per_s"],
        sv["wakeups_per_s"],
        target="<= 1 /s",
        met=ps["wakeups_per_s"] <= 1,
    )
    res.details = {
        "seconds": elapsed,
        "daemons": data,
        "threads": {k: {"before": v[1], "after": after[k][1]} for k, v in before.items()},
    }
    print()
    print(res.summary())
    res.save(args.json)


if __name__ == "__main__":
    main()
