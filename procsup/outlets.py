"""Outlets: log destinations that many streams share and that may refuse a write for now
(layer 2 leaf, beside `pipes` and `drops`): procsupd's own stdout and stderr (`StdioOutlet`, the
`"-"` log target) and the base the journal's socket builds on (`Outlet`).

A log file is written synchronously (`logs`): a disk is slow, not stalled. A pipe to
`docker logs`, a terminal, or journald can stall for as long as their reader pleases, and the
daemon's loop must not wait for them. So an outlet writes without blocking: what the other
end does not take now is queued, in order, and once the queue passes HIGH bytes the outlet's
`pipes.Valve` shuts: every pipe reader writing into it stops reading, its child blocks in
write(2) on its full capture pipe, exactly as when a file is slow. When the queue is back
under LOW the valve opens. Nothing is dropped for being slow; the queue holds at most HIGH
plus what the readers had in hand (one read each, and the drain of a run that ends).

What is dropped is what the other end refuses for good (EPIPE: nobody reads procsupd's stdout
any more; the journal's socket gone): counted in a `drops.Ledger` (shown by `status` as the
stream's log error), reported once per kind of failure and once when writing works again. At
exit (`close`) the queue is flushed for at most FLUSH_TIMEOUT seconds; what is left then is
reported as dropped.

Lines never mix: each outlet is one queue, and every item put into it is whole lines (or one
journal entry), written in order; procsupd's stdout and stderr share one outlet when they are
the same file (`2>&1`). Where the other end is a pipe, the bytes are written in pieces of whole
lines of at most PIPE_BUF (4096) bytes, which the kernel writes atomically: a line shorter than
that cannot be cut by another writer of the same pipe (procsupd's own log on stderr, another
process). Everything runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Mapping

from procsup.drops import Ledger, LogHealth
from procsup.pipes import Valve

__all__ = ["FLUSH_TIMEOUT", "HIGH", "LOW", "Outlet", "StdioOutlet", "stdio_key", "stdio_place"]

_log = logging.getLogger(__name__)

HIGH = 1024 * 1024
"""Queued bytes above which an outlet's valve shuts (its readers stop reading)."""
LOW = 256 * 1024
"""Queued bytes below which a shut valve opens again."""
FLUSH_TIMEOUT = 5.0
"""Seconds `close` (daemon exit) waits for a stalled other end to take the queue."""

_NL = b"\n"

#: report(level, message): a line for the daemon log.
Report = Callable[[int, str], None]


