"""procsup.logs with real pipes, real files, a real asyncio loop and real child processes."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from procsup.logs import _SPACE_ERRORS, RETRY_FIRST, LogSink, LogSinks, tail
from procsup.pipes import BIG_READ_SIZE, LINE_MAX, PIPE_SIZE, PipeReader, open_pipe

from ..tinyfs import NOT_ROOT, WHY, fill, tiny_tmpfs

DEADLINE = 10.0  # seconds; every wait in this file is bounded by it
DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f %z"
DATE_RE = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} [+-]\d{4} "


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def _capture(
    argv: list[str],
    out: LogSink | None,
    err: LogSink | None = None,
    *,
    capture_err: bool = False,
) -> int:
    """Run argv with stdout (and stderr when capture_err) through capture pipes into the sinks;
    return the exit code once both the process and the readers are done."""
    loop = asyncio.get_running_loop()
    pipes = [open_pipe()] + ([open_pipe()] if capture_err else [])
    proc = subprocess.Popen(
        argv,
        stdout=pipes[0][1],
        stderr=pipes[1][1] if capture_err else subprocess.DEVNULL,
    )
    eofs: list[asyncio.Future[None]] = []
    for (read_fd, write_fd), sink in zip(pipes, (out, err), strict=False):
        os.close(write_fd)
        eof: asyncio.Future[None] = loop.create_future()
        PipeReader(loop, read_fd, sink, lambda f=eof: f.set_result(None))
        eofs.append(eof)
    try:
        await asyncio.wait_for(asyncio.gather(*eofs), DEADLINE)
        return await asyncio.wait_for(loop.run_in_executor(None, proc.wait), DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _sink(tmp_path: Path, name: str = "app.log", **kw: object) -> tuple[LogSinks, LogSink, Path]:
    sinks = LogSinks()
    path = tmp_path / name
    settings: dict[str, object] = {"date_format": None, "max_size": None, "retain": 5}
    settings.update(kw)
    sink = sinks.acquire(str(path), **settings)  # type: ignore[arg-type]
    return sinks, sink, path


# -- lines from a child ---------------------------------------------------------------------


def test_child_lines_reach_the_file_exactly(tmp_path: Path) -> None:
    # Written in odd-sized unbuffered pieces so that reads end mid-line again and again.
    code = """
import os, sys
data = b"".join(b"line %d %s\\n" % (i, b"x" * (i % 97)) for i in range(3000))
for i in range(0, len(data), 777):
    os.write(1, data[i:i + 777])
"""
    sinks, sink, path = _sink(tmp_path)
    assert asyncio.run(_capture(_py(code), sink)) == 0
    sinks.close_all()
    expected = b"".join(b"line %d %s\n" % (i, b"x" * (i % 97)) for i in range(3000))
    assert path.read_bytes() == expected


def test_partial_last_line_is_flushed_at_exit(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path)
    code = "import os; os.write(1, b'first\\nsecond\\nno newline at the end')"
    assert asyncio.run(_capture(_py(code), sink)) == 0
    assert path.read_bytes() == b"first\nsecond\nno newline at the end\n"
    sinks.close_all()


def test_date_prefix_on_every_line(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path, date_format=DATE_FORMAT)
    code = """
import os, time
for chunk in range(5):
    os.write(1, b"".join(b"msg %d\\n" % (chunk * 100 + i) for i in range(100)))
    time.sleep(0.01)
os.write(1, b"tail without newline")
"""
    assert asyncio.run(_capture(_py(code), sink)) == 0
    sinks.close_all()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == 501
    for i, line in enumerate(lines[:-1]):
        assert re.fullmatch(DATE_RE + rb"msg %d" % i, line), line
    assert re.fullmatch(DATE_RE + rb"tail without newline", lines[-1])


def test_stdout_and_stderr_into_one_file_never_interleave(tmp_path: Path) -> None:
    # Each stream writes big lines in three pieces, alternating streams between pieces, so
    # both readers hold partial lines at the same time.
    code = """
