"""The control socket server (layer 4): Unix socket, peer check, framing, dispatch.

This module knows the wire protocol (`protocol`) and a `Commands` interface, nothing else: the
`commands` module implements `Commands`, so this server cannot reach into the engine's state,
and the engine never sees a socket. docs/protocol.md describes what clients observe.

Guarantees, per connection (each connection is its own task, so a bad client never disturbs
another one, nor the loop):
- the peer is checked with SO_PEERCRED before anything is read: root, the daemon's own uid,
  or a member of `group_gid`; anyone else gets `forbidden`;
- the request must arrive whole within `request_timeout` (`timeout` otherwise); a length
  prefix above `protocol.MAX_REQUEST` is answered `too_large` at once, without reading the body;
- malformed requests get `bad_request`/`unsupported_version`/`unknown_command`; arguments are
  validated against `protocol.COMMANDS` before `Commands.dispatch` runs;
- an exception escaping `dispatch` becomes an `internal` reply and a logged traceback;
- when the client goes away (EOF) while `dispatch` runs, `dispatch` is cancelled;
- a streamed reply whose client does not read is dropped once ~4 MiB are buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from procsup import protocol
from procsup.errors import ProcsupError, RemoteError, WireError

#: Pushes one `"more": true` frame; raises ConnectionError when the client is gone.
Send = Callable[[object], Awaitable[None]]

#: Bytes a streamed reply may have queued for a client that does not read before it is dropped.
STREAM_BUFFER_LIMIT = 4 * 1024 * 1024
#: Seconds a client gets to take the final reply off the socket before it is dropped.
REPLY_WRITE_TIMEOUT = 30.0
#: Seconds to wait for an existing socket to answer when deciding whether it is stale.
PROBE_TIMEOUT = 2.0
_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """The credentials of a connected client, from SO_PEERCRED (as of its connect())."""

    pid: int
    uid: int
    gid: int


class Commands(Protocol):
    """What the control server dispatches to (the supervisor implements it)."""

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: Peer, send: Send) -> object:
        """Run `cmd` with `args` (validated against `protocol.COMMANDS`, defaults filled in).

        Returns the JSON-serialisable result. Raises `errors.RemoteError(code, message,
        detail)` for an error reply. `send(obj)` pushes a `"more": true` frame before the
        final one (streamed commands only) and raises ConnectionError once the client is gone.
        The task is cancelled when the client disconnects or the server closes.
        """
        ...


class _Connection:
    """One client connection while its request runs."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, logger: logging.Logger
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.logger = logger
        self.gone = False  # EOF seen, connection lost, or dropped
        self.replied = False  # the final frame was written

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
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    def write_error(self, code: str, message: str, detail: object = None) -> None:
        self.write_final(protocol.error_reply(code, message, detail))

    async def send(self, result: object) -> None:
        """The `Send` given to `dispatch`."""
        transport = self.writer.transport
        if self.gone or transport.is_closing():
            raise ConnectionError("the client is gone")
        self.writer.write(protocol.encode(protocol.ok_reply(result, more=True)))
        if transport.get_write_buffer_size() > STREAM_BUFFER_LIMIT:
            # The client does not read: buffering more would let it grow the daemon's memory
            # without bound, and blocking would stall the command for everyone it serves.
            self.logger.warning("control: dropping a client that does not read its stream")
            self.gone = True
            transport.abort()
            raise ConnectionError("the client does not read; dropped")
        await self.writer.drain()  # returns at once below the limit; raises if the peer is gone


