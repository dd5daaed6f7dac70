"""The plan executor and the engine on a fake process layer and a fake clock: rollouts, scale
while stopping, a balance change, an apply during a rollout, monitors' recycles. Each test
replays a history and checks what the process layer was asked, in order."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from procsup.apply import ConfigLoader
from procsup.errors import ConfigError
from procsup.model import ExecMode, State
from procsup.reconcile import Kind
from procsup.supervisor import Role

from .fakes import FakeRun, World, desired, spec

LISTEN = ("tcp://127.0.0.1:1",)


def play(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(World(asyncio.get_running_loop()))

    asyncio.run(main())


def steps(w: World, since: int = 0, kinds: tuple[str, ...] = ("spawn", "kill")) -> list[str]:
    """The history from `since`, as "spawn web:0" lines, of the given kinds."""
    return [f"{h[0]} {h[1]}" for h in w.procs.history[since:] if h[0] in kinds]


async def up(w: World, *specs: Any) -> None:
    """Apply `specs` and let every instance become running."""
    await w.run(w.applier.apply(desired(w.daemon, *specs), wait=True))
    for s in specs:
        assert set(w.states(s.name).values()) <= {"running"}, w.states(s.name)


def cluster(n: int = 2, **kw: Any) -> Any:
    return spec("web", n, exec_mode=ExecMode.CLUSTER, listen=LISTEN, **kw)


def serving_throughout(w: World, since: int, app: str, n: int) -> None:
    """From `since`, every instance index had a live run that was not being stopped at every
    point of the history (a kill ends serving; a spawn starts it)."""
    serving: dict[int, set[int]] = {i: set() for i in range(n)}
    for pos, h in enumerate(w.procs.history):
        kind, name = h[0], h[1]
        if not name.startswith(f"{app}:"):
            continue
        index = int(name.split(":")[1])
        if kind == "spawn":
            serving[index].add(h[2])
        elif kind in ("kill", "exit"):
            serving[index].discard(h[2])
            if pos >= since:
                assert serving[index], f"{name} served by nobody after {h}"


# --- rollouts -------------------------------------------------------------------------------


def test_a_changed_cluster_app_rolls_one_instance_at_a_time() -> None:
    async def scenario(w: World) -> None:
        v1 = cluster()
        await up(w, v1)
        old = {i: v.pid for i, v in w.engine.current("web").items()}  # type: ignore[union-attr]
        mark = len(w.procs.history)
        v2 = dataclasses.replace(v1, env={"V": "2"})
        plan = await w.run(w.applier.apply(desired(w.daemon, v2), wait=True))
        assert [a.kind for a in plan.actions] == [Kind.RELOAD]
        assert steps(w, mark) == ["spawn web:0", "kill web:0", "spawn web:1", "kill web:1"]
        kills = [h for h in w.procs.history[mark:] if h[0] == "kill"]
        assert [k[2] for k in kills] == [old[0], old[1]]  # the old processes, not the new ones
        serving_throughout(w, mark, "web", 2)
        views = w.engine.snapshot()
        assert [(v.id.index, v.role, v.state) for v in views] == [
            (0, Role.CURRENT, State.RUNNING), (1, Role.CURRENT, State.RUNNING)]
        assert all(v.spec == v2 for v in views)

    play(scenario)


def test_a_replacement_that_crashes_stops_the_rollout_and_keeps_the_old_ones() -> None:
    async def scenario(w: World) -> None:
        v1 = cluster()
        await up(w, v1)
        old = sorted(r.pid for r in w.procs.live())
        v2 = dataclasses.replace(v1, env={"V": "2"})

        def crash(run: FakeRun) -> None:  # the new definition exits with code 1 at once
            if run.spec.env.get("V") == "2":
                w.clock.call_at(w.clock.time() + 0.2, lambda: w.procs.exit(run, 1))

        w.procs.on_spawn = crash
        failures: list[str] = []
        await w.run(w.applier.apply(desired(w.daemon, v2), wait=True, failures=failures))
        assert failures == ["reload of web stopped at web:0: the replacement exited with code 1 "
                            "before it was ready (see procsup logs web); the old instances "
                            "keep running"]
        assert sorted(r.pid for r in w.procs.live()) == old
        assert not any(h[0] == "kill" and h[2] in old for h in w.procs.history)
        assert w.engine.specs()["web"] == v1  # the definition its instances still run
        assert w.applier.config_error == failures[0]
        assert [v.role for v in w.engine.snapshot()] == [Role.CURRENT, Role.CURRENT]

    play(scenario)


def test_a_replacement_never_ready_is_given_up_on_the_clock() -> None:
    async def scenario(w: World) -> None:
        v1 = cluster(ready="notify", ready_timeout=3.0, min_uptime=0.5)
        started = w.clock.now
        task = asyncio.ensure_future(w.applier.apply(desired(w.daemon, v1), wait=False))
        await w.until(task.done)
        for run in w.procs.live():
            w.procs.ready(run)
        await w.until(lambda: set(w.states("web").values()) == {"running"})
        old = sorted(r.pid for r in w.procs.live())
        failure = await w.run(w.applier.reload_apps({"web": [0, 1]}))
        assert failure == ("reload of web stopped at web:0: the replacement was not ready "
                           "within ready_timeout 3s; the old instances keep running")
        assert sorted(r.pid for r in w.procs.live()) == old
        assert w.clock.now - started < 60  # fake seconds: the ready_timeout, not a real wait

    play(scenario)


def test_a_fork_app_changed_restarts_in_place() -> None:
    async def scenario(w: World) -> None:
        v1 = spec("web", 2)
        await up(w, v1)
        mark = len(w.procs.history)
        plan = await w.run(w.applier.apply(
            desired(w.daemon, dataclasses.replace(v1, command=("server2",))), wait=True))
        assert [a.kind for a in plan.actions] == [Kind.RESTART]
        # Both stop at once, each starts again once its own process is gone.
        assert steps(w, mark, ("kill", "exit", "spawn")) == [
            "kill web:0", "kill web:1", "exit web:0", "spawn web:0", "exit web:1",
            "spawn web:1"]

    play(scenario)


def test_a_balance_change_stops_every_instance_before_any_starts() -> None:
    async def scenario(w: World) -> None:
        v1 = cluster()
        await up(w, v1)
        mark = len(w.procs.history)
        plan = await w.run(w.applier.apply(
            desired(w.daemon, dataclasses.replace(v1, balance="reuseport")), wait=True))
        assert [a.kind for a in plan.actions] == [Kind.REBIND]
        assert steps(w, mark, ("kill", "exit", "spawn")) == [
            "kill web:0", "kill web:1", "exit web:0", "exit web:1", "spawn web:0",
            "spawn web:1"]
        assert set(w.states("web").values()) == {"running"}

    play(scenario)


# --- scale ----------------------------------------------------------------------------------


def test_scale_down_then_up_while_still_stopping() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("web", 4))
        w.procs.exit_after = None  # the old ones linger in their kill_timeout
        mark = len(w.procs.history)
        gone = await w.applier.scale("web", 2, wait=False)
        assert [(v.id.index, v.state, v.retiring) for v in gone] == [
            (2, State.STOPPING, True), (3, State.STOPPING, True)]
        assert w.applier.running()["web"].instances == 2  # the planner's count
        added = await w.applier.scale("web", 4, wait=False)
        assert [(v.id.index, v.state) for v in added] == [(2, State.STARTING),
                                                           (3, State.STARTING)]
        assert steps(w, mark) == ["kill web:2", "kill web:3", "spawn web:2", "spawn web:3"]
        roles = [(v.id.index, v.role) for v in w.engine.snapshot()]
        assert roles == [(0, Role.CURRENT), (1, Role.CURRENT), (2, Role.CURRENT),
                         (3, Role.CURRENT), (2, Role.OUTGOING), (3, Role.OUTGOING)]
        for run in [r for r in w.procs.live() if r.killed]:
            w.procs.exit(run, None, 15)
        await w.until(lambda: len(w.engine.snapshot()) == 4)
        await w.until(lambda: set(w.states("web").values()) == {"running"})
        assert w.applier.running()["web"].instances == 4

    play(scenario)


def test_scale_down_waits_for_the_processes_to_be_gone() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("web", 3))
        views = await w.run(w.applier.scale("web", 1, wait=True))
        assert [(v.id.index, v.state) for v in views] == [(1, State.STOPPED),
                                                          (2, State.STOPPED)]
        assert len(w.procs.live()) == 1
        assert list(w.states("web")) == [0]
        assert w.engine.specs()["web"].instances == 1

    play(scenario)


# --- an apply waits for a rollout -------------------------------------------------------------


def test_an_apply_during_a_rollout_waits_for_it() -> None:
    async def scenario(w: World) -> None:
        v1 = cluster()
        await up(w, v1)
        mark = len(w.procs.history)
        rollout = asyncio.ensure_future(w.applier.reload_apps({"web": [0, 1]}))
        await w.until(lambda: len(steps(w, mark)) == 1)  # the first replacement is starting
        apply = asyncio.ensure_future(
            w.applier.apply(desired(w.daemon, v1, spec("b")), wait=True))
        await w.until(lambda: rollout.done() and apply.done())
        assert rollout.result() is None
        assert [a.kind for a in apply.result().actions] == [Kind.START]
        assert steps(w, mark) == ["spawn web:0", "kill web:0", "spawn web:1", "kill web:1",
                                  "spawn b:0"]
        serving_throughout(w, mark, "web", 2)

    play(scenario)


def test_removed_and_added_apps_stop_before_anything_starts() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("old", 2))
        mark = len(w.procs.history)
        plan = await w.run(w.applier.apply(desired(w.daemon, spec("new", 1)), wait=True))
        assert [a.kind for a in plan.actions] == [Kind.STOP, Kind.START]
        assert steps(w, mark, ("kill", "exit", "spawn")) == [
            "kill old:0", "kill old:1", "exit old:0", "exit old:1", "spawn new:0"]
        assert w.engine.current("old") is None
        assert [v.id.app for v in w.engine.snapshot()] == ["new"]

    play(scenario)


# --- monitors -------------------------------------------------------------------------------


def test_a_monitor_replaces_a_cluster_instance_and_restarts_a_fork_one() -> None:
    async def scenario(w: World) -> None:
        await up(w, cluster(1), spec("job", 1))
        mark = len(w.procs.history)
        w.applier.recycle("web", None, "file changed")
        w.applier.recycle("job", None, "file changed")
        await w.until(lambda: len(steps(w, mark)) == 4 and all(
            v.state is State.RUNNING for v in w.engine.snapshot()))
        # The fork app stops at once and starts once gone; the cluster app's replacement
        # starts first (a task), and its old process stops only once the replacement runs.
        assert steps(w, mark) == ["kill job:0", "spawn web:0", "spawn job:0", "kill web:0"]
        notes = {"web": ("replaced: file changed", 0), "job": ("restarted: file changed", 1)}
        await w.until(lambda: {  # the replacement is noted once the old one is gone
            v.id.app: (v.note, v.inst.restarts) for v in w.engine.snapshot()} == notes)
        assert len(w.engine.snapshot()) == 2

    play(scenario)


# --- loading the config: off the loop, one at a time, with a deadline (real threads) ---------


class Reads:
    """A `read` for ConfigLoader: each call waits until released, then returns a fresh object
    (the loader hands it on untouched) or raises what it is given."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.error: Exception | None = None

    def __call__(self) -> Any:
        self.calls += 1
        if not self.release.wait(20):
            raise AssertionError("never released")
        if self.error is not None:
            raise self.error
        return object()


