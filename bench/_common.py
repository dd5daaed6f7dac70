"""Shared machinery of the benchmarks in bench/: options, the session (temporary directory,
clean-up, time budget), statistics, tables, result records, the machine's description.
The supervisors under test are in _subjects.py, process watching in _proc.py.

Every benchmark runs procsupd and supervisord the same way, from the same script, in the same
run, so each procsup figure stands beside the same measure for supervisord and the comparison
holds as a ratio on a noisy machine.

Safety: a `Session` owns a temporary directory and every process started under it. Each such
process carries `PROCSUP_BENCH_RUN=<dir>` in its environment (the supervisors pass it on to
their children), so the final sweep finds and kills everything, including instances whose
daemon died; the sweep runs on normal exit, on an exception, on SIGINT/SIGTERM/SIGHUP and when
the session's time budget is exhausted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol

from _proc import QUIET, proc_stat

REPO = Path(__file__).resolve().parent.parent
#: The virtualenv's bin directory: the console scripts users run (`.venv/bin/procsup`...).
BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(sys.executable).parent
PYTHON = str(BIN / "python") if (BIN / "python").exists() else sys.executable
PROCSUPD = str(BIN / "procsupd")
PROCSUP = str(BIN / "procsup")
SUPERVISORD = str(BIN / "supervisord")
SUPERVISORCTL = str(BIN / "supervisorctl")

MARK = "PROCSUP_BENCH_RUN"


# ---------------------------------------------------------------------------------- options


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark accepts (`./dev bench ARGS` passes ARGS to each of them)."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0],
        epilog=textwrap.dedent("\n".join((doc or "").strip().splitlines()[1:])),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="give up after this many seconds (default: per benchmark)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each timed run, wait up to this long for the machine to be idle (0: no)",
    )
    p.add_argument(
        "--commit",
        metavar="REV",
        help="benchmark procsup/ as of this git revision (extracted to a temp dir) instead of "
        "the working tree",
    )
    return p


#: What is benchmarked: the working tree, or `git archive REV procsup` (see --commit).
SOURCE = {"rev": "", "dir": ""}


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse argv, ignoring (with a warning) options meant for another benchmark, and with
    --commit put that revision of procsup/ first on the import path of this process and of
    every process it starts (the venv's console scripts find it through PYTHONPATH, ahead of
    the editable install)."""
    args, unknown = p.parse_known_args()
    if unknown:
        print(f"{p.prog}: ignoring {' '.join(unknown)}", file=sys.stderr)
    # Run everything as a user's machine would: bytecode cached (an editable install in an
    # environment with PYTHONDONTWRITEBYTECODE=1 would compile procsup on every start) and
    # Python's stdout block-buffered (PYTHONUNBUFFERED=1 turns a buffered writer into one
    # write(2) per line).
    for var in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
        os.environ.pop(var, None)
    QUIET["max_wait"] = args.quiet_wait
    if args.commit:
        rev, src = extract(args.commit)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            x for x in (src, os.environ.get("PYTHONPATH")) if x
        )
        sys.path.insert(0, src)
        SOURCE.update(rev=rev, dir=src)
    else:
        package = str(REPO / "procsup")
        subprocess.run([PYTHON, "-m", "compileall", "-q", package], check=True, env=os.environ)
    return args


def extract(revision: str) -> tuple[str, str]:
    """`git archive REV procsup` unpacked in a temp dir (removed at exit), compiled: the
    revision's short hash and the directory to put first on PYTHONPATH."""
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", revision],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    src = tempfile.mkdtemp(prefix="psb-src-", dir="/tmp")
    atexit.register(shutil.rmtree, src, True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "procsup"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(src, "procsup")], check=True)
    return rev, src


def begin(
    p: argparse.ArgumentParser,
    title: str,
    *,
    quick: dict[str, float] | None = None,
    supervisord: bool = True,
) -> argparse.Namespace:
    """The start of a benchmark against supervisord: `parse`, cap the options named in `quick`
    with --quick (option -> its largest value), check supervisord is installed, print `title`
    (formatted with the options: "status with {instances} instances")."""
    args = parse(p)
    if args.quick:
        for name, cap in (quick or {}).items():
            setattr(args, name, min(getattr(args, name), cap))
    if supervisord:
        require_supervisord()
    header(title.format_map(vars(args)))
    return args


