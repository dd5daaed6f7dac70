"""Capture pipes: a child's stdout/stderr read on the loop, cut into whole lines, handed to a
sink (layer 2 leaf, below `logs`).

Creates the pipes (`open_pipe`) and reads them (`PipeReader`); what becomes of the lines is the
sink's business (`logs.LogSink` writes them to a file). A sink that cannot take more for now (a
slow reader of procsupd's stdout, a busy journal) shuts its `Valve`: its readers stop reading
until it opens again, so the children block on their full pipes instead of the daemon queueing
without bound or dropping lines. A reader can also show its whole lines to
a `LineMatch` (`ready = "log:REGEX"`) until that matched once. Everything runs on the
supervisor's one asyncio loop thread; it imports nothing from procsup.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import re
from collections.abc import Callable
from typing import Protocol

__all__ = ["BIG_READ_SIZE", "LINE_MAX", "PIPE_SIZE", "READ_SIZE", "LineMatch", "PipeReader", "Sink",
           "Valve", "open_pipe", "pattern"]

_log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
"""Bytes read from a pipe per readable event when lines get a date prefix (one os.read, then
back to the loop): the prefix is put in with one `bytes.replace`, which is fastest on chunks of
this size."""

BIG_READ_SIZE = 1024 * 1024
"""Bytes read per readable event without a prefix: the whole pipe, so a flooding child costs
one read and one write per pipeful (measured: 0.66 -> ~0.9 of a direct file write with `dd`)."""

LINE_MAX = 64 * 1024
"""Once this much of a line is buffered without its newline, it is written out in pieces of
exactly LINE_MAX bytes, each as a line of its own (newline appended), so that a child that never
writes a newline cannot make the daemon's memory grow. Lines shorter than LINE_MAX (newline not
counted) are never cut; a longer one may be, depending on how the pipe delivered it."""

PIPE_SIZE = 1024 * 1024
"""Capacity requested for each capture pipe (F_SETPIPE_SZ); fewer wake-ups under load."""

_CLOSE_DRAIN_BYTES = PIPE_SIZE  # what close() still reads from a pipe before giving up on it
_NL = b"\n"


class Sink(Protocol):
    """Where a PipeReader puts whole lines (`logs.LogSink`)."""

    @property
    def date_format(self) -> str | None:
        """None when lines get no date prefix: the reader may then read bigger chunks."""

    def write(self, data: bytes | memoryview, head: bytes = b"") -> None:
        """Write `head + data`, whole lines only (each ends with a newline)."""


class Valve:
    """The back-pressure of one sink shared by many readers: while `shut`, a reader that just
    wrote into the sink stops reading its pipe and waits (`hold`) until the sink calls `open`.
    A sink without a valve (a log file: writes are synchronous) never holds a reader."""

    def __init__(self) -> None:
        self.shut = False
        self._held: list[Callable[[], None]] = []

    def hold(self, resume: Callable[[], None]) -> None:
        """Call `resume()` at the next `open`."""
        self._held.append(resume)

    def open(self) -> None:
        """The sink can take more: every held reader reads again (from the loop's next turn:
        `resume` only registers the reader)."""
        self.shut = False
        held, self._held = self._held, []
        for resume in held:
            resume()


@functools.lru_cache(maxsize=256)
def pattern(regex: str) -> re.Pattern[str]:
    """`regex` compiled, once per expression (not per run; it was validated by the config)."""
    return re.compile(regex)


class LineMatch:
    """The first whole line that matches `pattern` (`re.search`), over every reader it is given
    to (a run's stdout and stderr): then `on_match()` is called, once, and it is `done`.

    A line is matched as the child wrote it, decoded as UTF-8 (bad bytes replaced), without its
    newline and a carriage return before it: no date prefix or other decoration a sink adds.
    Once done, a reader drops it at its next chunk, so a running child's output costs no
    matching at all. `on_match` may be set after construction (before the loop runs again)."""

    def __init__(self, pattern: re.Pattern[str],
                 on_match: Callable[[], None] | None = None) -> None:
        self.pattern = pattern
        self.on_match = on_match
        self.done = False

    def feed(self, lines: bytes | memoryview, head: bytes = b"") -> None:
        """Look at `head + lines`: one or more whole lines (each ending with a newline)."""
        if self.done:
            return
        data = head + bytes(lines) if head else bytes(lines)
        search = self.pattern.search
        for line in data.decode("utf-8", "replace").split("\n")[:-1]:
            if search(line.removesuffix("\r")):
                self.done = True
                if self.on_match is not None:
                    self.on_match()
                return


class PipeReader:
    """Reads one child pipe (non-blocking fd) on the asyncio loop and writes whole lines into a
    sink.

    One os.read of at most READ_SIZE per readable event, then back to the loop, so a flooding
    child cannot starve the control socket or other instances. The partial trailing line stays
    in a buffer until its newline arrives; once LINE_MAX bytes of a line are buffered they are
    written out as a line of their own (newline appended; see LINE_MAX), so the buffer stays
    below LINE_MAX + READ_SIZE bytes. At EOF the partial last line is written with a newline
    appended, the fd is closed, and `on_eof()` is called once.

    `sink = None` discards the output but still drains the pipe, so the child never blocks.
    A sink with a `valve` (see `Valve`) that is shut after a write pauses the reader until the
    valve opens; `close` still drains the pipe into the sink.
    `watch` sees every whole line too (also with no sink) until it is done: the reader then
    forgets it. The reader owns `fd` from construction on and starts reading at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        sink: Sink | None,
        on_eof: Callable[[], None],
        watch: LineMatch | None = None,
        *,
        partial: bytes = b"",
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._sink = sink
        self._on_eof = on_eof
        self._watch = watch
        self._partial = partial  # (a re-exec hands over the line the old image was reading)
        self._closed = False
        self._paused = False
        try:
            loop.add_reader(fd, self._on_readable)
        except BaseException:
            os.close(fd)
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sink(self) -> Sink | None:
        return self._sink

    @sink.setter
    def sink(self, sink: Sink | None) -> None:
        """Write from now on into another file (a config apply moved the instance's log); the
        partial line buffered so far goes to the new one."""
        self._sink = sink

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def partial(self) -> bytes:
        """The start of the line being read (no newline yet), for a re-exec's hand-over."""
        return self._partial

    @property
    def watching(self) -> bool:
        """Whether it still matches lines for `ready = "log:..."`."""
        return self._watch is not None and not self._watch.done

    def close(self) -> None:
        """Stop reading, write what is already in the pipe (at most about 1 MiB, so a
        grandchild that still floods it cannot hold us) and the partial line, close the fd.
        `on_eof` is not called. Idempotent."""
        if self._closed:
            return
        drained = 0
        while drained < _CLOSE_DRAIN_BYTES:
            try:
                data = os.read(self._fd, READ_SIZE)
            except OSError:  # EAGAIN: nothing more buffered; anything else: the pipe is gone
                break
            if not data:
                break
            drained += len(data)
            self._feed(data)
        self._finish()

    def _on_readable(self) -> None:
        if self._paused:
            return
        sink = self._sink
        size = BIG_READ_SIZE if sink is not None and sink.date_format is None else READ_SIZE
        try:
            data = os.read(self._fd, size)
        except BlockingIOError:
            return  # spurious wake-up
        except OSError as exc:
            _log.warning("reading child output failed: %s; treating as end of output", exc)
            data = b""
        if not data:
            self._finish()
            self._on_eof()
            return
        self._feed(data)
        valve: Valve | None = getattr(self._sink, "valve", None)
        if valve is not None and valve.shut and not self._closed:
            self._paused = True
            self._loop.remove_reader(self._fd)
            valve.hold(self._resume)

    def _resume(self) -> None:
        if self._paused and not self._closed:
            self._paused = False
            self._loop.add_reader(self._fd, self._on_readable)

    def _feed(self, data: bytes) -> None:
        sink = self._sink
        if self._watch is not None and self._watch.done:
            self._watch = None  # matched (here or on the other stream): no more matching
        if sink is None and self._watch is None:
            return
        end = data.rfind(_NL) + 1
        if end == 0:
            self._partial += data
        else:
            # No copy of the chunk: the buffered line start goes along as `head`, and a view
            # cuts off the new partial line (only that tail is copied).
            head, self._partial = self._partial, data[end:]
            self._emit(data if end == len(data) else memoryview(data)[:end], head)
        if len(self._partial) >= LINE_MAX:
            self._cut()

    def _emit(self, lines: bytes | memoryview, head: bytes = b"") -> None:
        if self._watch is not None:
            self._watch.feed(lines, head)
        if self._sink is not None:
            self._sink.write(lines, head)

    def _cut(self) -> None:
        """Write the buffered partial line out in LINE_MAX pieces, each as a line of its own
        (one write, so one timestamp); keep the rest, shorter than LINE_MAX, buffered."""
        partial = self._partial
        cut = len(partial) - len(partial) % LINE_MAX
        pieces = [partial[i : i + LINE_MAX] for i in range(0, cut, LINE_MAX)]
        self._partial = partial[cut:]
        self._emit(_NL.join(pieces) + _NL)

    def _finish(self) -> None:
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._partial and (self._sink is not None or self._watch is not None):
            chunk, self._partial = self._partial, b""
            self._emit(chunk + _NL)
        try:
            os.close(self._fd)
        except OSError as exc:  # pragma: no cover - closing a pipe read end does not fail
            _log.debug("closing pipe fd %d: %s", self._fd, exc)


def open_pipe() -> tuple[int, int]:
    """A capture pipe: (read_fd, write_fd).

    Both ends are close-on-exec (non-inheritable); the spawner dup2s the write end onto the
    child's 1 or 2 (dup2 clears the flag on the copy) and closes its own copy after the spawn.
    The read end is non-blocking (for the loop), the write end blocking (a child that outruns
    the disk waits in write(2)). The pipe is enlarged to 1 MiB where the kernel allows it.
    """
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(read_fd, False)
        setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
        if setpipe is not None:
            # EPERM: above /proc/sys/fs/pipe-max-size or the user's pipe quota; keep the default.
            with contextlib.suppress(OSError):
                fcntl.fcntl(read_fd, setpipe, PIPE_SIZE)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    return read_fd, write_fd