def loader(read: Callable[[], Any], deadline: float = 10.0) -> ConfigLoader:
    return ConfigLoader(asyncio.get_running_loop(), read, path="/etc/apps.toml",
                        log=logging.getLogger("test"), deadline=deadline)


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.mark.timeout(30)
def test_the_loop_keeps_turning_while_a_load_reads() -> None:
    async def main() -> None:
        reads = Reads()
        load = asyncio.ensure_future(loader(reads).load())
        ticks = 0
        for _ in range(20):  # 20 loop turns with timers, all while the read waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert (ticks, load.done(), reads.calls) == (20, False, 1)
        reads.release.set()
        assert await asyncio.wait_for(load, 10) is not None

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_loads_asked_for_during_a_load_share_one_load_after_it() -> None:
    async def main() -> None:
        reads = Reads()
        cl = loader(reads)
        first = asyncio.ensure_future(cl.load())
        await until(lambda: reads.calls == 1, "the first read")
        later = [asyncio.ensure_future(cl.load()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert reads.calls == 1  # one load at a time
        later[0].cancel()  # a caller that goes away does not cancel the load of the others
        reads.release.set()
        results = await asyncio.wait_for(asyncio.gather(first, *later[1:]), 10)
        assert (reads.calls, cl.started) == (2, 2)  # the three asked for one more read
        assert results[1] is results[2] and results[0] is not results[1]

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_read_error_reaches_every_waiter() -> None:
    async def main() -> None:
        reads = Reads()
        reads.error = ConfigError("broken", file="/etc/apps.toml", line=3)
        reads.release.set()
        with pytest.raises(ConfigError, match="broken"):
            await asyncio.wait_for(loader(reads).load(), 10)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_load_blocked_in_open_fails_at_the_deadline(tmp_path: Path) -> None:
    """What the daemon did before with a FIFO as apps.toml: open() waits for a writer. Past the
    deadline the load fails, a load asked for meanwhile fails at once (one stuck thread at most),
    and once the read ends the next load reads again."""
    pipe = tmp_path / "apps.toml"
    os.mkfifo(pipe)
    calls: list[float] = []

    def read() -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            with open(pipe, "rb") as f:  # blocks until the test opens the other end
                f.read()
        return object()

    async def main() -> None:
        cl = loader(read, deadline=0.3)
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            await asyncio.wait_for(cl.load(), 10)
        assert 0.3 <= time.monotonic() - started < 5
        assert info.value.file == "/etc/apps.toml"
        assert info.value.message.startswith(
            "loading the config took longer than 0.3 s; nothing was changed")
        with pytest.raises(ConfigError, match="has not ended after"):
            await asyncio.wait_for(cl.load(), 1)
        assert len(calls) == 1
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets its EOF
        await until(lambda: cl._busy_since is None, "the stuck read to end")
        assert await asyncio.wait_for(cl.load(), 10) is not None
        assert len(calls) == 2

    asyncio.run(main())