import os
for i in range(60):
    out = b"out %d " % i + b"o" * (20000 + i * 517) + b"\\n"
    err = b"err %d " % i + b"e" * (30000 + i * 311) + b"\\n"
    a, b = len(out) // 3, len(err) // 3
    os.write(1, out[:a]); os.write(2, err[:b])
    os.write(1, out[a:2 * a]); os.write(2, err[b:2 * b])
    os.write(1, out[2 * a:]); os.write(2, err[2 * b:])
"""
    sinks, sink, path = _sink(tmp_path)
    assert asyncio.run(_capture(_py(code), sink, sink, capture_err=True)) == 0
    sinks.close_all()
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    outs = [line for line in lines if line.startswith(b"out ")]
    errs = [line for line in lines if line.startswith(b"err ")]
    assert len(outs) == len(errs) == 60
    assert len(lines) == 120
    for i, line in enumerate(outs):
        assert line == b"out %d " % i + b"o" * (20000 + i * 517)
    for i, line in enumerate(errs):
        assert line == b"err %d " % i + b"e" * (30000 + i * 311)


def test_long_line_without_newline_is_cut_at_line_max(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path)
    size = 3 * LINE_MAX + 1234
    # The pause lets the reader see the unterminated line before its end arrives (a line
    # delivered whole in one read is not cut, however long).
    code = f"import os, time\nfor _ in range({size // 1000}): os.write(1, b'z' * 1000)\n" + (
        f"time.sleep(0.3)\nos.write(1, b'z' * {size % 1000} + b'\\nnext\\n')"
    )
    assert asyncio.run(_capture(_py(code), sink)) == 0
    sinks.close_all()
    lines = path.read_bytes().split(b"\n")
    assert lines[-2:] == [b"next", b""]
    pieces = lines[:-2]
    assert b"".join(pieces) == b"z" * size
    # At least the first pieces are cut at exactly LINE_MAX; no piece exceeds the bound.
    assert len(pieces) >= 3
    assert len(pieces[0]) == LINE_MAX
    assert all(len(p) <= LINE_MAX + BIG_READ_SIZE for p in pieces)


def test_discard_mode_drains_the_pipe(tmp_path: Path) -> None:
    # 5 MiB is more than the pipe holds: without draining, the child would block forever.
    code = "import sys\nfor _ in range(80): sys.stdout.buffer.write(b'd' * 65536)"
    assert asyncio.run(_capture(_py(code), None)) == 0
    assert list(tmp_path.iterdir()) == []


def test_flood_does_not_starve_the_loop(tmp_path: Path) -> None:
    """10 MB flat out: the reader must go back to the loop after every read, so a busy
    call_soon ticker runs between any two chunks written, and a periodic timer is not late."""
    total = 10 * 1000 * 1000  # 10 blocks of 10000 lines of 100 bytes
    code = """
import sys
block = (b"f" * 99 + b"\\n") * 10000
for _ in range(10):
    sys.stdout.buffer.write(block)
