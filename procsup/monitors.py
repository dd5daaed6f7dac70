"""The app monitors: `max_memory_restart`, `watch`, `cron_restart` (layer 4, beside the engine).

Each monitor decides only *when* an app or one instance needs a fresh process and says so with
`recycle(app, index, reason, revive=..., unstable=...)` (`index` None = every instance of the
app). `revive` asks for instances at rest to be started too (those that exited, errored or wait
in backoff; never one stopped by a command): watch and cron pass it, so saving the fix of a
crashing app runs it, and `cron_restart` with `autorestart = false` runs a job at its times, as
in PM2. The memory check concerns live processes only; `unstable` (how the run failed) marks a
process that was over its limit within 2.5 s of its start: that run is a failed one
for the restart policy (backoff, then `errored`), not a reason to restart it forever. *How* is
the supervisor's business: replacement first for an app that can run side by side (a cluster
app, whose sockets the daemon holds), a restart in place otherwise. Everything here runs on the
loop; the only blocking work, the process-table scan of the memory check, runs on a worker
thread.

- Memory: every `interval` seconds (2 s; the contract asks for at least every 5 s) the RSS of
  each instance of an app with `max_memory_restart`, with all its descendants
  (`metrics.tree_rss`). An instance over its limit is recycled once per process: the same pid
  is not asked for again while its replacement starts. No app with a limit, no timer at all.
  A process over its limit when younger than one interval (and a bit: the scan's own time) has
  been over it from its start as far as the check can tell: `unstable`.
- Watch: `watch.AppWatch` reports a burst of changes once, after it settles; procsup's own
  files (every app's logs, the daemon's log, pidfile, socket and instance record) never count.
- Cron: one timer per app with `cron_restart`, armed for the next fire time on the local wall
  clock (naive datetimes, so 04:00 stays 04:00 across a DST change) and re-checked at least
  every minute. Each look hands both clocks to `cron.check`, which follows a set clock both
  ways (set back: the times shown again fire again; set ahead or resumed: one restart,
  however many fire times it passed over), so a change of the clock delays a fire by at most
  a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import NamedTuple, Protocol

from procsup import cron, metrics, statefile, units, watch
from procsup.model import LOG_TARGETS, AppSpec, DaemonSpec

__all__ = ["Leader", "Monitors", "Recycle"]


class Recycle(Protocol):
    """recycle(app, instance index or None for all, reason, *, revive instances at rest,
    unstable = how the run of process `pid` failed, or None)."""

    def __call__(
        self, app: str, index: int | None, reason: str, *, revive: bool = False,
        unstable: str | None = None, pid: int | None = None,
    ) -> None: ...


class Leader(NamedTuple):
    """The leader process of a live instance, and when it started (the loop's clock)."""

    pid: int
    started: float


#: The live instances to measure: (app, index) -> the instance's leader.
Leaders = Callable[[], Mapping[tuple[str, int], Leader]]

MEMORY_INTERVAL = 2.0
#: Longest sleep of a cron timer before it looks at the wall clock again.
CRON_RECHECK = 60.0
#: A process over its limit younger than interval * this (2.5 s) was over it from its start, as
#: far as the checks can tell: the first check after its start, and a margin for the scan.
FROM_START = 1.25


def local_now() -> datetime:
    """The local wall-clock time with its UTC offset, as `cron.check` takes it."""
    return datetime.now().astimezone()


class Monitors:
    """Owns the monitors' timers, the memory task and the file watches of every app."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        recycle: Recycle,
        leaders: Leaders,
        *,
        memory_interval: float = MEMORY_INTERVAL,
        settle: float = 0.5,
        clock: Callable[[], datetime] = local_now,
        cron_recheck: float = CRON_RECHECK,
    ) -> None:
        self.loop = loop
        self.log = log
        self._recycle = recycle
        self._leaders = leaders
        self._interval = memory_interval
        self._clock = clock
        self._cron_recheck = cron_recheck
        self._specs: dict[str, AppSpec] = {}
        self._watch = watch.AppWatch(
            loop, self._on_watch, settle=settle,
            on_error=lambda app, message: self.log.error("%s: watch: %s", app, message),
        )
        self._cron: dict[str, tuple[cron.Schedule, asyncio.TimerHandle]] = {}
        self._memory_task: asyncio.Task[None] | None = None
        self._recycled_pids: set[int] = set()
        self._closed = False

    # -- configuration ----------------------------------------------------------------------

    def configure(self, specs: Mapping[str, AppSpec], daemon: DaemonSpec | None = None) -> None:
        """Monitor `specs` (every app of the applied config, after scale overrides), replacing
        what was monitored before. Unchanged settings keep their state (a cron timer is not
        re-armed, a watch not re-added). A change of procsup's own files never counts for
        `watch`: every app's log files and `daemon`'s log, pidfile, socket and instance record
        (a restart writes some of them: a watched directory holding them restarted forever)."""
        if self._closed:
            return
        self._specs = dict(specs)
        for app in [a for a in self._cron if specs.get(a) is None
                    or specs[a].cron_restart != self._cron[a][0].expr]:
            self._cron.pop(app)[1].cancel()
        for app in [a for a in self._watch.keys if a not in specs or not specs[a].watch]:
            self._watch.unwatch(app)
        own = self._own_files(specs, daemon) if any(s.watch for s in specs.values()) else []
        for name, spec in specs.items():
            if spec.cron_restart is not None and name not in self._cron:
                self._arm_cron(name, spec.cron_restart)
            if spec.watch:
                try:
                    missing = self._watch.watch(name, spec.watch, spec.ignore_watch, own)
                except OSError as exc:  # the inotify watch limit, say
                    self.log.error("%s: cannot watch %s: %s", name, ", ".join(spec.watch), exc)
                    continue
                for path in missing:
                    self.log.warning("%s: watch: %s does not exist; not watched", name, path)
        wants_memory = any(s.max_memory_restart is not None for s in specs.values())
        if wants_memory and self._memory_task is None:
            self._memory_task = self.loop.create_task(self._memory_loop())
        elif not wants_memory and self._memory_task is not None:
            self._memory_task.cancel()
            self._memory_task = None

    @staticmethod
    def _own_files(specs: Mapping[str, AppSpec], daemon: DaemonSpec | None) -> list[str]:
        own = [p for spec in specs.values() for i in range(max(spec.instances, 1))
               for p in spec.log_paths(i) if p is not None and p not in LOG_TARGETS]
        if daemon is not None:
            own += [daemon.daemon_log, daemon.pidfile, daemon.socket,
                    os.path.join(daemon.state_dir, statefile.FILENAME)]
        return [p for p in own if p]

    def next_cron_restart(self, app: str) -> str | None:
        """The next planned cron restart of `app`, ISO 8601 with the UTC offset it will have
        then (local time), or None."""
        entry = self._cron.get(app)
        return entry[0].fire.astimezone().isoformat() if entry is not None else None

    def close(self) -> None:
        """Cancel every timer and the memory task, stop watching. Idempotent."""
        self._closed = True
        for _, timer in self._cron.values():
            timer.cancel()
        self._cron.clear()
        if self._memory_task is not None:
            self._memory_task.cancel()
            self._memory_task = None
        self._watch.close()

    # -- watch ------------------------------------------------------------------------------

    def _on_watch(self, app: str, path: str) -> None:
        if app in self._specs:
            self._recycle(app, None, f"watch: {path} changed", revive=True)

    # -- cron -------------------------------------------------------------------------------

    def _arm_cron(self, app: str, expr: str) -> None:
        try:
            plan = cron.schedule(expr, self._clock(), self.loop.time())
        except cron.CronError as exc:  # validated, so only past croniter's search horizon
            self._no_cron(app, exc)
            return
        self._wait_cron(app, plan)

    def _wait_cron(self, app: str, plan: cron.Schedule) -> None:
        delay = min(cron.until(plan, plan.wall), self._cron_recheck)
        self._cron[app] = (plan, self.loop.call_later(delay, self._cron_due, app))

    def _no_cron(self, app: str, exc: cron.CronError) -> None:
        self.log.error("%s: cron_restart: %s; no cron restart planned", app, exc)
        self._cron.pop(app, None)

    def _cron_due(self, app: str) -> None:
        entry = self._cron.get(app)
        if entry is None or self._closed:
            return
        plan = entry[0]
        try:
            fired, plan = cron.check(plan, self._clock(), self.loop.time())
        except cron.CronError as exc:
            self._no_cron(app, exc)
            return
        self._wait_cron(app, plan)
        if fired is None:  # a re-check: not yet
            if plan.fire < entry[0].fire:
                self.log.info("%s: cron_restart: the clock was set back; next restart at %s",
                              app, plan.fire.isoformat())
            return
        self.log.info("%s: cron_restart %r fired (planned %s)", app, plan.expr, fired.isoformat())
        when = fired.strftime("%Y-%m-%d %H:%M")
        self._recycle(app, None, f"cron_restart {plan.expr!r} at {when}", revive=True)

    # -- memory -----------------------------------------------------------------------------

    async def _memory_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._check_memory()
            except asyncio.CancelledError:
                raise
            except Exception:  # the boundary: a failed check must not end the monitoring
                self.log.exception("memory check failed")

    async def _check_memory(self) -> None:
        limits = {n: s.max_memory_restart for n, s in self._specs.items()
                  if s.max_memory_restart is not None}
        leaders = {key: lead for key, lead in self._leaders().items() if key[0] in limits}
        if not leaders:
            self._recycled_pids.clear()
            return
        now = self.loop.time()
        live = {lead.pid for lead in leaders.values()}
        rss = await asyncio.to_thread(metrics.tree_rss, live)
        self._recycled_pids &= live  # forget pids that are gone
        for (app, index), (pid, started) in leaders.items():
            limit = limits.get(app)
            used = rss.get(pid, 0)
            if limit is None or used <= limit or pid in self._recycled_pids:
                continue
            self._recycled_pids.add(pid)
            reason = (f"memory {units.format_size(used)} over max_memory_restart "
                      f"{units.format_size(limit)}")
            first = now - started < self._interval * FROM_START
            early = units.format_duration(self._interval * FROM_START)
            self.log.warning("%s:%d (pid %d): %s%s", app, index, pid, reason,
                             f" within {early} of its start" if first else "")
            how = f"each run was over max_memory_restart within {early} of its start"
            self._recycle(app, index, reason, unstable=how if first else None, pid=pid)
