"""The engine's dependency gate and stop order, on the fake process layer and a fake clock:
who waits, why, when it starts, and in which order things stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from procsup.model import AppSpec, Condition, RestartPolicy, State

from .fakes import World, spec

R, S, C = Condition.READY, Condition.STARTED, Condition.COMPLETED


def play(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(World(asyncio.get_running_loop()))

    asyncio.run(main())


def stack(w: World, *specs: AppSpec) -> dict[str, list[int]]:
    """Apply `specs` and start every instance at once, as an apply does."""
    w.engine.set_specs({s.name: s for s in specs})
    refs = {s.name: [w.engine.add(s.name, i) for i in range(s.instances)] for s in specs}
    w.engine.start([r for rs in refs.values() for r in rs])
    return refs


def state(w: World, ref: int) -> tuple[State, str | None]:
    v = w.engine.view(ref)
    assert v is not None
    return v.state, v.inst.reason


def spawned(w: World) -> list[str]:
    return [h[1] for h in w.procs.history if h[0] == "spawn"]


def test_a_dependent_waits_for_ready_then_starts() -> None:
    async def scenario(w: World) -> None:
        refs = stack(w, spec("web", 2, depends_on=(("db", R),)),
                     spec("db", 1, min_uptime=2.0))
        (web0, web1), (db,) = refs["web"], refs["db"]
        assert state(w, web0) == (State.WAITING, "waiting for db (ready)")
        assert spawned(w) == ["db:0"]
        views = await w.run(w.engine.started({r: 0 for r in (web0, web1, db)}))
        assert [v.state for v in views] == [State.RUNNING] * 3
        # web started once db was running (min_uptime 2 s), then took its own 1 s
        assert spawned(w) == ["db:0", "web:0", "web:1"]
        assert w.clock.now == 1003.0

    play(scenario)


def test_started_is_met_as_soon_as_the_dependency_is_alive() -> None:
    async def scenario(w: World) -> None:
        refs = stack(w, spec("web", 1, depends_on=(("db", S),)),
                     spec("db", 1, min_uptime=5.0))
        assert spawned(w) == ["db:0", "web:0"]  # db was alive when web's turn came
        assert state(w, refs["db"][0])[0] is State.STARTING

    play(scenario)


def test_completed_waits_for_exit_0_and_a_failure_is_hopeless() -> None:
    async def scenario(w: World) -> None:
        w.procs.on_spawn = lambda run: run.spec.name == "migrate" and w.clock.call_at(
            w.clock.now + 0.5, lambda: w.procs.exit(run, code))
        code = 1
        refs = stack(w, spec("web", 1, depends_on=(("migrate", C),)),
                     spec("migrate", 1, autorestart=RestartPolicy.NEVER))
        (web,), (mig,) = refs["web"], refs["migrate"]
        (v,) = await w.run(w.engine.started({web: 0}), limit=5.0)
        assert (v.state, v.inst.reason) == (
            State.WAITING, "waiting for migrate: exited with code 1")
        assert spawned(w) == ["migrate:0"]
        # started again (and succeeding), migrate releases web: the wait is level-triggered
        code = 0
        w.engine.start([mig])
        (v,) = await w.run(w.engine.started({web: 0}), limit=5.0)
        assert v.state is State.RUNNING
        assert spawned(w) == ["migrate:0", "migrate:0", "web:0"]

    play(scenario)


def test_a_chain_starts_in_order_and_independent_apps_in_parallel() -> None:
    async def scenario(w: World) -> None:
        refs = stack(w, spec("c", 1, depends_on=(("b", R),)), spec("b", 1, depends_on=(("a", R),)),
                     spec("a", 1), spec("x", 1))
        assert spawned(w) == ["a:0", "x:0"]
        assert state(w, refs["c"][0]) == (State.WAITING, "waiting for b (ready)")
        assert state(w, refs["b"][0]) == (State.WAITING, "waiting for a (ready)")
        await w.run(w.engine.started({r[0]: 0 for r in refs.values()}), limit=10.0)
        assert spawned(w) == ["a:0", "x:0", "b:0", "c:0"]
        assert w.clock.now == 1003.0  # three readiness times (1 s each) on the longest path

    play(scenario)


def test_a_dependency_that_crashes_later_does_not_touch_its_dependents() -> None:
    async def scenario(w: World) -> None:
        refs = stack(w, spec("web", 1, depends_on=(("db", R),)), spec("db", 1))
        await w.run(w.engine.started({refs["web"][0]: 0}), limit=5.0)
        (db_run,) = [r for r in w.procs.runs if r.spec.name == "db"]
        w.procs.exit(db_run, 1)  # db crashes and is restarted by its policy
        await w.until(lambda: len(spawned(w)) == 3, limit=5.0)
        assert state(w, refs["web"][0])[0] is State.RUNNING
        assert spawned(w) == ["db:0", "web:0", "db:0"]

    play(scenario)


def test_stopping_a_waiting_instance_and_shutdown_order() -> None:
    async def scenario(w: World) -> None:
        w.procs.exit_after = 0.5
        refs = stack(w, spec("web", 1, depends_on=(("db", R),)), spec("db", 1),
                     spec("worker", 1, depends_on=(("web", R),)))
        await w.run(w.engine.started({r[0]: 0 for r in refs.values()}), limit=5.0)
        w.procs.history.clear()
        await w.run(w.engine.stop_all(), limit=10.0)
        kills = [h[1] for h in w.procs.history if h[0] == "kill"]
        assert kills == ["worker:0", "web:0", "db:0"]  # dependents before their dependencies

    play(scenario)


def test_nothing_is_released_while_shutting_down() -> None:
    async def scenario(w: World) -> None:
        w.procs.exit_after = 0.5
        refs = stack(w, spec("web", 1, depends_on=(("db", R),)), spec("db", 1, min_uptime=3.0))
        w.engine.begin_shutdown()
        await w.run(w.engine.stop_all(), limit=10.0)
        assert spawned(w) == ["db:0"]
        assert state(w, refs["web"][0]) == (State.STOPPED, None)

    play(scenario)


def test_a_disabled_dependency_is_named_and_hopeless() -> None:
    async def scenario(w: World) -> None:
        w.engine.set_specs({"web": spec("web", 1, depends_on=(("db", R),)), "db": spec("db")})
        w.engine.set_disabled({"db"})
        db, web = w.engine.add("db", 0), w.engine.add("web", 0)
        (v,) = await w.run(w.engine.started(w.engine.start([web])), limit=1.0)
        assert (v.state, v.inst.reason) == (State.WAITING, "waiting for db: disabled")
        w.engine.set_disabled(set())
        w.engine.start([db])
        (v,) = await w.run(w.engine.started({web: 0}), limit=5.0)
        assert v.state is State.RUNNING

    play(scenario)


def test_a_restart_of_a_running_dependent_does_not_wait() -> None:
    async def scenario(w: World) -> None:
        refs = stack(w, spec("web", 1, depends_on=(("db", R),)), spec("db", 1))
        await w.run(w.engine.started({refs["web"][0]: 0}), limit=5.0)
        w.engine.stop(refs["db"])
        await w.run(w.engine.stopped(refs["db"]), limit=10.0)
        (v,) = await w.run(w.engine.started(w.engine.restart(refs["web"])), limit=10.0)
        assert v.state is State.RUNNING  # it was running: restarted at once, db or not
        w.engine.stop(refs["web"])
        await w.run(w.engine.stopped(refs["web"]), limit=10.0)
        (v,) = await w.run(w.engine.started(w.engine.restart(refs["web"])), limit=10.0)
        assert (v.state, v.inst.reason) == (State.WAITING, "waiting for db: stopped")

    play(scenario)
