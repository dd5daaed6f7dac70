"""The systemd journal as a log target (layer 2): `out_file`/`error_file = "journal"`.

Each line an instance writes becomes one journal entry, sent by journald's native protocol
(systemd's "Native Journal Protocol" document): one AF_UNIX datagram per entry to
/run/systemd/journal/socket (`paths.journal_socket`; `$PROCSUP_JOURNAL_SOCKET` overrides it, for
tests), the fields `MESSAGE` (the line without its newline, as the app wrote it: no date
prefix, no label, and no JSON even with `log_format = "json"`, since the entry's fields already
say when, who and which stream), `PRIORITY` (6 for stdout, 3 for stderr), `SYSLOG_IDENTIFIER`
and `PROCSUP_APP` (the app), `PROCSUP_INSTANCE` and `PROCSUP_STREAM` ("out" or "err"). A value
with a newline is sent in the protocol's binary form; an entry too big for a datagram
(EMSGSIZE) goes in a sealed memfd passed with SCM_RIGHTS and an empty payload.

The socket is one `outlets.Outlet`: sent without blocking, with the same back-pressure as
procsupd's stdout (a busy journald shuts the valve and the apps wait on their pipes), and the
same accounting of what is refused for good (journald stopped: ECONNREFUSED, ENOENT). After
such a failure the socket connects again at the next entry, at most every RETRY seconds.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterable

from procsup.drops import LogHealth
from procsup.outlets import Outlet, Report
from procsup.pipes import Valve

__all__ = ["PRIORITY", "JournalOutlet", "JournalTarget", "encode"]

#: PRIORITY of each stream's entries: stdout info, stderr err (syslog levels).
PRIORITY = {"out": 6, "err": 3}
RETRY = 1.0
"""Seconds after a refused send before an entry tries to connect the socket again."""
_SNDBUF = 8 * 1024 * 1024  # asked for (the kernel caps it at net.core.wmem_max)
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_GONE = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EDESTADDRREQ})
_NL = b"\n"


def field(name: str, value: bytes) -> bytes:
    """One field of an entry: `NAME=value\\n`, or, when the value holds a newline, `NAME\\n`,
    its length as a little-endian 64-bit integer, the value and `\\n`."""
    key = name.encode("ascii")
    if _NL in value:
        return key + _NL + struct.pack("<Q", len(value)) + value + _NL
    return key + b"=" + value + _NL


def encode(fields: Iterable[tuple[str, bytes]]) -> bytes:
    """The payload of one entry: its fields, in order."""
    return b"".join(field(name, value) for name, value in fields)


class JournalOutlet(Outlet):
    """The journal's socket, shared by every stream logging to it."""

    item_is_line = True  # one entry per line

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str,
                 report: Report | None = None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                   | socket.SOCK_NONBLOCK)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
        except OSError:
            pass
        self._connected = False
        self._retry_at = 0.0
        super().__init__(loop, "the journal", self._sock.fileno(), report)

    def _send(self, data: memoryview) -> int:
        if not self._connected:
            if time.monotonic() < self._retry_at:
                raise OSError(errno.ECONNREFUSED, f"no journal at {self.path}")
            try:
                self._sock.connect(self.path)
            except OSError as exc:
                self._retry_at = time.monotonic() + RETRY
                raise OSError(exc.errno, f"{exc.strerror} ({self.path})") from None
            self._connected = True
        try:
            try:
                self._sock.send(data)
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                self._send_memfd(data)
        except OSError as exc:
            if exc.errno in _GONE:  # journald went away: connect again, later
                self._connected = False
                self._retry_at = time.monotonic() + RETRY
            raise
        return len(data)

    def _send_memfd(self, data: memoryview) -> None:
        """An entry too big for one datagram: in a sealed memfd, passed with an empty
        payload."""
        fd = os.memfd_create("procsup-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view, written = data, 0
            while written < len(view):
                written += os.write(fd, view[written:])
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [fd]))])
        finally:
            os.close(fd)

    def _close_fd(self) -> None:
        self._sock.close()


class JournalTarget:
    """One captured stream (an instance's stdout or stderr) into the journal: each line one
    entry. A `pipes.Sink`, with the outlet's valve and health."""

    date_format: str | None = None  # the journal stamps entries itself

    def __init__(self, outlet: JournalOutlet, app: str, index: int, stream: str) -> None:
        self.outlet = outlet
        self._fields = encode((
            ("PRIORITY", str(PRIORITY[stream]).encode()),
            ("SYSLOG_IDENTIFIER", app.encode()),
            ("PROCSUP_APP", app.encode()),
            ("PROCSUP_INSTANCE", str(index).encode()),
            ("PROCSUP_STREAM", stream.encode()),
        ))

    @property
    def valve(self) -> Valve:
        return self.outlet.valve

    @property
    def health(self) -> LogHealth | None:
        return self.outlet.health

    def write(self, data: bytes | memoryview, head: bytes = b"") -> None:
        """One entry per line of `head + data` (whole lines)."""
        chunk = head + bytes(data) if head else bytes(data)
        lines = chunk.split(_NL)
        if lines and not lines[-1]:
            lines.pop()
        put, fields = self.outlet.put, self._fields
        for line in lines:
            put(fields + field("MESSAGE", line))