# ---------------------------------------------------------------------------------- statistics


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def pct(xs: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


# ---------------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


class Results:
    """What a benchmark found: summary rows (one measure each, procsup beside supervisord,
    with the issue's target) and free-form details, printed and optionally saved as JSON."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}

    def add(
        self,
        measure: str,
        unit: str,
        procsup: float | None,
        supervisord: float | None,
        *,
        target: str = "",
        met: bool | None = None,
    ) -> None:
        self.rows.append(
            {
                "measure": measure,
                "unit": unit,
                "procsup": procsup,
                "supervisord": supervisord,
                "target": target,
                "met": met,
            }
        )

    def summary(self) -> str:
        return summary_table(self.rows)

    def save(self, path: str | None) -> None:
        if path:
            with open(path, "w") as f:
                json.dump(
                    {"bench": self.bench, "rows": self.rows, "details": self.details}, f, indent=1
                )


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        ["measure", "unit", "procsup", "supervisord", "ratio", "target", "met"],
        [
            [
                r["measure"],
                r["unit"],
                fmt(r["procsup"]),
                fmt(r["supervisord"]),
                ratio(r["procsup"], r["supervisord"]),
                r["target"],
                {True: "yes", False: "NO", None: ""}[r["met"]],
            ]
            for r in rows
        ],
    )


# ---------------------------------------------------------------------------------- the session


class BudgetExceeded(Exception):
    pass


class Daemon(Protocol):
    """What a Session needs of a supervisor under test (`_subjects.Supervisor`) to clean up."""

    name: str
    proc: subprocess.Popen[bytes] | None

    def stop(self, timeout: float = 30) -> float | None: ...


class Session:
    """A temporary directory and every process started under it; see the module docstring."""

    def __init__(self, name: str, budget: float) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"psb-{name}-", dir="/tmp"))  # short: AF_UNIX
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PROCSUP_") and k != "NOTIFY_SOCKET"
        }
        self.env[MARK] = str(self.root)
        self.budget = budget
        self.daemons: list[Daemon] = []
        self.extra_dirs: list[Path] = []  # removed with the session
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Session:
        def stop(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        def alarm(signum: int, frame: FrameType | None) -> None:
            raise BudgetExceeded(f"the benchmark ran out of its {self.budget:g}s budget")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, stop)
        self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, self.budget)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            self.cleanup()
        finally:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def cleanup(self) -> None:
        """Stop the daemons gently (briefly), then SIGKILL whatever carries our mark."""
        for d in self.daemons:
            try:
                d.stop(timeout=10)
            except BaseException as exc:  # cleanup goes on whatever happens
                print(f"cleanup: stopping {d.name}: {exc!r}", file=sys.stderr)
        deadline = time.monotonic() + 10
        while (left := marked_pids(str(self.root))) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        if left:
            print(f"cleanup: processes left behind: {left}", file=sys.stderr)
        for d in self.daemons:
            if d.proc is not None:
                try:
                    d.proc.wait(1)
                except subprocess.TimeoutExpired:
                    pass
        for path in (self.root, *self.extra_dirs):
            shutil.rmtree(path, ignore_errors=True)


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds PROCSUP_BENCH_RUN=<mark>."""
    needle = f"{MARK}={mark}\0".encode()
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env or env.endswith(needle[:-1]):
            st = proc_stat(int(name))
            if st is not None and st[1] != "Z":
                out.append(int(name))
    return out


# ---------------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    info: dict[str, str] = {"nproc": str(os.cpu_count())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory"] = f"{int(f.readline().split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    info["kernel"] = os.uname().release
    info["python"] = sys.version.split()[0]
    if SOURCE["rev"]:
        info["procsup_commit"] = SOURCE["rev"]
    else:
        info["procsup_commit"] = _tree_commit()
    try:
        info["supervisord"] = subprocess.run(
            [SUPERVISORD, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["supervisord"] = "not installed"
    return info


def _tree_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "procsup"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + (" + uncommitted changes in procsup/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def require_supervisord() -> None:
    if not os.access(SUPERVISORD, os.X_OK):
        sys.exit(f"supervisord is not installed in {BIN}: {PYTHON} -m pip install supervisor")


def header(title: str) -> None:
    m = machine()
    print(f"== {title}")
    print("   " + ", ".join(f"{k}: {v}" for k, v in m.items()))
