"""systemd: procsupd's own sd_notify, against real datagram sockets."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from procsup import systemd


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_notify_sends_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert systemd.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_helpers_send_their_messages(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert systemd.ready(env)
    assert sock.recv(4096) == b"READY=1"
    assert systemd.stopping(env)
    assert sock.recv(4096) == b"STOPPING=1"
    assert systemd.status("3 apps\nrunning", env)
    assert sock.recv(4096) == b"STATUS=3 apps running"


def test_default_environment_is_os_environ(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.ready()
    assert sock.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.ready()


def test_abstract_socket() -> None:
    name = f"procsup-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "relative/path", "notify"])
def test_unset_or_invalid_socket_is_false(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert systemd.notify("READY=1", env) is False


def test_unreachable_socket_is_false_not_an_error(tmp_path: Path) -> None:
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing")})
    regular = tmp_path / "file"
    regular.write_text("")
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(regular)})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "/" + "x" * 200})  # path too long
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "@procsup-nobody-listens-here"})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "/bad\0path"})
    assert not systemd.notify("STATUS=\udcff", {"NOTIFY_SOCKET": str(regular)})


def test_stderr_to_journal_matches_the_stream_or_the_invocation(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as f:
        st = os.fstat(f.fileno())
        stream = f"{st.st_dev}:{st.st_ino}"
        cases = [
            ({"JOURNAL_STREAM": stream}, True),
            ({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, False),  # redirected
            ({"JOURNAL_STREAM": "garbage"}, False),
            ({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}", "INVOCATION_ID": "x"}, False),
            ({"INVOCATION_ID": "0123"}, True),
            ({}, False),
        ]
        for env, expected in cases:
            assert systemd.stderr_to_journal(env, fd=f.fileno()) is expected, env


PRIORITIES = [
    (logging.CRITICAL, "<3>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
    (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
]


@pytest.mark.parametrize(("level", "prefix"), PRIORITIES)
def test_priority_prefix_on_every_line(level: int, prefix: str) -> None:
    record = logging.LogRecord("procsupd", level, __file__, 1, "one\ntwo", None, None)
    text = systemd.PriorityFormatter("%(message)s").format(record)
    assert text == f"{prefix}one\n{prefix}two"
