"""journal: the native protocol's field encoding (a table), and entries sent to a fake journal
(a datagram socket bound here), big ones through a sealed memfd."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from procsup import journal

FIELDS = [
    # (name, value, encoded)
    ("MESSAGE", b"hello", b"MESSAGE=hello\n"),
    ("MESSAGE", b"", b"MESSAGE=\n"),
    ("PRIORITY", b"3", b"PRIORITY=3\n"),
    ("MESSAGE", b"a=b", b"MESSAGE=a=b\n"),  # only the first = separates
    ("MESSAGE", b"two\nlines", b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n"),
    ("MESSAGE", b"\n", b"MESSAGE\n" + struct.pack("<Q", 1) + b"\n\n"),
    ("MESSAGE", b"\xff\x00bin", b"MESSAGE=\xff\x00bin\n"),  # binary without a newline: plain
]


@pytest.mark.parametrize(("name", "value", "encoded"), FIELDS)
def test_field_encoding(name: str, value: bytes, encoded: bytes) -> None:
    assert journal.field(name, value) == encoded


def test_an_entry_is_its_fields_in_order() -> None:
    assert journal.encode([("A", b"1"), ("B", b"x\ny")]) == (
        b"A=1\nB\n" + struct.pack("<Q", 3) + b"x\ny\n")


def parse(payload: bytes) -> list[tuple[str, bytes]]:
    out = []
    i = 0
    while i < len(payload):
        nl = payload.index(b"\n", i)
        eq = payload.find(b"=", i, nl)
        if eq >= 0:
            out.append((payload[i:eq].decode(), payload[eq + 1:nl]))
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", payload[nl + 1:nl + 9])
            out.append((payload[i:nl].decode(), payload[nl + 9:nl + 9 + size]))
            i = nl + 10 + size
    return out


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def _receive(sock: socket.socket) -> bytes:
    """One entry as journald reads it: the payload, or the content of the memfd passed."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, raw in anc:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
    if not fds:
        return data
    assert data == b"" and len(fds) == 1  # the protocol: an empty payload and one fd
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def test_lines_become_entries_with_the_fields(fake: tuple[socket.socket, str]) -> None:
    sock, path = fake

    async def main() -> None:
        outlet = journal.JournalOutlet(asyncio.get_running_loop(), path)
        target = journal.JournalTarget(outlet, "web", 2, "err")
        target.write(b"second\n", head=b"first\n")
        outlet.close()

    asyncio.run(main())
    common = [("PRIORITY", b"3"), ("SYSLOG_IDENTIFIER", b"web"), ("PROCSUP_APP", b"web"),
              ("PROCSUP_INSTANCE", b"2"), ("PROCSUP_STREAM", b"err")]
    assert parse(_receive(sock)) == [*common, ("MESSAGE", b"first")]
    assert parse(_receive(sock)) == [*common, ("MESSAGE", b"second")]


def test_an_entry_too_big_for_a_datagram_goes_in_a_memfd(fake: tuple[socket.socket, str]
                                                         ) -> None:
    sock, path = fake
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    message = b"m" * (24 * 1024 * 1024)  # more than the SO_SNDBUF asked for (8 MiB, or less)

    async def main() -> None:
        outlet = journal.JournalOutlet(asyncio.get_running_loop(), path)
        outlet.put(journal.encode([("MESSAGE", message)]))
        assert outlet.health is None  # sent, not dropped
        outlet.close()

    asyncio.run(main())
    assert parse(_receive(sock)) == [("MESSAGE", message)]


def test_no_journal_is_counted_as_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        outlet = journal.JournalOutlet(asyncio.get_running_loop(), str(tmp_path / "none"))
        target = journal.JournalTarget(outlet, "web", 0, "out")
        target.write(b"a\nb\n")
        health = outlet.health
        outlet.close()
        assert health is not None and health.dropped_lines == 2, health  # entries, not fields
        assert health.error is not None and "cannot write" in health.error

    asyncio.run(main())