"""
    sinks, sink, path = _sink(tmp_path)
    ticks = 0
    ticks_at_write: list[int] = []  # the ticker's count each time a chunk reached the file
    sinks.follow(str(path), lambda _: ticks_at_write.append(ticks))

    async def main() -> tuple[float, int, float]:
        loop = asyncio.get_running_loop()
        lateness = 0.0
        timer_fires = 0
        running = True

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            if running:
                loop.call_soon(tick)

        def timer(due: float) -> None:
            nonlocal lateness, timer_fires
            timer_fires += 1
            lateness = max(lateness, loop.time() - due)
            if running:
                loop.call_at(due + 0.005, timer, due + 0.005)

        loop.call_soon(tick)
        loop.call_at(loop.time() + 0.005, timer, loop.time() + 0.005)
        start = loop.time()
        try:
            assert await _capture(_py(code), sink) == 0
        finally:
            running = False
        return lateness, timer_fires, loop.time() - start

    lateness, timer_fires, elapsed = asyncio.run(main())
    sinks.close_all()
    assert path.stat().st_size == total
    # one chunk per read of at most BIG_READ_SIZE (no date prefix here)
    assert len(ticks_at_write) >= total // BIG_READ_SIZE
    gaps = [b - a for a, b in itertools.pairwise(ticks_at_write)]
    assert min(gaps) >= 1, "two reads ran without the loop serving anything else in between"
    assert timer_fires >= 1
    # Relative to the flood's length, which a loaded machine stretches as much as a pause: a
    # reader that kept the loop for the whole flood makes the timer late by all of it.
    assert lateness < max(0.25, elapsed / 3), \
        f"timer was {lateness:.3f}s late during a {elapsed:.3f}s flood"


def test_reader_close_drains_and_flushes_without_eof_callback(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path)

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = open_pipe()
        calls: list[str] = []
        reader = PipeReader(loop, read_fd, sink, lambda: calls.append("eof"))
        # Written while the loop is not running: only close() can pick it up.
        os.write(write_fd, b"one\ntwo\nthree-partial")
        reader.close()
        reader.close()  # idempotent
        assert reader.closed
        with pytest.raises(BrokenPipeError):
            os.write(write_fd, b"x")  # the read end is closed
        os.close(write_fd)
        await asyncio.sleep(0)
        return calls

    assert asyncio.run(main()) == []
    assert path.read_bytes() == b"one\ntwo\nthree-partial\n"
    sinks.close_all()


def test_eof_callback_runs_once_and_closes_the_fd(tmp_path: Path) -> None:
    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = open_pipe()
        done: asyncio.Future[None] = loop.create_future()
        count = 0

        def on_eof() -> None:
            nonlocal count
            count += 1
            done.set_result(None)

        reader = PipeReader(loop, read_fd, None, on_eof)
        os.write(write_fd, b"ignored\n")
        os.close(write_fd)
        await asyncio.wait_for(done, DEADLINE)
        await asyncio.sleep(0.01)
        reader.close()  # after EOF: a no-op
        return count, reader.closed

    assert asyncio.run(main()) == (1, True)


# -- open_pipe ------------------------------------------------------------------------------


@pytest.mark.nonroot  # the pipe size checked differs for root
def test_open_pipe_flags() -> None:
    read_fd, write_fd = open_pipe()
    try:
        assert not os.get_blocking(read_fd)
        assert os.get_blocking(write_fd)
        assert not os.get_inheritable(read_fd)
        assert not os.get_inheritable(write_fd)
        size = fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ)
        if os.geteuid() == 0:  # root is not bound by pipe-max-size or the user's pipe quota
            assert size == PIPE_SIZE
        else:
            assert size >= 4096
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- sinks: rotation, reopen, registry, errors ------------------------------------------------


def _numbered(i: int) -> bytes:
    line = b"%06d " % i + b"r" * 92 + b"\n"
    assert len(line) == 100
    return line


def test_rotation_keeps_retain_files_of_whole_lines(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path, max_size=5000, retain=3)
    (tmp_path / "app.log.4").write_bytes(b"left over from log_retain = 5\n")
    (tmp_path / "app.log.5").write_bytes(b"left over from log_retain = 5\n")
    for start in range(0, 400, 7):  # chunks of 7 lines: files pass max_size mid-chunk
        sink.write(b"".join(_numbered(i) for i in range(start, min(start + 7, 400))))
    sinks.close_all()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["app.log", "app.log.1", "app.log.2", "app.log.3"]
    contents = [(tmp_path / n).read_bytes() for n in ("app.log.3", "app.log.2", "app.log.1")]
    for data in contents:
        assert 5000 < len(data) <= 5000 + 700  # passed max_size by less than a chunk
        assert len(data) % 100 == 0 and data.endswith(b"\n")
    current = path.read_bytes()
    assert len(current) <= 5000
    # Oldest to newest, the kept files are one contiguous run ending with the last line.
    joined = b"".join(contents) + current
    lines = joined.split(b"\n")[:-1]
    numbers = [int(line[:6]) for line in lines]
    assert numbers == list(range(400 - len(numbers), 400))
    assert all(line == _numbered(n)[:-1] for line, n in zip(lines, numbers, strict=True))


def _deleted_files_held(directory: Path) -> list[str]:
    """Files under `directory` that this process still holds open after they were deleted."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)) and target.endswith(" (deleted)"):
            held.append(target)
    return held


