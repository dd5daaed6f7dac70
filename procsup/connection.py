"""One control connection (layer 4, below `control`): framing in, replies out, its buffers.

`control.ControlServer` accepts a socket and hands it to a `Connection`, the asyncio protocol
of its transport, which receives the request frame and carries the replies; the server decides
on everything else (admission, peer check, dispatch). Split from `control` so that each stays
small; nothing but `control` uses it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from procsup import protocol
from procsup.errors import WireError

#: Bytes a streamed reply may have queued for a client that does not read before it is dropped.
STREAM_BUFFER_LIMIT = 4 * 1024 * 1024
#: What the bytes a client sends after its request are read into, to be ignored (one buffer
#: for every connection: they are never looked at).
_SCRATCH = bytearray(4096)


@dataclass(frozen=True)
class Peer:
    """The credentials of a connected client, from SO_PEERCRED (as of its connect())."""

    pid: int
    uid: int
    gid: int


class Server(Protocol):
    """What a connection asks of its server (`control.ControlServer`)."""

    def note(self, kind: str, peer: Peer | None, message: str, *args: object) -> None:
        """Log a warning about a client, rate-limited (`message` gets pid and uid first)."""

    def over_budget(self, size: int) -> bool:
        """Whether a stream with `size` bytes queued is to be dropped for the total budget."""


class Connection(asyncio.BufferedProtocol):
    """One client connection while it is served: the protocol of its transport.

    The request is received straight into buffers of the exact size: the 4-byte header, then
    one bytearray of the announced length (after the length was checked), so a frame costs
    its own size and nothing on top; `request` resolves with the payload. Anything the client
    sends after it is read into a small scratch buffer and ignored, which is how its EOF (it
    went away) is noticed. Writes go through the transport, with `drain` for flow control.
    """

    def __init__(self, server: Server, logger: logging.Logger, since: float) -> None:
        loop = asyncio.get_running_loop()
        self.server = server
        self.logger = logger
        self.since = since  # loop time of its admission
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.peer: Peer | None = None
        self.reading = True  # the request is not read yet
        self.gone = False  # EOF seen, connection lost, or dropped
        self.replied = False  # the final frame was written
        self.request: asyncio.Future[bytearray] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self._buf = bytearray(protocol.HEADER_SIZE)
        self._got = 0
        self._body = False  # the header is in: _buf is the payload's
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.request.done():
            return memoryview(_SCRATCH)
        return memoryview(self._buf)[self._got:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.request.done():
            return
        self._got += nbytes
        if self._got < len(self._buf):
            return
        if self._body:
            self.request.set_result(self._buf)
            return
        length = protocol.decode_header(bytes(self._buf))
        if length > protocol.MAX_REQUEST:
            self.request.set_exception(protocol.ProtocolViolation(
                protocol.TOO_LARGE,
                f"request of {length} bytes exceeds the limit of {protocol.MAX_REQUEST} bytes"))
            return
        self._buf, self._got, self._body = bytearray(length), 0, True
        if not length:
            self.request.set_result(self._buf)

    def eof_received(self) -> bool:
        self._ended(EOFError(self._got > 0 or self._body))
        return True  # keep the transport open: the reply to a half-closed client still goes

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc if exc is not None else EOFError(self._got > 0 or self._body))
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the client is gone"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _ended(self, exc: BaseException) -> None:
        if not self.request.done():
            self.request.set_exception(exc)
            self.request.exception()  # retrieved: nobody may be waiting for it any more
        if not self.eof.done():
            self.eof.set_result(None)

    def time_out(self) -> None:
        """The request did not arrive in time: `request` raises TimeoutError."""
        if not self.request.done():
            self.request.set_exception(TimeoutError())

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark; ConnectionError
        once the connection is closed."""
        if self.transport.is_closing():
            raise ConnectionResetError("the client is gone")
        if self._paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    async def wait_eof(self) -> None:
        """Return once the client closed its side (or the connection is gone)."""
        await asyncio.shield(self.eof)

    def write_final(self, reply: dict[str, object]) -> None:
        """Queue the final frame; falls back to an `internal` error if `reply` cannot be encoded."""
        try:
            data = protocol.encode(reply)
        except protocol.ProtocolViolation as exc:
            data = protocol.encode(protocol.error_reply(exc.code, f"reply too large: {exc}"))
        except (TypeError, ValueError) as exc:
            # A bug in the command (a result or detail that is not JSON); keep the client
            # informed rather than leaving it waiting.
            self.logger.error("control: reply is not JSON: %s", exc)
            data = protocol.encode(
                protocol.error_reply(WireError.INTERNAL, f"reply is not JSON: {exc}")
            )
        self.replied = True
        if not self.transport.is_closing():
            self.transport.write(data)

    def write_error(self, code: str, message: str, detail: object = None) -> None:
        self.write_final(protocol.error_reply(code, message, detail))

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    async def send(self, result: object) -> None:
        """The `Send` given to `dispatch`."""
        transport = self.transport
        if self.gone or transport.is_closing():
            raise ConnectionError("the client is gone")
        transport.write(protocol.encode(protocol.ok_reply(result, more=True)))
        size = transport.get_write_buffer_size()
        if size > STREAM_BUFFER_LIMIT or self.server.over_budget(size):
            # The client does not read: buffering more would let it grow the daemon's memory
            # without bound, and blocking would stall the command for everyone it serves.
            self.server.note("streams dropped", self.peer,
                             "control: dropped a client (pid %d, uid %d) that does not read its "
                             "stream: %d bytes queued", size)
            self.gone = True
            transport.abort()
            raise ConnectionError("the client does not read; dropped")
        try:
            await self.drain()  # returns at once below the limit; raises if the peer is gone
        except ConnectionError:
            self.gone = True  # the client closed: its EOF, not a failure of the command
            raise
