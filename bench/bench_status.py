"""`procsup status --json` with 200 instances, end to end, beside `supervisorctl status`.

Both daemons run side by side with 200 instances of `sleep` each, all running. Each command is
run --reps times through the venv's console scripts (what users run), interleaved, and timed
from spawn to exit with its output read: interpreter start-up, imports, connecting, the
daemon's work (procsup samples CPU and memory of every instance's process group) and printing
all count.
References, to see where the time goes:
- `python -c pass`: the venv's interpreter starting and exiting, the floor for any Python CLI;
- `python -c "import procsup.cli"`: the floor plus the CLI's imports;
- in-process: one status request on an open client, without start-up (procsup's Client; for
  supervisord, the XML-RPC getAllProcessInfo that supervisorctl makes).

    .venv/bin/python bench/bench_status.py [--instances 200] [--reps 40]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    PROCSUP,
    PYTHON,
    SUPERVISORCTL,
    Results,
    Session,
    begin,
    fmt,
    median,
    parser,
    pct,
    table,
)
from _proc import wait_quiet
from _subjects import SLEEP, Procsup, Supervisord


def run_timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, check=False, capture_output=True, env=env, timeout=60)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    return elapsed


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--instances", type=int, default=200)
    p.add_argument("--reps", type=int, default=40)
    args = begin(p, "status with {instances} instances, end to end", quick={"reps": 10})
    n = args.instances
    res = Results("status")
    with Session("status", args.budget or 120 + args.reps * 5) as s:
        ps = Procsup(s, "procsup", {"s": {"command": SLEEP, "instances": n}})
        sv = Supervisord(
            s,
            "supervisord",
            {
                "s": {
                    "command": SLEEP,
                    "numprocs": n,
                    "process_name": "%(program_name)s_%(process_num)d",
                }
            },
        )
        for sup in (ps, sv):
            sup.launch()
        for sup in (ps, sv):
            sup.wait_serving()
            sup.wait_states("running", n, timeout=60, interval=0.1)
        env = s.env
        out = subprocess.run(
            [PROCSUP, "-s", ps.socket, "status", "--json"], capture_output=True, env=env, check=True
        ).stdout
        rows_seen = len(json.loads(out)["instances"])
        assert rows_seen == n, f"status --json listed {rows_seen} instances"
        cases: dict[str, Callable[[], float]] = {
            "procsup status --json": lambda: run_timed(
                [PROCSUP, "-s", ps.socket, "status", "--json"], env
            ),
            "procsup status": lambda: run_timed([PROCSUP, "-s", ps.socket, "status"], env),
            "supervisorctl status": lambda: run_timed(
                [SUPERVISORCTL, "-c", str(sv.conf), "status"], env
            ),
            "ref: python -c pass": lambda: run_timed([PYTHON, "-c", "pass"], env),
            "ref: python -c 'import procsup.cli'": lambda: run_timed(
                [PYTHON, "-c", "import procsup.cli"], env
            ),
        }

        def in_process(call: Callable[[], object]) -> Callable[[], float]:
            def timed() -> float:
                t0 = time.perf_counter()
                call()
                return time.perf_counter() - t0

            return timed

        cases["in-process: procsup status request"] = in_process(lambda: ps.call("status"))
        cases["in-process: supervisord getAllProcessInfo"] = in_process(
            sv.rpc.supervisor.getAllProcessInfo
        )
        for fn in cases.values():  # warm the page cache and the daemons
            fn()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.reps):
            wait_quiet(5)
            for k, fn in cases.items():
                times[k].append(fn() * 1000)
    rows = [
        [k, len(v), fmt(min(v)), fmt(median(v)), fmt(pct(v, 90)), fmt(max(v))]
        for k, v in times.items()
    ]
    print(table(["ms wall", "n", "min", "median", "p90", "max"], rows))
    pj, sc = times["procsup status --json"], times["supervisorctl status"]
    res.add(
        f"status --json, {n} instances, median",
        "ms",
        median(pj),
        median(sc),
        target="<= 80 ms" if n == 200 else "",
        met=median(pj) <= 80 if n == 200 else None,  # the target is for 200
    )
    res.add(f"status --json, {n} instances, p90", "ms", pct(pj, 90), pct(sc, 90))
    res.add(
        "status request in-process (no start-up)",
        "ms",
        median(times["in-process: procsup status request"]),
        median(times["in-process: supervisord getAllProcessInfo"]),
    )
    res.details = {"ms": times}
    print()
    print(res.summary())
    res.save(args.json)


if __name__ == "__main__":
    main()
