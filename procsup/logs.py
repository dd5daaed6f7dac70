"""Log files: whole lines -> files; rotation, reopen, tail and follow (layer 2).

This is, with `logfiles` (opening one safely, discarding a rotated one, `tail`), the only
module that opens log files; reading the child pipes into a sink is `pipes`.
It imports only `drops` (the bookkeeping of refused writes) from procsup, and reports back
only through the callbacks it is given.

Threading: everything here runs on the supervisor's one asyncio loop thread. There are no locks;
a line is never split or interleaved mid-line within one file because each chunk of whole lines
reaches the file in a single `LogSink.write` call (one write(2) or writev(2), continued only
after a short write) and nothing else runs on the loop in between. The one exception touches no
state: the last close of a file that rotation removed is done by a worker thread
(`logfiles.discard`), because that close frees the file's blocks, tens of milliseconds for a
big file.

Flow control: writes are synchronous. When the disk is slow the loop is slow, the pipe fills
and the child blocks in write(2); nothing is queued in memory and nothing is dropped. The only
data that can be lost is data the kernel refuses (ENOSPC, EDQUOT, EIO, a failed open...). That
is dropped, not held: holding it means an unbounded queue, and blocking the child instead (not
reading its pipe) would freeze every app that logs as soon as /var/log fills, turning a full
disk into an outage. Dropping is never silent: a sink counts what it drops (`LogSink.health`,
shown by `status`), reports the start of a failure and its end to the daemon log, and writes
one marker line into the file where writing resumed.

Symlink safety: a directory is trusted when it is owned by root or by the daemon's own user and
is neither group- nor world-writable. A log file in any other directory (e.g. a sticky 1777 one,
or Ubuntu's root:syslog 0775 /var/log, where any group member could plant a link) is opened with
O_NOFOLLOW, so a symlink planted there cannot redirect the log (or `tail`) to another file:
the open fails with ELOOP. Symlinked log files in a trusted directory are followed, as
administrators make them on purpose. Only the immediate parent is checked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import stat
import time
from collections.abc import Callable

from procsup import logfiles
from procsup.drops import Ledger, LogHealth
from procsup.logfiles import tail

__all__ = [
    "LogHealth",
    "LogSink",
    "LogSinks",
    "tail",
]

_log = logging.getLogger(__name__)

_NL = b"\n"

#: Write errors after which the open file works again once space is freed: the next chunk
#: simply tries write(2) again. Any other error (EIO, EROFS, ESTALE...) may have broken the fd
#: for good: it is closed and the file reopened on a later write, with backoff.
_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
RETRY_FIRST = 0.1
"""Seconds after a broken fd or a failed open before a write tries to open the file again;
doubled on every failure up to RETRY_MAX, so a dead device costs no open(2) per chunk."""
RETRY_MAX = 30.0

#: report(level, message): a line for the daemon log (a failure, a resume).
Report = Callable[[int, str], None]
Follower = Callable[[bytes], None]


def _date_prefix(fmt: str) -> bytes:
    text = datetime.datetime.now().astimezone().strftime(fmt)
    return text.encode("utf-8", "replace") + b" "


class LogSink:
    """One open log file, shared by every stream that writes to it (out+err of an instance when
    both paths are the same; every instance of an app with merge_logs). Writes whole lines only.

    The file is opened O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC|O_NOCTTY, mode 0o640 (before umask),
    by the constructor, which raises OSError (path in the message) when that fails; later
    failures never raise.

    Refused writes: a chunk the file refuses (write or open failed) is dropped and counted in
    `ledger` (`health`). The first failure of an episode, and each other kind of failure in
    it, is one ERROR line to `report(level, message)`, not one per chunk. After ENOSPC, EDQUOT
    or EFBIG the file stays open and every chunk tries again, so the first write after space
    is freed succeeds; after any other error the fd is closed and a later write reopens the
    file, at most every RETRY_FIRST..RETRY_MAX seconds. Where writing resumes, one marker line
    goes into the file first ("[procsup] N lines (M bytes) dropped since T: cannot write: No
    space left on device", with the date prefix if there is one; a line the failure cut short
    is ended before it) and one WARNING line is reported.

    Rotation (when `max_size` is set and a write takes the file past it): the file is closed,
    `<path>.k` becomes `<path>.k+1` for k = retain-1..1, `<path>` becomes `<path>.1`, files
    beyond `<path>.retain` left from a larger retain are deleted, and a new file is opened.
    `retain = 0` truncates the file instead. Rotation happens between writes, so never inside a
    line; a file may exceed `max_size` by up to one chunk. Files that are not regular (a tty,
    /dev/stdout in a container) are never rotated. A failed rotation is reported and tried
    again after another `max_size` bytes.
    """

    def __init__(
        self,
        path: str,
        *,
        date_format: str | None = None,
        max_size: int | None = None,
        retain: int = 5,
        report: Report | None = None,
        followers: list[Follower] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        if date_format is not None:
            _date_prefix(date_format)  # a bad format fails here, not on every chunk later
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        self.path = path
        self.date_format = date_format
        self.max_size = max_size
        self.retain = retain
        self._report = report if report is not None else _log.log
        self._followers: list[Follower] = followers if followers is not None else []
        self._ledger = ledger if ledger is not None else Ledger()
        self._fd: int | None = None
        self._closed = False
        self._size = 0
        self._rotate_at: int | None = max_size
        self._retry_at = 0.0  # time.monotonic() before which no write tries to open the file
        self._retry_delay = RETRY_FIRST
        self._open(truncate=False)

    # -- public --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def health(self) -> LogHealth | None:
        """What this path refused, or None when it never refused anything."""
        return self._ledger.health(self.path)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def write(self, data: bytes | memoryview, head: bytes = b"") -> None:
        """Append `head + data`: one or more complete lines (a missing final newline is added);
        `head` lets a reader pass a buffered line start without copying the chunk onto it.

        Adds the date prefix to every line (one timestamp per call: the lines of one call
        arrived together), rotates when the file passes `max_size`, then hands the bytes as
        written to the followers of this path. Followers see the chunk even if the disk refused
        it. Writing to a closed sink discards the data (and logs it at debug level).
        """
        if not data:
            data, head = head, b""
            if not data:
                return
        if self._closed:
            _log.debug("write to closed log sink %s dropped (%d bytes)", self.path, len(data))
            return
        if data[-1] != 10:  # b"\n"
            data = bytes(data) + _NL
        parts: tuple[bytes | memoryview, ...]
        if self.date_format is None:
            parts = (head, data) if head else (data,)
        else:
            data = head + data if head else bytes(data)
            # One timestamp per chunk, and no per-line Python loop: a single C-level replace
            # puts the prefix after every newline (one too many after the last, cut off by the
            # view), and writev sends the first line's prefix with it, without more copies.
            prefix = _date_prefix(self.date_format)
            body = data.replace(_NL, _NL + prefix)
            parts = (prefix, memoryview(body)[: len(body) - len(prefix)])
        if self._fd is None and time.monotonic() >= self._retry_at:
            self._open(truncate=False, reporting=True)
        if self._fd is not None and self._ledger.episode is not None:
            self._resume()
        if self._fd is None or self._ledger.episode is not None:
            self._drop(parts)
        else:
            total = sum(len(p) for p in parts)
            if self._rotate_at is not None and self._size + total > self._rotate_at:
                self._write_rotating(b"".join(parts))
            else:
                self._write_parts(parts)
        if self._followers:
            chunk = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
            for follower in tuple(self._followers):
                self._notify(follower, chunk)

    def reopen(self) -> None:
        """Close the file and open `path` again (SIGUSR1 after logrotate moved it away: the
        new file is created). Errors are reported, never raised."""
        if self._closed:
            return
        self._close_fd()
        self._open(truncate=False, reporting=True)

    def close(self) -> None:
        """Close the file for good; later writes are dropped. Idempotent."""
        self._closed = True
        self._close_fd()

    # -- internals -----------------------------------------------------------------------

    def _write_parts(self, parts: tuple[bytes | memoryview, ...]) -> None:
        if self._fd is None:
            self._drop(parts)
            return
        written, exc = self._write_all(self._fd, parts)
        self._size += written
        if exc is not None:
            self._failed("write", exc, parts, written)
        elif self._rotate_at is not None and self._size > self._rotate_at:
            self._rotate()

    def _write_rotating(self, out: bytes) -> None:
        """Write whole lines up to the size limit, rotate, go on with the rest: a file passes
        `max_size` by at most one line, however much one read brought."""
        view = memoryview(out)
        start, end = 0, len(out)
        # A piece refused stops it: the rest is dropped, and anything written later goes after
        # the marker line.
        while start < end and self._fd is not None and self._ledger.episode is None:
            if self._rotate_at is None:  # not a regular file, or rotation was switched off
                self._write_parts((view[start:],))
                return
            room = self._rotate_at - self._size
            if end - start <= room:
                self._write_parts((view[start:],))
                return
            # the last line that ends within the room; if none does, the first line whole
            cut = out.rfind(_NL, start, start + max(room, 0)) + 1
            if cut <= start:
                cut = out.find(_NL, start) + 1 or end
            # Up to the limit; the next round's first line passes it and rotates the file.
            self._write_parts((view[start:cut],))
            start = cut
        if start < end:  # refused, or the file was lost on the way (a failed reopen)
            self._drop((view[start:],))

    @staticmethod
    def _write_all(fd: int, parts: tuple[bytes | memoryview, ...]) -> tuple[int, OSError | None]:
        """Write all of `parts` (one syscall unless the kernel writes short): the bytes
        written, and the error that stopped it short (None when all were written)."""
        total = sum(len(part) for part in parts) if len(parts) > 1 else len(parts[0])
        written = 0
        try:
            written = os.write(fd, parts[0]) if len(parts) == 1 else os.writev(fd, parts)
            if written < total:
                view = memoryview(b"".join(parts))
                while written < total:
                    n = os.write(fd, view[written:])
                    if n == 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += n
        except OSError as exc:
            return written, exc
        return total, None

    def _open(self, *, truncate: bool, reporting: bool = False) -> None:
        """Open the file; with `reporting` errors are reported (an episode), else raised."""
        try:
            fd = logfiles.open_log(self.path, truncate=truncate)
        except OSError as exc:
            if not reporting:
                raise
            self._failed("open", exc)
            return
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        self._fd = fd
        self._size = st.st_size if regular else 0
        self._rotate_at = self.max_size if regular else None

    def configure(self, *, date_format: str | None, max_size: int | None, retain: int) -> None:
        """Change the prefix and rotation settings of the open file (a config apply)."""
        if date_format is not None:
            _date_prefix(date_format)
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        self.date_format, self.retain = date_format, retain
        if max_size != self.max_size:
            self.max_size = max_size
            regular = self._fd is not None and stat.S_ISREG(os.fstat(self._fd).st_mode)
            self._rotate_at = max_size if regular else None

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:  # EIO from delayed write-back: report, the fd is gone anyway
                self._report(logging.ERROR, f"log file {self.path}: cannot close: {exc}")

    def _rotate(self) -> None:
        assert self._fd is not None and self.max_size is not None
        try:
            real = os.fstat(self._fd).st_size
        except OSError:
            real = self._size
        if real <= self.max_size:
            # Someone truncated the file behind our back (copytruncate): trust the file.
            self._size = real
            return
        self._close_fd()
        shifted = True
        if self.retain > 0:
            try:
                self._shift()
            except OSError as exc:
                shifted = False
                self._report(logging.ERROR, f"log file {self.path}: cannot rotate: {exc}")
        self._open(truncate=self.retain == 0, reporting=True)
        if not shifted and self._rotate_at is not None:
            # The file is still the big one: try again after another max_size bytes rather
            # than on every write.
            self._rotate_at = self._size + self.max_size

    def _shift(self) -> None:
        path, retain = self.path, self.retain
        # The oldest goes first, off the loop (`logfiles.discard`): each rename below then has
        # no file to replace, and costs microseconds.
        logfiles.discard(f"{path}.{retain}")
        for k in range(retain - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}.{k}", f"{path}.{k + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, f"{path}.1")
        k = retain + 1  # left over from a larger log_retain
        while os.path.lexists(f"{path}.{k}"):
            logfiles.discard(f"{path}.{k}")
            k += 1

    # -- refused writes ------------------------------------------------------------------

    def _failed(
        self, op: str, exc: OSError, parts: tuple[bytes | memoryview, ...] = (), written: int = 0
    ) -> None:
        """`op` failed: start (or go on with) the episode, drop what was not written, and let
        go of an fd that may be broken."""
        error = f"cannot {op}: {exc.strerror or exc}"
        new = self._ledger.fail(error, time.time())
        if parts:
            out = parts[0] if len(parts) == 1 else b"".join(parts)
            # When the kernel took the start of the chunk, the file may end inside a line.
            cut = out[written - 1] != 10 if written else None
            self._ledger.drop(memoryview(out)[written:], time.time(), cut=cut)
        if op == "open" or exc.errno not in _SPACE_ERRORS:
            self._close_fd()
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        if new:
            self._report(logging.ERROR, f"log file {self.path}: {error}; its lines are dropped "
                                        "(counted in status) until a write works again")

    def _drop(self, parts: tuple[bytes | memoryview, ...]) -> None:
        for part in parts:
            self._ledger.drop(part, time.time())

    def _resume(self) -> None:
        """The file is open again during an episode: write the marker line where the gap is,
        and end the episode if that works."""
        assert self._fd is not None
        prefix = _date_prefix(self.date_format) if self.date_format is not None else b""
        marker = self._ledger.marker(prefix)
        if marker:
            written, exc = self._write_all(self._fd, (marker,))
            self._size += written
            if exc is not None:
                self._failed("write", exc)
                if written:  # part of the marker is in the file: the next one ends it
                    self._ledger.drop(b"", time.time(), cut=marker[written - 1] != 10)
                return
        self._retry_delay = RETRY_FIRST
        self._report(logging.WARNING, self._ledger.resume(self.path))

    def _notify(self, follower: Follower, data: bytes) -> None:
        try:
            follower(data)
        except Exception:
            # A broken follower must not stop the logging; drop it.
            _log.exception("log follower of %s failed; unsubscribed", self.path)
            with contextlib.suppress(ValueError):
                self._followers.remove(follower)


def _key(path: str) -> str:
    """Registry key: absolute, with the directory's symlinks resolved (the file's own name is
    kept, so a symlinked log file is not resolved here)."""
    path = os.path.abspath(path)
    head, name = os.path.split(path)
    return os.path.join(os.path.realpath(head), name)


class LogSinks:
    """Registry of sinks by path, reference-counted.

    Paths are compared after making them absolute and resolving the directory's symlinks.
    The first `acquire` of a path decides its settings (date format, max size, retain); later
    acquirers of the same path share that sink and its settings until the last one releases it
    (a changed app is restarted, so its old instances release before the new ones acquire).

    What a path dropped outlives its sink: the next sink of the path (the app's next run)
    continues the counts and the episode, so a crash-looping app on a full disk has one
    episode, one count and one marker line, not one per run. Only paths that dropped something
    are remembered.
    """

    def __init__(self, report: Report | None = None) -> None:
        self._report = report
        self._sinks: dict[str, LogSink] = {}
        self._refs: dict[str, int] = {}
        self._followers: dict[str, list[Follower]] = {}
        self._ledgers: dict[str, Ledger] = {}  # of paths that dropped something, by key

    def acquire(
        self, path: str, *, date_format: str | None, max_size: int | None, retain: int
    ) -> LogSink:
        """The sink for `path`, opening the file if nobody holds it. Raises OSError (with the
        path in the message) when the file or its directory cannot be created or opened, and
        ValueError for a date format strftime rejects."""
        key = _key(path)
        sink = self._sinks.get(key)
        if sink is not None and sink.closed:  # closed directly instead of released: replace it
            sink = None
        if sink is None:
            followers = self._followers.setdefault(key, [])
            try:
                sink = LogSink(
                    path,
                    date_format=date_format,
                    max_size=max_size,
                    retain=retain,
                    report=self._report,
                    followers=followers,
                    ledger=self._ledgers.get(key),
                )
            except (OSError, ValueError):
                if not followers:
                    del self._followers[key]
                raise
            self._ledgers.pop(key, None)  # the sink has it now
            self._sinks[key] = sink
            self._refs[key] = 0
        elif (date_format, max_size, retain) != (sink.date_format, sink.max_size, sink.retain):
            # A config apply changed how this file is written: the newest settings win, for
            # every stream writing to it (they all come from one app's spec).
            sink.configure(date_format=date_format, max_size=max_size, retain=retain)
        self._refs[key] += 1
        return sink

    def release(self, sink: LogSink) -> None:
        """Drop one reference; the last one closes the file. Releasing a sink this registry
        does not hold (or holds no more) is a no-op."""
        key = next((k for k, s in self._sinks.items() if s is sink), None)
        if key is None:
            return
        self._refs[key] -= 1
        if self._refs[key] > 0:
            return
        del self._sinks[key], self._refs[key]
        sink.close()
        if not sink.ledger.clean:
            self._ledgers[key] = sink.ledger
        if not self._followers.get(key, True):
            del self._followers[key]

    def reopen_all(self) -> None:
        """Reopen every open file (SIGUSR1). Errors are reported, never raised."""
        for sink in tuple(self._sinks.values()):
            sink.reopen()

    def close_all(self) -> None:
        """Close every file and forget every sink (daemon exit)."""
        for sink in tuple(self._sinks.values()):
            sink.close()
        self._sinks.clear()
        self._refs.clear()

    def follow(self, path: str, callback: Follower) -> Callable[[], None]:
        """Call `callback(chunk)` synchronously with every chunk written to `path` from now on
        (prefixed, whole lines), whether or not the path is open yet. The callback must be
        cheap and must not raise (one that raises is dropped). Returns the unsubscribe
        function (idempotent)."""
        key = _key(path)
        followers = self._followers.setdefault(key, [])
        followers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                followers.remove(callback)
            if not followers and key not in self._sinks and self._followers.get(key) is followers:
                del self._followers[key]

        return unsubscribe

    def __contains__(self, path: str) -> bool:
        return _key(path) in self._sinks

    def __len__(self) -> int:
        return len(self._sinks)
