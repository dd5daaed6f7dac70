"""Restart latency: from SIGKILL of an instance to its replacement running (restart_delay = 0).

One instance of `sleep 100000`. Each iteration takes the monotonic clock, SIGKILLs the
instance's pid and waits for the supervisor's next child to exec (bench/_proc.py
ExecWatch: as root the kernel's proc connector stamps each event, so the watcher blocks and
perturbs nothing; otherwise it polls /proc every 0.2 ms). Per kill it records, from the
SIGKILL:
- exit: the killed process is gone (kernel; the part no supervisor can shorten);
- fork: the supervisor created the replacement (it noticed the death and spawned);
- exec: the replacement runs `sleep` (exec done). This is the figure.
Between kills the replacement is left alone for --settle seconds and must be `running` per the
supervisor (a stable run, longer than min_uptime / startsecs), so every kill hits a running
instance and the restart policy never backs off.

procsup: restart_delay = 0, min_uptime = 50ms, autorestart = true.
supervisord: startsecs = 0, autorestart = true.
With --limits the procsup app sets `limits = { nofile = 4096, nproc = 512, core = 0 }`, which
procsupd applies through the exec'd `prlimit` helper: the exec that counts is then the second
(the program's). Run the script under `prlimit --nofile=1024:HARD` to measure the default case
where procsupd has raised its own open-files limit and holds it down for each fork.
--subjects limits the run to some of procsup, supervisord, reference (for alternating runs).
reference: 8 lines of Python (pidfd_open + select + subprocess.Popen in a loop): the floor for
a Python supervisor on this machine, to tell the machine's latency from procsup's.

    .venv/bin/python bench/bench_restart.py [--iterations 50] [--settle 0.2] [--limits]
        [--subjects procsup,supervisord,reference] [--cgroups off,late,exact]
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PYTHON, Results, Session, begin, fmt, median, parser, pct, table
from _proc import ExecWatch, children, exec_watch, wait_for, wait_quiet
from _subjects import SLEEP, Procsup, Supervisor, Supervisord

MINI = """
import os, select, subprocess
while True:
    p = subprocess.Popen(["sleep", "100000"], start_new_session=True)
    fd = os.pidfd_open(p.pid)
    select.select([fd], [], [])
    p.wait()
    os.close(fd)