def test_rotation_frees_the_oldest_file_on_a_worker_thread(tmp_path: Path) -> None:
    # Freeing a big file's blocks stalls the caller for tens of ms: the file rotation removes
    # is unlinked while held open, and a worker closes it. A leftover symlink (from a larger
    # retain) is removed, not followed.
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"not a log\n")
    (tmp_path / "app.log.2").symlink_to(target)
    sinks, sink, path = _sink(tmp_path, max_size=1000, retain=1)
    for i in range(60):  # 6000 bytes: five rotations, each removing the previous app.log.1
        sink.write(_numbered(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "elsewhere.txt"]
    assert target.read_bytes() == b"not a log\n"
    assert any(t.name.startswith("procsup-log-discard") for t in threading.enumerate())
    deadline = time.monotonic() + 10
    while _deleted_files_held(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker closes them in its own time
    assert _deleted_files_held(tmp_path) == []
    sinks.close_all()
    data = (tmp_path / "app.log.1").read_bytes() + path.read_bytes()
    assert data.endswith(_numbered(59)) and len(data) % 100 == 0


def test_rotation_with_retain_zero_truncates(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path, max_size=1000, retain=0)
    for i in range(35):
        sink.write(_numbered(i))
    sinks.close_all()
    assert [p.name for p in tmp_path.iterdir()] == ["app.log"]
    data = path.read_bytes()
    # 1100 bytes (11 lines) pass 1000: lines 0-10, 11-21, 22-32 were rotated away.
    assert data == _numbered(33) + _numbered(34)


def test_rotation_from_a_child_with_prefix(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path, date_format=DATE_FORMAT, max_size=20_000, retain=2)
    # 1 MB once prefixed: whatever the read sizes, that is several rotations.
    code = "import os\nfor i in range(20000): os.write(1, b'child line %05d\\n' % i)"
    assert asyncio.run(_capture(_py(code), sink)) == 0
    sinks.close_all()
    kept = [tmp_path / "app.log.2", tmp_path / "app.log.1", path]
    assert not (tmp_path / "app.log.3").exists()
    lines = b"".join(p.read_bytes() for p in kept).split(b"\n")
    assert lines.pop() == b""
    numbers = []
    for line in lines:
        match = re.fullmatch(DATE_RE + rb"child line (\d{5})", line)
        assert match, line
        numbers.append(int(match.group(1)))
    assert numbers == list(range(20000 - len(numbers), 20000))


def test_rotation_trusts_the_file_after_copytruncate(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path, max_size=1000, retain=2)
    for i in range(9):
        sink.write(_numbered(i))
    os.truncate(path, 0)  # what logrotate's copytruncate does
    sink.write(_numbered(9))
    sink.write(_numbered(10))
    sink.write(_numbered(11))
    sinks.close_all()
    assert not (tmp_path / "app.log.1").exists()
    assert path.read_bytes() == _numbered(9) + _numbered(10) + _numbered(11)


def test_reopen_after_rename_writes_a_fresh_file(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path)
    sink.write(b"before rotate\n")
    moved = tmp_path / "app.log.old"
    os.rename(path, moved)
    sink.write(b"still to the moved file\n")
    sinks.reopen_all()
    sink.write(b"after reopen\n")
    sinks.close_all()
    assert moved.read_bytes() == b"before rotate\nstill to the moved file\n"
    assert path.read_bytes() == b"after reopen\n"
    assert stat.S_IMODE(path.stat().st_mode) & 0o137 == 0  # 0o640 before umask


def test_registry_shares_and_refcounts_sinks(tmp_path: Path) -> None:
    sinks = LogSinks()
    path = tmp_path / "logs" / "shared.log"
    a = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    b = sinks.acquire(
        str(tmp_path / "logs" / "." / "shared.log"), date_format=None, max_size=10_000, retain=1
    )
    assert a is b  # same file, same sink
    assert b.max_size == 10_000 and b.retain == 1  # the newest settings win
    assert str(path) in sinks and len(sinks) == 1
    sinks.release(a)
    assert not a.closed
    a.write(b"still open\n")
    sinks.release(b)
    assert a.closed
    a.write(b"dropped\n")  # a closed sink drops silently
    sinks.release(b)  # releasing again is a no-op
    c = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    assert c is not a
    c.write(b"new sink\n")
    sinks.close_all()
    assert c.closed and len(sinks) == 0
    assert path.read_bytes() == b"still open\nnew sink\n"


def test_followers_get_prefixed_chunks(tmp_path: Path) -> None:
    sinks = LogSinks()
    path = str(tmp_path / "f.log")
    seen: list[bytes] = []
    unsubscribe = sinks.follow(path, seen.append)  # before the file is open
    sink = sinks.acquire(path, date_format=DATE_FORMAT, max_size=None, retain=5)
    sink.write(b"a\nb\n")

    def broken(_: bytes) -> None:
        raise RuntimeError("follower bug")

    sinks.follow(path, broken)
    sink.write(b"c\n")  # the broken follower is dropped, the others keep receiving
    sink.write(b"d\n")
    unsubscribe()
    unsubscribe()
    sink.write(b"e\n")
    sinks.close_all()
    assert len(seen) == 3
    assert re.fullmatch(DATE_RE + b"a\n" + DATE_RE + b"b\n", seen[0])
    assert re.fullmatch(DATE_RE + b"c\n", seen[1])
    assert b"".join(seen) == Path(path).read_bytes()[: sum(map(len, seen))]


def test_acquire_creates_the_directory(tmp_path: Path) -> None:
    sinks = LogSinks()
    path = tmp_path / "a" / "b" / "c.log"
    sink = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    sink.write(b"x\n")
    sinks.close_all()
    assert path.read_bytes() == b"x\n"
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) & 0o022 == 0


def test_acquire_error_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    sinks = LogSinks()
    path = str(tmp_path / "file" / "app.log")
    with pytest.raises(OSError) as info:
        sinks.acquire(path, date_format=None, max_size=None, retain=5)
    assert path in str(info.value) or str(tmp_path / "file") in str(info.value)
    assert len(sinks) == 0
    with pytest.raises(ValueError):
        sinks.acquire(str(tmp_path / "x.log"), date_format="\ud800", max_size=None, retain=5)


def _reporter() -> tuple[list[tuple[int, str]], Callable[[int, str], None]]:
    reports: list[tuple[int, str]] = []
    return reports, lambda level, message: reports.append((level, message))


def _write_until(sink: LogSink, line: bytes, path: Path) -> None:
    """Write `line` again and again until the file has it: a sink retries a lost file with
    backoff, on a write, so a test writes until then (bounded by DEADLINE)."""
    deadline = time.monotonic() + DEADLINE
    while not (path.exists() and line in path.read_bytes()):
        assert time.monotonic() < deadline, f"{line!r} never reached {path}"
        sink.write(line)
        time.sleep(0.01)


_MARKER = re.compile(rb"\[procsup\] (\d+) lines \((\d+) bytes\) dropped since \S+: (.*)\n")


def test_write_and_reopen_errors_are_reported_and_heal(tmp_path: Path) -> None:
    reports, report = _reporter()
    sinks = LogSinks(report=report)
    path = tmp_path / "dir" / "app.log"
    sink = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    sink.write(b"one\n")
    os.rename(tmp_path / "dir", tmp_path / "moved")
    (tmp_path / "dir").write_bytes(b"a file where the directory was\n")
    sinks.reopen_all()  # cannot recreate: reported, not raised
    sink.write(b"lost\n")
    sink.write(b"lost too\n")
    health = sink.health
    assert health is not None and health.error is not None and health.since is not None
    assert health.error.startswith("cannot open: ")
    assert health.dropped_lines == 2 and health.dropped_bytes == 14
    assert [level for level, _ in reports] == [logging.ERROR]  # once, with the path
    assert str(path) in reports[0][1]
    os.unlink(tmp_path / "dir")
    _write_until(sink, b"healed\n", path)  # a write after the backoff reopens
    health = sink.health
    assert health is not None and health.error is None and health.since is None
    sinks.close_all()
    marker = _MARKER.fullmatch(path.read_bytes().split(b"\n", 1)[0] + b"\n")
    assert marker is not None, path.read_bytes()
    assert int(marker[1]) == health.dropped_lines  # the marker's count is status's count
    assert path.read_bytes().endswith(b" dropped since " + marker.group(0).split(b" since ")[1]
                                      + b"healed\n")
    assert [level for level, _ in reports] == [logging.ERROR, logging.WARNING]
    assert reports[1][1].startswith(f"logging to {path} resumed; {marker[1].decode()} lines")
    assert (tmp_path / "moved" / "app.log").read_bytes() == b"one\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_reported_once_per_episode_and_counted() -> None:
    reports, report = _reporter()
    sinks = LogSinks(report=report)
    sink = sinks.acquire("/dev/full", date_format=None, max_size=10, retain=1)
    for line in (b"x\n", b"y\n", b"two\nlines\n"):
        sink.write(line)
    assert sink.health is not None
    assert (sink.health.error, sink.health.dropped_lines, sink.health.dropped_bytes) == (
        "cannot write: No space left on device", 4, 14)
    assert len(reports) == 1 and reports[0][0] == logging.ERROR
    assert "/dev/full: cannot write: No space left on device" in reports[0][1]
    sinks.close_all()


@pytest.mark.root
@pytest.mark.skipif(NOT_ROOT, reason=WHY)
@pytest.mark.parametrize("date_format", [None, DATE_FORMAT])
def test_a_full_filesystem_drops_counts_and_resumes(tmp_path: Path,
                                                    date_format: str | None) -> None:
    reports, report = _reporter()
    with tiny_tmpfs(tmp_path / "fs", "64k") as fs:
        sinks = LogSinks(report=report)
        path = fs / "app.log"
        sink = sinks.acquire(str(path), date_format=date_format, max_size=None, retain=5)
        line = b"line %05d " + b"x" * 90 + b"\n"  # 101 bytes: a page boundary cuts one
        filler = fill(fs)
        # The last page of app.log still has room: lines fit until it is full.
        first_lost = next((i for i in range(1000) if (sink.write(line % i), sink.health)[1]),
                          None)
        assert first_lost is not None, "the full filesystem took every line"
        for i in range(first_lost + 1, first_lost + 50):
            sink.write(line % i)
        health = sink.health
        assert health is not None and health.error == "cannot write: No space left on device"
        assert health.dropped_lines == 50
        assert [level for level, _ in reports] == [logging.ERROR]  # not one per write
        filler.unlink()
        sink.write(line % 50_000)  # space is back: the very next write works
        health = sink.health
        assert health is not None and health.error is None and health.dropped_lines == 50
        assert [level for level, _ in reports] == [logging.ERROR, logging.WARNING]
        assert "resumed; 50 lines" in reports[1][1]
        data = path.read_bytes()
        sinks.close_all()
    prefix = DATE_RE if date_format else b""
    lines = data.split(b"\n")
    assert lines.pop() == b""
    assert lines[-1] == (re.search(prefix, lines[-1])[0] if prefix else b"") + line[:-1] % 50_000
    marker = lines[-2]
    assert re.fullmatch(prefix + rb"\[procsup\] 50 lines \(\d+ bytes\) dropped since \S+: "
                        rb"cannot write: No space left on device", marker), marker
    # Before it: every line up to the first lost one, whole; the lost one maybe cut short
    # (and ended by the marker's newline), never a line after it.
    kept = [re.sub(b"^" + prefix, b"", ln) for ln in lines[:-2]]
    assert kept[:first_lost] == [line[:-1] % i for i in range(first_lost)]
    assert len(kept) in (first_lost, first_lost + 1)
    if len(kept) > first_lost:
        assert (line[:-1] % first_lost).startswith(kept[-1]) and kept[-1] != line[:-1] % first_lost


@pytest.mark.root
@pytest.mark.skipif(NOT_ROOT, reason=WHY)
def test_a_rotation_that_cannot_create_its_new_file_counts_the_rest(tmp_path: Path) -> None:
    reports, report = _reporter()
    with tiny_tmpfs(tmp_path / "fs", "1m", inodes=2) as fs:  # its root and one file
        sinks = LogSinks(report=report)
        path = fs / "app.log"
        # Room for the marker and a short line after the rotation, not for the three lines.
        sink = sinks.acquire(str(path), date_format=None, max_size=150, retain=1)
        a, b, c = (ch * 99 + b"\n" for ch in (b"a", b"b", b"c"))
        sink.write(a + b + c)  # rotates after b; the new app.log needs a second inode
        health = sink.health
        assert health is not None and health.error == "cannot open: No space left on device"
        assert (health.dropped_lines, health.dropped_bytes) == (1, 100)  # c, not silently
        assert (fs / "app.log.1").read_bytes() == a + b
        (fs / "app.log.1").unlink()  # an inode is free again
        _write_until(sink, b"d\n", path)
        health = sink.health
        assert health is not None and health.error is None
        data = path.read_bytes()
        sinks.close_all()
    marker = _MARKER.match(data)
    assert marker is not None and int(marker[1]) == health.dropped_lines
    assert marker[3] == b"cannot open: No space left on device"
    assert data[marker.end():] == b"d\n"
    assert [level for level, _ in reports] == [logging.ERROR, logging.WARNING]


def test_eio_closes_the_file_and_reopens_it_with_backoff(tmp_path: Path) -> None:
    # A hung-up terminal: write(2) on it fails with EIO for good, as on a failing device, and
    # its name goes away, so only a reopen of the path (now a regular file) can heal it.
    master, slave = os.openpty()
    tty = os.ttyname(slave)
    os.close(slave)
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    path = private / "app.log"
    path.symlink_to(tty)
    reports, report = _reporter()
    sinks = LogSinks(report=report)
    sink = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    try:
        sink.write(b"to the terminal\n")
    finally:
        os.close(master)  # the hangup
    failed_at = time.monotonic()
    sink.write(b"eio\n")
    assert sink.health is not None
    assert sink.health.error == "cannot write: Input/output error"
    path.unlink()  # the path can be opened again (a regular file is created)
    sink.write(b"early\n")
    if time.monotonic() - failed_at < RETRY_FIRST:  # not if this test was slowed that much
        assert not path.exists(), "reopened without waiting for the backoff"
    _write_until(sink, b"after\n", path)
    health = sink.health
    assert health is not None and health.error is None and health.dropped_lines >= 2
    sinks.close_all()
    first, rest = path.read_bytes().split(b"\n", 1)
    marker = _MARKER.fullmatch(first + b"\n")
    assert marker is not None and int(marker[1]) == health.dropped_lines
    assert marker[3] == b"cannot write: Input/output error"
    assert rest == b"after\n"
    levels = [level for level, _ in reports]
    assert levels[0] == logging.ERROR and levels[-1] == logging.WARNING
    assert len(levels) <= 3  # the EIO, maybe one failed reopen, the resume
    assert "Input/output error" in reports[0][1]


def test_a_path_keeps_its_drops_and_episode_across_sinks(tmp_path: Path) -> None:
    # An app that restarts while its disk refuses writes: its next run's sink continues the
    # count and the episode, and one marker covers the whole gap.
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    path = private / "app.log"
    path.symlink_to("/dev/full")
    reports, report = _reporter()
    sinks = LogSinks(report=report)
    first = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    first.write(b"a\nb\n")
    sinks.release(first)
    path.unlink()  # the next run gets a regular file
    second = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    health = second.health
    assert health is not None and health.error == "cannot write: No space left on device"
    assert health.dropped_lines == 2
    second.write(b"c\n")
    sinks.release(second)
    marker = _MARKER.match(path.read_bytes())
    assert marker is not None and marker[1] == b"2" and path.read_bytes().endswith(b"\nc\n")
    assert [level for level, _ in reports] == [logging.ERROR, logging.WARNING]
    third = sinks.acquire(str(path), date_format=None, max_size=None, retain=5)
    assert third.health is not None and third.health.dropped_lines == 2  # the total stays
    assert third.health.error is None
    sinks.close_all()


@pytest.mark.parametrize(
    ("error", "keeps_fd"),
    [(errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EFBIG, True), (errno.EIO, False),
     (errno.EROFS, False), (errno.ESTALE, False)],
)
def test_which_write_errors_keep_the_file_open(error: int, keeps_fd: bool) -> None:
    # Space errors heal in place (the next write may work); others may have broken the fd.
    assert (error in _SPACE_ERRORS) is keeps_fd


# -- symlink safety ---------------------------------------------------------------------------


def test_symlink_refused_in_a_world_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch\n")
    planted = shared / "app.log"
    planted.symlink_to(target)
    sinks = LogSinks()
    with pytest.raises(OSError) as info:
        sinks.acquire(str(planted), date_format=None, max_size=None, retain=5)
    assert info.value.errno == errno.ELOOP
    assert str(planted) in str(info.value)
    with pytest.raises(OSError):
        tail(str(planted), 5)  # tail must not read through the planted link either
    assert target.read_bytes() == b"do not touch\n"
    # In a directory only we can write, a symlinked log file is followed on purpose.
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    (private / "app.log").symlink_to(target)
    sink = sinks.acquire(str(private / "app.log"), date_format=None, max_size=None, retain=5)
    sink.write(b"appended\n")
    sinks.close_all()
    assert target.read_bytes() == b"do not touch\nappended\n"
    assert tail(str(private / "app.log"), 1) == [b"appended"]


# -- tail -------------------------------------------------------------------------------------


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_tail_small_file(tmp_path: Path, trailing_newline: bool) -> None:
    path = tmp_path / "t.log"
    path.write_bytes(b"a\nb\n\nc" + (b"\n" if trailing_newline else b""))
    assert tail(str(path), 2) == [b"", b"c"]
    assert tail(str(path), 3) == [b"b", b"", b"c"]
    assert tail(str(path), 100) == [b"a", b"b", b"", b"c"]
    assert tail(str(path), 0) == []


def test_tail_edge_files(tmp_path: Path) -> None:
    assert tail(str(tmp_path / "missing.log"), 5) == []
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert tail(str(empty), 5) == []
    newline = tmp_path / "newline.log"
    newline.write_bytes(b"\n")
    assert tail(str(newline), 5) == [b""]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_tail_across_blocks(tmp_path: Path, trailing_newline: bool) -> None:
    path = tmp_path / "big.log"
    lines = [b"%07d " % i + b"b" * (i % 300) for i in range(20000)]  # ~3 MB
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))
    assert tail(str(path), 1) == lines[-1:]
    assert tail(str(path), 1500) == lines[-1500:]  # several 64 KiB blocks back
    assert tail(str(path), 25000) == lines


