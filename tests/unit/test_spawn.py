"""spawn.run_bounded with real short commands on a real loop: their end, their words, their
time limit (the whole group killed), cancellation, and a loop that keeps turning meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from procsup import inherit, limits, spawn

T = TypeVar("T")
LIMIT = 20.0  # every test's loop is bounded by it


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, LIMIT))


def launch(script: str, **kw: Any) -> spawn.Launch:
    return spawn.Launch(argv=("sh", "-c", script), env={"PATH": os.environ["PATH"], **kw})


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, f"{what} (pid {pid}) still alive"
        time.sleep(0.01)


def test_exit_code_and_the_tail_of_both_streams() -> None:
    done = run(spawn.run_bounded(launch("echo one; echo two >&2; exit 3"), 5))
    assert (done.code, done.signal, done.timed_out) == (3, None, False)
    assert done.output == b"one\ntwo\n"
    assert done.last_line == "two"
    ok = run(spawn.run_bounded(launch("exit 0"), 5))
    assert (ok.code, ok.output, ok.last_line) == (0, b"", "")


def test_in_its_cwd_with_its_env(tmp_path: Path) -> None:
    job = spawn.Launch(argv=("sh", "-c", 'echo "$PWD $CHECK_VAR"'),
                       env={"PATH": os.environ["PATH"], "CHECK_VAR": "x1"}, cwd=str(tmp_path))
    done = run(spawn.run_bounded(job, 5))
    assert done.last_line == f"{tmp_path} x1"


def test_output_is_kept_bounded() -> None:
    done = run(spawn.run_bounded(launch("head -c 1000000 /dev/zero | tr '\\0' a; echo; echo end"),
                                 10))
    assert done.code == 0
    assert len(done.output) == spawn.OUTPUT_TAIL
    assert done.last_line == "end"


def test_time_limit_kills_the_whole_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}.child; echo $$ > {pids}; echo waiting; wait"
    running: set[int] = set()

    async def main() -> tuple[spawn.Finished, set[int]]:
        task = asyncio.ensure_future(spawn.run_bounded(launch(script), 0.5, running=running))
        while not (pids.exists() and Path(f"{pids}.child").exists()):
            await asyncio.sleep(0.01)
        during = set(running)
        return await task, during

    began = time.monotonic()
    done, during = run(main())
    took = time.monotonic() - began
    leader, child = int(pids.read_text()), int(Path(f"{pids}.child").read_text())
    assert done.timed_out and done.code is None
    assert done.signal in (9, None)  # SIGKILL, if its end was seen within the wait after it
    assert done.last_line == "waiting"
    assert 0.4 <= took < 3.0, took
    assert during == {leader}
    wait_gone(leader, "the check")
    wait_gone(child, "what the check started")


def test_what_a_finished_command_left_in_its_group_is_killed(tmp_path: Path) -> None:
    child = tmp_path / "child"
    done = run(spawn.run_bounded(launch(f"sleep 60 >/dev/null 2>&1 & echo $! > {child}"), 5))
    assert done.code == 0 and not done.timed_out
    wait_gone(int(child.read_text()), "the background child")


def test_cancelled_it_kills_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running: set[int] = set()

    async def main() -> None:
        task = asyncio.ensure_future(
            spawn.run_bounded(launch(f"echo $$ > {pid_file}; exec sleep 60"), 30,
                              running=running))
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while running:  # reaped in the background
            assert time.monotonic() < deadline, "the cancelled check was never reaped"
            await asyncio.sleep(0.01)
        assert not alive(pid)

    run(main())


def test_the_loop_keeps_turning_while_a_check_runs() -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        try:
            done = await spawn.run_bounded(launch("sleep 0.5"), 5)
        finally:
            t.cancel()
        assert done.code == 0
        return ticks

    assert run(main()) >= 20  # 0.5 s at one tick per 10 ms, with room for a slow machine


def test_a_command_that_cannot_start_raises_spawn_error(tmp_path: Path) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    job = spawn.Launch(argv=(str(tmp_path / "missing"),), env={})
    with pytest.raises(spawn.SpawnError, match="executable not found"):
        run(spawn.run_bounded(job, 5))
    job = spawn.Launch(argv=(sys.executable, "-c", "0"), env={}, cwd=str(tmp_path / "nope"))
    with pytest.raises(spawn.SpawnError, match="cwd not found"):
        run(spawn.run_bounded(job, 5))
    assert len(os.listdir("/proc/self/fd")) == fds  # no pipe end left open by a failed start


# -- limits, nice, oom_score_adjust: what the child gets, and how -----------------------------


def _limits_of(pid: int, name: str) -> tuple[str, str]:
    """(soft, hard) of /proc/PID/limits row `name` ("Max open files")."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            soft, hard = line[len(name):].split()[:2]
            return soft, hard
    raise AssertionError(f"no {name!r} in /proc/{pid}/limits")


