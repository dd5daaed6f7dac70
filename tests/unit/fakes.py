"""The engine's seams, faked: a clock that moves only when told, and a process layer that
records what it was asked and lets a test say what each run does (honcho-style replayed
histories instead of real processes). Real processes are the integration tests' business."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from procsup import lifecycle
from procsup.apply import Applier
from procsup.lifecycle import SpawnFailed
from procsup.logs import LogHealth
from procsup.model import AppSpec, DaemonSpec, Desired, InstanceId
from procsup.running import Report, RunHandle
from procsup.supervisor import Supervisor


class FakeTimer:
    def __init__(self, clock: FakeClock, when: float, callback: Callable[[], object]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False
        self._clock = clock

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: FakeTimer) -> bool:
        return self.when < other.when


class FakeClock:
    """`time()` and `call_at()` as the loop has them; time passes only through `advance`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(self, when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def next_due(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance_to(self, when: float) -> None:
        """Move to `when`, running every timer due by then, in time order."""
        while (due := self.next_due()) is not None and due <= when:
            _, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = max(self.now, when)


@dataclasses.dataclass(eq=False)
class FakeRun:
    id: InstanceId
    pid: int
    spec: AppSpec
    status: str | None = None
    killed: list[int] = dataclasses.field(default_factory=list)
    ended: bool = False
    log_health: tuple[LogHealth, ...] = ()
    warning: str | None = None


class FakeProcesses:
    """A process layer without processes. `history` lists what it was asked, as tuples:
    ("spawn", "web:0", pid) / ("spawn-failed", "web:0", reason), ("kill", "web:0", pid, sig),
    ("exit", "web:0", pid, code, sig). A killed run exits `exit_after` seconds later (None:
    only when the test says so, with `exit`); `fail` maps an app to a spawn failure (a reason:
    the command cannot be executed; or a `SpawnFailed`, e.g. transient); `on_spawn(run)` lets
    a test script what a new run does."""

    def __init__(self, report: Report, clock: FakeClock) -> None:
        self.report = report
        self.clock = clock
        self.history: list[tuple[Any, ...]] = []
        self.runs: list[FakeRun] = []
        self.fail: dict[str, str | SpawnFailed] = {}
        self.exit_after: float | None = 0.1
        self.on_spawn: Callable[[FakeRun], None] | None = None
        self.listener_users: list[set[tuple[str, int]]] = []
        self._pids = itertools.count(100)

    def spawn(self, iid: InstanceId, spec: AppSpec) -> FakeRun | SpawnFailed:
        if iid.app in self.fail:
            failure = self.fail[iid.app]
            if isinstance(failure, str):
                failure = SpawnFailed(failure)
            self.history.append(("spawn-failed", str(iid), failure.reason))
            return failure
        run = FakeRun(iid, next(self._pids), spec)
        self.runs.append(run)
        self.history.append(("spawn", str(iid), run.pid))
        if self.on_spawn is not None:
            self.on_spawn(run)
        return run

    def kill(self, handle: RunHandle, sig: int) -> None:
        run = self._own(handle)
        run.killed.append(sig)
        self.history.append(("kill", str(run.id), run.pid, sig))
        if self.exit_after is not None and len(run.killed) == 1:
            self.clock.call_at(self.clock.time() + self.exit_after,
                               lambda: self.exit(run, None, sig))

    def signal(self, handle: RunHandle, sig: int, *, leader: bool = False) -> bool:
        run = self._own(handle)
        self.history.append(("signal-leader" if leader else "signal", str(run.id), run.pid, sig))
        return not run.ended

    def watch_heartbeat(self, handle: RunHandle, timeout: float | None) -> None:
        run = self._own(handle)
        self.history.append(("heartbeat", str(run.id), run.pid, timeout))

    def retarget(self, handle: RunHandle, spec: AppSpec) -> None:
        self._own(handle).spec = spec

    def close_listeners(
        self, users: Iterable[tuple[AppSpec, int]], specs: Mapping[str, AppSpec]
    ) -> None:
        self.listener_users.append({(s.name, i) for s, i in users})

    def record(self) -> None:
        pass

    # -- what a test makes the runs do ---------------------------------------------------

    def exit(self, run: FakeRun, code: int | None = 0, sig: int | None = None) -> None:
        if run.ended:
            return
        run.ended = True
        self.history.append(("exit", str(run.id), run.pid, code, sig))
        self.report(run, lifecycle.Exited(code, sig))

    def ready(self, run: FakeRun) -> None:
        self.report(run, lifecycle.Ready())

    def live(self) -> list[FakeRun]:
        return [r for r in self.runs if not r.ended]

    @staticmethod
    def _own(handle: RunHandle) -> FakeRun:
        assert isinstance(handle, FakeRun)
        return handle


class World:
    """An engine and an applier on a fake clock and a fake process layer, on a real asyncio
    loop (futures and call_soon are the loop's; time is the fake clock's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clock = FakeClock()
        self.log = logging.getLogger("procsup-test")
        holder: list[FakeProcesses] = []

        def make(report: Report) -> FakeProcesses:
            holder.append(FakeProcesses(report, self.clock))
            return holder[0]

        self.engine = Supervisor(loop=loop, logger=self.log, processes=make, clock=self.clock)
        self.procs = holder[0]
        self.daemon = DaemonSpec(config_path="/nonexistent/apps.toml", socket="/nonexistent/s")
        #: what each fake pid "listens on", for reload (no pid of the machine is looked at)
        self.holds: dict[int, tuple[str, ...] | None] = {}
        self.applier = Applier(self.engine, desired(self.daemon), profile_override=None,
                               held=lambda pid: self.holds.get(pid, ()))

    async def until(self, done: Callable[[], bool], *, limit: float = 600.0) -> None:
        """Let the loop and then the fake clock run until `done()` holds: each round lets
        every ready callback run, then jumps to the next timer. Fails past `limit` fake
        seconds or when nothing is left to happen."""
        end = self.clock.now + limit
        idle = 0
        while not done():
            for _ in range(20):
                await asyncio.sleep(0)
                if done():
                    return
            due = self.clock.next_due()
            if due is None:  # no timer: only the loop's own callbacks can still make progress
                idle += 1
                assert idle < 1000, "nothing left to happen, and the condition does not hold"
                continue
            idle = 0
            assert due <= end, f"not done within {limit} fake seconds"
            self.clock.advance_to(due)

    async def run(self, coro: Any, *, limit: float = 600.0) -> Any:
        task = asyncio.ensure_future(coro)
        await self.until(task.done, limit=limit)
        return task.result()

    def states(self, app: str) -> dict[int, str]:
        return {i: v.state.value for i, v in (self.engine.current(app) or {}).items()}


def desired(daemon: DaemonSpec, *specs: AppSpec) -> Desired:
    return Desired(daemon=daemon, apps={s.name: s for s in specs}, profile=None, files=())


def spec(name: str = "web", n: int = 1, **kw: Any) -> AppSpec:
    kw.setdefault("command", ("server",))
    kw.setdefault("min_uptime", 1.0)
    kw.setdefault("kill_timeout", 5.0)
    return AppSpec(name=name, instances=n, **kw)
