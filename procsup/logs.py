"""Log files: whole lines -> files; rotation, reopen, tail and follow (layer 2).

This is the only module that opens log files; reading the child pipes into a sink is `pipes`.
It imports nothing else from procsup and reports back only through the callbacks it is given.

Threading: everything here runs on the supervisor's one asyncio loop thread. There are no locks;
a line is never split or interleaved mid-line within one file because each chunk of whole lines
reaches the file in a single `LogSink.write` call (one write(2) or writev(2), continued only
after a short write) and nothing else runs on the loop in between.

Flow control: writes are synchronous. When the disk is slow the loop is slow, the pipe fills
and the child blocks in write(2); nothing is queued in memory and nothing is dropped. The only
data that can be lost is data the kernel refuses (ENOSPC, EIO...): that is reported through
`on_error` and the chunk is discarded, because holding it would mean an unbounded queue.

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
from collections.abc import Callable

__all__ = [
    "LogSink",
    "LogSinks",
    "tail",
]

_log = logging.getLogger(__name__)

_TAIL_BLOCK = 64 * 1024
_TAIL_MAX_BYTES = 16 * 1024 * 1024
_NL = b"\n"
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_FILE_MODE = 0o640
_DIR_MODE = 0o755

ErrorCallback = Callable[[str, OSError], None]
Follower = Callable[[bytes], None]


def _log_error(path: str, exc: OSError) -> None:
    _log.error("log file %s: %s", path, exc)


def _parent_is_shared(path: str) -> bool:
    """True when someone other than the parent directory's owner may create entries in it, or
    the owner is neither root nor us: then a symlink at `path` may have been planted."""
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError:
        return True  # cannot tell: be safe; the open will report the real problem
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    return st.st_uid not in (0, os.geteuid())


def _open_log(path: str, *, truncate: bool = False) -> int:
    """Open `path` for appending (creating it and its parent directory), safely. Raises OSError
    with the path in the message."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=_DIR_MODE, exist_ok=True)
    flags = _OPEN_FLAGS | (os.O_TRUNC if truncate else 0)
    nofollow = _parent_is_shared(path)
    if nofollow:
        flags |= os.O_NOFOLLOW
    try:
        return os.open(path, flags, _FILE_MODE)
    except OSError as exc:
        if nofollow and exc.errno == errno.ELOOP:
            raise OSError(
                exc.errno,
                "refusing to follow a symlink in a directory others can write",
                path,
            ) from exc
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise


def _date_prefix(fmt: str) -> bytes:
    text = datetime.datetime.now().astimezone().strftime(fmt)
    return text.encode("utf-8", "replace") + b" "


