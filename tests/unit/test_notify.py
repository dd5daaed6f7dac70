"""procsup.notify: the instances' $NOTIFY_SOCKET, with real datagrams from real child processes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from procsup import notify
from procsup.notify import Message, NotifyServer, parse_fields, sender_group

T = TypeVar("T")
DEADLINE = 10.0  # seconds; every wait in this file is bounded by it

# A child that sends each of argv[2:] (or, with "--burst N", N numbered messages) as one
# datagram to argv[1], then exits. Blocking sendto: a full queue slows it, never drops.
SENDER = """
import socket, sys
path, *msgs = sys.argv[1:]
if msgs[:1] == ["--burst"]:
    msgs = [f"STATUS={i}" for i in range(int(msgs[1]))]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in msgs:
    s.sendto(m.encode("utf-8", "surrogateescape"), path)
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE * 2))


async def wait_until(cond: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def finish(proc: subprocess.Popen[bytes]) -> int:
    """Wait (without blocking the loop, which must keep reading) for a child to exit."""
    await wait_until(lambda: proc.poll() is not None, f"child {proc.pid} to exit")
    assert proc.returncode is not None
    return proc.returncode


def send(path: str, *messages: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SENDER, path, *messages], **kwargs)


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short path (AF_UNIX allows 108 bytes; pytest's tmp_path can be longer)."""
    directory = tempfile.mkdtemp(prefix="ps-", dir="/tmp")
    try:
        yield os.path.join(directory, "notify")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Collector:
    """A started NotifyServer whose messages land in `.messages`."""

    def __init__(self, path: str) -> None:
        self.messages: list[Message] = []
        self.server = NotifyServer(asyncio.get_running_loop(), path, self.messages.append)

    async def __aenter__(self) -> Collector:
        self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def wait_for(self, count: int) -> list[Message]:
        await wait_until(lambda: len(self.messages) >= count, f"{count} messages")
        return self.messages


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (b"READY=1", {"READY": "1"}),
        (b"READY=1\nSTATUS=hello world\n", {"READY": "1", "STATUS": "hello world"}),
        (b"STATUS=a=b", {"STATUS": "a=b"}),  # only the first "=" splits
        (b"X_Y=", {"X_Y": ""}),  # empty value is fine
        (b"STATUS=one\nSTATUS=two", {"STATUS": "two"}),  # last wins
        (b"nonsense\n=1\n1A=2\nA B=3\nREADY=1\n\n", {"READY": "1"}),
        (b"STATUS=a\0b\nREADY=1", {"READY": "1"}),  # NUL: line dropped
        (b"STATUS=caf\xc3\xa9 \xff", {"STATUS": "caf\u00e9 \ufffd"}),
        (b"", {}),
        (b"garbage", {}),
    ],
)
def test_parse_fields(data: bytes, fields: dict[str, str]) -> None:
    assert parse_fields(data) == fields


def test_datagram_without_credentials_is_dropped() -> None:
    # The kernel attaches credentials to every datagram once SO_PASSCRED is on, so this path
    # cannot be reached with a real sender; the decoder must still refuse to guess one.
    assert notify._decode(b"READY=1", [], 0) is None


# -- the server, with real senders -----------------------------------------------------------


def test_message_is_attributed_to_the_sending_child(sock_path: str) -> None:
    async def main() -> None:
        async with Collector(sock_path) as c:
            proc = send(sock_path, "READY=1\nSTATUS=hello")
            assert await finish(proc) == 0
            (msg,) = await c.wait_for(1)
            assert msg == Message(
                pid=proc.pid, uid=os.getuid(), gid=os.getgid(),
                fields={"READY": "1", "STATUS": "hello"},
            )

    run(main())


