"""procsup.monitors: cron with an injected clock, memory and watch with real processes/files."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

from procsup.model import AppSpec
from procsup.monitors import Leader, Monitors

from ..inotify import watched

DEADLINE = 5.0
LOG = logging.getLogger("test-monitors")


def spec(name: str = "web", **kw: object) -> AppSpec:
    return dataclasses.replace(AppSpec(name=name, command=("sleep", "1000")), **kw)  # type: ignore[arg-type]


class Calls(list[tuple[str, int | None, str]]):
    """The recycle calls, as (app, index, reason); `revived` and `unstable` hold their
    keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.revived: list[bool] = []
        self.unstable: list[str | None] = []

    def __call__(self, app: str, index: int | None, reason: str, *, revive: bool = False,
                 unstable: str | None = None, pid: int | None = None) -> None:
        self.append((app, index, reason))
        self.revived.append(revive)
        self.unstable.append(unstable)

    async def wait(self, n: int, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while len(self) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self)} recycle(s), wanted {n}: {list(self)}")
            await asyncio.sleep(0.01)


def iso(*fields: int) -> str:
    """How status shows a local wall-clock time: ISO 8601 with that time's UTC offset."""
    return datetime(*fields).astimezone().isoformat()


def shifted_clock(start: datetime) -> Callable[[], datetime]:
    """A wall clock (local, with its UTC offset) that reads `start` now and runs at the real
    rate."""
    t0 = time.monotonic()
    return lambda: start.astimezone() + timedelta(seconds=time.monotonic() - t0)


def run(body: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(asyncio.get_running_loop()), 30)

    asyncio.run(main())


def test_cron_fires_at_the_minute_and_plans_the_next() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        calls = Calls()
        clock = shifted_clock(datetime(2026, 11, 21, 8, 0, 59, 600_000))
        m = Monitors(loop, LOG, calls, dict, clock=clock)
        try:
            m.configure({"web": spec(cron_restart="* * * * *"), "api": spec("api")})
            assert m.next_cron_restart("web") == iso(2026, 11, 21, 8, 1)
            assert m.next_cron_restart("api") is None
            await calls.wait(1, timeout=3)
            assert calls == [("web", None, "cron_restart '* * * * *' at 2026-11-21 08:01")]
            assert calls.revived == [True]  # a cron job that exited runs again
            assert m.next_cron_restart("web") == iso(2026, 11, 21, 8, 2)
            # Reconfiguring with the same expression keeps the plan; removing it drops it.
            m.configure({"web": spec(cron_restart="* * * * *")})
            assert m.next_cron_restart("web") == iso(2026, 11, 21, 8, 2)
            m.configure({"web": spec(cron_restart="0 4 * * *")})
            assert m.next_cron_restart("web") == iso(2026, 11, 22, 4, 0)
            m.configure({"web": spec()})
            assert m.next_cron_restart("web") is None
        finally:
            m.close()

    run(body)


def test_cron_after_a_clock_jump_fires_once() -> None:
    """The wall clock jumps two hours ahead of the plan: one restart, then the next plan."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        calls = Calls()
        now = [datetime(2026, 11, 21, 8, 0, 30).astimezone()]
        m = Monitors(loop, LOG, calls, dict, clock=lambda: now[0])
        try:
            m.configure({"web": spec(cron_restart="* * * * *")})
            now[0] = datetime(2026, 11, 21, 10, 0, 30).astimezone()
            m._cron_due("web")  # what the re-check timer does
            assert len(calls) == 1
            assert m.next_cron_restart("web") == iso(2026, 11, 21, 10, 1)
            m._cron_due("web")  # an early wake-up: nothing
            assert len(calls) == 1
        finally:
            m.close()

    run(body)


def test_cron_follows_the_clock_set_back() -> None:
    """Issue 11: the wall clock set back 4 h half a second before an hourly fire. The real
    timer's next look sees it and plans 07:00 from the new wall time: one restart at 07:00,
    not a wait for the old 11:00 plan that skipped four."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        calls = Calls()
        moved = [timedelta()]
        base = shifted_clock(datetime(2026, 11, 21, 10, 59, 59, 500_000))
        m = Monitors(loop, LOG, calls, dict, clock=lambda: base() + moved[0], cron_recheck=0.05)
        try:
            m.configure({"web": spec(cron_restart="0 * * * *")})
            assert m.next_cron_restart("web") == iso(2026, 11, 21, 11, 0)
            moved[0] = -timedelta(hours=4)
            await calls.wait(1, timeout=3)
            assert calls == [("web", None, "cron_restart '0 * * * *' at 2026-11-21 07:00")]
            assert m.next_cron_restart("web") == iso(2026, 11, 21, 8, 0)
        finally:
            m.close()

    run(body)


def test_memory_over_the_limit_recycles_that_instance_once(tmp_path: Path) -> None:
    hog = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = b'x' * (80 << 20); sys.stdin.read()"],
        stdin=subprocess.PIPE, start_new_session=True,
    )
    small = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, start_new_session=True)

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        calls = Calls()
        def leaders() -> dict[tuple[str, int], Leader]:  # web's just started, free's long ago
            now = loop.time()
            return {("web", 0): Leader(hog.pid, now), ("web", 1): Leader(small.pid, now),
                    ("free", 0): Leader(small.pid, now - 3600)}

        m = Monitors(loop, LOG, calls, leaders, memory_interval=0.2)
        try:
            m.configure({"web": spec(max_memory_restart=40 << 20), "free": spec("free")})
            await calls.wait(1)
            await asyncio.sleep(1.0)  # several more checks: the same pid is not asked again
            assert len(calls) == 1
            app, index, reason = calls[0]
            assert (app, index) == ("web", 0)
            assert "over max_memory_restart 40M" in reason
            assert calls.revived == [False]  # live processes only
            # Over the limit at its first check: a failed run for the restart policy.
            assert calls.unstable == ["each run was over max_memory_restart within 250ms of "
                                      "its start"]
            m.configure({"web": spec()})  # no limit left: the task stops
            assert m._memory_task is None
            # An old process over its limit (a limit added live, say): a plain recycle.
            m.configure({"free": spec("free", max_memory_restart=1 << 20)})
            await calls.wait(2)
            assert calls[1][:2] == ("free", 0) and calls.unstable[1] is None
        finally:
            m.close()

    try:
        run(body)
    finally:
        for p in (hog, small):
            p.kill()
            p.wait()
            assert p.stdin is not None
            p.stdin.close()


def test_watch_recycles_the_app_once_per_burst(tmp_path: Path) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        calls = Calls()
        m = Monitors(loop, LOG, calls, dict, settle=0.2)
        try:
            log_file = str(tmp_path / "web-out.log")
            m.configure({"web": spec(watch=(str(tmp_path),), out_file=log_file)})
            await watched(tmp_path)  # the watch is added on a worker thread
            for i in range(50):
                (tmp_path / f"f{i}.py").write_text("x")
            await calls.wait(1)
            await asyncio.sleep(0.5)
            assert len(calls) == 1 and calls[0][:2] == ("web", None)
            assert calls[0][2].startswith("watch: ")
            assert calls.revived == [True]  # saving the fix of a crashed app runs it
        finally:
            m.close()

    run(body)