class Outlet:
    """A non-blocking destination shared by many streams. Subclasses say how one item is sent
    (`_send`: the bytes taken, or BlockingIOError / OSError) and which fd to wait on."""

    #: Each item is one line, whatever newlines it holds (a journal entry's fields).
    item_is_line = False

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, fd: int,
                 report: Report | None = None) -> None:
        self.loop = loop
        self.name = name  # "stdout", "the journal": for the daemon log and status
        self.valve = Valve()
        self._fd = fd
        self._report = report if report is not None else _log.log
        self._queue: collections.deque[memoryview] = collections.deque()
        self._queued = 0
        self._watching = False
        self._closed = False
        self._ledger = Ledger()

    # -- public --------------------------------------------------------------------------

    @property
    def health(self) -> LogHealth | None:
        """What this outlet refused, or None when it never refused anything."""
        return self._ledger.health(self.name)

    @property
    def queued(self) -> int:
        """Bytes waiting for the other end."""
        return self._queued

    def put(self, item: bytes | memoryview) -> None:
        """Send `item` (whole lines, or one journal entry) after everything queued before."""
        if not item:
            return
        if self._closed:
            self._drop(memoryview(item))
            return
        if self._queue:
            self._enqueue(memoryview(item))
            return
        rest = self._try(memoryview(item))
        if rest is not None:
            self._enqueue(rest)

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Flush the queue (waiting at most `timeout` seconds for the other end), then stop;
        what is left is reported as dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unwatch()
        self._flush(timeout)
        if self._queue:
            lost = sum(len(item) for item in self._queue)
            for item in self._queue:
                self._drop(item)
            self._queue.clear()
            self._queued = 0
            self._report(logging.ERROR, f"{self.name}: {lost} bytes of app output not written "
                                        f"at exit: the reader took nothing for {timeout:g} s")
        self.valve.open()
        self._close_fd()

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write what is queued, waiting at most `timeout` seconds for the other end (a
        re-exec is about to replace the daemon's image); what is left stays queued."""
        if not self._closed and self._queue:
            self._flush(timeout)

    def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._queue:
            item = self._queue.popleft()
            self._queued -= len(item)
            rest = self._try(item)
            if rest is None:
                continue
            self._queue.appendleft(rest)
            self._queued += len(rest)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self._fd], [], left)[1]:
                break

    # -- for subclasses ------------------------------------------------------------------

    def _send(self, data: memoryview) -> int:
        """Send the start of `data`: the bytes taken (> 0). Raises BlockingIOError when the
        other end takes nothing now, OSError when it refuses."""
        raise NotImplementedError

    def _close_fd(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    # -- internals -----------------------------------------------------------------------

    def _try(self, item: memoryview) -> memoryview | None:
        """Send as much of `item` as the other end takes now: the unsent rest, or None when
        all of it is gone (sent, or refused and dropped)."""
        sent = 0
        while sent < len(item):
            try:
                sent += self._send(item[sent:])
            except (BlockingIOError, InterruptedError):
                return item[sent:]
            except OSError as exc:
                self._failed(exc, item[sent:])
                return None
        if self._ledger.episode is not None:
            self._report(logging.WARNING, self._ledger.resume(self.name))
        return None

    def _enqueue(self, rest: memoryview) -> None:
        self._queue.append(rest)
        self._queued += len(rest)
        if self._queued > HIGH:
            self.valve.shut = True
        if not self._watching and not self._closed:
            self._watching = True
            self.loop.add_writer(self._fd, self._on_writable)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self.loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            self._queued -= len(item)
            rest = self._try(item)
            if rest is not None:
                self._queue.appendleft(rest)
                self._queued += len(rest)
                break
        if self.valve.shut and self._queued <= LOW:
            self.valve.open()
        if not self._queue:
            self._unwatch()

    def _failed(self, exc: OSError, lost: memoryview) -> None:
        error = f"cannot write: {exc.strerror or exc}"
        if self._ledger.fail(error, time.time()):
            self._report(logging.ERROR, f"{self.name}: {error}; app output sent there is "
                                        "dropped (counted in status) until a write works again")
        self._drop(lost)

    def _drop(self, item: memoryview) -> None:
        self._ledger.drop(item, time.time(), lines=1 if self.item_is_line else None)


def stdio_key(fd: int) -> tuple[int, int] | None:
    """What `fd` is open on (device, inode), to share one outlet between procsupd's stdout
    and stderr when they are the same file; None when `fd` is not open."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def stdio_place(fd: int, environ: Mapping[str, str]) -> dict[str, str]:
    """Where procsupd's stdout (1) or stderr (2) leads, as far as procsupd can tell, so that
    `procsup logs` can point there: `{"kind": "file", "path": ...}` (a regular file),
    `"null"` (/dev/null: procsupd daemonized), `"journal"` (systemd's journal stream, which
    `$JOURNAL_STREAM` names; with `"unit"`, procsupd's unit from /proc/self/cgroup, when it
    is a service), `"terminal"` (with its `"path"`), `"pipe"` (a pipe or a socket: a
    container runtime, a shell pipeline), `"closed"`."""
    try:
        st = os.fstat(fd)
    except OSError:
        return {"kind": "closed"}
    name = ""
    with contextlib.suppress(OSError):
        name = os.readlink(f"/proc/self/fd/{fd}")
    if stat.S_ISREG(st.st_mode):
        return {"kind": "file", "path": name} if name.startswith("/") else {"kind": "pipe"}
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
        return {"kind": "null"}
    if environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}":
        place = {"kind": "journal"}
        unit = _own_unit()
        if unit:
            place["unit"] = unit
        return place
    if os.isatty(fd):
        return {"kind": "terminal", "path": name}
    return {"kind": "pipe"}


def _own_unit() -> str:
    """The systemd service procsupd runs in (the last `.service` of its cgroup path), or ""."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        for part in reversed(line.rpartition(":")[2].split("/")):
            if part.endswith(".service"):
                return part
    return ""


class StdioOutlet(Outlet):
    """procsupd's stdout (fd 1) or stderr (fd 2), written without blocking and without
    changing the flags of the file procsupd was given (O_NONBLOCK belongs to the open file,
    which the shell or the container runtime shares): a pipe, FIFO or terminal is opened
    again through /proc/self/fd (a new open file of its own, non-blocking); a socket (systemd's
    StandardOutput=journal stream) is sent to with MSG_DONTWAIT. Where neither works (no /proc)
    the outlet writes to a duplicate of the fd, blocking, and says so in the daemon log.

    A regular file (`procsupd -n > out.log 2>&1`) never blocks for long and is written through
    a duplicate of the fd: the same open file, so one file offset for everything written there
    (procsupd's own log through fd 2, a child that inherited it, this outlet), which the kernel
    moves past each write(2) under its lock. A file opened again would have an offset of its
    own, and the shell's `>` opens without O_APPEND: procsupd's log lines would land at their
    own, stale offset, over the apps' lines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, name: str,
                 report: Report | None = None) -> None:
        st = os.fstat(fd)
        self._sock: socket.socket | None = None
        self._atomic: int | None = select.PIPE_BUF if stat.S_ISFIFO(st.st_mode) else None
        if stat.S_ISSOCK(st.st_mode):
            self._sock = socket.socket(fileno=os.dup(fd))
            own = self._sock.fileno()
        elif stat.S_ISREG(st.st_mode):
            own = os.dup(fd)
        else:
            try:
                own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK
                              | os.O_CLOEXEC | os.O_NOCTTY)
            except OSError as exc:
                own = os.dup(fd)
                (report or _log.log)(logging.WARNING, f"{name}: cannot open it again without "
                                     f"blocking ({exc.strerror}): a stalled reader of it will "
                                     "stall procsupd")
        super().__init__(loop, name, own, report)

    def _send(self, data: memoryview) -> int:
        if self._atomic is not None and len(data) > self._atomic:
            # Whole lines up to PIPE_BUF (atomic in a pipe); a longer line goes alone.
            cut = bytes(data[: self._atomic]).rfind(_NL) + 1
            if cut == 0:
                cut = len(data)
                end = bytes(data).find(_NL)
                if end >= 0:
                    cut = end + 1
            data = data[:cut]
        if self._sock is not None:
            return self._sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        n = os.write(self._fd, data)
        if n == 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return n

    def _close_fd(self) -> None:
        if self._sock is not None:
            self._sock.close()
        else:
            super()._close_fd()