def test_malformed_lines_ignored_and_empty_messages_dropped(sock_path: str) -> None:
    async def main() -> None:
        async with Collector(sock_path) as c:
            proc = send(sock_path, "garbage\n=x", "bad line\nSTATUS=ok\n1=2\nWATCHDOG=1")
            assert await finish(proc) == 0
            await c.wait_for(1)
            # The first datagram had no valid line; datagrams arrive in order, so once the
            # second is here the first was handled and dropped.
            await asyncio.sleep(0.05)
            assert [m.fields for m in c.messages] == [{"STATUS": "ok", "WATCHDOG": "1"}]

    run(main())


def test_burst_of_200_datagrams_all_delivered_in_order(sock_path: str) -> None:
    # More than the kernel's datagram queue (net.unix.max_dgram_qlen, often 10) and more than
    # one drain batch: the sender blocks until the loop reads, nothing is lost.
    async def main() -> None:
        async with Collector(sock_path) as c:
            proc = send(sock_path, "--burst", "200")
            msgs = await c.wait_for(200)
            assert await finish(proc) == 0
            assert [m.fields["STATUS"] for m in msgs] == [str(i) for i in range(200)]
            assert {m.pid for m in msgs} == {proc.pid}

    run(main())


def test_oversized_datagram_dropped_and_server_keeps_going(sock_path: str) -> None:
    async def main() -> None:
        async with Collector(sock_path) as c:
            proc = send(sock_path, "STATUS=" + "x" * 5000, "READY=1")
            assert await finish(proc) == 0
            await c.wait_for(1)
            await asyncio.sleep(0.05)
            assert [m.fields for m in c.messages] == [{"READY": "1"}]

    run(main())


