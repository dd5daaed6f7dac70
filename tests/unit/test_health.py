"""Health checks: the policy as tables, and the schedule replayed with the engine and the
applier on a fake process layer and a fake clock, with scripted check results (what a check
would say of each process). Real checks of real processes are the integration tests'."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from procsup import health
from procsup.health import HealthChecks
from procsup.lifecycle import Instance
from procsup.model import AppSpec, ExecMode, InstanceId, State
from procsup.supervisor import Role, View

from .fakes import FakeRun, World, desired, spec

IID = InstanceId("web", 0)
LISTEN = ("tcp://127.0.0.1:1",)


# --- the policy -----------------------------------------------------------------------------


def inst(state: State = State.RUNNING, **kw: Any) -> Instance:
    kw.setdefault("pid", 42 if state in (State.RUNNING, State.STARTING) else None)
    return dataclasses.replace(Instance(IID, state=state), **kw)


SICK1 = inst(health="unhealthy", health_failures=1, health_error="refused")
SICK3 = dataclasses.replace(SICK1, health_failures=3)


@pytest.mark.parametrize(("instance", "checked", "expected"), [
    (inst(), False, None),  # no check: null
    (inst(health="healthy"), False, None),
    (inst(), True, "unknown"),  # no result yet
    (inst(State.STOPPED), True, "unknown"),
    (inst(health="healthy"), True, "healthy"),
    (SICK1, True, "unhealthy"),
])
def test_status_of(instance: Instance, checked: bool, expected: str | None) -> None:
    assert health.status_of(instance, checked) == expected


@pytest.mark.parametrize(("instance", "failures", "why", "restart"), [
    (inst(health="healthy"), 3, None, None),
    (inst(), 3, None, None),
    (SICK1, 3, "health check failed (1 of 3): refused", None),
    (dataclasses.replace(SICK1, health_failures=2), 3, "health check failed (2 of 3): refused",
     None),
    (SICK3, 3, "health check failed 3 times: refused", "health check failed 3 times: refused"),
    # past the count: no new request until as many more failed (the same process ran on)
    (dataclasses.replace(SICK1, health_failures=4), 3, "health check failed 4 times: refused",
     None),
    (dataclasses.replace(SICK1, health_failures=6), 3, "health check failed 6 times: refused",
     "health check failed 6 times: refused"),
    (SICK1, 1, "health check failed 1 time: refused", "health check failed 1 time: refused"),
    # not running (stopping for its restart): no further request
    (dataclasses.replace(SICK3, state=State.STOPPING), 3,
     "health check failed 3 times: refused", None),
])
def test_reason_and_restart_reason(
    instance: Instance, failures: int, why: str | None, restart: str | None
) -> None:
    assert health.reason(instance, failures) == why
    assert health.restart_reason(instance, failures) == restart


# --- the schedule ---------------------------------------------------------------------------


class Script:
    """What each check says: `verdict(pid)` -> None (healthy) or an error; the checks of a pid
    in `hold` stay in flight until `release(pid)`. Records (time, app:i, pid) of each check
    begun, the pids of the ones cancelled, and the most checks of one instance at once."""

    def __init__(self, w: World, verdict: Callable[[int], str | None] = lambda pid: None) -> None:
        self.w = w
        self.verdict = verdict
        self.calls: list[tuple[float, str, int]] = []
        self.cancelled: list[int] = []
        self.hold: set[int] = set()
        self.flying: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        self._release: dict[int, asyncio.Event] = {}

    async def __call__(self, view: View, app: AppSpec) -> str | None:
        assert view.pid is not None and view.state is State.RUNNING
        pid, key = view.pid, str(view.id)
        self.calls.append((self.w.clock.now, key, pid))
        self.flying[key] = self.flying.get(key, 0) + 1
        self.most_in_flight[key] = max(self.most_in_flight.get(key, 0), self.flying[key])
        try:
            if pid in self.hold:
                await self._release.setdefault(pid, asyncio.Event()).wait()
            return self.verdict(pid)
        except asyncio.CancelledError:
            self.cancelled.append(pid)
            raise
        finally:
            self.flying[key] -= 1

    def release(self, pid: int) -> None:
        self.hold.discard(pid)
        self._release.setdefault(pid, asyncio.Event()).set()


def play(scenario: Callable[[World, Script], Awaitable[None]],
         verdict: Callable[[int], str | None] = lambda pid: None) -> None:
    async def main() -> None:
        w = World(asyncio.get_running_loop())
        script = Script(w, verdict)
        w.applier.health.close()  # the real probes must not run here
        w.applier.health = HealthChecks(w.engine, w.applier.recycle, check=script)
        try:
            await scenario(w, script)
        finally:
            w.applier.health.close()
            w.applier.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def checked(name: str = "web", n: int = 1, **kw: Any) -> AppSpec:
    kw.setdefault("health", "tcp://127.0.0.1:1")
    kw.setdefault("health_interval", 1.0)
    kw.setdefault("health_timeout", 0.5)
    kw.setdefault("health_failures", 3)
    return spec(name, n, **kw)


async def up(w: World, *specs: AppSpec) -> None:
    await w.run(w.applier.apply(desired(w.daemon, *specs), wait=True))


def pid_of(w: World, app: str = "web", index: int = 0) -> int | None:
    return (w.engine.current(app) or {})[index].pid


def view_of(w: World, app: str = "web", index: int = 0) -> View:
    return (w.engine.current(app) or {})[index]


async def held(w: World, s: Script) -> int:
    """Run one checked instance whose checks hang (held); its pid, once its first began."""
    await up(w, checked())
    pid = pid_of(w)
    assert pid is not None
    s.hold.add(pid)
    await w.until(lambda: len(s.calls) == 1)
    return pid


def test_a_running_instance_is_checked_at_once_then_every_interval() -> None:
    async def scenario(w: World, s: Script) -> None:
        began = w.clock.now
        await up(w, checked())  # min_uptime 1 s: running at +1 s
        pid = pid_of(w)
        assert pid is not None
        running_at = w.clock.now
        assert running_at - began == pytest.approx(1.0)
        await w.until(lambda: len(s.calls) >= 4)
        times = [round(t - running_at, 6) for t, _, _ in s.calls]
        # the first within the fast sweep of a starting instance, then every interval
        assert times[0] <= health.SWEEP_STARTING + 1e-9
        assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [1.0] * 3
        v = view_of(w)
        assert (v.inst.health, v.inst.health_failures) == ("healthy", 0)
        assert health.status_of(v.inst, True) == "healthy"

    play(scenario)


def test_three_failures_in_a_row_restart_a_fork_instance_once_and_its_new_run_is_unknown() -> None:
    sick: set[int] = set()

    async def scenario(w: World, s: Script) -> None:
        await up(w, checked())
        first = pid_of(w)
        assert first is not None
        await w.until(lambda: len(s.calls) >= 2)  # healthy for a while
        sick.add(first)
        await w.until(lambda: pid_of(w) not in (None, first))
        second = pid_of(w)
        kills = [h for h in w.procs.history if h[0] == "kill"]
        assert [k[2] for k in kills] == [first]  # one restart, of that process
        failures = [t for t, _, p in s.calls if p == first][2:]
        assert len(failures) == 3
        v = view_of(w)
        assert v.inst.health is None and v.inst.health_failures == 0
        assert health.status_of(v.inst, True) == "unknown"
        assert v.inst.restarts == 1
        assert v.note == "restarted: health check failed 3 times: refused"
        await w.until(lambda: view_of(w).state is State.RUNNING
                      and view_of(w).inst.health == "healthy")
        assert pid_of(w) == second

    play(scenario, lambda pid: "refused" if pid in sick else None)


def test_no_check_while_starting_and_failures_do_not_count_before_running() -> None:
    async def scenario(w: World, s: Script) -> None:
        task = asyncio.ensure_future(w.applier.apply(desired(w.daemon, checked(
            ready="notify", ready_timeout=30.0)), wait=False))
        await w.until(task.done)
        await w.until(lambda: w.clock.now >= 1010.0)  # 10 s starting
        assert s.calls == []
        [run] = w.procs.live()
        w.procs.ready(run)
        await w.until(lambda: len(s.calls) == 1)
        assert view_of(w).inst.health_failures == 1

    play(scenario, lambda pid: "refused")


def test_checks_never_overlap_and_the_next_follows_a_slow_one() -> None:
    async def scenario(w: World, s: Script) -> None:
        pid = await held(w, s)
        started = w.clock.now
        await w.until(lambda: w.clock.now >= started + 5.5)  # five intervals, held
        assert len(s.calls) == 1
        released = w.clock.now
        s.release(pid)
        await w.until(lambda: len(s.calls) == 2)
        assert s.calls[1][0] == released  # at once: it was due long ago
        await w.until(lambda: len(s.calls) == 3)
        assert s.calls[2][0] - s.calls[1][0] == pytest.approx(1.0)
        assert s.most_in_flight == {"web:0": 1}

    play(scenario)


def test_a_check_in_flight_is_cancelled_when_its_instance_stops() -> None:
    async def scenario(w: World, s: Script) -> None:
        pid = await held(w, s)
        stopped_at = w.clock.now
        w.engine.stop([view_of(w).ref])
        await w.until(lambda: s.cancelled == [pid])
        # no later than its process is gone (the fake one takes 0.1 s to go)
        assert w.clock.now - stopped_at <= 0.1 + 1e-9
        await w.until(lambda: w.clock.now >= stopped_at + 10)
        assert len(s.calls) == 1  # nothing checked since

    play(scenario)


def test_a_stale_result_does_not_count_for_the_next_run() -> None:
    async def scenario(w: World, s: Script) -> None:
        await up(w, checked())
        first = pid_of(w)
        assert first is not None
        v = view_of(w)
        assert w.engine.checked(v.ref, first + 1000, False, "not that one") is not None
        assert view_of(w).inst.health_failures == 0
        w.engine.checked(v.ref, first, False, "this one")
        assert view_of(w).inst.health_failures == 1

    play(scenario)


def cluster(n: int = 2, **kw: Any) -> AppSpec:
    return checked("web", n, exec_mode=ExecMode.CLUSTER, listen=LISTEN, **kw)


def test_a_cluster_instance_is_replaced_first_and_its_replacement_checked_once_it_took_over(
) -> None:
    sick: set[int] = set()

    async def scenario(w: World, s: Script) -> None:
        await up(w, cluster())
        old = {i: v.pid for i, v in (w.engine.current("web") or {}).items()}
        assert old[0] is not None
        mark = len(w.procs.history)
        sick.add(old[0])
        await w.until(lambda: pid_of(w, index=0) != old[0])
        took_over, new = w.clock.now, pid_of(w, index=0)
        await w.until(lambda: not any(v.role is Role.OUTGOING for v in w.engine.snapshot()))
        events = [(h[0], h[1], h[2]) for h in w.procs.history[mark:]
                  if h[0] in ("spawn", "kill")]
        assert events == [("spawn", "web:0", new), ("kill", "web:0", old[0])]  # new first
        assert pid_of(w, index=1) == old[1]
        await w.until(lambda: any(p == new for _, _, p in s.calls))
        assert all(t >= took_over for t, _, p in s.calls if p == new)
        assert view_of(w).note == "replaced: health check failed 3 times: refused"

    play(scenario, lambda pid: "refused" if pid in sick else None)


def test_a_cluster_replacement_that_is_slow_is_asked_for_once_per_streak() -> None:
    """The old instance keeps failing while its replacement takes a while to be ready: a
    second request (after 3 more failures) waits for the first, then finds that process
    replaced, and does not replace the new one."""
    sick: set[int] = set()

    async def scenario(w: World, s: Script) -> None:
        spec_ = cluster(1, ready="notify", ready_timeout=30.0)
        task = asyncio.ensure_future(w.applier.apply(desired(w.daemon, spec_), wait=False))
        await w.until(task.done)
        [run] = w.procs.live()
        w.procs.ready(run)
        await w.until(lambda: view_of(w).state is State.RUNNING)
        old = pid_of(w)
        assert old is not None
        def slow_ready(r: FakeRun) -> None:  # a replacement ready 8 s after its start
            w.clock.call_at(w.clock.now + 8.0, lambda: w.procs.ready(r))

        w.procs.on_spawn = slow_ready
        sick.add(old)
        await w.until(lambda: pid_of(w) != old)
        assert len([t for t, _, p in s.calls if p == old]) >= 6  # two streaks of three
        await w.until(lambda: w.clock.now >= 1100.0)
        spawns = [h for h in w.procs.history if h[0] == "spawn"]
        assert len(spawns) == 2  # the first run and one replacement
        assert view_of(w).inst.health == "healthy"

    play(scenario, lambda pid: "refused" if pid in sick else None)


def test_configure_stops_and_restarts_the_schedule() -> None:
    async def scenario(w: World, s: Script) -> None:
        v1 = checked()
        await up(w, v1)
        await w.until(lambda: len(s.calls) >= 2)
        await up(w, dataclasses.replace(v1, health=None))  # a live change: no restart
        n = len(s.calls)
        at = w.clock.now
        assert w.clock.next_due() is None  # no timer left: an idle daemon stays idle
        w.clock.call_at(at + 10, lambda: None)
        await w.until(lambda: w.clock.now >= at + 10)
        assert len(s.calls) == n
        assert health.status_of(view_of(w).inst, view_of(w).spec.health is not None) is None
        await up(w, dataclasses.replace(v1, health_interval=0.25))
        await w.until(lambda: len(s.calls) >= n + 3)
        gaps = {round(b[0] - a[0], 6) for a, b in itertools.pairwise(s.calls[n:])}
        assert gaps == {0.25}
        assert not [h for h in w.procs.history if h[0] == "kill"]

    play(scenario)


def test_close_cancels_everything() -> None:
    async def scenario(w: World, s: Script) -> None:
        pid = await held(w, s)
        w.applier.request_shutdown()  # no check may go on, nor a restart begin, meanwhile
        await w.until(lambda: s.cancelled == [pid])
        at = w.clock.now
        w.clock.call_at(at + 10, lambda: None)
        await w.until(lambda: w.clock.now >= at + 10)
        assert len(s.calls) == 1

    play(scenario)


@pytest.mark.parametrize("restart_delay", [0.0, 5.0])
def test_a_restarted_run_is_checked_as_soon_as_it_runs_even_with_a_long_interval(
    restart_delay: float,
) -> None:
    async def scenario(w: World, s: Script) -> None:
        await up(w, checked(health_interval=30.0, restart_delay=restart_delay))
        first = pid_of(w)
        await w.until(lambda: len(s.calls) == 1)
        [run] = w.procs.live()
        at = w.clock.now + 7.0
        w.clock.call_at(at, lambda: w.procs.exit(run, 1))  # a crash, between two checks
        await w.until(lambda: view_of(w).state is State.RUNNING and pid_of(w) != first)
        running_at = w.clock.now
        await w.until(lambda: len(s.calls) == 2)
        assert s.calls[1][2] == pid_of(w)
        assert s.calls[1][0] - running_at <= health.SWEEP_STARTING + 1e-9
        assert running_at - at == pytest.approx(restart_delay + 1.0)  # delay, min_uptime

    play(scenario)
