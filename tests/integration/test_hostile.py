"""Hostile control clients (issue 11, items 2 and 6) against a real procsupd: too many
connections, oversized frames, a `logs -f` that stops reading, a flood of bad requests,
connections that never send their request. After each, `ping` answers."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

from procsup import protocol
from procsup.control import MAX_CONNECTIONS, MAX_WAITING

from .conftest import PY, Daemon, app_cmd, wait_for

MIB = 1 << 20


def vm_rss(pid: int) -> int:
    """VmRSS of `pid` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def request(cmd: str, args: dict[str, object] | None = None) -> bytes:
    return protocol.encode({"v": 1, "cmd": cmd, "args": args or {}})


def read_reply(s: socket.socket) -> dict[str, object]:
    return protocol.read_frame(s)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def daemon_lines(daemon: Daemon, needle: str) -> list[str]:
    return [line for line in daemon.daemon_log().splitlines() if needle in line]


def test_connections_beyond_the_limit_are_refused_clearly(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        """)
    daemon.start()
    with sockets() as held:
        # Every place served holds a legitimate request that never ends (a follower), so none
        # is closed to make room; then as many again wait for a place.
        for _ in range(MAX_CONNECTIONS):
            s = connect(daemon.socket)
            s.sendall(request("logs", {"follow": True, "lines": 0}))
            held.append(s)
        for s in held:
            assert read_reply(s)["ok"] is True  # served: its first frame arrived
        for _ in range(MAX_WAITING):
            held.append(connect(daemon.socket))
        with connect(daemon.socket) as extra:
            reply = read_reply(extra)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "too_many_connections"  # type: ignore[index]
        r = daemon.cli("ping")
        assert r.returncode == 1
        assert "procsupd is busy" in r.stderr and "64 connections" in r.stderr, r.stderr
    # The followers are gone: places are free again.
    wait_for(daemon.ping, 10, "ping once the connections closed")
    refused = daemon_lines(daemon, "refused a connection")
    assert 1 <= len(refused) <= 5, refused


#: A client process sending `frames` 1 MiB frames whose command is a 1 MiB string, one
#: connection each (the costliest kind for the daemon before the limits).
_BIG_FRAMES = """
import contextlib, socket, struct, sys
head = b'{"v":1,"cmd":"'
body = head + b"x" * ((1 << 20) - len(head) - 2) + b'"}'
data = struct.pack(">I", len(body)) + body
for _ in range(int(sys.argv[2])):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(sys.argv[1])
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            s.recv(65536)
"""


def test_oversized_frames_do_not_grow_the_daemon(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        """)
    daemon.start()
    assert daemon.proc is not None
    for _ in range(10):
        assert daemon.ping()
    before = vm_rss(daemon.proc.pid)
    # 25 processes at once, 8 frames each: fewer than the 20 bad requests after which the
    # daemon refuses a process on sight, so every frame reaches the framing code.
    clients = [subprocess.Popen([PY, "-c", _BIG_FRAMES, daemon.socket, "8"])
               for _ in range(25)]
    for c in clients:
        assert c.wait(120) == 0
    assert daemon.ping()
    grown = vm_rss(daemon.proc.pid) - before
    # 200 frames of 1 MiB, 25 at a time: once about 6.5 MiB each at peak, and the allocator
    # kept most of it. Now each is refused after its 4-byte header.
    assert grown < 20e6, f"daemon RSS grew by {grown / 1e6:.1f} MB"


def test_a_follower_that_stops_reading_is_dropped_with_one_line(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.flood]
        command = {app_cmd("flood")}
        log_max_size = "16M"
        log_retain = 1
        """)
    daemon.start()
    daemon.wait_states("flood", "running", 1)
    with connect(daemon.socket) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(request("logs", {"app": "flood", "follow": True, "lines": 0}))
        wait_for(lambda: daemon_lines(daemon, "does not read its stream"), 20,
                 "the follower dropped")
    assert daemon.ping()
    log = daemon.daemon_log()
    assert len(daemon_lines(daemon, "does not read its stream")) == 1, log
    assert "Traceback" not in log and "logs failed" not in log, log


def test_bad_requests_do_not_flood_the_daemon_log(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        """)
    daemon.start()
    daemon.wait_states("s", "running", 1)  # its "starting -> running" line is not counted
    lines_before = len(daemon.daemon_log().splitlines())
    bad = [protocol.encode({"v": 1, "cmd": "frobnicate"}), struct.pack(">I", 5) + b"{nope",
           request("stop", {"apps": []}), struct.pack(">I", 0xFFFFFFFF)]
    messages = []
    for i in range(1000):
        with connect(daemon.socket) as s:
            with contextlib.suppress(BrokenPipeError):  # refused before it was sent
                s.sendall(bad[i % len(bad)])
            reply = read_reply(s)
        assert reply["ok"] is False
        messages.append(reply["error"]["message"])  # type: ignore[index]
    # After 20 bad requests within 10 s, this process is refused on sight; another one (the
    # CLI) is served as usual.
    assert not any("refuses this process" in m for m in messages[:20])
    assert all("refuses this process" in m for m in messages[20:])
    assert daemon.ping()
    added = daemon.daemon_log().splitlines()[lines_before:]
    assert len(added) <= 10, "\n".join(added)
    assert any("bad request" in line for line in added)


def test_connections_that_send_no_request_are_closed_and_ping_answers(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        """)
    daemon.start()
    count = MAX_CONNECTIONS + MAX_WAITING // 2
    with sockets() as held:
        for _ in range(count):  # slow-loris: half a header, then nothing
            s = connect(daemon.socket, timeout=15)
            s.sendall(b"\x00\x00")
            held.append(s)
        # More than the daemon serves: a real client still gets in, because one that holds a
        # place without sending its request is closed once others wait.
        t0 = time.monotonic()
        r = daemon.cli("ping", timeout=20)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 4
        # Every one of them is answered `timeout` and closed, within the request timeout.
        deadline = time.monotonic() + 10
        for s in held:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            reply = read_reply(s)
            assert reply["error"]["code"] == "timeout"  # type: ignore[index]
            assert s.recv(1) == b""
    assert daemon.ping()
