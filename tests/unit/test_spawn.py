"""spawn.run_bounded with real short commands on a real loop: their end, their words, their
time limit (the whole group killed), cancellation, and a loop that keeps turning meanwhile."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from procsup import spawn

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
