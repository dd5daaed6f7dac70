"""The engine's intent API and event core on a fake process layer and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from procsup.lifecycle import SpawnFailed
from procsup.model import State
from procsup.running import RunHandle
from procsup.supervisor import Role

from .fakes import FakeProcesses, World, spec


def play(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(World(asyncio.get_running_loop()))

    asyncio.run(main())


def started(w: World, app: str = "web", n: int = 1) -> list[int]:
    w.engine.set_specs({app: spec(app, n)})
    refs = [w.engine.add(app, i) for i in range(n)]
    w.engine.start(refs)
    return refs


def test_a_start_spawns_and_min_uptime_makes_it_running() -> None:
    async def scenario(w: World) -> None:
        (ref,) = started(w)
        v = w.engine.view(ref)
        assert v is not None and v.state is State.STARTING and v.pid == 100
        assert v.generation == 1 and v.role is Role.CURRENT
        (v,) = await w.run(w.engine.settled([ref]))
        assert v.state is State.RUNNING
        assert w.clock.now == 1001.0  # min_uptime on the fake clock

    play(scenario)


def test_a_spawn_failure_is_errored_at_once_with_the_reason() -> None:
    async def scenario(w: World) -> None:
        w.procs.fail["web"] = "executable not found: server"
        (ref,) = started(w)
        v = w.engine.view(ref)
        assert v is not None
        assert (v.state, v.inst.reason, v.generation) == (
            State.ERRORED, "executable not found: server", 0)

    play(scenario)


def test_a_transient_spawn_failure_backs_off_and_recovers_when_the_resource_returns() -> None:
    async def scenario(w: World) -> None:
        w.procs.fail["web"] = SpawnFailed("fork failed: out of memory", transient=True)
        (ref,) = started(w)
        await w.until(lambda: sum(h[0] == "spawn-failed" for h in w.procs.history) == 30)
        v = w.engine.view(ref)
        assert v is not None and v.state is State.BACKOFF  # 30 tries, far past max_restarts
        assert v.inst.reason is not None and "fork failed: out of memory" in v.inst.reason
        del w.procs.fail["web"]  # the limit is lifted
        (v,) = await w.run(w.engine.settled([ref]))
        assert (v.state, v.pid, v.inst.restarts) == (State.RUNNING, 100, 0)

    play(scenario)


def test_start_of_a_crash_loop_returns_when_its_first_run_ends() -> None:
    """With no restart delay a crashing instance never rests in backoff: `started` returns
    once the run the start began has ended and the next one is starting."""

    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1, max_restarts=100000)})
        ref = w.engine.add("web", 0)
        w.procs.on_spawn = lambda run: w.clock.call_at(
            w.clock.now + 0.1, lambda: w.procs.exit(run, 1))
        (v,) = await w.run(w.engine.started(w.engine.start([ref])), limit=5.0)
        assert (v.state, v.inst.exit_code, v.generation) == (State.STARTING, 1, 2)
        # a start of it now, while it is starting: its current run is this start's run
        (v,) = await w.run(w.engine.started(w.engine.start([ref])), limit=5.0)
        assert v.generation == 3
        # and a restart of it waits for the run it begins to end
        (v,) = await w.run(w.engine.started(w.engine.restart([ref])), limit=5.0)
        assert v.generation == 5

    play(scenario)


def test_started_returns_in_backoff_and_when_settled() -> None:
    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1, restart_delay=30.0),
                            "ok": spec("ok", 1)})
        refs = [w.engine.add("web", 0), w.engine.add("ok", 0)]
        w.procs.on_spawn = lambda run: run.spec.name == "web" and w.clock.call_at(
            w.clock.now + 0.1, lambda: w.procs.exit(run, 1))
        web, ok = await w.run(w.engine.started(w.engine.start(refs)), limit=5.0)
        assert (web.state, ok.state) == (State.BACKOFF, State.RUNNING)

    play(scenario)


def test_a_report_made_inside_an_effect_is_stepped_after_that_step() -> None:
    """A process layer that reports the exit from inside `kill` (the process was already
    gone): the report waits for the stop's step to finish, then ends the stop."""

    class Instant(FakeProcesses):
        def kill(self, handle: RunHandle, sig: int) -> None:
            super().kill(handle, sig)
            self.exit(self._own(handle), None, sig)

    async def scenario(w: World) -> None:
        w.procs.__class__ = Instant
        w.procs.exit_after = None
        (ref,) = started(w)
        await w.run(w.engine.settled([ref]))
        w.engine.stop([ref])
        v = w.engine.view(ref)
        assert v is not None
        assert (v.state, v.pid, v.inst.exit_code) == (State.STOPPED, None, -15)
        assert [h[0] for h in w.procs.history if h[0] != "heartbeat"] == [
            "spawn", "kill", "exit"]

    play(scenario)


