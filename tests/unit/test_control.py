"""The control server on real Unix sockets, with a real asyncio loop in a thread.

The supervisor is replaced by `FakeCommands`, a tiny implementation of the `Commands` interface
(the seam the server is built around); everything else is real: sockets, peer credentials,
timeouts, file modes, processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from procsup import protocol
from procsup.client import Client
from procsup.control import (
    IDLE_EVICT,
    MAX_CONNECTIONS,
    MAX_WAITING,
    ControlServer,
    Peer,
    Send,
    _in_group,
)
from procsup.errors import ProcsupError, RemoteError
from procsup.throttle import Throttle

T = TypeVar("T")
Handler = Callable[[dict[str, Any], Peer, Send], Awaitable[object]]
NOBODY = 65534


class LoopThread:
    """An asyncio loop running in a background thread; `run` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []  # what reached the loop's exception handler
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, name="loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def finish() -> None:
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        self.run(finish())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def pong(args: dict[str, Any], peer: Peer, send: Send) -> object:
    return {"pong": True, "pid": os.getpid(), "version": "test"}


async def forever(args: dict[str, Any], peer: Peer, send: Send) -> object:
    await asyncio.Event().wait()
    raise AssertionError("not reached")


class FakeCommands:
    """`Commands` with one coroutine per command; records calls and cancellations."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers: dict[str, Handler] = {"ping": pong, **handlers}
        self.seen: list[tuple[str, dict[str, Any], Peer]] = []
        self.cancelled = threading.Event()

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: Peer, send: Send) -> object:
        self.seen.append((cmd, args, peer))
        handler = self.handlers.get(cmd)
        if handler is None:
            raise RemoteError("unknown_command", f"the fake does not do {cmd}")
        try:
            return await handler(args, peer, send)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def request(cmd: str, args: dict[str, Any] | None = None, v: object = 1) -> bytes:
    return frame(json.dumps({"v": v, "cmd": cmd, "args": args or {}}).encode())


def exchange(path: str, data: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """Send raw bytes on a new connection and read one reply frame."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        return protocol.read_frame(s)


def code_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    assert reply["v"] == 1
    return str(reply["error"]["code"])


def ping(path: str) -> None:
    assert Client(path, 5).call("ping") == {"pong": True, "pid": os.getpid(), "version": "test"}


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()
    assert lt.errors == []  # nothing escaped to the loop: every failure was handled


@pytest.fixture
def records() -> Records:
    return Records()


