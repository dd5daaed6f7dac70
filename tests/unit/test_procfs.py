"""procfs: the one reader of /proc, checked on real processes (a real zombie included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from procsup import procfs

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start commands each in its own session; kill and reap them afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def zombie(spawn: Spawn) -> subprocess.Popen[bytes]:
    """A child that has exited and that we do not reap (yet)."""
    proc = spawn(sys.executable, "-c", "pass")
    wait_for(lambda: (st := procfs.stat(proc.pid)) is not None and st.state == "Z", what="Z")
    return proc


@pytest.mark.parametrize(
    ("state", "dead"),
    [("R", False), ("S", False), ("D", False), ("T", False), ("t", False), ("I", False),
     ("Z", True), ("X", True)],
)
def test_dead_means_zombie_or_dead(state: str, dead: bool) -> None:
    assert procfs.is_dead(state) is dead


@pytest.mark.parametrize(
    ("comm", "state"),
    [(b"sleep", "S"), (b"a) S (b", "R"), (b"", "Z"), (b"x y)) z", "X")],
)
def test_parse_stat_splits_at_the_last_paren(comm: bytes, state: str) -> None:
    # Fields 3..24 of proc(5), numbered so that each value says where it came from.
    rest = [state.encode()] + [str(n).encode() for n in range(4, 53)]
    st = procfs.parse_stat(42, b"42 (" + comm + b") " + b" ".join(rest) + b"\n")
    assert (st.pid, st.state, st.ppid, st.pgrp, st.session) == (42, state, 4, 5, 6)
    assert (st.utime, st.stime, st.cutime, st.cstime) == (14, 15, 16, 17)
    assert st.start_ticks == 22
    assert st.dead is procfs.is_dead(state)


@pytest.mark.parametrize("data", [b"", b"42 (sleep", b"42 (sleep) S 1 42", b"42 (sleep) S x"])
def test_parse_stat_refuses_a_short_or_bad_line(data: bytes) -> None:
    with pytest.raises(ValueError):
        procfs.parse_stat(42, data)


def test_stat_of_a_running_process_agrees_with_psutil(spawn: Spawn) -> None:
    proc = spawn("sleep", "30")
    wait_for(lambda: (s := procfs.stat(proc.pid)) is not None and s.state == "S", what="asleep")
    st = procfs.stat(proc.pid)
    assert st is not None
    ps = psutil.Process(proc.pid)
    assert (st.pid, st.ppid, st.pgrp, st.session) == (proc.pid, os.getpid(), proc.pid, proc.pid)
    assert st.state == "S" and not st.dead
    assert procfs.rss(proc.pid) == ps.memory_info().rss
    created = procfs.boot_time() + st.start_ticks / procfs.CLOCK_TICKS
    assert abs(created - ps.create_time()) < 0.02


def test_a_zombie_is_dead_but_listed_with_its_group(spawn: Spawn) -> None:
    proc = zombie(spawn)
    st = procfs.stat(proc.pid)
    assert st is not None
    assert st.dead and st.pgrp == proc.pid and st.ppid == os.getpid()
    assert procfs.rss(proc.pid) == 0
    assert proc.pid in procfs.pids()
    assert any(s.pid == proc.pid and s.dead for s in procfs.stats())
    assert not procfs.environ(proc.pid)  # a zombie has no environment left to show
    proc.wait()
    assert procfs.stat(proc.pid) is None  # reaped: gone from the table


def test_the_zombie_definition_is_shared(spawn: Spawn) -> None:
    from procsup import spawn as spawn_mod
    from procsup import statefile

    live = spawn("sleep", "30")
    dead = zombie(spawn)
    assert spawn_mod.pid_alive(live.pid) and not spawn_mod.pid_alive(dead.pid)
    assert spawn_mod.live_members(live.pid) == [live.pid]
    assert spawn_mod.live_members(dead.pid) == []
    ticks = statefile.leader_start_ticks(dead.pid)
    assert ticks is not None  # a zombie still has its start time
    rec = statefile.Record(app="a", index=0, pid=dead.pid, pgid=dead.pid, start_ticks=ticks)
    assert statefile.leftovers([rec]) == []


def test_environ_and_pids_of_this_process() -> None:
    env = procfs.environ(os.getpid())
    assert env is not None and env.endswith(b"\0")
    assert os.getpid() in procfs.pids()
    assert procfs.pids() == sorted(procfs.pids())


def test_a_missing_process_reads_as_none() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert procfs.stat(gone.pid) is None
    assert procfs.read(gone.pid, "stat") is None
    assert procfs.environ(gone.pid) is None
    assert procfs.rss(gone.pid) is None
