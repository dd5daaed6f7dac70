"""`pipes.LineMatch` on a real pipe and loop: the readiness line of `ready = "log:REGEX"` is
found in whole lines only, as the child wrote them (no date prefix), on either of two readers,
once; afterwards the readers stop matching."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable

from procsup.pipes import LINE_MAX, LineMatch, PipeReader, Valve, open_pipe, pattern

DEADLINE = 10.0  # seconds; every wait here is bounded by it


class Collect:
    """A sink that keeps what it is given, with a date prefix setting of its own (a reader
    hands it raw lines either way; the prefix is the sink's business)."""

    def __init__(self, date_format: str | None = "%H:%M") -> None:
        self.date_format = date_format
        self.data = b""

    def write(self, data: bytes | memoryview, head: bytes = b"") -> None:
        self.data += b"[date] " + head + bytes(data)


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not cond():
            await asyncio.sleep(0.005)


def _run(scenario: Callable[[asyncio.AbstractEventLoop], object]) -> None:
    async def main() -> None:
        await scenario(asyncio.get_running_loop())  # type: ignore[misc]

    asyncio.run(main())


def test_pattern_is_compiled_once_per_expression() -> None:
    assert pattern("Ready to accept") is pattern("Ready to accept")
    assert pattern("a") is not pattern("b")


def test_feed_matches_whole_lines_once_and_without_newline_or_cr() -> None:
    hits: list[str] = []
    m = LineMatch(re.compile(r"^ready$"), lambda: hits.append("hit"))
    m.feed(b"not ready\nalmost\n")
    assert not m.done and hits == []
    m.feed(b"ady\r\nready\n", head=b"re")  # "ready\r" once joined: the CR does not count
    assert m.done and hits == ["hit"]
    m.feed(b"ready\n")
    assert hits == ["hit"]  # once


def test_bad_utf8_does_not_stop_the_search() -> None:
    m = LineMatch(re.compile("Ready to accept"))
    m.feed(b"\xff\xfe garbage\n* Ready to accept connections tcp\n")
    assert m.done


async def _two_readers(loop: asyncio.AbstractEventLoop, sinks: tuple[Collect | None, ...],
                       stream: int) -> None:
    """stdout and stderr readers share one matcher; the line arrives on `stream`, split over
    two writes; then a flood of lines that also match follows, seen by nobody's regex."""
    hits: list[str] = []
    calls = 0

    regex = re.compile(r"Ready to accept")
    watch = LineMatch(regex, lambda: hits.append("ready"))
    original = watch.feed

    def counted(lines: bytes | memoryview, head: bytes = b"") -> None:
        nonlocal calls
        calls += 1
        original(lines, head)

    watch.feed = counted  # type: ignore[method-assign]
    fds = [open_pipe(), open_pipe()]
    readers = [PipeReader(loop, r, sink, lambda: None, watch=watch)
               for (r, _w), sink in zip(fds, sinks, strict=True)]
    write = fds[stream][1]
    try:
        os.write(write, b"booting\n* Ready to ")
        await asyncio.sleep(0.05)
        assert hits == []  # half a line is not a line
        os.write(write, b"accept connections\n")
        await _until(lambda: hits == ["ready"])
        seen = calls
        for _ in range(3):
            for _r, w in fds:
                os.write(w, b"Ready to accept again\n" * 100)
            await asyncio.sleep(0.02)
        await _until(lambda: all(s is None or s.data.count(b"again") == 300 for s in sinks))
        assert calls == seen  # done: neither reader called the matcher again
        assert hits == ["ready"]
        sink = sinks[stream]
        if sink is not None:  # the file still gets every line, the sink adding its prefix
            assert sink.data.startswith(b"[date] booting\n[date] * Ready to accept connections\n")
    finally:
        for reader in readers:
            reader.close()
        for _r, w in fds:
            os.close(w)


def test_a_line_on_stdout_or_stderr_with_or_without_files() -> None:
    for stream in (0, 1):
        for sinks in ((Collect(), Collect()), (None, None), (Collect(None), None)):
            _run(lambda loop, s=sinks, st=stream: _two_readers(loop, s, st))


def test_a_partial_last_line_at_eof_and_a_cut_long_line_are_lines_too() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        hits: list[str] = []
        r, w = open_pipe()
        eof = loop.create_future()
        PipeReader(loop, r, None, lambda: eof.set_result(None),
                   watch=LineMatch(re.compile("^listening$"), lambda: hits.append("x")))
        os.write(w, b"x" * (LINE_MAX + 10))  # a cut piece is matched (no hit: not the line)
        os.write(w, b"\nlistening")  # no newline: only the end of output completes it
        await asyncio.sleep(0.05)
        assert hits == []
        os.close(w)
        await asyncio.wait_for(eof, DEADLINE)
        assert hits == ["x"]

    _run(scenario)


class Held(Collect):
    """A sink whose valve the test shuts and opens."""

    def __init__(self) -> None:
        super().__init__(None)
        self.valve = Valve()


def test_a_shut_valve_pauses_the_reader_until_it_opens() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        r, w = open_pipe()
        sink = Held()
        reader = PipeReader(loop, r, sink, lambda: None)
        try:
            sink.valve.shut = True
            os.write(w, b"first\n")
            await _until(lambda: b"first" in sink.data)  # read, then the reader holds
            os.write(w, b"second\n")
            for _ in range(20):  # 20 loop turns with data waiting: nothing is read
                await asyncio.sleep(0)
            assert b"second" not in sink.data
            sink.valve.open()
            await _until(lambda: b"second" in sink.data)
        finally:
            reader.close()
            os.close(w)

    _run(scenario)
