"""statefile: atomic instance record, /proc start times, and leftover detection (real processes)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from procsup import statefile
from procsup.statefile import Record, leader_create_time, leftovers, read, read_checked, write


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start commands each in its own session; kill their whole groups afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        if proc.stdin is not None:
            proc.stdin.close()


def record_of(proc: subprocess.Popen[bytes], index: int = 0) -> Record:
    ct = leader_create_time(proc.pid)
    assert ct is not None
    return Record(app="web", index=index, pid=proc.pid, pgid=proc.pid, create_time=ct)


# --- the file ---------------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    state = tmp_path / "state" / "sub"
    records = [
        Record("web", 0, 100, 100, 1700000000.25),
        Record("web", 1, 101, 101, 1700000000.5),
        Record("worker name", 0, 200, 200, 1700000001.0),
    ]
    write(str(state), records, daemon_pid=42)
    assert read(str(state)) == records
    assert read_checked(str(state)) == records
    path = state / statefile.FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0  # created 0700 (minus umask)
    assert json.loads(path.read_text())["daemon_pid"] == 42
    assert os.listdir(state) == [statefile.FILENAME]  # no temporary file left behind


def test_write_replaces_the_previous_record(tmp_path: Path) -> None:
    write(str(tmp_path), [Record("a", 0, 10, 10, 1.0), Record("a", 1, 11, 11, 1.0)], 1)
    write(str(tmp_path), [Record("b", 0, 12, 12, 2.0)], 1)
    assert read(str(tmp_path)) == [Record("b", 0, 12, 12, 2.0)]
    write(str(tmp_path), [], 1)
    assert read(str(tmp_path)) == []
    assert os.listdir(tmp_path) == [statefile.FILENAME]


def test_write_keeps_an_existing_state_dir_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    write(str(tmp_path), [], 1)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_missing_file_reads_empty(tmp_path: Path) -> None:
    assert read(str(tmp_path / "nope")) == []
    assert read_checked(str(tmp_path / "nope")) == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 99, "instances": []}',
        b'{"version": 1, "instances": {}}',
        b'{"version": 1, "instances": [1]}',
        b'{"version": 1, "instances": [{"app": "a", "index": 0, "pid": 5, "pgid": 5}]}',
        b'{"version": 1, "instances": [{"app": "a", "index": 0, "pid": "5", "pgid": 5,'
        b' "create_time": 1.0}]}',
        b'{"version": 1, "instances": [{"app": "a", "index": -1, "pid": 5, "pgid": 5,'
        b' "create_time": 1.0}]}',
        b'{"version": 1, "instances": [{"app": "a", "index": 0, "pid": 0, "pgid": 5,'
        b' "create_time": 1.0}]}',
        b'{"version": 1, "instances": [{"app": "a", "index": 0, "pid": 5, "pgid": 5,'
        b' "create_time": true}]}',
    ],
)
def test_corrupt_file_reads_empty(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / statefile.FILENAME).write_bytes(content)
    with pytest.raises(ValueError):
        read_checked(str(tmp_path))
    assert read(str(tmp_path)) == []
    assert "ignoring instance record" in caplog.text


def test_integer_create_time_is_accepted(tmp_path: Path) -> None:
    (tmp_path / statefile.FILENAME).write_text(
        '{"version": 1, "instances": [{"app": "a", "index": 0, "pid": 5, "pgid": 5,'
        ' "create_time": 17}]}'
    )
    assert read_checked(str(tmp_path)) == [Record("a", 0, 5, 5, 17.0)]


# --- start times ------------------------------------------------------------------------------


def test_leader_create_time_agrees_with_psutil(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    child = spawn("sleep", "30")
    for pid in (os.getpid(), child.pid, 1):
        ours = leader_create_time(pid)
        assert ours is not None
        assert abs(ours - psutil.Process(pid).create_time()) < 0.01
    ours = leader_create_time(child.pid)
    assert ours is not None
    assert abs(ours - time.time()) < 5.0


def test_leader_create_time_of_a_gone_process_is_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=5)
    assert leader_create_time(proc.pid) is None


def test_command_names_with_parentheses_and_spaces(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # The comm field of /proc/<pid>/stat is "(name)"; a name holding ") 1 2 (" would shift
    # every field for a parser that splits at the first ")".
    weird = tmp_path / "a) S 1 2 (b"
    weird.symlink_to("/bin/sleep")
    proc = spawn(str(weird), "30")
    wait_for(lambda: psutil.Process(proc.pid).name().startswith("a) S"), what="exec")
    ours = leader_create_time(proc.pid)
    assert ours is not None
    assert abs(ours - psutil.Process(proc.pid).create_time()) < 0.01
    assert leftovers([record_of(proc)]) == [record_of(proc)]


# --- leftovers --------------------------------------------------------------------------------


def test_live_leader_with_matching_start_is_left_over(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    a, b = spawn("sleep", "30"), spawn("sleep", "30")
    records = [record_of(b, 1), record_of(a, 0)]
    assert leftovers(records) == records  # order kept


def test_reused_pid_is_not_left_over(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # A live process with the recorded pid but another start time is someone else.
    proc = spawn("sleep", "30")
    rec = record_of(proc)
    for shift in (-100.0, -0.06, 0.06, 100.0):
        other = Record(rec.app, rec.index, rec.pid, rec.pgid, rec.create_time + shift)
        assert leftovers([other]) == []
    assert leftovers([rec]) == [rec]
    # Our own pid is alive but (as far as the record says) started an hour before it did.
    me = leader_create_time(os.getpid())
    assert me is not None
    assert leftovers([Record("x", 0, os.getpid(), os.getpgid(0), me - 3600)]) == []


def test_dead_group_is_not_left_over(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn("sleep", "30")
    rec = record_of(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert leftovers([rec]) == []


def test_group_outliving_its_leader_is_left_over(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    # The shell leads the group and starts a sleep in it, then exits when stdin closes:
    # the daemon killed -9 before the leader went, leaving the rest of the instance behind.
    leader = spawn("sh", "-c", "sleep 30 & read x")
    wait_for(lambda: len(psutil.Process(leader.pid).children()) == 1, what="the child")
    rec = record_of(leader)
    assert leader.stdin is not None
    leader.stdin.close()
    leader.wait(timeout=5)
    assert leader_create_time(leader.pid) is None
    assert leftovers([rec]) == [rec]
    # Members that started before the recorded leader cannot be its children.
    later = Record(rec.app, rec.index, rec.pid, rec.pgid, rec.create_time + 100.0)
    assert leftovers([later]) == []

    os.killpg(leader.pid, signal.SIGKILL)
    # The orphaned sleep is reaped by init (or stays a zombie where nobody reaps): either way
    # nothing live is left.
    wait_for(lambda: leftovers([rec]) == [], what="the group to die")


def test_zombie_leader_alone_is_not_left_over(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    proc = spawn("sh", "-c", "read x")
    rec = record_of(proc)
    assert proc.stdin is not None
    proc.stdin.close()
    # Not reaped yet: a zombie still has its /proc entry and start time.
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, what="zombie")
    assert leader_create_time(proc.pid) == pytest.approx(rec.create_time, abs=0.01)
    assert leftovers([rec]) == []


def test_zombie_leader_with_live_members_is_left_over(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    proc = spawn("sh", "-c", "sleep 30 & read x")
    wait_for(lambda: len(psutil.Process(proc.pid).children()) == 1, what="the child")
    rec = record_of(proc)
    assert proc.stdin is not None
    proc.stdin.close()
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, what="zombie")
    assert leftovers([rec]) == [rec]
