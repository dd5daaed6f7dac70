"""Log throughput end to end: one instance writing 100-byte lines flat out, through the real
daemon, against the same writer redirected straight to a file.

Cases, each run --runs times, interleaved (the best run of each counts, the least disturbed by
the rest of the machine; medians are in the JSON):
- direct: the writer with stdout redirected to a file (spawn to exit);
- procsup: an app with autorestart = false, started with the `start` command; timed from the
  request to the log file holding every byte (polled every 2 ms), then it must be `exited`;
- procsup, dated: the same with log_date_format = "%Y-%m-%d %H:%M:%S" (20 bytes more a line);
- supervisord: a program with autostart/autorestart = false, stdout_logfile_maxbytes = 0
  (no rotation), started with the startProcess XML-RPC call, timed the same way.
The log files are truncated between runs (both supervisors open them O_APPEND), and each run
starts after os.sync() and a quiet machine, so that no run pays for the previous one's
writeback. Ten runs by default: on the benchmark VM the same file write ran at ~400 or ~2000
MB/s from one run to the next (fresh pages: the VM hands freed memory back to its host), and
five runs of the 64 ms `dd` direct write all came out slow, making capture look 2 - 4 times
faster than a direct write. The script warns when a capture beats the direct write that much.

Writers, because the ratio depends on what the writer itself costs:
- dd: `dd bs=64k` of a prepared file of lines: a writer that costs nothing, the worst case for
  any capture through a pipe (two more kernel copies than a direct file write);
- c-line: a C program doing one write(2) per line (like Go's log package, or any unbuffered
  logger): the most system calls per byte a real program makes (needs cc; skipped otherwise);
- py-line: Python, one os.write() per line (a Python app logging unbuffered);
- py-buffered: Python formatting each line into sys.stdout.buffer (block-buffered to a pipe).
Rates are MB (10^6 bytes) of the writer's output per second of wall time. The daemon's CPU
time during each run is recorded too (seconds of CPU per GB captured), and its read system
calls (/proc/<pid>/io syscr), as the average bytes per read: how finely it consumes the pipe.

Where the files go matters on a VM: `--dir /dev/shm` (tmpfs) takes the file system's own
noise out (ext4 page-cache writes of a fresh file are erratic here); see docs/benchmarks.md.

    .venv/bin/python bench/bench_logs_daemon.py [--mb 128] [--runs 10] [--dir DIR]
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PYTHON, Results, Session, begin, median, parser, table
from _proc import task_counters, wait_for, wait_quiet
from _subjects import Procsup, Supervisor, Supervisord

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LINE = b"x" * 99 + b"\n"

C_WRITER = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char line[100];
    memset(line, 'c', 99);
    line[99] = '\n';
    for (long i = 0; i < n; i++) {
        ssize_t off = 0;
        while (off < 100) {
            ssize_t w = write(1, line + off, 100 - off);
            if (w < 0) return 1;
            off += w;
        }
    }
    return 0;
}
"""

PY_LINE = """
import os, sys
n = int(sys.argv[1])
line = b"p" * 99 + b"\\n"
write = os.write
for _ in range(n):
    write(1, line)
"""

PY_BUFFERED = """
import sys
n = int(sys.argv[1])
write = sys.stdout.buffer.write
pad = b"y" * 84  # "line %09d " is 15 bytes, + 84 + newline = 100
for i in range(n):
    write(b"line %09d %s\\n" % (i, pad))
"""


def writers(s: Session, data: Path, size: int) -> dict[str, list[str]]:
    lines = size // len(LINE)
    src = data / "source.txt"
    block = LINE * 10_000
    with open(src, "wb") as f:
        for _ in range(lines // 10_000):
            f.write(block)
        f.write(LINE * (lines % 10_000))
    out = {"dd": ["dd", f"if={src}", "bs=64k", "status=none"]}
    c_src, c_bin = s.path("writer.c"), s.path("writer")
    c_src.write_text(C_WRITER)
    try:
        subprocess.run(["cc", "-O2", "-o", str(c_bin), str(c_src)], check=True, capture_output=True)
        out["c-line"] = [str(c_bin), str(lines)]
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"   (no C compiler: skipping the c-line writer: {exc})")
    for name, code in (("py-line", PY_LINE), ("py-buffered", PY_BUFFERED)):
        script = s.path(f"{name}.py")  # a file: supervisord's ini cannot hold a multi-line -c
        script.write_text(code)
        out[name] = [PYTHON, str(script), str(lines)]
    return out


