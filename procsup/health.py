"""Health checks (layer 4, beside the monitors): when each running instance of an app with
`health` is checked, and what a streak of failed checks calls for (contract §3 Health checks).

- Which: every instance of the table that is `running`. One that is starting is not ready to be
  judged (its failures would not count: `lifecycle.Health`), and a reload's replacement is
  checked once it has taken over. One check at a time per instance, never overlapping.
- When: at once when its run is first seen running, then every `health_interval`, start to
  start (a check that outlasts the interval is followed by the next one when it ends). A sweep
  of the app's instances finds the new runs and drops the ended ones, cancelling a check in
  flight (a command's whole group is killed): every `health_interval`; every SWEEP_STARTING
  while one of them is starting or waiting to start, and at the end of a backoff, so that a
  run's first check follows its readiness closely; and as soon as a checked run ends
  (`Supervisor.stopped`), so that its check stops with it and its successor is seen.
- How: `probes.check` for `tcp://` and `http://` (2xx or 3xx), the `command` seam for a
  command (`running.Processes.run_check`: as the app's user, in its cwd, with its env); each
  is bounded by `health_timeout` and runs on the loop without blocking it.
- Then: the result goes to the engine (`Supervisor.checked`), whose `lifecycle.Health` keeps
  the current process's health and its failures in a row. When `restart_reason` says the
  streak reached `health_failures`, `recycle` (the applier's: replacement first for a cluster
  app, so no connection is refused; in place otherwise) gets "health check failed 3 times:
  <last error>" and the process's pid: once per streak, asked again only after as many more
  failures while the same process runs on (its replacement did not get ready).

Timers are the engine's clock's, so that tests replay the schedule on a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping

from procsup import probes
from procsup.lifecycle import Instance
from procsup.model import AppSpec, InstanceId, State
from procsup.monitors import Recycle
from procsup.supervisor import Cancellable, Ref, Supervisor, View

__all__ = ["Check", "Command", "HealthChecks", "reason", "restart_reason", "status_of"]

#: How often the app's instances are looked at while one of them is starting.
SWEEP_STARTING = 0.1
#: The states from which an instance becomes running soon, unseen by a slower sweep.
_SOON = frozenset({State.STARTING, State.WAITING})

#: check(instance, its app's definition): None when healthy, else what went wrong.
Check = Callable[[View, AppSpec], Awaitable[str | None]]
#: command(instance, its app's definition, its pid): run the `health` command for it.
Command = Callable[[InstanceId, AppSpec, int], Awaitable[str | None]]


# --- the policy (pure) --------------------------------------------------------------------


def status_of(inst: Instance, checked: bool) -> str | None:
    """`health` as `status` shows it: None for an app without a check (`checked` False),
    "unknown" before the current process's first result (or with no process), else the latest
    result, "healthy" or "unhealthy"."""
    if not checked:
        return None
    return inst.health or "unknown"


def reason(inst: Instance, failures: int) -> str | None:
    """Why an unhealthy instance is so, for `status`: "health check failed (1 of 3): ...",
    then "health check failed 3 times: ..." (the restart's reason); None unless unhealthy."""
    if inst.health != "unhealthy":
        return None
    n, error = inst.health_failures, inst.health_error
    if n < failures:
        return f"health check failed ({n} of {failures}): {error}"
    return f"health check failed {n} {'time' if n == 1 else 'times'}: {error}"


def restart_reason(inst: Instance, failures: int) -> str | None:
    """The reason to restart a running instance after `failures` (its `health_failures`)
    failed checks in a row, or None: due when the streak reaches `failures`, and again at each
    further `failures` while the same process runs on, never in between."""
    n = inst.health_failures
    due = inst.state is State.RUNNING and n > 0 and failures > 0 and n % failures == 0
    return reason(inst, failures) if due else None


# --- the schedule -------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Run:
    """One run of one instance under check."""

    pid: int
    task: asyncio.Task[None] | None = None  # the check in flight
    timer: Cancellable | None = None  # the next check, when none is in flight
    end: asyncio.Task[None] | None = None  # waits for the run's end

    def cancel(self) -> None:
        for handle in (self.task, self.timer, self.end):
            if handle is not None:
                handle.cancel()


@dataclasses.dataclass(eq=False)
class _App:
    spec: AppSpec
    runs: dict[Ref, _Run] = dataclasses.field(default_factory=dict)
    timer: Cancellable | None = None
    timer_at: float | None = None


def _settings(spec: AppSpec) -> tuple[object, ...]:
    return spec.health, spec.health_interval, spec.health_timeout


class HealthChecks:
    """Owns the checks of every app with `health`: their timers and the checks in flight."""

    def __init__(
        self,
        engine: Supervisor,
        recycle: Recycle,
        *,
        command: Command | None = None,
        check: Check | None = None,
    ) -> None:
        self.engine = engine
        self.clock = engine.clock
        self.loop = engine.loop
        self.log = engine.log
        self._recycle = recycle
        self._command = command
        self._check = check if check is not None else self._probe
        self._apps: dict[str, _App] = {}
        self._closed = False

    def configure(self, specs: Mapping[str, AppSpec]) -> None:
        """Check the apps of `specs` (the applied definitions) that have `health`, replacing
        what was checked before. An app whose check, interval and timeout are unchanged keeps
        its schedule (and a check in flight); a changed one starts over."""
        if self._closed:
            return
        for name in list(self._apps):
            spec = specs.get(name)
            if spec is None or spec.health is None or _settings(spec) != _settings(
                    self._apps[name].spec):
                self._drop(name)
            else:
                self._apps[name].spec = spec  # health_failures applies to the next result
        for name, spec in specs.items():
            if spec.health is not None and name not in self._apps:
                self._apps[name] = _App(spec)
                self._sweep(name)

    def close(self) -> None:
        """Cancel every timer and every check in flight. Idempotent."""
        self._closed = True
        for name in list(self._apps):
            self._drop(name)

    def _drop(self, name: str) -> None:
        app = self._apps.pop(name)
        if app.timer is not None:
            app.timer.cancel()
        for run in app.runs.values():
            run.cancel()

    def _sweep(self, name: str) -> None:
        """Check the new runs at once, drop the ones that ended, and arm the next sweep. (The
        next check of a known run has a timer of its own: a sweep is O(instances).)"""
        app = self._apps.get(name)
        if app is None:
            return
        now = self.clock.time()
        views = (self.engine.current(name) or {}).values()
        running = {v.ref: v for v in views
                   if v.state is State.RUNNING and v.pid is not None and not v.retiring}
        for ref, run in list(app.runs.items()):
            view = running.get(ref)
            if view is None or view.pid != run.pid:  # the run ended (or is on its way out)
                run.cancel()
                del app.runs[ref]
        for ref, view in running.items():
            if ref not in app.runs and view.pid is not None:
                # A new run: checked at once, and looked at again when it ends.
                run = app.runs[ref] = _Run(view.pid)
                run.end = self.loop.create_task(self._until_ended(name, app, ref))
                run.task = self.loop.create_task(self._check_one(name, app, view, run))
        after = [now + app.spec.health_interval]
        for v in views:
            if v.state in _SOON:
                after.append(now + SWEEP_STARTING)
            elif v.state is State.BACKOFF and v.inst.deadline is not None:
                after.append(max(v.inst.deadline, now) + SWEEP_STARTING / 10)  # then starting
        self._arm(name, app, min(after))

    def _arm(self, name: str, app: _App, when: float) -> None:
        if app.timer_at is not None and app.timer_at <= when:
            return  # a sweep comes sooner anyway
        if app.timer is not None:
            app.timer.cancel()
        app.timer_at = when
        app.timer = self.clock.call_at(when, lambda: self._on_timer(name, app))

    def _on_timer(self, name: str, app: _App) -> None:
        app.timer = app.timer_at = None
        if self._apps.get(name) is app:
            self._sweep(name)

    def _due(self, name: str, app: _App, ref: Ref, run: _Run) -> None:
        """The next check of a run is due: begin it, unless the run is over."""
        run.timer = None
        if self._apps.get(name) is not app or app.runs.get(ref) is not run:
            return
        view = self.engine.view(ref)
        if (view is None or view.pid != run.pid or view.state is not State.RUNNING
                or view.retiring):
            run.cancel()
            del app.runs[ref]
            return
        run.task = self.loop.create_task(self._check_one(name, app, view, run))

    async def _until_ended(self, name: str, app: _App, ref: Ref) -> None:
        await self.engine.stopped([ref])
        if self._apps.get(name) is app:
            self._sweep(name)

    async def _check_one(self, name: str, app: _App, view: View, run: _Run) -> None:
        began = self.clock.time()
        try:
            error = await self._check(view, app.spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not end the checks: it counts as a failure
            self.log.exception("%s: health check failed unexpectedly", view.id)
            error = f"the check itself failed: {exc!r}"
        run.task = None
        if self._apps.get(name) is not app or app.runs.get(view.ref) is not run:
            return  # no longer checked (a stale result: the sweep cancels in time, mostly)
        due = max(began + app.spec.health_interval, self.clock.time())
        run.timer = self.clock.call_at(due, lambda: self._due(name, app, view.ref, run))
        self._judge(app.spec, view, run.pid, error, self.engine.checked(
            view.ref, run.pid, error is None, error))

    def _judge(self, spec: AppSpec, before: View, pid: int, error: str | None,
               after: View | None) -> None:
        """Log what the result changed, and ask for a restart when the streak calls for it."""
        if after is None or after.pid != pid or after.state is not State.RUNNING:
            return  # not counted: the run ended or is being stopped
        inst = after.inst
        if error is not None:
            self.log.warning("%s: %s", after.id, reason(inst, spec.health_failures))
        elif before.inst.health == "unhealthy":
            self.log.info("%s: healthy again", after.id)
        why = restart_reason(inst, spec.health_failures)
        if why is not None:
            self._recycle(after.id.app, after.id.index, why, pid=pid)

    async def _probe(self, view: View, spec: AppSpec) -> str | None:
        """The check itself: a tcp/http probe, or the command through the process layer."""
        if isinstance(spec.health, str):
            return await probes.check(spec.health, timeout=spec.health_timeout)
        if self._command is None or view.pid is None:
            return "command checks are not available"
        return await self._command(view.id, spec, view.pid)