def _program(pid: int) -> str:
    """The program `pid` runs, once it exec'd past any helper (bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        if comm == "sleep" or time.monotonic() > deadline:
            return comm
        time.sleep(0.005)


@contextlib.contextmanager
def _started_with_nofile(soft: int) -> Iterator[None]:
    """As procsupd: started with soft RLIMIT_NOFILE `soft`, then raised; restored after."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    original = dict(inherit._ORIGINAL)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, saved[1]))
        inherit.remember_limits()
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)
        inherit._ORIGINAL.clear()
        inherit._ORIGINAL.update(original)


@contextlib.contextmanager
def _child(launch: spawn.Launch) -> Iterator[int]:
    proc = spawn.start(launch)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(5)


_SLEEP = ("sleep", "100")


def _hard_nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


needs_room = pytest.mark.skipif(
    _hard_nofile() != resource.RLIM_INFINITY and _hard_nofile() < 512,
    reason="the open-files hard limit leaves no room to start lower")


@needs_room
def test_default_is_the_original_open_files_limit_held_around_the_fork() -> None:
    with _started_with_nofile(256):
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert spawn.plan(spawn.Launch(_SLEEP, env=os.environ)) == limits.Plan(
            nofile=(256, before[1]))
        with _child(spawn.Launch(_SLEEP, env=os.environ)) as pid:
            assert _limits_of(pid, "Max open files")[0] == "256"
            assert _program(pid) == "sleep"
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == before  # put back


@needs_room
def test_default_without_room_below_the_original_uses_prlimit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inherit, "room_below", lambda limit: False)
    with _started_with_nofile(256), _child(spawn.Launch(_SLEEP, env=os.environ)) as pid:
        assert _program(pid) == "sleep"  # the helper exec'd the program: same pid
        assert _limits_of(pid, "Max open files")[0] == "256"


def test_app_limits_nice_and_oom_score() -> None:
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    own_oom = int(Path("/proc/self/oom_score_adj").read_text())
    want = limits.Wanted({"core": (0, 0), "nofile": (200, 300)}, nice=min(19, own_nice + 3),
                         oom_score_adjust=min(1000, own_oom + 100))
    with _child(spawn.Launch(_SLEEP, env=os.environ, attributes=want)) as pid:
        assert _program(pid) == "sleep"
        assert _limits_of(pid, "Max open files") == ("200", "300")
        assert _limits_of(pid, "Max core file size") == ("0", "0")
        assert os.getpriority(os.PRIO_PROCESS, pid) == want.nice
        assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) == want.oom_score_adjust


def test_a_missing_helper_is_a_clear_spawn_error(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(spawn, "_HELPER_PATH", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(spawn, "_helpers", {})
    want = limits.Wanted({"core": (0, 0), "nproc": (100, 100)})
    with pytest.raises(spawn.SpawnError) as info:
        spawn.start(spawn.Launch(_SLEEP, env=os.environ, attributes=want))
    assert info.value.reason == (
        "cannot set limits.core, limits.nproc: prlimit (util-linux) is not installed")
    assert not info.value.transient


def test_behind_a_helper_a_missing_program_is_still_not_found() -> None:
    want = limits.Wanted({"core": (0, 0)})
    with pytest.raises(spawn.SpawnError) as info:
        spawn.start(spawn.Launch(("no-such-program-x",), env=os.environ, attributes=want))
    assert info.value.reason == "executable not found: no-such-program-x"


def test_what_procsupd_cannot_grant_is_a_final_spawn_error() -> None:
    hard = _hard_nofile()
    want = limits.Wanted({"nofile": (8, limits.UNLIMITED)}) if hard != limits.UNLIMITED else (
        limits.Wanted({"nofile": (8, 1 << 40)}))
    with pytest.raises(spawn.SpawnError) as info:
        spawn.start(spawn.Launch(_SLEEP, env=os.environ, attributes=want))
    assert info.value.reason.startswith("limits.nofile: ")
    assert not info.value.transient
