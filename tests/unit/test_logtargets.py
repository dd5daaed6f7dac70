"""logtargets and outlets: how lines are framed (a table), and an outlet on a real pipe that
holds its readers back while the pipe is full and lets them go once it drains."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from procsup import logs, outlets
from procsup.logtargets import Framed, json_line

FRAMES = [
    # (json_format, date_format, label, written, expected regex of the file)
    (False, None, b"web:0 | ", b"a\nb\n", r"web:0 \| a\nweb:0 \| b\n"),
    (False, None, b"web:0 | ", b"no newline", r"web:0 \| no newline\n"),
    (False, "%Y", b"w:1 | ", b"a\nb\n", r"\d{4} w:1 \| a\n\d{4} w:1 \| b\n"),
    (False, "%Y", b"", b"a\n", r"\d{4} a\n"),
    (True, None, b"", b"a\n", r'\{"time": "[^"]+", "app": "web", "instance": 0, "stream": "out", '
                              r'"message": "a"\}\n'),
]


@pytest.mark.parametrize("case", FRAMES)
def test_framing(tmp_path: Path, case: tuple[bool, str | None, bytes, bytes, str]) -> None:
    json_format, date_format, label, written, expected = case
    path = tmp_path / "f.log"
    sink = logs.LogSink(str(path))
    framed = Framed(sink, app="web", index=0, stream="out", json_format=json_format,
                    date_format=date_format, label=label)
    framed.write(written)
    sink.close()
    assert re.fullmatch(expected, path.read_text()), path.read_text()


JSON_LINES = [
    (b"plain", "plain"),
    (b'quote " and \\', 'quote " and \\'),
    (b"tab\there\r", "tab\there\r"),
    ("caf\u00e9".encode(), "caf\u00e9"),
    (b"bad \xff byte", "bad \ufffd byte"),
]


@pytest.mark.parametrize(("line", "message"), JSON_LINES)
def test_json_line(line: bytes, message: str) -> None:
    out = json_line("2026-12-03T07:00:00.000000+00:00", "web", 3, "err", line)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert json.loads(out) == {"time": "2026-12-03T07:00:00.000000+00:00", "app": "web",
                               "instance": 3, "stream": "err", "message": message}


def test_a_stalled_pipe_shuts_the_valve_and_loses_nothing() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = bytearray()
    sent = bytearray()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        outlet = outlets.StdioOutlet(loop, w, "stdout")
        line = b"y" * 99 + b"\n"
        n = 0
        while not outlet.valve.shut:  # nobody reads: the pipe fills, then the queue
            chunk = b"".join(b"%06d" % (n + i) + line[6:] for i in range(100))
            n += 100
            outlet.put(chunk)
            sent.extend(chunk)
        assert outlet.queued > outlets.HIGH
        resumed = asyncio.Event()
        outlet.valve.hold(resumed.set)
        async with asyncio.timeout(10):
            while not resumed.is_set():  # a reader comes back
                try:
                    got.extend(os.read(r, 1 << 16))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        assert outlet.queued <= outlets.LOW
        async with asyncio.timeout(10):
            while outlet.queued:  # the rest, as the pipe drains
                try:
                    got.extend(os.read(r, 1 << 16))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        outlet.close()

    try:
        asyncio.run(main())
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(r)
        os.close(w)
    assert bytes(got) == bytes(sent)
