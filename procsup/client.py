"""The blocking control client (layer 4): one request per connection over a Unix socket.

A plain blocking socket, no asyncio, not even `contextlib`: `procsup status` must start fast,
and every module the CLI imports costs every run (tests/unit/test_cli_imports.py lists those
it must not import). The wire format is `protocol`'s; docs/protocol.md describes it.
"""

from __future__ import annotations

# `_socket`, the C module under `socket`, rather than `socket`: all the client does with a
# socket (connect, settimeout, sendall, recv_into, close) is `_socket.socket`'s own, with the
# same OSError subclasses, and `import socket` costs 4 ms more (it makes enums of its
# constants and imports selectors), a tenth of `procsup status` in a regular install.
import _socket

from procsup import protocol
from procsup.errors import ProcsupError, ProtocolError, RemoteError, WireError

TYPE_CHECKING = False  # mypy treats this name as true; `typing` is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Generator

#: Seconds allowed for connect() when the client has no timeout of its own.
CONNECT_TIMEOUT = 5.0


class Unreachable(ProcsupError):
    """The daemon cannot be reached at `path` (no socket, nobody listening, no permission, no
    answer in time, or the connection closed before the reply). The CLI exits 3."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot reach procsupd at {path}: {reason}")
        self.path = path
        self.reason = reason


class Client:
    """Talks to procsupd at `path`. `timeout` bounds connect and each read from the daemon
    (None: wait as long as the daemon takes, e.g. for a `stop` that waits)."""

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, cmd: str, **args: object) -> object:
        """Send one request and return the final reply's result.

        Frames marked `"more": true` are skipped (use `stream` for those). For a lingering
        command (`shutdown` with wait) it returns only once the daemon closed the connection,
        i.e. once its process exited.

        Raises `ProtocolError` for arguments the command table refuses (before connecting) and
        for a malformed reply, `RemoteError` for an error reply, `Unreachable` as documented.
        """
        result: object = None
        for frame in self._frames(cmd, args):
            result = frame
        return result

    def stream(self, cmd: str, **args: object) -> Generator[object, None, None]:
        """Send one request and yield the result of every reply frame, the final one last.

        Same errors as `call`. Closing the iterator closes the connection, which makes the
        daemon cancel the request (e.g. stop following logs).
        """
        return self._frames(cmd, args)

    def _frames(self, cmd: str, args: dict[str, object]) -> Generator[object, None, None]:
        try:
            request = protocol.make_request(cmd, args)
            data = protocol.encode(request, protocol.MAX_REQUEST)
        except protocol.ProtocolViolation as exc:
            raise ProtocolError(WireError(exc.code), exc.message) from None
        sock = self._connect()
        try:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon may have answered (e.g. `forbidden`) and closed before reading
                # the request: its reply is still there to read.
                pass
            while True:
                result, more = self._read_reply(sock)
                yield result
                if not more:
                    break
            if protocol.COMMANDS[cmd].linger and request["args"].get("wait"):
                self._wait_eof(sock)
        finally:
            sock.close()

    def _connect(self) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT if self.timeout is None else self.timeout)
            sock.connect(self.path)
            sock.settimeout(self.timeout)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise Unreachable(self.path, _connect_reason(exc)) from None
            raise
        return sock

    def _read_reply(self, sock: _socket.socket) -> tuple[object, bool]:
        try:
            frame = protocol.read_frame(sock, protocol.MAX_REPLY)
            result, more, error = protocol.parse_reply(frame)
        except TimeoutError:
            raise Unreachable(self.path, f"no reply within {self.timeout:g}s") from None
        except EOFError:
            raise Unreachable(self.path, "the connection closed before the reply") from None
        except ConnectionError as exc:
            raise Unreachable(self.path, f"connection lost: {exc.strerror or exc}") from None
        except protocol.ProtocolViolation as exc:
            raise ProtocolError(WireError(exc.code), f"malformed reply: {exc.message}") from None
        if error is not None:
            raise RemoteError(*error)
        return result, more

    def _wait_eof(self, sock: _socket.socket) -> None:
        """Block until the daemon closes the connection; extra bytes are ignored."""
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            raise Unreachable(self.path, f"still running after {self.timeout:g}s") from None
        except ConnectionError:
            pass


def _connect_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is procsupd running?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (a stale socket: procsupd is not running)"
    if isinstance(exc, PermissionError):
        return "permission denied (not root, the daemon's user, or in its socket group?)"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return exc.strerror or str(exc)
