"""Commands that race the plan executor, on the fake process layer and clock: a start that
reaches an instance on its way out, an old instance that crashes during its replacement,
a shutdown during a rollout, a crash-looping app started by an update. Each of these once
left a process nobody planned for, a serving gap, or a daemon that could not stop."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from procsup.commands import Commands
from procsup.lifecycle import SpawnFailed
from procsup.model import ExecMode, RestartPolicy, State
from procsup.supervisor import Role

from .fakes import FakeRun, World, desired, spec

LISTEN = ("tcp://127.0.0.1:1",)


def play(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(World(asyncio.get_running_loop()))

    asyncio.run(main())


def cluster(n: int = 2, **kw: Any) -> Any:
    return spec("web", n, exec_mode=ExecMode.CLUSTER, listen=LISTEN, **kw)


async def up(w: World, *specs: Any) -> None:
    await w.run(w.applier.apply(desired(w.daemon, *specs), wait=True))


def killed(w: World) -> list[FakeRun]:
    return [r for r in w.procs.live() if r.killed]


def test_a_start_during_scale_down_does_not_bring_the_retiring_instance_back() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("web", 2))
        w.procs.exit_after = None  # web:1 lingers in its kill_timeout
        scale = asyncio.ensure_future(w.applier.scale("web", 1, wait=True))
        await w.until(lambda: bool(killed(w)))
        ref1 = (w.engine.current("web") or {})[1].ref
        assert w.engine.start([ref1]) == {}  # `procsup start web` reaches only web:0
        assert w.engine.restart([ref1]) == {}
        for run in killed(w):
            w.procs.exit(run, None, 15)
        await w.until(scale.done)
        assert w.engine.view(ref1) is None  # forgotten once stopped
        assert len(w.procs.live()) == 1 and w.states("web") == {0: "running"}

    play(scenario)


def test_restart_all_during_a_rollout_leaves_the_outgoing_instance_to_stop() -> None:
    async def scenario(w: World) -> None:
        await up(w, cluster(1))
        w.procs.exit_after = None  # the old process takes its time to stop
        rollout = asyncio.ensure_future(w.applier.reload_apps({"web": [0]}))
        await w.until(lambda: bool(killed(w)))  # swapped; the old one is stopping
        marks = w.engine.restart([v.ref for v in w.engine.snapshot()])  # `restart all`
        assert [v.role for v in w.engine.views(marks)] == [Role.CURRENT]
        for run in killed(w):
            w.procs.exit(run, None, 15)
        await w.until(rollout.done)
        assert rollout.result() is None
        assert [v.role for v in w.engine.snapshot()] == [Role.CURRENT]
        await w.run(w.engine.started(marks))
        assert len(w.procs.live()) == 1 and w.states("web") == {0: "running"}

    play(scenario)


def test_a_start_of_an_app_being_removed_leaves_nothing_running() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("old", 1), spec("keep", 1))
        w.procs.exit_after = None
        apply = asyncio.ensure_future(
            w.applier.apply(desired(w.daemon, spec("keep", 1)), wait=True))
        await w.until(lambda: bool(killed(w)))
        ref = (w.engine.current("old") or {})[0].ref
        w.engine.start([ref])  # `procsup start old` while the apply removes it
        for run in killed(w):
            w.procs.exit(run, None, 15)
        await w.until(apply.done)
        assert w.engine.current("old") is None and w.engine.view(ref) is None
        assert [(v.id.app, v.state) for v in w.engine.snapshot()] == [("keep", State.RUNNING)]

    play(scenario)


def test_start_all_while_a_given_up_replacement_stops_lets_the_rollout_and_shutdown_end(
) -> None:
    async def scenario(w: World) -> None:
        w.applier.started_up.set()
        await up(w, cluster(1))
        old = (w.engine.current("web") or {})[0].ref
        rollout = asyncio.ensure_future(w.applier.reload_apps({"web": [0]}))
        await w.until(lambda: len(w.procs.runs) == 2)
        w.procs.exit_after = 1.0
        w.engine.stop([old])  # `procsup stop web` while the replacement starts
        await w.until(lambda: any(v.role is Role.REPLACEMENT and v.state is State.STOPPING
                                  for v in w.engine.snapshot()))
        w.engine.start([v.ref for v in w.engine.snapshot()])  # `procsup start all`
        await w.until(rollout.done, limit=60)
        assert rollout.result() is not None  # the instance was stopped: the reload says so
        w.applier.request_shutdown()
        await w.until(w.applier._exit.is_set, limit=60)
        assert w.procs.live() == []

    play(scenario)


def test_an_old_instance_that_crashes_during_its_replacement_is_replaced() -> None:
    """The ready replacement is what serves: it takes over rather than being thrown away."""

    async def scenario(w: World) -> None:
        await up(w, cluster(1, restart_delay=10.0, min_uptime=1.0))
        first = w.procs.runs[0]
        rollout = asyncio.ensure_future(w.applier.reload_apps({"web": [0]}))
        await w.until(lambda: len(w.procs.runs) == 2)
        w.procs.exit(first, 1)  # the old one crashes: backoff 10 s
        await w.until(rollout.done)
        assert rollout.result() is None
        assert w.states("web") == {0: "running"}
        assert not w.procs.runs[1].killed and w.procs.live() == [w.procs.runs[1]]

    play(scenario)


def test_shutdown_during_a_replacement_that_is_never_ready_is_bounded() -> None:
    async def scenario(w: World) -> None:
        w.applier.started_up.set()
        w.procs.on_spawn = lambda run: run.pid == 100 and w.clock.call_at(
            w.clock.now + 0.01, lambda: w.procs.ready(run))  # only the first run gets ready
        await up(w, cluster(1, ready="notify", ready_timeout=120.0))
        assert w.states("web") == {0: "running"}
        rollout = asyncio.ensure_future(w.applier.reload_apps({"web": [0]}))
        await w.until(lambda: len(w.procs.runs) == 2)
        began = w.clock.now
        w.applier.request_shutdown()
        await w.until(w.applier._exit.is_set, limit=1000)
        assert w.clock.now - began < w.applier.desired.daemon.shutdown_timeout
        assert rollout.done() and w.procs.live() == []

    play(scenario)


def test_a_user_stop_and_restart_give_transient_retries_a_fresh_delay() -> None:
    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1)})
        ref = w.engine.add("web", 0)
        w.procs.fail["web"] = SpawnFailed("fork failed", transient=True)
        w.engine.start([ref])
        await w.until(lambda: sum(h[0] == "spawn-failed" for h in w.procs.history) == 8)
        w.engine.stop([ref])
        w.engine.restart([ref])
        v = w.engine.view(ref)
        assert v is not None and v.inst.spawn_failures == 1
        assert v.inst.reason is not None and v.inst.reason.startswith("retrying in 0.5s")

    play(scenario)


def test_a_report_made_inside_spawn_reaches_the_instance() -> None:
    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1, min_uptime=0.0,
                                        autorestart=RestartPolicy.NEVER)})
        ref = w.engine.add("web", 0)
        w.procs.on_spawn = lambda run: w.procs.exit(run, 1)  # gone before spawn returns
        w.engine.start([ref])
        v = w.engine.view(ref)
        assert v is not None and (v.state, v.inst.exit_code) == (State.EXITED, 1)

    play(scenario)


def test_a_spawn_that_raises_is_a_failed_start_not_a_stuck_one() -> None:
    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1)})
        ref = w.engine.add("web", 0)

        def broken(run: FakeRun) -> None:
            raise RuntimeError("bug below the engine")

        w.procs.on_spawn = broken
        (v,) = await w.run(w.engine.started(w.engine.start([ref])), limit=5.0)
        assert v.state is State.ERRORED
        assert v.inst.reason is not None and "internal error" in v.inst.reason

    play(scenario)


def test_update_fails_when_an_app_it_started_crash_loops() -> None:
    async def scenario(w: World) -> None:
        w.applier.started_up.set()
        await up(w, spec("keep", 1))
        new = desired(w.daemon, spec("keep", 1), spec("bad", 1, restart_delay=1.0))
        async def load() -> Any:
            return new

        w.applier.load = load  # type: ignore[method-assign]
        w.procs.on_spawn = lambda run: run.spec.name == "bad" and w.clock.call_at(
            w.clock.now + 0.1, lambda: w.procs.exit(run, 1))
        cmds = Commands(w.engine, w.applier, follow=lambda p, c: (lambda: None))

        async def send(_: object) -> None: ...

        result = await w.run(cmds.dispatch("update", {"wait": True}, None, send))
        assert result["failed"] is True, result
        assert "bad:0 is backoff" in result["error"], result
        assert w.applier.config_error is None  # the config itself is applied

    play(scenario)


def _record_wanted(w: World) -> list[set[str]]:
    """Every close_listeners call's wanted addresses (the process layer closes the rest)."""
    wanted: list[set[str]] = []
    orig = w.procs.close_listeners

    def close_listeners(users: Any, specs: Any) -> None:
        users = list(users)
        wanted.append({a for s, _ in users for a in s.listen}
                      | {a for s in specs.values() for a in s.listen})
        orig(users, specs)

    w.procs.close_listeners = close_listeners  # type: ignore[method-assign]
    return wanted