class LogSink:
    """One open log file, shared by every stream that writes to it (out+err of an instance when
    both paths are the same; every instance of an app with merge_logs). Writes whole lines only.

    The file is opened O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, mode 0o640 (before umask), by the
    constructor, which raises OSError (path in the message) when that fails; later failures
    (write, reopen, rotation) never raise: they go to `on_error(path, exc)`, once per kind of
    failure until something succeeds again. When the file could not be reopened, the next write
    tries again, so the sink heals itself once the cause is fixed; the chunks in between are lost.

    Rotation (when `max_size` is set and a write takes the file past it): the file is closed,
    `<path>.k` becomes `<path>.k+1` for k = retain-1..1, `<path>` becomes `<path>.1`, files
    beyond `<path>.retain` left from a larger retain are deleted, and a new file is opened.
    `retain = 0` truncates the file instead. Rotation happens between writes, so never inside a
    line; a file may exceed `max_size` by up to one chunk. Files that are not regular (a tty,
    /dev/stdout in a container) are never rotated.
    """

    def __init__(
        self,
        path: str,
        *,
        date_format: str | None = None,
        max_size: int | None = None,
        retain: int = 5,
        on_error: ErrorCallback | None = None,
        followers: list[Follower] | None = None,
    ) -> None:
        if date_format is not None:
            _date_prefix(date_format)  # a bad format fails here, not on every chunk later
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        self.path = path
        self.date_format = date_format
        self.max_size = max_size
        self.retain = retain
        self._on_error = on_error if on_error is not None else _log_error
        self._followers: list[Follower] = followers if followers is not None else []
        self._fd: int | None = None
        self._closed = False
        self._size = 0
        self._rotate_at: int | None = max_size
        self._last_error: tuple[str, int | None] | None = None
        self._open(truncate=False)

    # -- public --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

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
        if self._fd is None:
            self._open(truncate=False, reporting=True)
        if self._fd is not None:
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
        new file is created). Errors go to `on_error`."""
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
            return
        try:
            written = self._write_all(self._fd, parts)
        except OSError as exc:
            self._report("write", exc)
        else:
            self._last_error = None
            self._size += written
            if self._rotate_at is not None and self._size > self._rotate_at:
                self._rotate()

    def _write_rotating(self, out: bytes) -> None:
        """Write whole lines up to the size limit, rotate, go on with the rest: a file passes
        `max_size` by at most one line, however much one read brought."""
        view = memoryview(out)
        start, end = 0, len(out)
        while start < end and self._fd is not None:
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

    @staticmethod
    def _write_all(fd: int, parts: tuple[bytes | memoryview, ...]) -> int:
        """Write all of `parts` (one syscall unless the kernel writes short); return the size."""
        written = os.write(fd, parts[0]) if len(parts) == 1 else os.writev(fd, parts)
        total = sum(len(part) for part in parts) if len(parts) > 1 else len(parts[0])
        if written < total:
            view = memoryview(b"".join(parts))
            while written < total:
                n = os.write(fd, view[written:])
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
        return total

    def _open(self, *, truncate: bool, reporting: bool = False) -> None:
        """Open the file; with `reporting` errors go to on_error, else they raise."""
        try:
            fd = _open_log(self.path, truncate=truncate)
        except OSError as exc:
            if not reporting:
                raise
            self._report("open", exc)
            return
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        self._fd = fd
        self._size = st.st_size if regular else 0
        self._rotate_at = self.max_size if regular else None
        self._last_error = None

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
                self._report("close", exc)

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
                self._report("rotate", exc)
        self._open(truncate=self.retain == 0, reporting=True)
        if not shifted and self._rotate_at is not None:
            # The file is still the big one: try again after another max_size bytes rather
            # than on every write.
            self._rotate_at = self._size + self.max_size

    def _shift(self) -> None:
        path, retain = self.path, self.retain
        for k in range(retain - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}.{k}", f"{path}.{k + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, f"{path}.1")
        k = retain + 1  # left over from a larger log_retain
        while True:
            try:
                os.unlink(f"{path}.{k}")
            except FileNotFoundError:
                break
            k += 1

    def _report(self, op: str, exc: OSError) -> None:
        key = (op, exc.errno)
        if key == self._last_error:
            return
        self._last_error = key
        try:
            self._on_error(self.path, exc)
        except Exception:
            _log.exception("log error callback failed for %s", self.path)

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
    """

    def __init__(self, on_error: ErrorCallback | None = None) -> None:
        self._on_error = on_error
        self._sinks: dict[str, LogSink] = {}
        self._refs: dict[str, int] = {}
        self._followers: dict[str, list[Follower]] = {}

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
                    on_error=self._on_error,
                    followers=followers,
                )
            except (OSError, ValueError):
                if not followers:
                    del self._followers[key]
                raise
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
        if not self._followers.get(key, True):
            del self._followers[key]

    def reopen_all(self) -> None:
        """Reopen every open file (SIGUSR1). Errors go to `on_error`, never raise."""
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


def tail(path: str, n: int, *, max_bytes: int = _TAIL_MAX_BYTES) -> list[bytes]:
    """The last `n` lines of the file at `path`, without their newlines, oldest first.

    Reads backwards in 64 KiB blocks and stops as soon as it has `n` lines, so a large file is
    not read whole; it also stops after `max_bytes`, in which case the first line returned may
    be the end of a longer line. A missing file gives []. Returns bytes: log lines are whatever
    the app wrote, decode with errors="replace". Opens the file like a sink does (no symlink
    following in a directory others can write) and reads only this file, not `<path>.1`.
    """
    if n <= 0:
        return []
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # non-blocking: never hang on a fifo
    if _parent_is_shared(path):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        pos = st.st_size
        blocks: list[bytes] = []
        newlines = 0
        total = 0
        trailing: bool | None = None
        while pos > 0 and total < max_bytes:
            size = min(_TAIL_BLOCK, pos, max_bytes - total)
            pos -= size
            block = os.pread(fd, size, pos)
            if not block:  # the file shrank under us
                break
            if trailing is None:
                trailing = block.endswith(_NL)
            blocks.append(block)
            total += len(block)
            newlines += block.count(_NL)
            # n full lines are certain once n newlines precede the last line's end.
            if newlines - (1 if trailing else 0) >= n:
                break
    finally:
        os.close(fd)
    data = b"".join(reversed(blocks))
    if data.endswith(_NL):
        data = data[:-1]
    elif not data:
        return []
    return data.split(_NL)[-n:]