def test_a_stale_report_of_an_earlier_run_is_dropped() -> None:
    async def scenario(w: World) -> None:
        (ref,) = started(w)
        await w.run(w.engine.settled([ref]))
        first = w.procs.runs[0]
        w.engine.restart([ref])
        await w.until(lambda: len(w.procs.runs) == 2)
        w.procs.ready(first)  # late news of the run that was replaced
        w.procs.exit(first, 1)
        v = w.engine.view(ref)
        assert v is not None and v.pid == w.procs.runs[1].pid and v.state is State.STARTING

    play(scenario)


def test_a_crash_is_restarted_and_counted() -> None:
    async def scenario(w: World) -> None:
        (ref,) = started(w)
        await w.run(w.engine.settled([ref]))
        w.procs.exit(w.procs.runs[0], 1)
        v = w.engine.view(ref)
        assert v is not None
        assert (v.state, v.inst.restarts, v.inst.exit_code, v.generation) == (
            State.STARTING, 1, 1, 2)

    play(scenario)


def test_stopped_returns_once_the_processes_are_gone() -> None:
    async def scenario(w: World) -> None:
        refs = started(w, n=2)
        await w.run(w.engine.settled(refs))
        w.engine.stop(refs)
        views = await w.run(w.engine.stopped(refs))
        assert [v.state for v in views] == [State.STOPPED, State.STOPPED]
        assert w.procs.live() == []

    play(scenario)


def test_retire_forgets_an_instance_once_stopped() -> None:
    async def scenario(w: World) -> None:
        refs = started(w, n=2)
        await w.run(w.engine.settled(refs))
        (v,) = w.engine.retire(refs[1:])
        assert (v.state, v.retiring) == (State.STOPPING, True)
        await w.run(w.engine.stopped(refs[1:]))
        assert w.engine.view(refs[1]) is None
        assert list(w.engine.current("web") or {}) == [0]

    play(scenario)


def test_signal_reaches_live_instances_only() -> None:
    async def scenario(w: World) -> None:
        refs = started(w, n=2)
        await w.run(w.engine.settled(refs))
        w.engine.stop(refs[1:])
        await w.run(w.engine.stopped(refs[1:]))
        done = w.engine.signal(refs, 10)
        assert [v.id.index for v in done] == [0]
        assert w.procs.history[-1] == ("signal", "web:0", w.procs.runs[0].pid, 10)

    play(scenario)


def test_replace_swaps_the_table_once_the_replacement_runs() -> None:
    async def scenario(w: World) -> None:
        (ref,) = started(w)
        await w.run(w.engine.settled([ref]))
        task = asyncio.ensure_future(w.engine.replace(ref))
        await w.until(lambda: len(w.procs.runs) == 2)
        roles = [(v.role, v.state) for v in w.engine.snapshot()]
        assert roles == [(Role.CURRENT, State.RUNNING), (Role.REPLACEMENT, State.STARTING)]
        await w.until(task.done)
        done = task.result()
        assert done.old == ref and done.new.role is Role.CURRENT
        roles = [(v.role, v.state) for v in w.engine.snapshot()]
        assert roles == [(Role.CURRENT, State.RUNNING), (Role.OUTGOING, State.STOPPING)]
        await w.run(w.engine.stopped([ref]))
        assert [v.ref for v in w.engine.snapshot()] == [done.new.ref]

    play(scenario)


def test_a_stop_supersedes_a_replacement() -> None:
    async def scenario(w: World) -> None:
        (ref,) = started(w)
        await w.run(w.engine.settled([ref]))
        task = asyncio.ensure_future(w.engine.replace(ref))
        await w.until(lambda: len(w.procs.runs) == 2)
        w.engine.stop([ref])
        await w.until(task.done)
        done = task.result()
        assert done.old is None and done.superseded
        assert w.procs.live() == []
        assert [(v.ref, v.state) for v in w.engine.snapshot()] == [(ref, State.STOPPED)]

    play(scenario)


def test_a_run_ready_in_its_spawn_step_keeps_its_heartbeat_watch() -> None:
    """min_uptime 0 with "started" readiness: the spawn's answer makes the instance running at
    once. That answer is stepped after the start's step, so the start's step cannot undo the
    heartbeat watch the running state asked for (the old re-entrant feed did: its outer call
    saw "not running" and cancelled the watch its inner call had just armed)."""

    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1, min_uptime=0.0, heartbeat_timeout=5.0)})
        ref = w.engine.add("web", 0)
        w.engine.start([ref])
        v = w.engine.view(ref)
        assert v is not None and v.state is State.RUNNING
        pid = w.procs.runs[0].pid
        assert [h for h in w.procs.history if h[0] == "heartbeat"] == [
            ("heartbeat", "web:0", pid, 5.0)]
        w.engine.stop([ref])
        assert [h for h in w.procs.history if h[0] == "heartbeat"][-1] == (
            "heartbeat", "web:0", pid, None)

    play(scenario)