class ControlServer:
    """Serves the control protocol on a Unix socket; see the module docstring."""

    def __init__(
        self,
        path: str,
        commands: Commands,
        *,
        mode: int,
        group_gid: int | None,
        logger: logging.Logger,
        request_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._commands = commands
        self._mode = mode
        self._group_gid = group_gid
        self._logger = logger
        self._request_timeout = request_timeout
        self._server: asyncio.AbstractServer | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # Connections whose client waits for EOF as the sign the daemon exited (`shutdown`).
        # Never closed by us: the kernel closes them when the process exits.
        self._held: list[int] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the socket and serve it.

        Raises `ProcsupError` when another server answers on `path`, when `path` exists and is
        not a socket, or when the socket cannot be created. A stale socket (nobody listening)
        is replaced. The parent directory is created (0o755) when missing. The socket is bound
        under umask 0o177 (nobody else can connect before the mode is set), then chmod'ed to
        `mode` and chown'ed to `group_gid` when given.
        """
        path = self.path
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise ProcsupError(f"cannot create {parent}: {exc.strerror}") from exc
        await self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            st = os.stat(path)
            self._ident = (st.st_dev, st.st_ino)
            os.chmod(path, self._mode)
            if self._group_gid is not None:
                os.chown(path, -1, self._group_gid)
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        except OSError as exc:
            sock.close()
            self._unlink_own()
            if exc.errno == errno.EADDRINUSE:
                raise ProcsupError(f"another procsupd serves {path}") from exc
            raise ProcsupError(f"cannot serve the control socket {path}: {exc}") from exc
        self._logger.debug("control: serving %s", path)

    async def _clear_stale(self) -> None:
        """Unlink a socket file nobody listens on; refuse if someone does or it is no socket."""
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ProcsupError(f"{path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(probe, path), PROBE_TIMEOUT)
        except ConnectionRefusedError:
            self._logger.info("control: removing stale socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except FileNotFoundError:
            return
        except TimeoutError:
            # A full backlog: someone is listening but slow. Still not ours to take.
            raise ProcsupError(f"another procsupd serves {path}") from None
        except OSError as exc:
            raise ProcsupError(f"cannot check the existing socket {path}: {exc}") from exc
        finally:
            probe.close()
        raise ProcsupError(f"another procsupd serves {path}")

    async def close(self) -> None:
        """Stop accepting, cancel in-flight requests, and unlink the socket if it is still ours.

        A cancelled request whose final reply was not written yet gets a `shutting_down`
        error. The connection of a `shutdown` request that waited stays open until the process
        exits (see `protocol.Command.linger`), so call this after that request was answered.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._unlink_own()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def _unlink_own(self) -> None:
        """Unlink `path` only if it is the socket we bound (not a successor's)."""
        if self._ident is None:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._logger.warning("control: cannot remove %s: %s", self.path, exc)
        self._ident = None

    # ------------------------------------------------------------------ connections

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(reader, writer, self._logger)
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            if self._closing and not conn.replied and not conn.gone:
                conn.write_error(WireError.SHUTTING_DOWN, "procsupd is shutting down")
            # Not re-raised: this is the connection's top-level task and nobody awaits its
            # outcome, and Python 3.11's stream server calls task.exception() on it, which
            # raises for a cancelled task and ends up as an "Exception in callback" log.
            return
        except Exception:
            # The outermost guard: one connection's failure never stops the server.
            self._logger.exception("control: connection failed")
            if not conn.replied and not conn.gone:
                conn.write_error(WireError.INTERNAL, "internal error; see the daemon log")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, conn: _Connection) -> None:
        sock = conn.writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        peer = Peer(*_PEERCRED.unpack(raw))
        if not await self._allowed(peer):
            self._logger.warning(
                "control: refused pid %d uid %d gid %d (not root, uid %d or in the socket group)",
                peer.pid, peer.uid, peer.gid, os.getuid(),
            )
            conn.write_error(WireError.FORBIDDEN, "permission denied: not allowed to use procsupd")
            return
        try:
            cmd, args = await asyncio.wait_for(self._read_request(conn), self._request_timeout)
        except TimeoutError:
            conn.write_error(
                WireError.TIMEOUT, f"request not received within {self._request_timeout:g}s"
            )
            return
        except protocol.ProtocolViolation as exc:
            self._logger.info("control: bad request from pid %d: %s", peer.pid, exc.message)
            conn.write_error(exc.code, exc.message)
            return
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # a client that connects and closes (a probe) is not worth a word
                conn.write_error(WireError.BAD_REQUEST, "connection closed inside the request")
            return
        except ConnectionError:
            return
        await self._run(conn, cmd, args, peer)

    async def _allowed(self, peer: Peer) -> bool:
        if peer.uid in (0, os.getuid()):
            return True
        gid = self._group_gid
        if gid is None:
            return False
        if peer.gid == gid:
            return True
        # Name service lookups may block (LDAP, sssd): keep them off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _in_group, peer.uid, gid)

    async def _read_request(self, conn: _Connection) -> tuple[str, dict[str, Any]]:
        length = protocol.decode_header(await conn.reader.readexactly(protocol.HEADER_SIZE))
        if length > protocol.MAX_REQUEST:
            raise protocol.ProtocolViolation(
                protocol.TOO_LARGE,
                f"request of {length} bytes exceeds the limit of {protocol.MAX_REQUEST} bytes",
            )
        payload = await conn.reader.readexactly(length)
        return protocol.parse_request(protocol.decode_payload(payload))

    async def _run(self, conn: _Connection, cmd: str, args: dict[str, Any], peer: Peer) -> None:
        """Dispatch, racing the client's EOF; then write the final reply."""
        conn.writer.transport.set_write_buffer_limits(high=STREAM_BUFFER_LIMIT)
        job = asyncio.create_task(self._commands.dispatch(cmd, args, peer, conn.send))
        eof = asyncio.create_task(_wait_eof(conn.reader))
        try:
            await asyncio.wait({job, eof}, return_when=asyncio.FIRST_COMPLETED)
            conn.gone = not job.done()  # EOF first: the client went away
        except asyncio.CancelledError:
            # The server is closing. A command that finished meanwhile still gets its reply
            # (flushed as the connection closes): typically `shutdown`, whose completion is
            # what makes the daemon close the server in the first place.
            if job.done() and not job.cancelled() and not conn.gone:
                self._reply(conn, cmd, job)
                self._linger(conn, cmd, args, job)
            raise
        finally:
            for t in (job, eof):
                if not t.done():
                    t.cancel()
            await asyncio.gather(job, eof, return_exceptions=True)
        if conn.gone:
            self._logger.debug("control: the client of %r went away; cancelled it", cmd)
            return
        self._reply(conn, cmd, job)
        self._linger(conn, cmd, args, job)
        if conn.writer.transport.is_closing():
            return
        try:
            await asyncio.wait_for(conn.writer.drain(), REPLY_WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            conn.writer.transport.abort()

    def _linger(self, conn: _Connection, cmd: str, args: dict[str, Any], job: asyncio.Task[object]
                ) -> None:
        """Hold the connection of a waiting `shutdown` open until the process exits."""
        if (protocol.COMMANDS[cmd].linger and args.get("wait") and not job.cancelled()
                and job.exception() is None and not conn.writer.transport.is_closing()):
            # A duplicate of the fd: the transport closes its own as usual, and the kernel
            # closes this one when the process exits, which is the EOF the client waits for.
            self._held.append(os.dup(conn.writer.get_extra_info("socket").fileno()))

    def _reply(self, conn: _Connection, cmd: str, job: asyncio.Task[object]) -> None:
        if job.cancelled():
            conn.write_error(WireError.INTERNAL, f"{cmd} was cancelled")
            return
        exc = job.exception()
        if exc is None:
            conn.write_final(protocol.ok_reply(job.result()))
        elif isinstance(exc, RemoteError):
            conn.write_error(exc.code, exc.message, exc.detail)
        else:
            self._logger.exception("control: %s failed", cmd, exc_info=exc)
            conn.write_error(WireError.INTERNAL, f"internal error in {cmd}: {exc!r}")


async def _wait_eof(reader: asyncio.StreamReader) -> None:
    """Return once the client closed its side. Bytes after the request are ignored."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


def _in_group(uid: int, gid: int) -> bool:
    """Whether the user `uid` has `gid` as primary group or is listed as a member of it."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False