"""


class MiniRestarter(Supervisor):
    """The reference: a minimal restart loop in Python, no logs, no state, no socket."""

    name = "reference"

    def argv(self) -> list[str]:
        return [PYTHON, "-c", MINI]

    def serving(self) -> bool:
        return bool(children(self.pid))

    def processes(self) -> list[tuple[str, str, int | None]]:
        kids = children(self.pid)
        return [("s", "running", kids[0] if kids else None)]


def _exited(pid: int, watch: ExecWatch) -> bool:
    return pid in watch.exits


def measure(sup: Supervisor, iterations: int, warmup: int, settle: float,
            helpers: int = 0) -> dict[str, list[float]]:
    """Kill and watch `iterations` times (after `warmup` uncounted kills); milliseconds.
    `helpers`: programs the supervisor execs before the command (each execs the next)."""
    wait_quiet()
    sup.launch()
    sup.wait_serving()
    sup.wait_states("running", 1, timeout=30)
    pid = sup.processes()[0][2]
    assert pid is not None
    out: dict[str, list[float]] = {"exit": [], "fork": [], "exec": []}
    with exec_watch() as watch:
        watch.ppid = sup.pid
        watch.execs_needed = 1 + helpers
        watch.program = "sleep" if helpers else None
        for i in range(warmup + iterations):
            watch.reset()
            watch.track_exits.add(pid)
            t0 = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)
            watch.wait(lambda w: bool(w.execs), 10, f"{sup.name}: the replacement of {pid}")
            new, t_exec = next(iter(watch.execs.items()))
            if i >= warmup:
                # Wait a little for the exit event (it may arrive after the exec's).
                try:
                    watch.wait(functools.partial(_exited, pid), 0.5, "exit")
                except TimeoutError:
                    pass
                out["exec"].append((t_exec - t0) / 1e6)
                out["fork"].append((watch.forks.get(new, t_exec) - t0) / 1e6)
                if pid in watch.exits:
                    out["exit"].append((watch.exits[pid] - t0) / 1e6)
            # Let the replacement become a stable, running instance before the next kill.
            time.sleep(settle)

            def running(new: int = new) -> bool:
                sup._check_alive()
                rows = sup.processes()
                return rows[0][1] == "running" and rows[0][2] == new

            wait_for(running, 10, f"{sup.name}: replacement {new} running", 0.01)
            pid = new
        print(f"   ({sup.name}: {watch.method})")
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--limits", action="store_true",
                   help="the procsup app sets limits (applied by the exec'd prlimit helper)")
    p.add_argument("--subjects", default="procsup,supervisord,reference",
                   help="comma-separated: which of procsup, supervisord, reference to run")
    p.add_argument(
        "--settle", type=float, default=0.2, help="seconds between a restart and the next kill"
    )
    p.add_argument(
        "--cgroups", default="off",
        help="comma-separated procsup runs: off ([procsup] cgroups = false), late (\"auto\": "
             "moved into its cgroup by the worker), exact (\"auto\" with memory_max: born in "
             "its cgroup); each after the first is named procsup[MODE]")
    known = ("procsup", "supervisord", "reference")
    # Which subjects, before `begin` (it checks supervisord is installed when it runs).
    subjects = [name for name in p.parse_known_args()[0].subjects.split(",") if name]
    if not set(subjects) <= set(known) or not subjects:
        p.error(f"--subjects: choose among {', '.join(known)}")
    args = begin(
        p, "restart latency: SIGKILL of the instance -> replacement exec'd",
        quick={"iterations": 10}, supervisord="supervisord" in subjects,
    )
    limits = {"limits": {"nofile": 4096, "nproc": 512, "core": 0}} if args.limits else {}
    res = Results("restart")
    budget = args.budget or 120 + args.iterations * 4
    data: dict[str, dict[str, list[float]]] = {}
    modes = [m for m in args.cgroups.split(",") if m]
    if not modes or not set(modes) <= {"off", "late", "exact"}:
        p.error("--cgroups: choose among off, late, exact")
    with Session("restart", budget) as s:
        runs: list[Supervisor] = []
        for i, mode in enumerate(modes):
            extra = {"memory_max": "1G"} if mode == "exact" else {}
            run = Procsup(
                s,
                "procsup" if i == 0 else f"procsup-{mode}",
                {
                    "s": {
                        "command": SLEEP,
                        "restart_delay": 0,
                        "min_uptime": "50ms",
                        "autorestart": True,
                        **limits,
                        **extra,
                    }
                },
                daemon={"cgroups": mode != "off" and "auto"},
            )
            if i:
                run.name = f"procsup[{mode}]"
            runs.append(run)
        sv = Supervisord(
            s,
            "supervisord",
            {"s": {"command": SLEEP, "startsecs": 0, "autorestart": True, "startretries": 100}},
        )
        ref = MiniRestarter(s, "reference")
        for sup in (*runs, sv, ref):
            if sup.name.partition("[")[0] not in subjects:
                continue
            helpers = 1 if sup in runs and args.limits else 0
            data[sup.name] = measure(sup, args.iterations, args.warmup, args.settle, helpers)
            sup.stop()
    rows = []
    for name, d in data.items():
        for what in ("exit", "fork", "exec"):
            xs = d[what]
            if xs:
                rows.append(
                    [
                        f"{name}: {what}",
                        len(xs),
                        fmt(min(xs)),
                        fmt(median(xs)),
                        fmt(pct(xs, 90)),
                        fmt(max(xs)),
                    ]
                )
    print(table(["ms from SIGKILL to", "n", "min", "median", "p90", "max"], rows))
    def stat(name: str, f: Callable[[list[float]], float]) -> float | None:
        return f(data[name]["exec"]) if name in data else None

    pm, sm = stat("procsup", median), stat("supervisord", median)
    res.add("restart latency, median", "ms", pm, sm, target="<= 3 ms",
            met=None if pm is None else pm <= 3)
    res.add("restart latency, p90", "ms", stat("procsup", functools.partial(pct, p=90)),
            stat("supervisord", functools.partial(pct, p=90)))
    res.details = {
        "ms_from_sigkill": data,
        "reference_median_exec": stat("reference", median),
        "limits": args.limits,
        "cgroups": modes,
    }
    print()
    print(res.summary())
    ref_median = stat("reference", median)
    if ref_median is not None:
        print(f"reference (minimal Python restart loop): median {fmt(ref_median)} ms")
    res.save(args.json)


if __name__ == "__main__":
    main()
