"""Applying the desired state (layer 3, under supervisor): configs, `scale`, rolling
reloads, and the fresh processes the monitors ask for.

`Applier.apply` makes a config the desired state and executes the plan `reconcile.plan` made for
it, one apply at a time, stops finished before anything starts. `scale` and `reload_apps` change
instances between configs; `rolling` replaces instances one at a time, each replacement ready
before its old instance stops; `recycle` is how a monitor gets fresh processes. The config reload
triggers (`update`, SIGHUP, a saved watched file) end here too. Executing a plan makes no
decision the planner did not make: every change is an event fed to the supervisor's event core
(`Core`), which applies the state machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from procsup import config, lifecycle, monitors, reconcile, units, watch
from procsup.errors import ConfigError
from procsup.lifecycle import Instance, Policy
from procsup.model import LIVE_STATES, AppSpec, Desired, ExecMode, InstanceId, State
from procsup.running import Processes, Slot

#: During a large start, yield to the loop this often so the instance record is written and
#: the control socket answers.
_YIELD_EVERY = 16
#: A save of a watched file is applied this long after the last event of a burst.
_DEBOUNCE = 0.2
#: A watched file that reads as invalid is read again this long after, before it is reported
#: (an editor may still be writing it).
_RECHECK = 0.5


class Core(Protocol):
    """What the applier uses of the supervisor (`supervisor.Supervisor` implements it): the
    instance table and applied definitions it changes, and the event core it feeds and waits
    on. Every change of an instance goes through `feed`."""

    loop: asyncio.AbstractEventLoop
    log: logging.Logger
    desired: Desired
    slots: dict[str, dict[int, Slot]]
    specs: dict[str, AppSpec]
    replacements: list[Slot]
    outgoing: list[Slot]
    shutting_down: bool
    config_error: str | None
    restart_daemon: tuple[str, ...]
    monitors: monitors.Monitors
    processes: Processes

    def all_slots(self) -> Iterable[Slot]: ...
    def feed(self, slot: Slot, event: lifecycle.Event) -> None: ...
    async def wait(self, done: Callable[[], bool]) -> None: ...
    def forget(self, slot: Slot) -> None: ...
    def close_listeners(self) -> None: ...
    def spawn_task(self, coro: asyncio.Future[object] | object) -> None: ...

    @staticmethod
    def started(slot: Slot) -> bool: ...


class Applier:
    """Drives the instances of every app towards the desired state, one change at a time."""

    def __init__(self, sup: Core, *, profile_override: str | None) -> None:
        self.sup = sup
        self.loop = sup.loop
        self.log = sup.log
        self.profile_override = profile_override
        # One apply, scale, reload or monitor replacement at a time; shutdown waits for it too.
        self.lock = asyncio.Lock()
        self._watch: watch.ConfigWatch | None = None
        self._debounce: asyncio.TimerHandle | None = None

    def close(self) -> None:
        """Stop watching the config files."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # ------------------------------------------------------------------ desired state

    def running(self) -> dict[str, reconcile.Running]:
        """What runs, as the planner sees it."""
        out = {}
        for name, spec in self.sup.specs.items():
            slots = [s for s in self.sup.slots.get(name, {}).values() if not s.retiring]
            stopped = tuple(s.id.index for s in slots if s.inst.state is State.STOPPED)
            out[name] = reconcile.Running(spec, len(slots), stopped)
        return out

    def load(self) -> Desired:
        """Read the config file again (includes, profile); raises ConfigError."""
        try:
            return config.load(
                self.sup.desired.daemon.config_path,
                profile=self.profile_override,
                require_root_owned=os.geteuid() == 0,
            )
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}",
                              file=self.sup.desired.daemon.config_path) from None

    def plan(self, new: Desired) -> reconcile.Plan:
        return reconcile.plan(self.running(), new.apps, self.sup.desired.daemon, new.daemon)

    async def apply(
        self, new: Desired, *, wait: bool, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Make `new` the desired state and execute the plan that gets there. One apply at a
        time; stops run (and finish) before anything starts, so freed resources are free. A
        rollout that had to stop is appended to `failures`; its app keeps the definition its
        instances still run, and the config counts as not applied."""
        if failures is None:
            failures = []
        async with self.lock:
            if self.sup.shutting_down:
                return reconcile.Plan()
            plan = self.plan(new)
            self.sup.restart_daemon = plan.restart_daemon
            old_daemon = self.sup.desired.daemon
            # Keep the settings a running daemon cannot change; take every live one.
            self.sup.desired = dataclasses.replace(
                new, daemon=dataclasses.replace(
                    new.daemon, **{k: getattr(old_daemon, k) for k in reconcile.RESTART_DAEMON_KEYS}
                ),
            )
            stopping: list[Slot] = []
            starting: list[tuple[Slot, int]] = []
            # Counted as the planner counts: instances still stopping from an earlier scale-down
            # are on their way out (counting them made a scale back up start nothing).
            downs = {
                id(a) for a in plan.actions
                if a.action == reconcile.STOP or (
                    a.action == reconcile.SCALE and reconcile.scales_down(a, sum(
                        not s.retiring for s in self.sup.slots.get(a.app, {}).values())))
            }
            for action in plan.actions:
                if id(action) in downs:
                    stopping += self._retire(action.app, action.instances)
            if action_stops := [s for s in stopping if s.inst.state in LIVE_STATES]:
                await self.sup.wait(
                    lambda: all(s.inst.state not in LIVE_STATES for s in action_stops))
            previous = dict(self.sup.specs)
            for name in [n for n in self.sup.specs if n not in new.apps]:
                del self.sup.specs[name]
            for name, spec in new.apps.items():
                self._set_spec(name, spec)
            self.sup.close_listeners()
            failed_before = len(failures)
            for action in plan.actions:
                if action.action == reconcile.RELOAD:
                    failure = await self.rolling(action.app, action.instances)
                    if failure:
                        self.log.error("apply: %s", failure)
                        failures.append(failure)
                        self._set_spec(action.app, previous[action.app])  # what still runs
                elif action.action == reconcile.RESTART and self._rebinds(
                        previous.get(action.app), new.apps[action.app]):
                    # The sockets change kind (balance): no instance may hold the old ones
                    # when the new ones are bound, so stop them all, then start.
                    slots = [self.sup.slots[action.app][i] for i in action.instances]
                    for slot in slots:
                        self.sup.feed(slot, lifecycle.Stop())
                    await self.sup.wait(lambda slots=slots: all(  # type: ignore[misc]
                        s.inst.state not in LIVE_STATES for s in slots))
                    self.sup.close_listeners()
                    for slot in slots:
                        starting.append((slot, slot.generation))
                        self.sup.feed(slot, lifecycle.Start())
                elif action.action == reconcile.RESTART:
                    for i in action.instances:
                        slot = self.sup.slots[action.app][i]
                        starting.append((slot, slot.generation))
                        self.sup.feed(slot, lifecycle.Restart())
                elif id(action) not in downs and action.action in (reconcile.START,
                                                                   reconcile.SCALE):
                    for i in action.instances:
                        slot = self._slot(action.app, i)
                        starting.append((slot, slot.generation))
                        self.sup.feed(slot, lifecycle.Start())
                        if len(starting) % _YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # record what runs so far; answer clients
            self.sup.config_error = "; ".join(failures[failed_before:]) or None
            for line in plan.describe():
                self.log.info("apply: %s", line)
            for warning in new.warnings:
                self.log.warning("config: %s", warning)
            self.sup.monitors.configure(self.sup.specs, self.sup.desired.daemon)
        if wait and starting:
            await self.sup.wait(lambda: all(self.sup.started(s) for s, _ in starting))
        return plan

    @staticmethod
    def _rebinds(old: AppSpec | None, new: AppSpec) -> bool:
        """Whether a restart must stop every instance before any starts: a cluster app whose
        sockets change kind (balance) cannot bind the new ones while old instances hold the
        old ones."""
        return (old is not None and old.exec_mode is ExecMode.CLUSTER
                and new.exec_mode is ExecMode.CLUSTER and old.balance != new.balance)

    def _set_spec(self, name: str, spec: AppSpec) -> None:
        """Record the applied definition; running instances take its live keys at once."""
        old = self.sup.specs.get(name)
        self.sup.specs[name] = spec
        policy = Policy.of(spec)
        for slot in self.sup.slots.get(name, {}).values():
            if slot.retiring:
                continue
            old_paths = slot.spec.log_paths(slot.id.index)
            logs_changed = (
                old is None
                or old_paths != spec.log_paths(slot.id.index)
                or (old.log_date_format, old.log_max_size, old.log_retain)
                != (spec.log_date_format, spec.log_max_size, spec.log_retain)
            )
            slot.spec, slot.policy = spec, policy
            if logs_changed:
                self.sup.processes.retarget(slot)

    def _slot(self, app: str, index: int) -> Slot:
        """The slot of instance `index`, a new one if there is none or it is retiring. A
        retiring one still stopping moves to `outgoing`, so it stays in status, in the
        instance record and in what shutdown waits for until it is gone."""
        slots = self.sup.slots.setdefault(app, {})
        slot = slots.get(index)
        if slot is not None and slot.retiring and slot.inst.state in LIVE_STATES:
            self.sup.outgoing.append(slot)
        if slot is None or slot.retiring:
            spec = self.sup.specs[app]
            iid = InstanceId(app, index)
            slot = Slot(id=iid, inst=Instance(id=iid), policy=Policy.of(spec), spec=spec)
            slots[index] = slot
        return slot

    def _retire(self, app: str, indexes: Iterable[int]) -> list[Slot]:
        """Stop these instances and forget them once they are stopped."""
        retired = []
        for i in indexes:
            slot = self.sup.slots.get(app, {}).get(i)
            if slot is None:
                continue
            slot.retiring = True
            retired.append(slot)
            if slot.inst.state in LIVE_STATES or slot.inst.state is State.BACKOFF:
                self.sup.feed(slot, lifecycle.Stop())
            else:
                self.sup.forget(slot)
        return retired

    async def scale(self, app: str, count: int, *, wait: bool) -> list[Slot]:
        """`procsup scale`: run `count` instances of `app` until the next config apply."""
        async with self.lock:
            current = sorted(i for i, s in self.sup.slots.get(app, {}).items() if not s.retiring)
            gone = self._retire(app, [i for i in current if i >= count])
            # PROCSUP_INSTANCES of the next runs; per-instance log names when crossing 1
            self._set_spec(app, dataclasses.replace(self.sup.specs[app], instances=count))
            added = [self._slot(app, i) for i in range(len(current), count)]
            self.sup.close_listeners()
            for slot in added:
                self.sup.feed(slot, lifecycle.Start())
            self.sup.monitors.configure(self.sup.specs, self.sup.desired.daemon)
        if wait:
            await self.sup.wait(lambda: all(s.inst.state not in LIVE_STATES for s in gone)
                            and all(self.sup.started(s) for s in added))
        return gone + added

    async def reload_apps(self, targets: Mapping[str, list[int]]) -> str | None:
        """`procsup reload`: a rolling replacement of these instances, one at a time."""
        async with self.lock:
            for app, indexes in targets.items():
                failure = await self.rolling(app, indexes)
                if failure:
                    return failure
        return None

    async def rolling(
        self, app: str, indexes: Iterable[int], *, only_running: bool = False
    ) -> str | None:
        """Replace instances one at a time: start a replacement, wait until it is ready, only
        then stop the old one (gracefully), so a cluster app never stops serving. A
        replacement that is not ready within ready_timeout ends the rollout: it is stopped,
        the old instances keep running, and the reason is returned. An old instance's graceful
        stop overlaps the next replacement's start-up (it was replaced already); the rollout
        returns once every old instance is gone. `only_running` (a monitor's replacement)
        skips an instance that is not running when its turn comes, where `reload` starts it."""
        stopping: list[Slot] = []
        try:
            return await self._roll(app, indexes, stopping, only_running)
        finally:
            await self.sup.wait(lambda: all(s.inst.state not in LIVE_STATES for s in stopping))

    async def _roll(
        self, app: str, indexes: Iterable[int], stopping: list[Slot], only_running: bool
    ) -> str | None:
        for index in indexes:
            if self.sup.shutting_down:
                return f"reload of {app} stopped: procsupd is shutting down"
            old = self.sup.slots.get(app, {}).get(index)
            if old is None or old.retiring:
                continue
            if old.inst.state not in (State.RUNNING, State.STARTING):  # nothing to keep serving
                if only_running:
                    continue
                self.sup.feed(old, lifecycle.Restart())
                await self.sup.wait(lambda old=old: self.sup.started(old))  # type: ignore[misc]
                continue
            spec = self.sup.specs[app]
            new = Slot(id=old.id, inst=Instance(id=old.id), policy=Policy.of(spec), spec=spec)
            self.sup.replacements.append(new)
            began = self.loop.time()
            self.sup.feed(new, lifecycle.Start())
            limit = spec.ready_timeout + spec.min_uptime + spec.kill_timeout + 1.0
            try:
                await asyncio.wait_for(self.sup.wait(lambda new=new: (  # type: ignore[misc]
                    new.inst.state is State.RUNNING
                    or new.inst.state in (State.ERRORED, State.EXITED, State.STOPPED,
                                          State.BACKOFF)
                    or new.generation > 1)), limit)  # its first run already ended
            except TimeoutError:
                pass
            superseded = (self.sup.shutting_down
                          or self.sup.slots.get(app, {}).get(index) is not old
                          or old.inst.state not in (State.RUNNING, State.STARTING))
            if superseded and new.inst.state in LIVE_STATES:
                new.retiring = True
                self.sup.feed(new, lifecycle.Stop())
                await self.sup.wait(lambda new=new: new.inst.state not in LIVE_STATES)  # type: ignore[misc]
                self.sup.replacements.remove(new)
                return (f"reload of {app} stopped at {new.id}: the instance was stopped or "
                        "procsupd is shutting down")
            if new.inst.state is not State.RUNNING:
                reason = self._not_ready(new, spec, self.loop.time() - began)
                new.retiring = True
                self.sup.feed(new, lifecycle.Stop())
                await self.sup.wait(lambda new=new: new.inst.state not in LIVE_STATES)  # type: ignore[misc]
                self.sup.replacements.remove(new)
                return (f"reload of {app} stopped at {new.id}: {reason}; "
                        "the old instances keep running")
            self.sup.replacements.remove(new)
            self.sup.slots[app][index] = new
            old.retiring = True
            stopping.append(old)
            self.sup.outgoing.append(old)
            self.sup.feed(old, lifecycle.Stop())
        return None

    # ------------------------------------------------------------------ monitors (monitors.py)

    def leaders(self) -> dict[tuple[str, int], monitors.Leader]:
        """The leader pid of every live instance of the applied apps. While a reload replaces
        an instance, its replacement (later in `all_slots`) stands for it: a leaking
        replacement is a leaking instance too, and the old one is on its way out."""
        out: dict[tuple[str, int], monitors.Leader] = {}
        for slot in self.sup.all_slots():
            if slot.proc is not None and not slot.retiring and slot.inst.state in LIVE_STATES:
                started = slot.inst.started_at
                out[(slot.id.app, slot.id.index)] = monitors.Leader(
                    slot.proc.pid, self.loop.time() if started is None else started)
        return out

    def recycle(self, app: str, index: int | None, reason: str, *, revive: bool = False,
                 unstable: str | None = None, pid: int | None = None) -> None:
        """A monitor wants fresh processes for `app` (every instance when `index` is None).
        A cluster app runs side by side with its replacements (the daemon holds its sockets):
        replace them one at a time, as `reload` does, so no request is lost. Any other app is
        restarted in place: a fork app may bind its own port, which a replacement could not.
        With `revive`, instances at rest that no command stopped (exited, errored, in backoff)
        are started as well, with fresh restart counters, as a `restart` command would.
        With `unstable` (how the run of process `pid` failed) the run is a failed one: stopped
        in place and left to the restart policy, cluster app or not, since a replacement would
        fail the same way. (A reload's replacement that is not yet the instance is recycled as
        usual instead: the reload is under way.)"""
        if self.sup.shutting_down or app not in self.sup.specs:
            return
        current = self.sup.slots.get(app, {})
        if unstable is not None and not (index is not None and index in current and (
                proc := current[index].proc) is not None and proc.pid == pid):
            unstable = None
        chosen = [(i, s) for i, s in sorted(current.items())
                  if not s.retiring and (index is None or i == index)]
        # A running instance gets a fresh process; one stopped by a command stays stopped.
        indexes = [i for i, s in chosen if s.inst.state in (State.RUNNING, State.STARTING)]
        if revive:
            for i, slot in chosen:
                if slot.inst.state in (State.EXITED, State.ERRORED, State.BACKOFF):
                    self.log.info("%s:%d: starting it again: %s", app, i, reason)
                    self.sup.feed(slot, lifecycle.Restart())
                    slot.note = f"restarted: {reason}"  # after the feed, which clears notes
        if not indexes:
            return
        if self.sup.specs[app].exec_mode is ExecMode.CLUSTER and unstable is None:
            self.sup.spawn_task(self._replace(app, indexes, reason))
            return
        self.log.info("%s: restarting %s: %s", app,
                      "every instance" if index is None else f"instance {index}", reason)
        for i in indexes:
            slot = current[i]
            slot.note = f"restarted: {reason}"
            self.sup.feed(slot, lifecycle.Recycle(reason, unstable))

    @staticmethod
    def _not_ready(new: Slot, spec: AppSpec, waited: float) -> str:
        """Why a reload's replacement did not take over, for the user: its own exit, said as
        such (with a hint for a fork app, the usual cause being its own port), or the wait."""
        code = new.inst.exit_code
        if code is None and new.generation <= 1:  # it never ran: the command cannot execute
            return new.inst.reason or f"the replacement is {new.inst.state.value}"
        if waited >= spec.ready_timeout or code is None:
            return (f"the replacement was not ready within ready_timeout "
                    f"{units.format_duration(spec.ready_timeout)}")
        how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        reason = f"the replacement {how} before it was ready (see procsup logs {new.id.app})"
        if spec.exec_mode is ExecMode.FORK:
            reason += ("; a fork app that binds its own port cannot run beside its old "
                       "instance: use restart, or exec_mode = \"cluster\"")
        return reason

    async def _replace(self, app: str, indexes: list[int], reason: str) -> None:
        self.log.info("%s: replacing %s one at a time: %s", app,
                      ", ".join(f"{app}:{i}" for i in indexes), reason)
        async with self.lock:
            # What changed while this waited for an apply, a scale or a reload: only the
            # instances still running are replaced (a stopped one stays stopped).
            current = self.sup.slots.get(app, {})
            indexes = [i for i in indexes if i in current and not current[i].retiring
                       and current[i].inst.state in (State.RUNNING, State.STARTING)]
            if self.sup.shutting_down or not indexes:
                return
            before = {i: current[i] for i in indexes}
            failure = await self.rolling(app, indexes, only_running=True)
            for i in indexes:
                slot = self.sup.slots.get(app, {}).get(i)
                if slot is not None and slot is not before[i]:
                    slot.note = f"replaced: {reason}"
                elif slot is not None and failure:
                    slot.note = f"{reason}; {failure}"
        if failure:
            self.log.error("%s: %s", app, failure)

    # ------------------------------------------------------------------ config reload triggers

    async def reload(
        self, trigger: str, *, wait: bool = False, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Read the config and apply it (`update`, SIGHUP, a saved file). An invalid config
        changes nothing: the error is logged, kept for `status`, and raised."""
        try:
            new = self.load()
        except ConfigError as exc:
            self.sup.config_error = str(exc)
            self.log.error("%s: config not applied: %s", trigger, exc)
            self.update_watch(exc)
            raise
        plan = await self.apply(new, wait=wait, failures=failures)
        self.update_watch()
        return plan

    def request_reload(self, trigger: str = "SIGHUP") -> None:
        """SIGHUP: apply the config in the background."""
        self.sup.spawn_task(self._reload_quietly(trigger))

    async def _reload_quietly(self, trigger: str) -> None:
        try:
            await self.reload(trigger)
        except ConfigError:
            pass  # logged and shown in status by reload()

    def update_watch(self, failed: ConfigError | None = None) -> None:
        """(Re)watch the config files, or stop watching, per `watch_config`. After a `failed`
        load, the files and include globs that config named are watched as well, so that a
        fix of a file it newly includes is applied on save too."""
        d = self.sup.desired
        if not d.daemon.watch_config:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            return
        if self._watch is None:
            self._watch = watch.ConfigWatch(self.loop, self._on_config_event)
        files, include = d.files, d.daemon.include
        if failed is not None:
            files = tuple(dict.fromkeys((*files, *failed.files)))
            include = tuple(dict.fromkeys((*include, *failed.include)))
        self._watch.watch(files, include)

    def _on_config_event(self, path: str) -> None:
        """A watched file changed: apply once the burst of events is over (debounced)."""
        if self._debounce is not None:
            self._debounce.cancel()
        self._debounce = self.loop.call_later(_DEBOUNCE, self._saved, False)

    def _saved(self, recheck: bool) -> None:
        self._debounce = None
        if self.sup.shutting_down:
            return
        try:
            new = self.load()
        except ConfigError as exc:
            if not recheck:  # maybe half-written: read again before calling it broken
                self._debounce = self.loop.call_later(_RECHECK, self._saved, True)
                return
            self.sup.config_error = str(exc)
            self.log.error("saved config not applied: %s", exc)
            self.update_watch(exc)
            return
        self.sup.spawn_task(self._apply_saved(new))

    async def _apply_saved(self, new: Desired) -> None:
        await self.apply(new, wait=False)
        self.update_watch()
