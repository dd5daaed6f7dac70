"""Re-exec: `procsup daemon-reexec` with N instances running, one of them flooding its log.

procsupd -n runs --instances `sleep` instances and one writer of numbered 100-byte lines, each
one write(2), as fast as the pipe takes them. Each iteration sends the `reexec` request and
measures, from just before the request:
- answered: the control socket answers `version` from the new image (its `reexecs` grew);
- adopted: `status` from the new image lists every instance with its old pid, running;
and, from the daemon's own log, `exec`: the time from the old image's start of the hand-over to
the new image's "taken over" line (no check, no settle: the exec and the adoption alone).
The check that comes first (`procsupd --check` in a child, ~0.3 s of Python start-up) is
inside `answered`. At the end the writer is stopped and its file read: every line must be
there exactly once, whole, in order (lost, duplicated or split lines are counted).
supervisord has no equivalent: `supervisorctl reload` restarts every program (its
maintainers call attaching to running processes out of scope), so there is no side-by-side.

    .venv/bin/python bench/bench_reexec.py [--instances 200] [--iterations 10]
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PYTHON, Results, Session, begin, fmt, median, parser, pct, table
from _proc import wait_for, wait_quiet
from _subjects import SLEEP, Procsup

WRITER = r"""
import os
n = 0
while True:
    os.write(1, b"n=%09d " % n + b"x" * 88 + b"\n")
    n += 1
"""


def check_lines(path: str) -> tuple[int, int]:
    """(whole lines in order, lines wrong: missing, repeated or split)."""
    good = bad = 0
    expect = 0
    with open(path, "rb") as f:
        for line in f:
            m = re.fullmatch(rb"n=(\d{9}) x{88}\n", line)
            if m is None:
                bad += 1
                continue
            n = int(m.group(1))
            if n == expect:
                good += 1
            else:
                bad += abs(n - expect)
            expect = n + 1
    return good, bad


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--instances", type=int, default=200)
    p.add_argument("--iterations", type=int, default=10)
    args = begin(p, "re-exec with {instances} instances and a flooding writer",
                 quick={"iterations": 3}, supervisord=False)
    res = Results("reexec")
    with Session("reexec", args.budget or 300 + args.iterations * 10) as s:
        sup = Procsup(s, "procsup", {
            "idle": {"command": SLEEP, "instances": args.instances, "out_file": False,
                     "error_file": False},
            "flood": {"command": [PYTHON, "-c", WRITER], "error_file": False},
        }, daemon={"watch_config": False})
        sup.launch()
        sup.wait_serving()
        sup.wait_states("running", args.instances + 1, timeout=120)
        pids = {name: pid for name, _, pid in sup.processes()}
        answered: list[float] = []
        adopted: list[float] = []
        for i in range(args.iterations):
            wait_quiet(args.quiet_wait)
            count = sup.call("version")["reexecs"]
            t0 = time.perf_counter()
            sup.call("reexec")

            def new_image(count: int = count) -> bool:
                from procsup.client import Unreachable

                try:
                    return bool(sup.call("version")["reexecs"] > count)
                except Unreachable:  # (the exec closed the connection)
                    return False

            wait_for(new_image, 60, "the new image", 0.002)
            answered.append(time.perf_counter() - t0)

            def all_adopted() -> bool:
                rows = sup.processes()
                return all(state == "running" for _, state, _ in rows) and {
                    n: pid for n, _, pid in rows} == pids

            wait_for(all_adopted, 60, "every instance adopted", 0.002)
            adopted.append(time.perf_counter() - t0)
            print(f"   re-exec {i + 1}: answered {answered[-1] * 1000:.0f} ms, adopted "
                  f"{adopted[-1] * 1000:.0f} ms")
        log = sup.stderr.read_text(errors="replace")
        execs = [float(x) for x in re.findall(r"taken over in (\d+) ms", log)]
        written = os.path.getsize(sup.log_path("flood"))
        flood_pid = pids["flood:0"]
        assert flood_pid is not None
        os.kill(flood_pid, signal.SIGSTOP)  # the file ends with whole lines: nothing in flight
        time.sleep(0.5)
        good, bad = check_lines(str(sup.log_path("flood")))
        os.kill(flood_pid, signal.SIGCONT)
        sup.stop()
    rows = [
        ("answered (s)", fmt(median(answered)), fmt(pct(answered, 90)), fmt(max(answered))),
        ("adopted (s)", fmt(median(adopted)), fmt(pct(adopted, 90)), fmt(max(adopted))),
        ("exec + take-over (ms)", fmt(median(execs)), fmt(pct(execs, 90)), fmt(max(execs))),
    ]
    print(table(("measure", "median", "p90", "max"), rows))
    print(f"   flood: {good} lines whole and in order ({written / 1e6:.0f} MB), {bad} wrong")
    res.add("re-exec: control socket answers, every instance adopted", "s", median(adopted),
            None, target="< 1 s", met=median(adopted) < 1.0)
    res.add("re-exec: lines lost, repeated or split", "lines", bad, None, target="0",
            met=bad == 0)
    res.details.update(answered=answered, adopted=adopted, exec_ms=execs, lines=good,
                       bad=bad, instances=args.instances)
    print(res.summary())
    res.save(args.json)


if __name__ == "__main__":
    main()