def test_handler_exception_is_logged_and_serving_continues(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[dict[str, str]] = []

    def handler(msg: Message) -> None:
        seen.append(msg.fields)
        if len(seen) == 1:
            raise RuntimeError("boom")

    async def main() -> None:
        server = NotifyServer(asyncio.get_running_loop(), sock_path, handler)
        server.start()
        try:
            proc = send(sock_path, "STATUS=1", "STATUS=2")
            assert await finish(proc) == 0
            await wait_until(lambda: len(seen) == 2, "both messages")
        finally:
            server.close()

    with caplog.at_level(logging.ERROR, logger="procsup.notify"):
        run(main())
    assert seen == [{"STATUS": "1"}, {"STATUS": "2"}]
    assert any("handler failed" in r.getMessage() for r in caplog.records)


def test_passed_file_descriptors_are_closed(sock_path: str) -> None:
    # FDSTORE=1 with SCM_RIGHTS: the server keeps no fd store and must not leak the fd. The
    # child sees EOF on its pipe only once every copy of the write end is closed.
    code = """
import array, os, select, socket, sys
r, w = os.pipe()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendmsg([b"FDSTORE=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))],
          0, sys.argv[1])
os.close(w)
ready, _, _ = select.select([r], [], [], 5)
sys.exit(0 if ready and os.read(r, 1) == b"" else 1)
"""

    async def main() -> None:
        async with Collector(sock_path) as c:
            proc = subprocess.Popen([sys.executable, "-c", code, sock_path])
            (msg,) = await c.wait_for(1)
            assert msg.fields == {"FDSTORE": "1"}
            assert await finish(proc) == 0, "the passed pipe end stayed open in the server"

    run(main())


def test_socket_mode_and_close_unlinks(sock_path: str) -> None:
    async def main() -> None:
        server = NotifyServer(asyncio.get_running_loop(), sock_path, lambda m: None)
        assert server.path == sock_path
        server.start()
        try:
            st = os.stat(sock_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o666
        finally:
            server.close()
        assert not os.path.exists(sock_path)
        server.close()  # idempotent
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
            s.sendto(b"READY=1", sock_path)

    run(main())


def test_stale_file_is_replaced(sock_path: str) -> None:
    # What a daemon killed by SIGKILL leaves: a socket file nobody reads.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(sock_path)
    stale.close()
    assert os.path.exists(sock_path)

    async def main() -> None:
        async with Collector(sock_path) as c:
            assert await finish(send(sock_path, "READY=1")) == 0
            assert [m.fields for m in await c.wait_for(1)] == [{"READY": "1"}]

    run(main())


def test_close_leaves_a_file_that_is_no_longer_ours(sock_path: str) -> None:
    async def main() -> None:
        server = NotifyServer(asyncio.get_running_loop(), sock_path, lambda m: None)
        server.start()
        try:
            os.unlink(sock_path)
            Path(sock_path).write_text("someone else's")
        finally:
            server.close()
        assert Path(sock_path).read_text() == "someone else's"

    run(main())


def test_start_failures_leave_nothing_behind(sock_path: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        missing = os.path.join(os.path.dirname(sock_path), "no-such-dir", "notify")
        with pytest.raises(FileNotFoundError):
            NotifyServer(loop, missing, lambda m: None).start()
        with pytest.raises(OSError):
            NotifyServer(loop, "/tmp/" + "x" * 120, lambda m: None).start()
        os.mkdir(sock_path)
        with pytest.raises(IsADirectoryError):
            NotifyServer(loop, sock_path, lambda m: None).start()
        os.rmdir(sock_path)
        server = NotifyServer(loop, sock_path, lambda m: None)
        server.start()
        try:
            with pytest.raises(RuntimeError):
                server.start()
        finally:
            server.close()
        assert os.listdir(os.path.dirname(sock_path)) == []

    run(main())


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="sending as another user needs root")
def test_other_user_can_send_and_is_identified(sock_path: str) -> None:
    # Why the socket is 0o666: an instance with `user = "nobody"` must reach it; the kernel
    # still tells us exactly who sent it.
    os.chmod(os.path.dirname(sock_path), 0o755)
    nobody = 65534

    async def main() -> None:
        async with Collector(sock_path) as c:
            # Drop privileges in the child itself, after importing what it needs: the test's
            # interpreter and stdlib may live where nobody cannot read them.
            become = (f"import os, socket, sys; os.setgroups([]); os.setgid({nobody}); "
                      f"os.setuid({nobody})\n")
            proc = subprocess.Popen([sys.executable, "-c", become + SENDER, sock_path, "READY=1"])
            assert await finish(proc) == 0
            (msg,) = await c.wait_for(1)
            assert (msg.pid, msg.uid, msg.gid) == (proc.pid, nobody, nobody)

    run(main())


# -- attribution ------------------------------------------------------------------------------


def test_sender_group_maps_a_worker_to_its_instance(sock_path: str) -> None:
    # An "instance" in its own session starts a worker that sends READY=1: the message carries
    # the worker's pid, and sender_group maps it to the instance's group (its leader's pid).
    instance_code = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {SENDER!r}, sys.argv[1], "READY=1"]).wait()
sys.stdin.read()
"""
    groups: list[int | None] = []
    pids: list[int] = []

    def on_message(msg: Message) -> None:
        pids.append(msg.pid)
        groups.append(sender_group(msg.pid))  # as the supervisor does, at once

    async def main() -> None:
        server = NotifyServer(asyncio.get_running_loop(), sock_path, on_message)
        server.start()
        leader = subprocess.Popen(
            [sys.executable, "-c", instance_code, sock_path],
            stdin=subprocess.PIPE, start_new_session=True,
        )
        try:
            await wait_until(lambda: groups, "the worker's message")
            assert sender_group(leader.pid) == leader.pid
        finally:
            server.close()
            assert leader.stdin is not None
            leader.stdin.close()
            await finish(leader)
        assert pids[0] != leader.pid
        assert groups == [leader.pid]

    run(main())


def test_sender_group_of_unrelated_and_gone_processes() -> None:
    assert sender_group(os.getpid()) == os.getpgid(0)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            start_new_session=True)
    try:
        assert sender_group(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(DEADLINE)
    assert sender_group(proc.pid) is None