def fs_type(path: str) -> str:
    """The file system type `path` is on (from /proc/mounts: the longest matching mount)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            _, mnt, typ = line.split()[:3]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, typ
    return kind


def _holds(path: Path, size: int) -> bool:
    return path.exists() and path.stat().st_size >= size


def settle() -> None:
    """Before each timed run: no run should pay for the previous one's writeback."""
    os.sync()
    wait_quiet(10)


def direct(argv: list[str], out: Path) -> float:
    settle()
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(argv, stdout=f, check=True)
    return time.perf_counter() - t0


def io_calls(pid: int) -> tuple[int, int]:
    """(read, write) system calls made by the process so far (/proc/<pid>/io)."""
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def via(sup: Supervisor, name: str, path: Path, expect: int) -> tuple[float, float, int]:
    """Seconds from the start request to `expect` bytes in `path`, the daemon's CPU seconds,
    and the read system calls it made meanwhile (how finely it consumed the pipe)."""
    os.truncate(path, 0)
    settle()
    reads0 = io_calls(sup.pid)[0]
    cpu0 = task_counters(sup.pid)["cpu_ns"]
    t0 = time.perf_counter()
    sup.start_program(name)
    deadline = t0 + 600
    while True:
        size = os.stat(path).st_size
        if size >= expect:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{sup.name} {name}: {size} of {expect} bytes after 600 s")
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    cpu = (task_counters(sup.pid)["cpu_ns"] - cpu0) / 1e9
    reads = io_calls(sup.pid)[0] - reads0
    key = f"{name}:{name}" if isinstance(sup, Supervisord) else f"{name}:0"

    def exited() -> bool:
        return {r[0]: r[1] for r in sup.processes()}[key] == "exited"

    wait_for(exited, 30, f"{sup.name}: {name} exited", 0.01)
    if os.stat(path).st_size != expect:
        raise RuntimeError(f"{sup.name} {name}: {os.stat(path).st_size} bytes, expected {expect}")
    return elapsed, cpu, reads


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--mb", type=int, default=128, help="MB of 100-byte lines per run")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument(
        "--dir", help="where the writers' output and the logs go (default: the session's temp dir)"
    )
    args = begin(
        p, "log throughput end to end: one instance writing 100-byte lines",
        quick={"mb": 16, "runs": 2},
    )
    size = args.mb * 10**6 // len(LINE) * len(LINE)
    lines = size // len(LINE)
    res = Results("logs_daemon")
    times: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    reads: dict[str, dict[str, list[int]]] = {}
    with Session("logs", args.budget or 300 + args.mb * args.runs * 8) as s:
        # The data (source, outputs, logs) may live elsewhere than the session (sockets, configs).
        data = Path(tempfile.mkdtemp(prefix="psb-logs-", dir=args.dir)) if args.dir else s.root
        if args.dir:
            s.extra_dirs.append(data)
        (data / "supervisord-logs").mkdir()
        ws = writers(s, data, size)
        apps: dict[str, dict[str, object]] = {}
        programs: dict[str, dict[str, object]] = {}
        for w, argv in ws.items():
            apps[w] = {"command": argv, "autorestart": False, "min_uptime": 0}
            apps[f"{w}-dated"] = {**apps[w], "log_date_format": DATE_FORMAT}
            programs[w] = {
                "command": argv,
                "autostart": False,
                "autorestart": False,
                "startsecs": 0,
                "stdout_logfile": str(data / "supervisord-logs" / f"{w}.out.log"),
                "stdout_logfile_maxbytes": 0,
                "stderr_logfile_maxbytes": 0,
            }
        ps = Procsup(s, "procsup", apps, log_dir=data / "procsup-logs")
        sv = Supervisord(s, "supervisord", programs)
        sv_log = {w: Path(str(programs[w]["stdout_logfile"])) for w in ws}
        for sup in (ps, sv):
            sup.launch()
            sup.wait_serving()
        # procsup starts every app at once: let that first round (a warm-up) finish.
        ps.wait_states("exited", len(apps), timeout=600, interval=0.1)
        for w in ws:
            sv.start_program(w)  # the same warm-up for supervisord (creates its log files)
            wait_for(functools.partial(_holds, sv_log[w], size), 300, f"warm-up {w}", 0.05)
        sv.wait_states("exited", len(programs), timeout=60)
        with open(ps.log_path(f"{next(iter(ws))}-dated"), "rb") as f:
            prefix = len(f.readline()) - len(LINE)
        out = data / "direct.out"
        for w, argv in ws.items():
            print(f"   writer {w} ...", flush=True)
            t = times[w] = {"direct": [], "procsup": [], "procsup-dated": [], "supervisord": []}
            c = cpu[w] = {"procsup": [], "procsup-dated": [], "supervisord": []}
            r = reads[w] = {"procsup": [], "procsup-dated": [], "supervisord": []}
            cases = {
                "procsup": (ps, w, ps.log_path(w), size),
                "procsup-dated": (
                    ps,
                    f"{w}-dated",
                    ps.log_path(f"{w}-dated"),
                    lines * (len(LINE) + prefix),
                ),
                "supervisord": (sv, w, sv_log[w], size),
            }
            for _ in range(args.runs):
                t["direct"].append(direct(argv, out))
                os.unlink(out)
                for case, how in cases.items():
                    e, u, n = via(*how)
                    t[case].append(e)
                    c[case].append(u)
                    r[case].append(n)
    mb = size / 1e6
    rows = []
    for w, t in times.items():
        base = mb / min(t["direct"])
        for case, xs in t.items():
            rate = mb / min(xs)
            cpu_gb = f"{median(cpu[w][case]) / (mb / 1000):.2f}" if case in cpu[w] else "-"
            per_read = f"{size / median(reads[w][case]) / 1024:.1f}" if case in reads[w] else "-"
            rows.append(
                [
                    f"{w}: {case}",
                    f"{rate:.1f}",
                    f"{mb / median(xs):.1f}",
                    f"{rate / base:.2f}",
                    cpu_gb,
                    per_read,
                ]
            )
    print(f"files in {args.dir or 'the session directory'} ({fs_type(args.dir or '/tmp')})")
    print(
        f"{mb:.0f} MB of 100-byte lines per run ({lines} lines), best of {args.runs}; "
        f"the date prefix adds {prefix} bytes a line"
    )
    print(
        table(
            [
                "writer: case",
                "MB/s best",
                "MB/s median",
                "of direct",
                "daemon CPU s/GB",
                "KiB per read",
            ],
            rows,
        )
    )
    for w, t in times.items():
        if min(t["direct"]) / min(t["procsup"]) > 1.3 and w == "dd":
            print(
                f"WARNING: {w}: capture beat the direct write by "
                f"{min(t['direct']) / min(t['procsup']):.2f}x: the direct baseline was slowed "
                "down in every run (a disturbed machine); rerun with more --runs"
            )
    for w, t in times.items():
        d = min(t["direct"])
        ps_r = d / min(t["procsup"])
        psd_r = d / min(t["procsup-dated"])
        sv_r = d / min(t["supervisord"])
        res.add(
            f"log throughput {w}, no prefix",
            "x direct",
            ps_r,
            sv_r,
            target=">= 0.90",
            met=ps_r >= 0.9,
        )
        res.add(
            f"log throughput {w}, date prefix",
            "x direct",
            psd_r,
            None,
            target=">= 0.50",
            met=psd_r >= 0.5,
        )
    res.details = {
        "dir": args.dir,
        "fs": fs_type(args.dir or "/tmp"),
        "mb": mb,
        "prefix_bytes": prefix,
        "seconds": times,
        "daemon_cpu_seconds": cpu,
        "daemon_read_calls": reads,
    }
    print()
    print(res.summary())
    res.save(args.json)


if __name__ == "__main__":
    main()
