"""Throughput of log capture (procsup.logs): one writer of 100-byte lines, flat out, with its
stdout (a) redirected straight to a file, (b) captured by PipeReader without a date prefix,
(c) captured with log_date_format = "%Y-%m-%d %H:%M:%S.%f %z".

Two writers, because the ratio depends on how much the writer itself costs:
- `dd`: copies a prepared file of 100-byte lines in 64 KiB writes. The writer costs next to
  nothing, so this is the worst case for any pipe capture: straight to a file is one copy in
  the kernel (often straight from the page cache), a pipe adds two copies and a context switch.
- `python`: a Python program formatting each line and writing through sys.stdout.buffer, i.e.
  an app that logs as fast as it can.
For reference, each writer also runs as `writer | cat > file`: the cost of a pipe read by a
C program, the floor for any capture through a pipe.

Each case runs --runs times on a fresh output file; the best run counts (least disturbed by
the rest of the machine). Rates are MB (10^6 bytes) of the writer's output per second of wall
time from spawn to the end of capture.

    .venv/bin/python bench/bench_logs.py [--mb 256] [--runs 5] [--dir DIR]

bench_logs_daemon.py measures the same through the whole daemon, beside supervisord.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Results, parse, parser

DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f %z"
LINE = b"x" * 99 + b"\n"

PY_WRITER = """
import sys
n = int(sys.argv[1])
write = sys.stdout.buffer.write
pad = b"y" * 84  # "line %09d " is 15 bytes, + 84 + newline = 100
for i in range(n):
    write(b"line %09d %s\\n" % (i, pad))
"""


def make_source(path: str, mb: int) -> int:
    block = LINE * 10_000  # 1 MB
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(block)
    return mb * len(block)


def direct(argv: list[str], out: str) -> float:
    start = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(argv, stdout=f, check=True)
    return time.perf_counter() - start


def via_cat(argv: list[str], out: str) -> float:
    start = time.perf_counter()
    with open(out, "wb") as f:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
        assert cat.stdin is not None
        writer = subprocess.Popen(argv, stdout=cat.stdin)
        cat.stdin.close()
        writer.wait()
        cat.wait()
    return time.perf_counter() - start


async def _via_reader(argv: list[str], out: str, date_format: str | None) -> float:
    # Imported here so that --commit (which puts another procsup first on sys.path) applies.
    from procsup.logs import LogSinks
    from procsup.pipes import PipeReader, open_pipe

    loop = asyncio.get_running_loop()
    sinks = LogSinks()
    sink = sinks.acquire(out, date_format=date_format, max_size=None, retain=0)
    done = loop.create_future()
    start = time.perf_counter()
    read_fd, write_fd = open_pipe()
    proc = subprocess.Popen(argv, stdout=write_fd)
    os.close(write_fd)
    PipeReader(loop, read_fd, sink, lambda: done.set_result(None))
    await done
    elapsed = time.perf_counter() - start
    proc.wait()
    sinks.close_all()
    return elapsed


def via_reader(argv: list[str], out: str) -> float:
    return asyncio.run(_via_reader(argv, out, None))


def via_reader_dated(argv: list[str], out: str) -> float:
    return asyncio.run(_via_reader(argv, out, DATE_FORMAT))


def best(runs: int, fn: Callable[[list[str], str], float], argv: list[str], out: str) -> float:
    times = []
    for _ in range(runs):
        if os.path.exists(out):
            os.unlink(out)
        times.append(fn(argv, out))
    os.unlink(out)
    return min(times)


CASES: list[tuple[str, Callable[[list[str], str], float]]] = [
    ("(a) redirected to a file", direct),
    ("    reference: | cat > file", via_cat),
    ("(b) PipeReader, no prefix", via_reader),
    ("(c) PipeReader, date prefix", via_reader_dated),
]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--mb", type=int, default=256, help="MB of 100-byte lines per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parse(p)
    if args.quick:
        args.mb, args.runs = min(args.mb, 32), min(args.runs, 2)
    res = Results("logs")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = os.path.join(tmp, "source.txt")
        out = os.path.join(tmp, "out.log")
        size = make_source(src, args.mb)
        writers = {
            "dd": ["dd", f"if={src}", "bs=64k", "status=none"],
            "python": [sys.executable, "-c", PY_WRITER, str(size // len(LINE))],
        }
        print(f"{size / 1e6:.0f} MB of 100-byte lines per run, best of {args.runs} runs")
        for name, argv in writers.items():
            print(f"writer: {name}")
            base = 0.0
            for label, fn in CASES:
                rate = size / 1e6 / best(args.runs, fn, argv, out)
                base = base or rate
                print(f"  {label:30} {rate:8.1f} MB/s   {rate / base:5.2f} of (a)")
                if "PipeReader" in label:
                    res.add(f"PipeReader alone {name}, {label[4:]}", "x direct", rate / base, None)
    res.save(args.json)


if __name__ == "__main__":
    main()
