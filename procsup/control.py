"""The control socket server (layer 4): Unix socket, peer check, framing, limits, dispatch.

This module knows the wire protocol (`protocol`) and a `Commands` interface, nothing else: the
`commands` module implements `Commands`, so this server cannot reach into the engine's state,
and the engine never sees a socket. docs/protocol.md describes what clients observe.

Guarantees, per connection (each connection is its own task, so a bad client never disturbs
another one, nor the loop):
- at most `MAX_CONNECTIONS` are served at once; the next `MAX_WAITING` wait, unread, in
  arrival order for a free place (at most `request_timeout`), and anyone beyond that gets
  `too_many_connections` at once. While someone waits, a served connection that has not sent
  its whole request after `IDLE_EVICT` seconds is closed (`timeout`) to make room;
- the peer is checked with SO_PEERCRED before anything is read: root, the daemon's own uid,
  or a member of `group_gid`; anyone else gets `forbidden`;
- the request must arrive whole within `request_timeout` (`timeout` otherwise); a length
  prefix above `protocol.MAX_REQUEST` is answered `too_large` at once, without reading the body;
  the request is read into a buffer of its announced size, and nothing else is buffered;
- malformed requests get `bad_request`/`unsupported_version`/`unknown_command`; arguments are
  validated against `protocol.COMMANDS` before `Commands.dispatch` runs;
- an exception escaping `dispatch` becomes an `internal` reply and a logged traceback;
- when the client goes away (EOF) while `dispatch` runs, `dispatch` is cancelled;
- a streamed reply whose client does not read is dropped, with one log line, once
  `STREAM_BUFFER_LIMIT` bytes are queued for it, or more than its share once all connections
  together have `TOTAL_BUFFER_LIMIT` queued;
- a process that sent `throttle.PENALTY_AFTER` bad requests within a window is refused on
  accept until the window ends (`throttle.Penalty`);
- what bad clients cause is logged through a `Throttle`: a few lines per peer uid and kind per
  window, then one line counting the rest, so no client can flood the daemon log.
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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from procsup import protocol
from procsup.connection import STREAM_BUFFER_LIMIT, Connection, Peer
from procsup.errors import ProcsupError, RemoteError, WireError
from procsup.throttle import Penalty, Throttle

#: Pushes one `"more": true` frame; raises ConnectionError when the client is gone.
Send = Callable[[object], Awaitable[None]]

#: Connections served at once. Each costs little (a task, a transport, its request buffer of at
#: most MAX_REQUEST, what its replies queue), but without a limit a peer could open any number.
MAX_CONNECTIONS = 64
#: Connections accepted beyond MAX_CONNECTIONS that wait, unread (only the kernel buffers their
#: bytes), for a place; the one after them is refused with `too_many_connections`.
MAX_WAITING = 64
#: While a connection waits, a served one that has not sent its whole request for this long is
#: closed to make room: a real client sends its request right after connecting, so it is one
#: that holds a place without using it (slow-loris).
IDLE_EVICT = 1.0
#: How often the waiting connections are looked at (only while there are any).
_WAIT_TICK = 0.1
#: Connections accepted in one loop turn beyond the first (the listen backlog is 128).
_ACCEPT_BATCH = 128
#: Bytes all streamed replies together may have queued; beyond it, a client holding more than
#: its share (this divided by the connections served) is dropped.
TOTAL_BUFFER_LIMIT = 16 * 1024 * 1024
#: Seconds a client gets to take the final reply off the socket before it is dropped.
REPLY_WRITE_TIMEOUT = 30.0
#: Seconds to wait for an existing socket to answer when deciding whether it is stale.
PROBE_TIMEOUT = 2.0
_PEERCRED = struct.Struct("3i")


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
        throttle: Throttle | None = None,
    ) -> None:
        self.path = path
        self._commands = commands
        self._mode = mode
        self._group_gid = group_gid
        self._logger = logger
        self._request_timeout = request_timeout
        self._sock: socket.socket | None = None  # the listening socket
        self._acceptor: asyncio.Task[None] | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self._tasks: set[asyncio.Task[None]] = set()  # one per connection served
        self._unstarted: dict[asyncio.Task[None], socket.socket] = {}  # their sockets, until run
        self._conns: set[Connection] = set()  # those whose streams are open
        # Accepted, not served yet: (socket, loop time of the accept), oldest first.
        self._waiting: deque[tuple[socket.socket, float]] = deque()
        self._tick: asyncio.TimerHandle | None = None
        self._throttle = throttle or Throttle()
        self._penalty = Penalty()
        self._summary: asyncio.TimerHandle | None = None
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
        except OSError as exc:
            sock.close()
            self._unlink_own()
            if exc.errno == errno.EADDRINUSE:
                raise ProcsupError(f"another procsupd serves {path}") from exc
            raise ProcsupError(f"cannot serve the control socket {path}: {exc}") from exc
        self._sock = sock
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(sock))
        self._logger.debug("control: serving %s", path)

    def adopt(self, fd: int) -> None:
        """Serve the listening socket `fd` that the previous image of procsupd bound (a re-exec
        handed it over): clients that connected meanwhile wait in its backlog, and are served
        now."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)
        self._sock = sock
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(sock))

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

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
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.cancel()
        for handle in (self._tick, self._summary):
            if handle is not None:
                handle.cancel()
        while self._waiting:
            self._refuse(self._waiting.popleft()[0], WireError.SHUTTING_DOWN,
                         "procsupd is shutting down")
        # Cancelled without yielding first, so that a command finishing right now (the
        # `shutdown` that made the daemon close us) is still done when its task sees the
        # cancellation, and gets its reply.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *([acceptor] if acceptor else []), return_exceptions=True)
        if self._sock is not None:
            self._sock.close()  # after the acceptor let go of it (its reader is removed)
            self._sock = None
        self._unlink_own()

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

    async def _accept(self, listener: socket.socket) -> None:
        """Accept connections for as long as the server runs; serve, queue or refuse each."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
                self._admit(sock, loop.time())
                # Then whatever else is pending, up to a batch: at one accept per loop turn, a
                # real client would wait a turn for every hostile connect ahead of it in the
                # kernel's backlog (measured: `status` p50 130 ms among 100 hostile clients).
                for _ in range(_ACCEPT_BATCH):
                    sock, _ = listener.accept()
                    self._admit(sock, loop.time())
            except BlockingIOError:
                pass  # the backlog is empty
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: the next accept may work once something was closed;
                # a pause keeps a full fd table from spinning the loop.
                self.note("accept failures", None, "control: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            # Let the connections accepted run before the next batch, so that a connect flood
            # cannot hold the loop.
            await asyncio.sleep(0)

    def _admit(self, sock: socket.socket, now: float) -> None:
        """Serve a new connection, have it wait for a place, or refuse it."""
        try:
            sock.setblocking(False)
            if self._refused_early(sock):
                return
        except OSError:  # no credentials for a peer gone already: nothing to answer
            sock.close()
            return
        if len(self._tasks) < MAX_CONNECTIONS and not self._waiting:
            self._serve_socket(sock, now)
        elif len(self._waiting) < MAX_WAITING:
            self._waiting.append((sock, now))
            if self._tick is None:
                self._tick = asyncio.get_running_loop().call_later(
                    _WAIT_TICK, self._look_at_waiting)
        else:
            self.note("connections refused", _peer_of(sock),
                      "control: refused a connection from pid %d uid %d: %d served and "
                      "%d waiting already", len(self._tasks), len(self._waiting))
            self._refuse(sock, WireError.TOO_MANY_CONNECTIONS,
                         f"procsupd is busy: it serves {MAX_CONNECTIONS} connections and "
                         f"{MAX_WAITING} more wait; try again")

    def _refused_early(self, sock: socket.socket) -> bool:
        """Refuse at once a process that sent too many bad requests lately (`Penalty`), and
        a request whose header is there already and announces more than MAX_REQUEST: the
        commonest abuse then costs no place, transport or task, and real clients are not kept
        waiting behind a flood of it. The header is only peeked at, so anything else goes on
        as usual, and only for peers the quick check lets in, since the peer is checked
        before anything is read (the rest take the usual way)."""
        peer = _peer_of(sock)
        if self._penalty.barred(peer.pid, peer.uid, asyncio.get_running_loop().time()):
            self.note("connections refused", peer,
                      "control: refused a connection from pid %d uid %d: it sent %d bad "
                      "requests lately", self._penalty.after)
            self._refuse(sock, protocol.BAD_REQUEST,
                         f"procsupd refuses this process for a while: it sent "
                         f"{self._penalty.after} bad requests in {self._penalty.window:g}s")
            return True
        if not (peer.uid in (0, os.getuid()) or peer.gid == self._group_gid):
            return False
        try:
            head = sock.recv(protocol.HEADER_SIZE, socket.MSG_PEEK)
        except OSError:
            return False
        if len(head) < protocol.HEADER_SIZE:
            return False
        length = protocol.decode_header(head)
        if length <= protocol.MAX_REQUEST:
            return False
        message = f"request of {length} bytes exceeds the limit of {protocol.MAX_REQUEST} bytes"
        self._bad(peer, message)
        self._refuse(sock, protocol.TOO_LARGE, message)
        return True

    def _look_at_waiting(self) -> None:
        """While connections wait: refuse those waiting too long, and make room by closing
        served ones that hold a place without sending their request (`IDLE_EVICT`)."""
        self._tick = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiting and now - self._waiting[0][1] >= self._request_timeout:
            sock, _ = self._waiting.popleft()
            self._refuse(sock, WireError.TOO_MANY_CONNECTIONS,
                         f"procsupd is busy: no free connection within "
                         f"{self._request_timeout:g}s ({MAX_CONNECTIONS} served); try again")
        idle = sorted((c for c in self._conns
                       if c.reading and c.peer is not None and now - c.since >= IDLE_EVICT),
                      key=lambda c: c.since)
        for conn in idle[: len(self._waiting)]:
            conn.reading = False  # once
            self.note("idle connections closed", conn.peer,
                      "control: closed a connection (pid %d, uid %d) that sent no request in "
                      "%.1fs while others waited", now - conn.since)
            conn.write_error(WireError.TIMEOUT,
                             f"request not received within {IDLE_EVICT:g}s while procsupd was "
                             f"at its limit of {MAX_CONNECTIONS} connections")
            conn.transport.close()  # the read ends with EOF; the task then ends
        if self._waiting:
            self._tick = loop.call_later(_WAIT_TICK, self._look_at_waiting)

    def _next_waiting(self) -> None:
        """A place became free: serve the connection that waited longest."""
        if self._waiting and not self._closing and len(self._tasks) < MAX_CONNECTIONS:
            sock, _ = self._waiting.popleft()
            self._serve_socket(sock, asyncio.get_running_loop().time())

    def _refuse(self, sock: socket.socket, code: str, message: str) -> None:
        """Answer with one error frame, without reading, and close."""
        with contextlib.suppress(OSError):  # a full buffer or a gone peer: just close
            sock.send(protocol.encode(protocol.error_reply(code, message)))
        sock.close()

    def _serve_socket(self, sock: socket.socket, since: float) -> None:
        task = asyncio.get_running_loop().create_task(self._on_connect(sock, since))
        self._tasks.add(task)
        self._unstarted[task] = sock
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        sock = self._unstarted.pop(task, None)
        if sock is not None:  # cancelled (the server closed) before it ever ran
            sock.close()
        self._next_waiting()

    async def _on_connect(self, sock: socket.socket, since: float) -> None:
        self._unstarted.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.connect_accepted_socket(
                lambda: Connection(self, self._logger, since), sock)
        except OSError:  # the client is already gone
            sock.close()
            return
        except BaseException:  # cancelled: the server closes (a transport made closed it too)
            sock.close()
            raise
        # drain() then returns at once below the stream limit: `send` decides on a client that
        # does not read (drops it) rather than stalling the command that streams.
        conn.transport.set_write_buffer_limits(high=STREAM_BUFFER_LIMIT)
        self._conns.add(conn)
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            if self._closing and not conn.replied and not conn.gone:
                conn.write_error(WireError.SHUTTING_DOWN, "procsupd is shutting down")
            # Not re-raised: this is the connection's top-level task and nobody awaits its
            # outcome; the server's close() gathers it with return_exceptions.
            return
        except Exception:
            # The outermost guard: one connection's failure never stops the server.
            self._logger.exception("control: connection failed")
            if not conn.replied and not conn.gone:
                conn.write_error(WireError.INTERNAL, "internal error; see the daemon log")
        finally:
            self._conns.discard(conn)
            conn.transport.close()

    # ------------------------------------------------------------------ limits and logging

    def over_budget(self, size: int) -> bool:
        """Whether a connection with `size` bytes queued holds more than its share of the
        write budget while all connections together exceed `TOTAL_BUFFER_LIMIT`."""
        if size <= TOTAL_BUFFER_LIMIT // MAX_CONNECTIONS:
            return False  # within any share: nothing to check
        total = sum(c.buffered() for c in self._conns)
        return total > TOTAL_BUFFER_LIMIT and size > TOTAL_BUFFER_LIMIT // len(self._conns)

    def _bad(self, peer: Peer, message: str) -> None:
        """A bad request: logged (through the throttle) and counted against its process."""
        self._penalty.bad(peer.pid, peer.uid, asyncio.get_running_loop().time())
        self.note("bad requests", peer, "control: bad request from pid %d uid %d: %s", message)

    def note(self, kind: str, peer: Peer | None, message: str, *args: object) -> None:
        """Log a warning about a client, through the throttle: `kind` names the trouble in the
        summary ("bad requests"); `message` gets the peer's pid and uid, then `args`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._summarise(now)
        uid = -1 if peer is None else peer.uid
        if self._throttle.allow((kind, uid), now):
            if peer is None:
                self._logger.warning(message, *args)
            else:
                self._logger.warning(message, peer.pid, peer.uid, *args)
        elif self._summary is None:
            end = self._throttle.next_end()
            if end is not None:
                self._summary = loop.call_at(end, self._summarise_later)

    def _summarise_later(self) -> None:
        self._summary = None
        loop = asyncio.get_running_loop()
        self._summarise(loop.time())
        end = self._throttle.next_end()
        if end is not None:
            self._summary = loop.call_at(end, self._summarise_later)

    def _summarise(self, now: float) -> None:
        for (kind, uid), n in self._throttle.expire(now):
            who = "unknown peers" if uid < 0 else f"uid {uid}"
            self._logger.warning("control: %d more %s from %s not logged in the last %gs",
                                 n, kind, who, self._throttle.window)

    async def _serve(self, conn: Connection) -> None:
        peer = conn.peer = _peer_of(conn.transport.get_extra_info("socket"))
        if not await self._allowed(peer):
            self.note("forbidden peers", peer,
                      "control: refused pid %d uid %d gid %d (not root, uid %d or in the socket "
                      "group)", peer.gid, os.getuid())
            conn.write_error(WireError.FORBIDDEN, "permission denied: not allowed to use procsupd")
            return
        try:
            cmd, args = await self._read_request(conn)
        except TimeoutError:
            self.note("requests timed out", peer,
                      "control: pid %d uid %d sent no whole request within %gs",
                      self._request_timeout)
            conn.write_error(
                WireError.TIMEOUT, f"request not received within {self._request_timeout:g}s"
            )
            return
        except protocol.ProtocolViolation as exc:
            self._bad(peer, exc.message)
            conn.write_error(exc.code, exc.message)
            return
        except EOFError as exc:
            if exc.args[0]:  # a client that connects and closes (a probe) is not worth a word
                conn.write_error(WireError.BAD_REQUEST, "connection closed inside the request")
            return
        except ConnectionError:
            return
        finally:
            conn.reading = False
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

    async def _read_request(self, conn: Connection) -> tuple[str, dict[str, Any]]:
        """The request, or TimeoutError after `request_timeout`."""
        # A timer rather than asyncio.wait_for, which runs the wait as a task of its own: two
        # more loop turns for every request, each as long as the busiest loop turn (a log
        # flood's pipeful) -- `status` under a flood and hostile clients waits for every one.
        timer = asyncio.get_running_loop().call_later(self._request_timeout, conn.time_out)
        try:
            payload = await conn.request
        finally:
            timer.cancel()
        return protocol.parse_request(protocol.decode_payload(payload))

    async def _run(self, conn: Connection, cmd: str, args: dict[str, Any], peer: Peer) -> None:
        """Dispatch, racing the client's EOF; then write the final reply."""
        job = asyncio.create_task(self._commands.dispatch(cmd, args, peer, conn.send))
        eof = asyncio.create_task(conn.wait_eof())
        try:
            await asyncio.wait({job, eof}, return_when=asyncio.FIRST_COMPLETED)
            # EOF first: the client went away. A stream that `send` dropped (or found closed)
            # ended the job with a ConnectionError: that is the client's doing, not a failure
            # of the command, so it is neither answered nor logged as one.
            conn.gone = conn.gone or not job.done()
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
        if conn.transport.is_closing():
            return
        try:
            await asyncio.wait_for(conn.drain(), REPLY_WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            conn.transport.abort()

    def _linger(self, conn: Connection, cmd: str, args: dict[str, Any], job: asyncio.Task[object]
                ) -> None:
        """Hold the connection of a waiting `shutdown` open until the process exits."""
        if (protocol.COMMANDS[cmd].linger and args.get("wait") and not job.cancelled()
                and job.exception() is None and not conn.transport.is_closing()):
            # A duplicate of the fd: the transport closes its own as usual, and the kernel
            # closes this one when the process exits, which is the EOF the client waits for.
            self._held.append(os.dup(conn.transport.get_extra_info("socket").fileno()))

    def _reply(self, conn: Connection, cmd: str, job: asyncio.Task[object]) -> None:
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


def _peer_of(sock: socket.socket) -> Peer:
    """The credentials of a connected Unix socket's peer (as of its connect())."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return Peer(*_PEERCRED.unpack(raw))


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