def _bytes_read_by_this_thread() -> int:
    with open("/proc/thread-self/io", "rb") as f:
        fields = dict(line.split(b": ") for line in f.read().splitlines())
    return int(fields[b"rchar"])  # counts every read(2)/pread(2) byte, page cache or not


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/io"), reason="needs /proc io stats")
def test_tail_reads_only_the_end_of_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.log"
    with open(path, "wb") as f:
        f.truncate(1024**3)  # sparse 1 GiB: cheap to make, plain to see if read whole
        f.seek(0, os.SEEK_END)
        f.write(b"before\nlast line\n")
    before = _bytes_read_by_this_thread()
    assert tail(str(path), 1, max_bytes=1 << 40) == [b"last line"]
    read = _bytes_read_by_this_thread() - before
    assert read <= 2 * 64 * 1024, f"tail read {read} bytes for one line"
    # The line before is 1 GiB of zeros and "before": past max_bytes, its end comes back, cut.
    zeros = 1000 - len(b"before\nlast line\n")
    assert tail(str(path), 3, max_bytes=1000) == [b"\0" * zeros + b"before", b"last line"]


def test_tail_of_a_sink_being_written(tmp_path: Path) -> None:
    sinks, sink, path = _sink(tmp_path)
    for i in range(100):
        sink.write(_numbered(i))
    assert tail(str(path), 2) == [_numbered(98)[:-1], _numbered(99)[:-1]]
    sinks.close_all()


def test_one_big_write_rotates_at_line_boundaries(tmp_path: Path) -> None:
    """A single write far larger than log_max_size (one 1 MiB read) is spread over the
    rotated files: each passes the size by at most one line, no line is split, none lost."""
    path = tmp_path / "big.log"
    sink = LogSink(str(path), max_size=10_000, retain=200)
    lines = [b"line %06d " % i + b"x" * 80 for i in range(12_000)]
    sink.write(b"\n".join(lines) + b"\n")
    sink.close()
    files = [path] + [Path(f"{path}.{i}") for i in range(1, 201) if Path(f"{path}.{i}").exists()]
    assert len(files) > 100
    longest = max(len(line) for line in lines) + 1
    for f in files:
        assert f.stat().st_size <= 10_000 + longest, f
    written = b"".join(f.read_bytes() for f in reversed(files)).split(b"\n")
    assert written.pop() == b""
    assert written == lines  # oldest file first: every line, whole, in order
