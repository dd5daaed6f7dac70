"""Hostile control clients (issue 11, items 2 and 8): daemon memory, and `status` latency under
a log flood.

Memory: procsupd with one instance of `sleep`; 100 concurrent clients (bench/_hostile.py, one
process each) each send --frames bad frames (1 MiB JSON, 1 MiB non-UTF-8, a 4 GiB length
prefix, 1 MiB of noise, in turn), for --rounds rounds. The daemon's VmRSS (/proc/PID/status)
is read before, after each round (once the clients are gone and `ping` answered), and its
VmHWM (peak) at the end; and the lines the rounds added to the daemon log.

Latency: procsupd with one instance of tests/apps/flood.py (100-byte lines to stdout as fast
as it can, into a rotated log file), then `procsup status --json` is run --reps times, one
after the other, timed from spawn to exit (what a user waits for), plus the same request
in-process on a `Client` (no interpreter start-up), and the CLI's floor (`python -c "import
procsup.cli"`: start-up alone, under the same load): first with the flood alone, then with the
flood and 100 hostile clients (bench/_hostile.py, looping) running all along. The CLI and its
floor are timed twice: from the venv (an editable install, whose import hook costs every
start 5 - 10 ms) and from a regular install of the same procsup/ (a venv in the session's
directory holding a copy of the package and the console script as pip writes it), which is
what users of a package run.

    .venv/bin/python bench/bench_hostile.py [--rounds 3] [--frames 10] [--reps 100]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    PROCSUP,
    PYTHON,
    REPO,
    SOURCE,
    Results,
    Session,
    begin,
    fmt,
    median,
    parser,
    pct,
)
from _proc import wait_quiet
from _subjects import SLEEP, Procsup

HOSTILE = [PYTHON, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hostile.py")]
FLOOD = [PYTHON, str(REPO / "tests" / "apps" / "flood.py")]


def vm(pid: int, key: str) -> int:
    """A `Vm*` field of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def wchar(pid: int) -> int:
    """Bytes `pid` has written (/proc/PID/io)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise KeyError("wchar")


def log_lines(ps: Procsup) -> int:
    try:
        with open(ps.stderr, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def memory(s: Session, res: Results, rounds: int, frames: int, clients: int) -> None:
    ps = Procsup(s, "memory", {"s": {"command": SLEEP}})
    ps.launch()
    ps.wait_serving()
    ps.wait_states("running", 1)
    for _ in range(20):  # the first requests allocate what every later one reuses
        ps.call("status")
    before = vm(ps.pid, "VmRSS")
    lines0 = log_lines(ps)
    after = []
    print(f"   VmRSS before: {before / 2**20:.1f} MiB")
    for r in range(rounds):
        t0 = time.monotonic()
        # One process per client: the daemon refuses on sight a process that sent 20 bad
        # requests lately, which would spare it most of the frames this is about.
        procs = [subprocess.Popen([*HOSTILE, ps.socket, "--clients", "1", "--frames",
                                   str(frames)], stdout=subprocess.PIPE, text=True, env=s.env)
                 for _ in range(clients)]
        seen: dict[str, int] = {}
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            for k, v in json.loads(out).items():
                seen[k] = seen.get(k, 0) + v
        took = time.monotonic() - t0
        ps.call("ping")
        after.append(vm(ps.pid, "VmRSS"))
        print(f"   round {r + 1}: {took:.1f} s, VmRSS {after[-1] / 2**20:.1f} MiB, "
              f"replies {json.dumps(seen)}")
    peak = vm(ps.pid, "VmHWM")
    lines = log_lines(ps) - lines0
    grown = (after[-1] - before) / 1e6
    res.add("daemon VmRSS before the hostile rounds", "MiB", before / 2**20, None)
    res.add(f"daemon VmRSS after {rounds} rounds of {clients} clients x {frames} bad frames",
            "MiB", after[-1] / 2**20, None)
    res.add("growth (after - before)", "MB", grown, None, target="<= 20 MB", met=grown <= 20)
    res.add("daemon peak RSS (VmHWM)", "MiB", peak / 2**20, None)
    res.add(f"daemon log lines from {rounds * clients * frames} bad requests", "lines",
            lines, None)
    res.details["memory"] = {"before": before, "after": after, "peak": peak, "lines": lines}
    ps.stop()


def regular_install(s: Session) -> tuple[str, str]:
    """(python, procsup) of a venv in the session's directory with a plain copy of the
    procsup/ being measured (the working tree's, or --commit's) and the console script pip
    writes for `procsup = "procsup.cli:main"`: an install without the editable finder."""
    venv = s.path("installed")
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, env=s.env)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    package = Path(SOURCE["dir"] or REPO) / "procsup"
    shutil.copytree(package, Path(site) / "procsup",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "compileall", "-q", str(Path(site) / "procsup")], check=True)
    script = venv / "bin" / "procsup"
    script.write_text(f"#!{python}\nimport sys\nfrom procsup.cli import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    return python, str(script)


def time_status(ps: Procsup, env: dict[str, str], reps: int, installed: tuple[str, str]
                ) -> dict[str, list[float]]:
    """`status` times in ms, interleaved: the CLI end to end and its floor, from the venv and
    from the regular install, and the request in-process. The floor is the interpreter
    starting with the CLI's imports and exiting, under the same load: what no daemon can make
    faster."""
    from procsup.client import Client

    # The regular install must import its own copy, not the one PYTHONPATH names (--commit);
    # and every run starts in the session's directory: `python -c` puts the current directory
    # first on sys.path, and from the repository that would import the working tree's procsup
    # whatever --commit or the install says.
    env_installed = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    cwd = str(ps.dir)
    runs = {
        "CLI": ([PROCSUP, "-s", ps.socket, "status", "--json"], env),
        "CLI floor": ([PYTHON, "-c", "import procsup.cli"], env),
        "CLI, installed": ([installed[1], "-s", ps.socket, "status", "--json"], env_installed),
        "CLI floor, installed": ([installed[0], "-c", "import procsup.cli"], env_installed),
    }
    times: dict[str, list[float]] = {name: [] for name in (*runs, "in-process")}
    client = Client(ps.socket, timeout=30)
    for _ in range(reps):
        for name, (argv, run_env) in runs.items():
            t0 = time.perf_counter()
            r = subprocess.run(argv, capture_output=True, env=run_env, cwd=cwd, timeout=60,
                               check=False)
            times[name].append((time.perf_counter() - t0) * 1000)
            if r.returncode != 0:
                raise RuntimeError(f"{name} failed: {r.stderr.decode(errors='replace')}")
        t0 = time.perf_counter()
        client.call("status")
        times["in-process"].append((time.perf_counter() - t0) * 1000)
    return times


def latency(s: Session, res: Results, reps: int, clients: int) -> None:
    installed = regular_install(s)
    ps = Procsup(s, "latency", {"flood": {"command": FLOOD, "log_max_size": "64M",
                                          "log_retain": 1}})
    ps.launch()
    ps.wait_serving()
    ps.wait_states("running", 1)
    pid = ps.call("status")["instances"][0]["pid"]
    w0 = wchar(pid)
    time.sleep(1)  # a measure of the flood rate, not a wait for a condition
    rate = (wchar(pid) - w0) / 1e6
    print(f"   flood: {rate:.0f} MB/s written by the app (its log rotated at 64M)")
    res.details["flood_mb_s"] = rate
    for label, hostile in (("flood", False), ("flood + 100 hostile clients", True)):
        worker = None
        if hostile:
            worker = subprocess.Popen([*HOSTILE, ps.socket, "--clients", str(clients),
                                       "--seconds", "3600"], stdout=subprocess.DEVNULL,
                                      env=s.env)
            time.sleep(2)  # let the clients reach their steady state
        try:
            times = time_status(ps, s.env, reps, installed)
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(10)
        for name, xs in times.items():
            print(f"   {label}, {name}: p50 {fmt(median(xs))} p99 {fmt(pct(xs, 99))} "
                  f"max {fmt(max(xs))} ms")
            target = "p99 < 100 ms" if hostile and "floor" not in name else ""
            res.add(f"status --json, {label}, {name}, p50", "ms", median(xs), None)
            res.add(f"status --json, {label}, {name}, p99", "ms", pct(xs, 99), None,
                    target=target, met=pct(xs, 99) < 100 if target else None)
            res.add(f"status --json, {label}, {name}, max", "ms", max(xs), None)
        res.details[label] = times
    ps.stop()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--skip", choices=("memory", "latency"), default=None)
    args = begin(p, "hostile clients: memory and status latency", supervisord=False,
                 quick={"rounds": 1, "frames": 4, "reps": 20})
    res = Results("hostile")
    with Session("hostile", args.budget or 900) as s:
        busy = wait_quiet()
        res.details["busy_before"] = busy
        if args.skip != "memory":
            memory(s, res, args.rounds, args.frames, args.clients)
        if args.skip != "latency":
            latency(s, res, args.reps, args.clients)
    print(res.summary())
    res.save(args.json)
    if args.json:
        print(json.dumps(res.details.get("memory", {})))


if __name__ == "__main__":
    main()