def test_a_listen_change_keeps_the_old_address_while_old_instances_serve_on_it() -> None:
    """Closing it under them and then, after a failed rollout, binding it again while they
    still listen on it would make the next restart of an old instance fail (EADDRINUSE)."""

    async def scenario(w: World) -> None:
        wanted = _record_wanted(w)
        v1 = cluster(2)
        await up(w, v1)
        v2 = dataclasses.replace(v1, listen=("tcp://127.0.0.1:2",))
        w.procs.on_spawn = lambda run: run.spec.listen == v2.listen and w.clock.call_at(
            w.clock.now + 0.1, lambda: w.procs.exit(run, 1))  # the new definition crashes
        mark = len(wanted)
        failures: list[str] = []
        await w.run(w.applier.apply(desired(w.daemon, v2), wait=True, failures=failures))
        assert failures
        assert all(v1.listen[0] in s for s in wanted[mark:]), wanted[mark:]
        assert [v.spec.listen for v in (w.engine.current("web") or {}).values()] == [
            v1.listen, v1.listen]

    play(scenario)


def test_a_rollout_failing_at_its_second_instance_keeps_the_first_ones_new_address() -> None:
    async def scenario(w: World) -> None:
        wanted = _record_wanted(w)
        v1 = cluster(2)
        await up(w, v1)
        v2 = dataclasses.replace(v1, listen=("tcp://127.0.0.1:2",))
        w.procs.on_spawn = lambda run: (
            run.spec.listen == v2.listen and run.id.index == 1 and w.clock.call_at(
                w.clock.now + 0.1, lambda: w.procs.exit(run, 1)))
        failures: list[str] = []
        await w.run(w.applier.apply(desired(w.daemon, v2), wait=True, failures=failures))
        assert failures
        cur = w.engine.current("web") or {}
        assert cur[0].live and cur[1].live
        # web:0 already runs the new definition and serves on its address: still wanted
        assert v2.listen[0] in wanted[-1] and v1.listen[0] in wanted[-1]

    play(scenario)


def test_a_replacement_that_cannot_be_started_for_now_says_so_without_retrying() -> None:
    async def scenario(w: World) -> None:
        await up(w, cluster(1))
        w.procs.fail["web"] = SpawnFailed("fork failed: out of memory", transient=True)
        failure = await w.run(w.applier.reload_apps({"web": [0]}))
        assert failure is not None
        assert "the replacement could not be started: fork failed: out of memory" in failure
        assert "retrying" not in failure
        assert w.states("web") == {0: "running"}  # the old instance serves on

    play(scenario)