@pytest.fixture
def serve(
    loop_thread: LoopThread, tmp_path: Path, records: Records
) -> Iterator[Callable[..., ControlServer]]:
    servers: list[ControlServer] = []
    logger = logging.getLogger(f"test.control.{id(records)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(records)

    def start(
        commands: FakeCommands | None = None,
        *,
        path: str | None = None,
        mode: int = 0o660,
        group_gid: int | None = None,
        request_timeout: float = 5.0,
        throttle: Throttle | None = None,
    ) -> ControlServer:
        server = ControlServer(
            path or str(tmp_path / "ctl.sock"),
            commands or FakeCommands(),
            mode=mode,
            group_gid=group_gid,
            logger=logger,
            request_timeout=request_timeout,
            throttle=throttle,
        )
        loop_thread.run(server.start())
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop_thread.run(server.close())
    logger.removeHandler(records)


# --------------------------------------------------------------------------- requests


def test_round_trip_with_defaults_and_peer_credentials(serve: Callable[..., ControlServer]) -> None:
    async def status(args: dict[str, Any], peer: Peer, send: Send) -> object:
        return {"config": {}, "instances": [], "echo": args}

    fake = FakeCommands(status=status)
    server = serve(fake)
    ping(server.path)
    assert Client(server.path, 5).call("status") == {
        "config": {}, "instances": [], "echo": {"apps": []},
    }
    me = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    assert fake.seen == [("ping", {}, me), ("status", {"apps": []}, me)]


def test_error_from_dispatch_is_an_error_reply(serve: Callable[..., ControlServer]) -> None:
    async def stop(args: dict[str, Any], peer: Peer, send: Send) -> object:
        raise RemoteError("unknown_app", "no app named 'x'", {"app": "x"})

    server = serve(FakeCommands(stop=stop))
    with pytest.raises(RemoteError) as info:
        Client(server.path, 5).call("stop", apps=["x"])
    assert (info.value.code, info.value.message, info.value.detail) == (
        "unknown_app", "no app named 'x'", {"app": "x"},
    )
    with pytest.raises(RemoteError) as info:  # a command the daemon does not implement
        Client(server.path, 5).call("dump")
    assert info.value.code == "unknown_command"


def test_a_crashing_command_is_internal_and_logged(
    serve: Callable[..., ControlServer], records: Records
) -> None:
    async def boom(args: dict[str, Any], peer: Peer, send: Send) -> object:
        raise RuntimeError("boom")

    async def not_json(args: dict[str, Any], peer: Peer, send: Send) -> object:
        return {"x": object()}

    server = serve(FakeCommands(version=boom, status=not_json))
    with pytest.raises(RemoteError) as info:
        Client(server.path, 5).call("version")
    assert info.value.code == "internal"
    assert "boom" in info.value.message
    logged = [r for r in records.records if r.exc_info]
    assert logged and isinstance(logged[0].exc_info[1], RuntimeError)  # type: ignore[index]
    with pytest.raises(RemoteError) as info:
        Client(server.path, 5).call("status")
    assert info.value.code == "internal"
    ping(server.path)


def test_streamed_reply(serve: Callable[..., ControlServer]) -> None:
    async def logs(args: dict[str, Any], peer: Peer, send: Send) -> object:
        for i in range(3):
            await send({"lines": [{"app": "web", "instance": 0, "stream": "out", "text": str(i)}]})
        return {"lines": [], "end": "done"}

    server = serve(FakeCommands(logs=logs))
    results = list(Client(server.path, 5).stream("logs", follow=True))
    assert [r["lines"][0]["text"] for r in results[:3]] == ["0", "1", "2"]  # type: ignore[index]
    assert results[3] == {"lines": [], "end": "done"}
    # On the wire: "more": true on every frame but the last, which has no "more" key.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(request("logs", {"follow": True}))
        frames = [protocol.read_frame(s) for _ in range(4)]
    assert [f.get("more") for f in frames] == [True, True, True, None]
    assert "more" not in frames[3]
    # call() returns the final result.
    assert Client(server.path, 5).call("logs", follow=True) == {"lines": [], "end": "done"}


def test_many_clients_at_once(serve: Callable[..., ControlServer]) -> None:
    server = serve()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            ping(server.path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors


# --------------------------------------------------------------------------- bad clients


def test_ten_megabytes_of_garbage_is_refused_and_the_next_client_served(
    serve: Callable[..., ControlServer],
) -> None:
    server = serve()
    start = time.monotonic()
    reply = exchange(server.path, b"x" * (10 * 1024 * 1024))
    assert code_of(reply) == "too_large"
    assert time.monotonic() - start < 3
    ping(server.path)


def test_oversized_length_prefix_is_refused_without_reading_the_body(
    serve: Callable[..., ControlServer],
) -> None:
    server = serve(request_timeout=30.0)
    start = time.monotonic()
    reply = exchange(server.path, struct.pack(">I", protocol.MAX_REQUEST + 1))
    assert code_of(reply) == "too_large"
    assert time.monotonic() - start < 3  # answered at once, not after the request timeout


def test_a_request_of_exactly_the_limit_is_read(serve: Callable[..., ControlServer]) -> None:
    server = serve()
    body = b'{"v":1,"cmd":"ping","args":{}}'
    body += b" " * (protocol.MAX_REQUEST - len(body))  # JSON allows trailing whitespace
    assert exchange(server.path, frame(body))["result"]["pong"] is True


def test_half_sent_request_times_out_while_others_are_served(
    serve: Callable[..., ControlServer],
) -> None:
    server = serve(request_timeout=1.0)
    data = request("ping")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(5)
        slow.connect(server.path)
        start = time.monotonic()
        slow.sendall(data[: len(data) // 2])
        ping(server.path)  # served while the slow one hangs
        assert time.monotonic() - start < 0.9
        reply = protocol.read_frame(slow)
        elapsed = time.monotonic() - start
    assert code_of(reply) == "timeout"
    assert 0.9 <= elapsed < 4
    ping(server.path)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(b"{not json"), "bad_request"),
        (frame(b"\xff\xfe{}"), "bad_request"),
        (frame(b"[1, 2, 3]"), "bad_request"),
        (frame(b'{"v": 1}'), "bad_request"),
        (request("stop", {"apps": []}), "bad_request"),
        (request("logs", {"lines": "many"}), "bad_request"),
        (request("ping", {"extra": 1}), "bad_request"),
        (request("frobnicate"), "unknown_command"),
        (request("ping", v=2), "unsupported_version"),
        (request("ping", v=0), "unsupported_version"),
    ],
)
def test_malformed_requests_get_an_error_and_never_reach_dispatch(
    serve: Callable[..., ControlServer], data: bytes, code: str
) -> None:
    fake = FakeCommands()
    server = serve(fake)
    assert code_of(exchange(server.path, data)) == code
    assert fake.seen == []
    ping(server.path)


def test_connection_closed_inside_the_request(
    serve: Callable[..., ControlServer], records: Records
) -> None:
    fake = FakeCommands()
    server = serve(fake)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(request("ping")[:10])
        s.shutdown(socket.SHUT_WR)
        assert code_of(protocol.read_frame(s)) == "bad_request"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # connect and leave
        s.connect(server.path)
    ping(server.path)
    assert [c for c, _, _ in fake.seen] == ["ping"]
    assert not [r for r in records.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- peers


def connect_as_nobody(directory: Path, name: str) -> dict[str, Any]:
    """Fork a child that becomes nobody, connects to directory/name and sends a ping; returns
    the reply frame it read (or {"error": ...})."""
    rfd, wfd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() with threads; the child only does syscalls then exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            os.close(rfd)
            os.chdir(directory)  # as root: the path need not be searchable by nobody
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out = exchange(name, request("ping"))
            except Exception as exc:
                out = {"error": repr(exc)}
            os.write(wfd, json.dumps(out).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0
    return dict(json.loads(data))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")


@needs_root
@pytest.mark.root
def test_a_stranger_is_forbidden(
    serve: Callable[..., ControlServer], tmp_path: Path, records: Records
) -> None:
    tmp_path.chmod(0o755)
    fake = FakeCommands()
    server = serve(fake, mode=0o666)
    reply = connect_as_nobody(tmp_path, "ctl.sock")
    assert code_of(reply) == "forbidden", reply
    assert fake.seen == []
    assert any("refused" in r.getMessage() for r in records.records)
    ping(server.path)


@needs_root
@pytest.mark.root
def test_socket_group_members_are_served(
    serve: Callable[..., ControlServer], tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    serve(FakeCommands(), mode=0o666, group_gid=NOBODY, path=str(tmp_path / "a.sock"))
    assert connect_as_nobody(tmp_path, "a.sock")["result"]["pong"] is True
    # A group nobody is not in.
    serve(FakeCommands(), mode=0o666, group_gid=0, path=str(tmp_path / "b.sock"))
    assert code_of(connect_as_nobody(tmp_path, "b.sock")) == "forbidden"


def test_group_membership_lookup() -> None:
    import pwd

    me = pwd.getpwuid(os.getuid())
    assert _in_group(me.pw_uid, me.pw_gid)  # primary group
    assert not _in_group(2**31 - 7, me.pw_gid)  # no such user
    assert not _in_group(me.pw_uid, 2**31 - 7)  # no such group


@pytest.fixture
def member_of_another_group() -> Iterator[tuple[int, int, int]]:
    """A temporary user whose primary group is its own, listed as a supplementary member of a
    second temporary group: (uid, its primary gid, the other gid). Removed afterwards."""
    import grp
    import pwd
    import secrets

    tag = secrets.token_hex(3)
    user, group = f"pst{tag}u", f"pst{tag}g"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    run("groupadd", group)
    try:
        run("useradd", "--no-create-home", "--user-group", "--groups", group,
            "--shell", "/usr/sbin/nologin", user)
        try:
            entry = pwd.getpwnam(user)
            yield entry.pw_uid, entry.pw_gid, grp.getgrnam(group).gr_gid
        finally:
            run("userdel", user)
            with contextlib.suppress(KeyError):  # its own group, where userdel leaves it
                grp.getgrnam(user)
                run("groupdel", user)
    finally:
        run("groupdel", group)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add a temporary user and group")
@pytest.mark.root
def test_a_supplementary_member_is_in_the_group(
    member_of_another_group: tuple[int, int, int],
) -> None:
    uid, primary, other = member_of_another_group
    assert primary != other
    assert _in_group(uid, other)  # listed in /etc/group only
    assert _in_group(uid, primary)
    assert not _in_group(uid, 0)  # not root's group


# --------------------------------------------------------------------------- the socket file


def test_socket_mode_group_and_parent_directory(
    serve: Callable[..., ControlServer], tmp_path: Path
) -> None:
    gid = NOBODY if os.geteuid() == 0 else os.getgid()
    path = tmp_path / "run" / "procsup" / "ctl.sock"
    serve(path=str(path), mode=0o640, group_gid=gid)
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == gid
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755 & ~umask
    ping(str(path))


def test_stale_socket_is_replaced(
    serve: Callable[..., ControlServer], tmp_path: Path, records: Records
) -> None:
    path = tmp_path / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(path))
    serve(path=str(path))
    ping(str(path))
    assert any("stale" in r.getMessage() for r in records.records)


def test_a_live_server_makes_start_fail(
    serve: Callable[..., ControlServer], loop_thread: LoopThread
) -> None:
    server = serve()
    other = ControlServer(
        server.path, FakeCommands(), mode=0o600, group_gid=None, logger=logging.getLogger("x")
    )
    with pytest.raises(ProcsupError, match="another procsupd serves"):
        loop_thread.run(other.start())
    loop_thread.run(other.close())  # harmless, and must not remove the live server's socket
    ping(server.path)


def test_a_file_that_is_not_a_socket_is_left_alone(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    path = tmp_path / "ctl.sock"
    path.write_text("precious")
    server = ControlServer(
        str(path), FakeCommands(), mode=0o600, group_gid=None, logger=logging.getLogger("x")
    )
    with pytest.raises(ProcsupError, match="not a socket"):
        loop_thread.run(server.start())
    assert path.read_text() == "precious"


def test_close_unlinks_only_its_own_socket(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    path = tmp_path / "ctl.sock"

    def make() -> ControlServer:
        s = ControlServer(
            str(path), FakeCommands(), mode=0o600, group_gid=None, logger=logging.getLogger("x")
        )
        loop_thread.run(s.start())
        return s

    loop_thread.run(make().close())
    assert not path.exists()
    server = make()
    path.unlink()
    path.write_text("a successor's file")
    loop_thread.run(server.close())
    assert path.read_text() == "a successor's file"


# --------------------------------------------------------------------------- cancellation


def test_command_is_cancelled_when_the_client_disconnects(
    serve: Callable[..., ControlServer],
) -> None:
    fake = FakeCommands(stop=forever)
    server = serve(fake)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server.path)
        s.sendall(request("stop", {"apps": ["web"]}))
        wait_until(lambda: len(fake.seen) == 1)
        assert not fake.cancelled.is_set()
    assert fake.cancelled.wait(5)
    ping(server.path)


def test_follower_is_cancelled_when_the_client_disconnects(
    serve: Callable[..., ControlServer],
) -> None:
    async def follow(args: dict[str, Any], peer: Peer, send: Send) -> object:
        await send({"lines": []})
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    fake = FakeCommands(logs=follow)
    server = serve(fake)
    stream = Client(server.path, 5).stream("logs", follow=True)
    assert next(stream) == {"lines": []}
    stream.close()
    assert fake.cancelled.wait(5)


def test_a_client_that_does_not_read_its_stream_is_dropped(
    serve: Callable[..., ControlServer], records: Records
) -> None:
    dropped = threading.Event()

    async def flood(args: dict[str, Any], peer: Peer, send: Send) -> object:
        chunk = {"lines": [{"app": "a", "instance": 0, "stream": "out", "text": "x" * 65536}] * 4}
        try:
            for _ in range(1000):  # 256 MiB if nothing stopped it
                await send(chunk)
        except ConnectionError:
            dropped.set()
            raise
        raise AssertionError("never dropped")

    server = serve(FakeCommands(logs=flood))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server.path)
        s.sendall(request("logs", {"follow": True}))
        assert dropped.wait(10)
    dropped_lines = [r for r in records.records if "does not read" in r.getMessage()]
    assert len(dropped_lines) == 1
    # The drop is the client's doing: one warning, no "logs failed" traceback.
    assert not [r for r in records.records if r.exc_info or r.levelno >= logging.ERROR]
    ping(server.path)


def test_close_answers_in_flight_requests_shutting_down(
    serve: Callable[..., ControlServer], loop_thread: LoopThread
) -> None:
    fake = FakeCommands(stop=forever)
    server = serve(fake)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(request("stop", {"apps": ["all"]}))
        wait_until(lambda: len(fake.seen) == 1)
        loop_thread.run(server.close())
        assert code_of(protocol.read_frame(s)) == "shutting_down"
    assert fake.cancelled.is_set()
    assert not os.path.exists(server.path)


# --------------------------------------------------------------------------- shutdown


def test_a_command_that_completes_as_the_server_closes_gets_its_reply(
    serve: Callable[..., ControlServer], loop_thread: LoopThread
) -> None:
    exited = asyncio.Event()

    async def shutdown(args: dict[str, Any], peer: Peer, send: Send) -> object:
        await exited.wait()
        return {"stopped": 1}

    fake = FakeCommands(shutdown=shutdown)
    server = serve(fake)

    async def exit_daemon() -> None:
        exited.set()
        await server.close()

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(request("shutdown", {"wait": False}))
        wait_until(lambda: len(fake.seen) == 1)
        loop_thread.run(exit_daemon())
        assert protocol.read_frame(s)["result"] == {"stopped": 1}


def test_shutdown_without_wait_does_not_linger(serve: Callable[..., ControlServer]) -> None:
    async def shutdown(args: dict[str, Any], peer: Peer, send: Send) -> object:
        return {"stopped": 0}

    server = serve(FakeCommands(shutdown=shutdown))
    assert Client(server.path, 5).call("shutdown", wait=False) == {"stopped": 0}


DAEMON = textwrap.dedent(
    """
    import asyncio, logging, pathlib, sys, time
    from procsup.control import ControlServer

    path, marks = sys.argv[1], pathlib.Path(sys.argv[2])

    class Commands:  # the supervisor's way: shutdown returns once everything stopped
        def __init__(self):
            self.requested = asyncio.Event()
            self.exited = asyncio.Event()

        async def dispatch(self, cmd, args, peer, send):
            self.requested.set()
            await self.exited.wait()
            return {"stopped": 2}

    async def main():
        commands = Commands()
        server = ControlServer(path, commands, mode=0o600, group_gid=None,
                               logger=logging.getLogger("daemon"))
        await server.start()
        print("ready", flush=True)
        await commands.requested.wait()
        await asyncio.sleep(0.2)  # stopping the apps
        commands.exited.set()
        await server.close()  # at once, as the daemon does when its supervisor is done
        (marks / "closed").touch()
        time.sleep(0.3)  # the daemon's remaining teardown (pidfile, logs)
        (marks / "exiting").touch()

    asyncio.run(main())
    """
)


def test_shutdown_with_wait_returns_once_the_daemon_process_exited(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", DAEMON, path, str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        assert Client(path, 10).call("shutdown") == {"stopped": 2}
        # The reply came before close(); EOF only when the process was on its way out.
        assert (tmp_path / "closed").exists()
        assert (tmp_path / "exiting").exists()
        assert proc.wait(5) == 0
        assert not os.path.exists(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- limits


def test_connections_beyond_the_limit_wait_then_are_refused(
    serve: Callable[..., ControlServer], records: Records
) -> None:
    started = threading.Semaphore(0)

    async def hold(args: dict[str, Any], peer: Peer, send: Send) -> object:
        started.release()
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    server = serve(FakeCommands(status=hold))
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):  # served, each with a request that never ends
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(server.path)
            s.sendall(request("status"))
            held.append(s)
        for _ in range(MAX_CONNECTIONS):
            assert started.acquire(timeout=5)
        waiter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        waiter.settimeout(5)
        waiter.connect(server.path)
        waiter.sendall(request("ping"))  # waits, unread, for a place
        held.append(waiter)
        for _ in range(MAX_WAITING - 1):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(server.path)
            held.append(s)
        with pytest.raises(RemoteError) as info:
            Client(server.path, 5).call("ping")
        assert info.value.code == "too_many_connections"
        assert "busy" in info.value.message
        # A place frees: the connection that waited longest is served.
        held.pop(0).close()
        assert protocol.read_frame(waiter)["result"]["pong"] is True
    finally:
        for s in held:
            s.close()
    assert [r.getMessage() for r in records.records if "refused a connection" in r.getMessage()]


def test_a_connection_holding_a_place_without_a_request_is_closed_when_others_wait(
    serve: Callable[..., ControlServer],
) -> None:
    server = serve(request_timeout=30.0)
    idle: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(server.path)
            idle.append(s)
        t0 = time.monotonic()
        ping(server.path)  # waits until the idle ones are closed to make room
        assert IDLE_EVICT * 0.9 <= time.monotonic() - t0 < IDLE_EVICT + 3
        assert code_of(protocol.read_frame(idle[0])) == "timeout"
    finally:
        for s in idle:
            s.close()


def test_warnings_about_bad_clients_are_summarised(
    serve: Callable[..., ControlServer], records: Records
) -> None:
    server = serve(throttle=Throttle(burst=2, window=0.5))
    for _ in range(10):
        assert code_of(exchange(server.path, frame(b"{not json"))) == "bad_request"
    bad = [r.getMessage() for r in records.records if "bad request" in r.getMessage()]
    assert len(bad) == 2
    wait_until(lambda: any("8 more bad requests from uid" in r.getMessage()
                           for r in records.records), 5)
    ping(server.path)


def test_an_error_message_quotes_at_most_a_little_of_the_request(
    serve: Callable[..., ControlServer], records: Records
) -> None:
    server = serve()
    reply = exchange(server.path, request("x" * 60000))
    assert code_of(reply) == "unknown_command"
    assert len(reply["error"]["message"]) < 200
    assert all(len(r.getMessage()) < 300 for r in records.records)
