"""The engine: the one owner of the instance table (layer 3).

Every instance is a `Slot` here, and only this module writes one. Everything above the engine
(`apply`, `commands`, `monitors`) uses its intent API: `start`, `stop`, `restart`, `recycle`,
`replace` (a replacement-first restart), `retire`, `signal`, `annotate`, the waits `settled` and
`stopped`, and `snapshot`/`view`/`current`, which return frozen `View`s. The OS side of a run is
the process layer's (`running.Processes`, or a fake one in tests), and time is the clock's: both
are given at construction.

The event core: every stimulus for an instance (an intent, a timer, what the process layer
reports) is an event put on one queue, and the queue is worked off one event at a time:
`lifecycle.step` decides, then its effects are executed. An effect's result (a spawn's pid, or
why it failed) is a new event on the queue, stepped after the current one, so no step ever runs
inside another and none works on stale state.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from procsup import deps, handover, lifecycle, units
from procsup.lifecycle import Instance, Policy
from procsup.model import LIVE_STATES, AppSpec, ExecMode, InstanceId, State
from procsup.running import Report, RunHandle
from procsup.table import (
    SETTLED,
    Cancellable,
    Clock,
    Marks,
    ProcessLayer,
    Ref,
    Replacement,
    Role,
    Slot,
    View,
)

__all__ = [
    "SETTLED", "Cancellable", "Clock", "Marks", "ProcessLayer", "Ref", "Replacement", "Role",
    "RunHandle", "Supervisor", "View",
]

@dataclasses.dataclass(eq=False)
class _Waiter:
    done: Callable[[], bool]
    future: asyncio.Future[None]


class Supervisor:
    """Owns every instance and the applied definition of every app; `feed` (through the
    queue) is the one way an instance changes state."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        processes: Callable[[Report], ProcessLayer],
        clock: Clock | None = None,
    ) -> None:
        self.loop = loop
        self.clock: Clock = loop if clock is None else clock
        self.log = logger
        self.processes = processes(self._report)
        self.shutting_down = False
        self._specs: dict[str, AppSpec] = {}
        self._table: dict[str, dict[int, Slot]] = {}
        self._replacements: list[Slot] = []
        self._outgoing: list[Slot] = []
        self._by_ref: dict[Ref, Slot] = {}
        self._owners: dict[RunHandle, Slot] = {}  # the slot of every run not yet ended
        self._refs = itertools.count(1)
        self._queue: collections.deque[tuple[Slot, lifecycle.Event]] = collections.deque()
        # Reports made while `spawn` runs (its run has no slot yet), for `_spawn` to queue.
        self._early: list[tuple[RunHandle, lifecycle.Event]] | None = None
        self._stepping = False
        self._waiters: list[_Waiter] = []
        self._dirty = False
        self.disabled: frozenset[str] = frozenset()  # apps `procsup disable` keeps stopped
        self._gated: dict[Ref, Slot] = {}  # WAITING for their depends_on
        self._touched: set[str] | None = set()  # apps changed since the gate looked; None: all
        self._rank: dict[str, int] | None = None  # app -> its group in deps.layers, cached

    # ------------------------------------------------------------------ reading the table

    def specs(self) -> Mapping[str, AppSpec]:
        """The applied definition of every app, in file order (a copy)."""
        return dict(self._specs)

    def _slots(self) -> Iterator[Slot]:
        for app in self._table.values():
            yield from app.values()
        yield from self._replacements  # a reload's new instances, until they take over
        yield from self._outgoing  # the instances they replaced, until they are gone

    @staticmethod
    def _view(slot: Slot) -> View:
        return View(slot.ref, slot.id, slot.spec, slot.inst, slot.role, slot.generation,
                    slot.retiring, slot.note, slot.run.status if slot.run else None,
                    slot.run.log_health if slot.run else (),
                    slot.run.warning if slot.run else None)

    def snapshot(self) -> list[View]:
        """Every instance: the table in app order, then replacements, then outgoing ones."""
        return [self._view(s) for s in self._slots()]

    def view(self, ref: Ref) -> View | None:
        """The instance now, or None once it left the table (retired and stopped)."""
        slot = self._by_ref.get(ref)
        return None if slot is None else self._view(slot)

    def current(self, app: str) -> dict[int, View] | None:
        """The table's instances of `app` by index (None: the app has no row at all)."""
        slots = self._table.get(app)
        return None if slots is None else {i: self._view(s) for i, s in sorted(slots.items())}

    # ------------------------------------------------------------------ definitions

    def set_specs(self, apps: Mapping[str, AppSpec]) -> None:
        """Make `apps` the applied definitions: an app not in it is forgotten (its instances
        must be retired first), every other one takes its new definition (`set_spec`)."""
        for name in [n for n in self._specs if n not in apps]:
            del self._specs[name]
            if not self._table.get(name):
                self._table.pop(name, None)
        for name, spec in apps.items():
            self._set_spec(name, spec)
        self._touched = None  # depends_on may have changed: the gate looks at every wait
        self._mark_dirty()
        self._close_listeners()

    def set_spec(self, name: str, spec: AppSpec) -> None:
        """Record the applied definition of one app; its instances that are not on their way
        out take it at once (their live keys: logs, restart policy; what runs changes only
        with the next run)."""
        self._set_spec(name, spec)
        self._touched = None
        self._mark_dirty()
        self._close_listeners()

    def _set_spec(self, name: str, spec: AppSpec) -> None:
        self._specs[name] = spec
        self._rank = None
        policy = Policy.of(spec)
        for slot in self._table.get(name, {}).values():
            if slot.retiring:
                continue
            slot.spec, slot.policy = spec, policy
            if slot.run is not None:
                self.processes.retarget(slot.run, spec)

    def add(self, app: str, index: int) -> Ref:
        """The slot of instance `index` of `app`, a new one if there is none or it is
        retiring. A retiring one still stopping moves to the outgoing instances, so it stays
        in status, in the instance record and in what shutdown waits for until it is gone."""
        slots = self._table.setdefault(app, {})
        slot = slots.get(index)
        if slot is not None and slot.retiring and slot.inst.state in LIVE_STATES:
            slot.role = Role.OUTGOING
            self._outgoing.append(slot)
        if slot is None or slot.retiring:
            slot = self._new_slot(InstanceId(app, index), self._specs[app], Role.CURRENT)
            slots[index] = slot
        return slot.ref

    def _new_slot(self, iid: InstanceId, spec: AppSpec, role: Role) -> Slot:
        slot = Slot(next(self._refs), iid, spec, Policy.of(spec), Instance(id=iid), role)
        self._by_ref[slot.ref] = slot
        return slot

    # ------------------------------------------------------------------ intents

    def _pick(self, refs: Iterable[Ref]) -> list[Slot]:
        return [s for r in refs if (s := self._by_ref.get(r)) is not None]

    def start(self, refs: Iterable[Ref]) -> Marks:
        """Start these instances (an instance stopping starts again once it is stopped).
        Only an instance of the table is started: one retiring (being removed or scaled
        away), a reload's replacement or an outgoing old instance is left as it is, so no
        command brings back a process that no plan counts. The marks are for `started`."""
        slots = self._startable(refs)
        marks = {}
        for slot in slots:
            # Its current run counts as this start's when it is already starting.
            starting = slot.inst.state is State.STARTING and slot.inst.pid is not None
            marks[slot.ref] = slot.generation - 1 if starting else slot.generation
        for slot in self._in_start_order(slots):
            slot.note = None
            self._gate(slot, lifecycle.Start())
        return marks

    def stop(self, refs: Iterable[Ref]) -> None:
        """Stop these instances: kill_signal to each group, SIGKILL after kill_timeout."""
        self._command(self._pick(refs), lifecycle.Stop())

    def restart(self, refs: Iterable[Ref], *, note: str | None = None) -> Marks:
        """Stop (if live) then start, with fresh restart counters; `note` is shown in status.
        Only instances of the table, as for `start`. The marks are for `started`."""
        slots = self._startable(refs)
        marks = {slot.ref: slot.generation for slot in slots}
        for slot in self._in_start_order(slots):
            slot.note = note
            self._gate(slot, lifecycle.Restart())
        return marks

    def _in_start_order(self, slots: list[Slot]) -> list[Slot]:
        """Dependencies first, so that a dependent started with them sees them starting (or
        waiting), not stopped."""
        if not any(s.spec.depends_on for s in slots):
            return slots
        if self._rank is None:  # once per change of the definitions
            self._rank = {n: i for i, group in enumerate(deps.layers(self._specs))
                          for n in group}
        rank = self._rank
        return sorted(slots, key=lambda s: rank.get(s.id.app, 0))

    def _gate(self, slot: Slot, event: lifecycle.Start | lifecycle.Restart) -> None:
        """Start (or restart) an instance, unless nothing of it runs and its depends_on is not
        met: then it waits (`_release` starts it once they are). A live instance restarts at
        once: it was started already, and ordering is not coupling."""
        wait = None
        if slot.inst.state not in LIVE_STATES and slot.spec.depends_on:
            wait = deps.unmet(slot.spec, self._members(slot.spec))
        if wait is None:
            self._feed(slot, event)
            return
        slot.wait = wait
        self._gated[slot.ref] = slot
        self._feed(slot, lifecycle.Wait(wait.reason))

    def _members(self, spec: AppSpec) -> dict[str, list[deps.Member]]:
        """The instances of `spec`'s dependencies, as the gate sees them (the table's own:
        not a reload's replacement, nor one on its way out)."""
        out = {}
        for dep, _cond in spec.depends_on:
            disabled = dep in self.disabled
            out[dep] = [
                deps.Member(s.inst.state, s.inst.exit_code, s.inst.health, s.inst.reason,
                            disabled, s.wait.hopeless if s.wait is not None else False)
                for s in self._table.get(dep, {}).values() if not s.retiring]
        return out

    def _release(self) -> None:
        """The gate, level-triggered once per loop turn after changes: every waiting instance
        whose dependencies changed starts if they are met now, else takes the new reason.
        Nothing is released once the daemon shuts down."""
        touched, self._touched = self._touched, set()
        if self.shutting_down or not self._gated:
            return
        for slot in list(self._gated.values()):
            if slot.inst.state is not State.WAITING:
                continue
            if touched is not None and not any(d in touched for d, _ in slot.spec.depends_on):
                continue
            wait = deps.unmet(slot.spec, self._members(slot.spec))
            if wait is None:
                self._feed(slot, lifecycle.Start())
            elif wait != slot.wait:
                slot.wait = wait
                self._feed(slot, lifecycle.Wait(wait.reason))

    def set_disabled(self, names: Iterable[str]) -> None:
        """The apps `procsup disable` keeps stopped (the applier owns the set); a dependent
        waiting for one of them says so."""
        self.disabled = frozenset(names)
        self._touched = None
        self._mark_dirty()

    def _startable(self, refs: Iterable[Ref]) -> list[Slot]:
        return [s for s in self._pick(refs) if s.role is Role.CURRENT and not s.retiring]

    def _command(self, slots: list[Slot], event: lifecycle.Event) -> None:
        for slot in slots:
            slot.note = None  # a command or an apply: a monitor's old reason no longer applies
            self._feed(slot, event)

    def recycle(self, ref: Ref, reason: str, *, unstable: str | None = None,
                note: str | None = None) -> None:
        """A monitor's restart in place (counted as an automatic restart), or with `unstable`
        the end of a failed run, left to the restart policy (`lifecycle.Recycle`)."""
        for slot in self._pick([ref]):
            slot.note = note
            self._feed(slot, lifecycle.Recycle(reason, unstable))

    def annotate(self, ref: Ref, note: str | None) -> None:
        """Say in status why a monitor last replaced or restarted the instance."""
        for slot in self._pick([ref]):
            slot.note = note
            self._mark_dirty()

    def checked(self, ref: Ref, pid: int, ok: bool, error: str | None = None) -> View | None:
        """A health check of process `pid` passed (`ok`) or failed with `error`: news for the
        instance while `pid` is its process (`lifecycle.Health`), else stale. How it is now.
        A result that changes nothing (healthy again) is not fed: no record, no wake-ups."""
        slot = self._by_ref.get(ref)
        event = lifecycle.Health(ok, error)
        if slot is not None and slot.inst.pid == pid and lifecycle.step(
                slot.inst, slot.policy, event, self.clock.time())[0] is not slot.inst:
            self._feed(slot, event)
        return None if slot is None else self._view(slot)

    def retire(self, refs: Iterable[Ref]) -> list[View]:
        """Stop these instances and forget them once they are stopped (a plan removed them, or
        `scale` went down); how each is right after (the live ones are to wait for with
        `stopped`)."""
        retired = []
        for slot in self._pick(refs):
            slot.retiring = True
            if slot.inst.state in LIVE_STATES or slot.inst.state is State.BACKOFF:
                self._feed(slot, lifecycle.Stop())
            else:
                self._forget(slot)
            retired.append(self._view(slot))
        return retired

    def signal(self, refs: Iterable[Ref], sig: int, *, leader: bool = False) -> list[View]:
        """`sig` to the process group of each live instance (with `leader`, to its main
        process only: reload_signal); the instances it reached."""
        done = []
        for slot in self._pick(refs):
            if (slot.run is not None and slot.inst.state in LIVE_STATES
                    and self.processes.signal(slot.run, sig, leader=leader)):
                done.append(self._view(slot))
        return done

    async def replace(self, ref: Ref) -> Replacement:
        """Replacement first: start a new process for the instance beside the old one, wait
        until it is ready, then swap it into the table and stop the old one (gracefully, not
        waited for: the old ref is returned). A replacement that is not ready (it failed, or
        ready_timeout passed) is stopped, and the old instance keeps running."""
        old = self._by_ref[ref]
        spec = self._specs[old.id.app]
        new = self._new_slot(old.id, spec, Role.REPLACEMENT)
        self._replacements.append(new)
        began = self.clock.time()
        self._feed(new, lifecycle.Start())
        limit = spec.ready_timeout + spec.min_uptime + spec.kill_timeout + 1.0
        await self._wait(lambda: (
            new.inst.state is State.RUNNING
            or new.inst.state in (State.ERRORED, State.EXITED, State.STOPPED, State.BACKOFF)
            or new.generation > 1  # (its first run already ended)
            or self.shutting_down), timeout=limit)
        # Given up when the old instance was stopped on purpose (a command, a plan) or
        # everything stops. An old one that crashed, restarts or gave up meanwhile is what the
        # ready replacement is for: it takes over, so something serves.
        asked_to_stop = old.inst.state is State.STOPPED or (
            old.inst.state is State.STOPPING and not old.inst.then_start
            and not old.inst.failed_run)
        superseded = (self.shutting_down or asked_to_stop
                      or self._table.get(old.id.app, {}).get(old.id.index) is not old)
        if new.inst.state is not State.RUNNING or superseded:
            result = Replacement(self._view(new), None,
                                 superseded and new.inst.state in LIVE_STATES,
                                 self.clock.time() - began)
            new.retiring = True
            self._feed(new, lifecycle.Stop())
            await self._wait(lambda: new.inst.state not in LIVE_STATES)
            self._drop(new)
            return result
        self._replacements.remove(new)
        new.role = Role.CURRENT
        self._table[old.id.app][old.id.index] = new
        old.retiring = True
        old.role = Role.OUTGOING
        self._outgoing.append(old)
        self._feed(old, lifecycle.Stop())
        return Replacement(self._view(new), old.ref)

    def views(self, refs: Iterable[Ref]) -> list[View]:
        """These instances now (the ones still in the table)."""
        return [self._view(s) for s in self._pick(refs)]

    async def settled(self, refs: Iterable[Ref]) -> list[View]:
        """Once every one of these instances is settled (running, errored, exited or stopped)
        or gone from the table: how they ended up."""
        slots = self._pick(refs)
        await self._wait(lambda: all(s.gone or s.inst.state in SETTLED for s in slots))
        return [self._view(s) for s in slots]

    async def started(self, marks: Mapping[Ref, int]) -> list[View]:
        """What a `start`/`restart` waits for, given the marks it returned: each instance is
        settled (running, errored, exited, stopped), waiting in backoff, gone, has ended
        the run that start began and is starting the next (a crash loop with no restart
        delay never rests in backoff), or waits for a dependency that will not come by
        itself (`deps.Wait.hopeless`). How they ended up."""
        slots = [(s, marks[s.ref]) for s in self._pick(marks)]
        await self._wait(lambda: all(
            s.gone or s.inst.state in SETTLED or s.inst.state is State.BACKOFF
            or s.generation >= g + 2
            or (s.inst.state is State.WAITING and s.wait is not None and s.wait.hopeless)
            for s, g in slots))
        return [self._view(s) for s, _ in slots]

    async def stopped(self, refs: Iterable[Ref]) -> list[View]:
        """Once the processes these instances have now are gone (each is not live, or has
        started a new run since: a later start superseded the stop, or left the table): how
        they ended up."""
        slots = [(s, s.generation) for s in self._pick(refs)]
        await self._wait(lambda: all(
            s.gone or s.inst.state not in LIVE_STATES or s.generation != g for s, g in slots))
        return [self._view(s) for s, _ in slots]

    def begin_shutdown(self) -> None:
        """From now on a `replace` gives up (the daemon is stopping everything); one waiting
        for its replacement stops waiting now."""
        self.shutting_down = True
        self._mark_dirty()

    async def stop_all(self) -> None:
        """Stop every instance, dependents before their dependencies (`stop_in_order`)."""
        await self.stop_in_order([s.ref for s in self._slots()])

    async def stop_in_order(self, refs: Iterable[Ref]) -> list[View]:
        """Stop these instances group by group, dependents before their dependencies
        (`deps.stop_layers`), the instances of one group in parallel, each within its own
        kill_timeout; a group is done when the processes it had are gone (as `stopped`).
        A waiting instance has nothing running and stops first, so that the gate cannot
        start it while its dependencies are being stopped. How they ended up."""
        slots = self._pick(refs)
        for slot in slots:
            if slot.inst.state is State.WAITING:
                self._feed(slot, lifecycle.Stop())
        names = list(dict.fromkeys(s.id.app for s in slots))
        for group in deps.stop_layers(names, self._specs):
            batch = [s.ref for s in slots if s.id.app in group]
            self.stop(batch)
            await self.stopped(batch)
        return [self._view(s) for s in slots]

    # ------------------------------------------------------------------ re-exec (issue 14)

    def unsettled(self) -> str | None:
        """Why the table cannot be handed over to a new image now (a reload's replacement, an
        instance on its way out: what a rollout or a scale is still doing), or None."""
        if self._replacements or self._outgoing:
            return "a reload is replacing instances"
        if any(s.retiring for s in self._slots()):
            return "instances are being removed"
        return None

    def hand_over(self) -> list[handover.SlotRecord]:
        """Every instance of the table as the next image takes it over (`take_over`)."""
        out = []
        for app, slots in self._table.items():
            for index, slot in sorted(slots.items()):
                inst = {f.name: getattr(slot.inst, f.name)
                        for f in dataclasses.fields(slot.inst) if f.name != "id"}
                inst["state"] = slot.inst.state.value
                run = None if slot.run is None else self.processes.run_record(slot.run)
                out.append(handover.SlotRecord(app, index, inst, slot.generation, slot.note,
                                               run))
        return out

    def take_over(self, records: Iterable[handover.SlotRecord]) -> None:
        """The instances the previous image handed over (its `hand_over`), with their runs,
        after `set_specs` of the definitions it ran: states, counters, timers, the gate's
        waits and heartbeats go on as they were."""
        for rec in records:
            spec = self._specs[rec.app]
            slot = self._new_slot(InstanceId(rec.app, rec.index), spec, Role.CURRENT)
            self._table.setdefault(rec.app, {})[rec.index] = slot
            fields = {**rec.inst, "state": State(rec.inst["state"])}
            known = {f.name for f in dataclasses.fields(Instance)}
            slot.inst = Instance(id=slot.id, **{k: v for k, v in fields.items() if k in known})
            slot.generation, slot.note = rec.generation, rec.note
            if rec.run is not None:
                run = self.processes.adopt(slot.id, spec, rec.run)
                slot.run, slot.run_spec = run, spec
                self._owners[run] = slot
                if slot.inst.state is State.RUNNING:
                    self.processes.watch_heartbeat(run, spec.heartbeat_timeout)
            if slot.inst.state is State.WAITING:
                self._gated[slot.ref] = slot  # the gate looks again (`_release`)
            self._arm_timer(slot)
        self._touched = None
        self._mark_dirty()

    # ------------------------------------------------------------------ the event core

    def _report(self, run: RunHandle, event: lifecycle.Event) -> None:
        """What the process layer saw a run do; news of a run that is no longer the slot's
        current one (a late probe, a heartbeat of a replaced run) is dropped. A report made
        while `spawn` is still returning that run waits until the run has its slot."""
        slot = self._owners.get(run)
        if slot is not None and slot.run is run:
            self._feed(slot, event)
        elif slot is None and self._early is not None:
            self._early.append((run, event))

    def _feed(self, slot: Slot, event: lifecycle.Event) -> None:
        """Queue one event for one instance; work off the queue unless a step is under way
        (then the running loop below takes it after the current step)."""
        self._queue.append((slot, event))
        if self._stepping:
            return
        self._stepping = True
        try:
            while self._queue:
                self._step(*self._queue.popleft())
        finally:
            self._stepping = False

    def _step(self, slot: Slot, event: lifecycle.Event) -> None:
        """Apply one event to one instance and execute the resulting effects."""
        if isinstance(event, lifecycle.Exited) and slot.run is not None:
            del self._owners[slot.run]  # the process layer let go of it
            outdated = slot.run_spec is not None and slot.run_spec is not slot.spec
            slot.run = slot.run_spec = None
            if outdated:  # the sockets only its old definition used may go now
                self._close_listeners()
        old = slot.inst
        new, effects = lifecycle.step(old, slot.policy, event, self.clock.time())
        slot.inst = new
        if new.state is not State.WAITING and slot.wait is not None:
            slot.wait = None  # started, or stopped: the gate lets go of it
            self._gated.pop(slot.ref, None)
        if self._touched is not None and new is not old:
            self._touched.add(slot.id.app)
        if new.state != old.state:
            self._log_transition(slot, old, new)
        for effect in effects:
            if isinstance(effect, lifecycle.Spawn):
                self._spawn(slot)
            elif isinstance(effect, lifecycle.Kill) and slot.run is not None:
                if effect.signal == lifecycle.SIGKILL and old.state is State.STOPPING:
                    self.log.warning("%s: still running after kill_timeout %s: SIGKILL to its "
                                     "process group", slot.id, units.format_duration(
                                         slot.policy.kill_timeout))
                try:
                    self.processes.kill(slot.run, effect.signal)
                except Exception:  # the deadline still comes, and SIGKILL after it
                    self.log.exception("%s: sending signal %d failed", slot.id, effect.signal)
        self._arm_timer(slot)
        if slot.run is not None and (new.state is State.RUNNING) != (old.state is State.RUNNING):
            running = new.state is State.RUNNING
            self.processes.watch_heartbeat(
                slot.run, slot.spec.heartbeat_timeout if running else None)
        if slot.retiring and new.state not in LIVE_STATES and not any(
                s is slot for s, _ in self._queue):
            self._forget(slot)
        self._mark_dirty()

    def _spawn(self, slot: Slot) -> None:
        """Execute a Spawn effect; its answer is queued, stepped after the current step."""
        self._early = []
        try:
            result = self.processes.spawn(slot.id, slot.spec)
        except Exception as exc:  # a bug below must not leave a slot starting for ever
            self.log.exception("%s: spawn failed unexpectedly", slot.id)
            result = lifecycle.SpawnFailed(f"cannot start: internal error: {exc!r}")
        finally:
            early, self._early = self._early, None
        if isinstance(result, lifecycle.SpawnFailed):
            self._queue.append((slot, result))
            return
        slot.run, slot.run_spec = result, slot.spec
        self._owners[result] = slot
        slot.generation += 1
        self._queue.append((slot, lifecycle.Spawned(result.pid)))
        self._queue.extend((slot, event) for run, event in early if run is result)

    def _forget(self, slot: Slot) -> None:
        """A retired slot is stopped: it leaves the table (and its app, if it was the last)."""
        self._drop(slot)
        app = self._table.get(slot.id.app)
        if app is not None and app.get(slot.id.index) is slot:
            del app[slot.id.index]
            if not app and slot.id.app not in self._specs:
                del self._table[slot.id.app]
        if slot.spec.exec_mode is ExecMode.CLUSTER:
            self._close_listeners()  # its sockets may have no user left

    def _drop(self, slot: Slot) -> None:
        if slot.run is not None:
            self._owners.pop(slot.run, None)
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.gone = True
        self._by_ref.pop(slot.ref, None)
        self._gated.pop(slot.ref, None)
        if slot in self._outgoing:
            self._outgoing.remove(slot)
        if slot in self._replacements:
            self._replacements.remove(slot)
        self._mark_dirty()

    def _close_listeners(self) -> None:
        """Close the listening sockets that no instance of the applied apps can use any more
        (a retired instance still stopping keeps its own). A live run keeps the sockets of
        the definition it was started with too: during a rollout that changes `listen` the
        old instances serve on the old address, and after a failed one they restart on it."""
        users = [(s.spec, s.id.index) for s in self._slots()
                 if not s.retiring or s.inst.state in LIVE_STATES]
        users += [(s.run_spec, s.id.index) for s in self._slots()
                  if s.run is not None and s.run_spec is not None and s.run_spec is not s.spec]
        self.processes.close_listeners(users, self._specs)

    def _log_transition(self, slot: Slot, old: Instance, new: Instance) -> None:
        level = logging.WARNING if new.state in (State.ERRORED, State.BACKOFF) else logging.INFO
        extra = f" ({new.reason})" if new.reason else ""
        pid = f" pid {new.pid}" if new.pid else ""
        self.log.log(
            level, "%s: %s -> %s%s%s", slot.id, old.state.value, new.state.value, pid, extra
        )

    def _arm_timer(self, slot: Slot) -> None:
        deadline = slot.inst.deadline
        if deadline == slot.timer_at:
            return
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.timer_at = deadline
        if deadline is not None:
            slot.timer = self.clock.call_at(deadline, lambda: self._on_deadline(slot))

    def _on_deadline(self, slot: Slot) -> None:
        slot.timer = None
        slot.timer_at = None
        self._feed(slot, lifecycle.Tick())

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Once per loop turn after changes: record instances on disk, wake waiters."""
        self._dirty = False
        self._release()
        self.processes.record()
        still = []
        for w in self._waiters:
            if w.future.done():
                continue
            if w.done():
                w.future.set_result(None)
            else:
                still.append(w)
        self._waiters = still

    async def _wait(self, done: Callable[[], bool], *, timeout: float | None = None) -> None:
        """Return once `done()` holds (checked after every change of state), or once `timeout`
        seconds of the clock have passed."""
        if done():
            return
        waiter = _Waiter(done, self.loop.create_future())
        self._waiters.append(waiter)
        timer = None
        if timeout is not None:
            def expire() -> None:
                if not waiter.future.done():
                    waiter.future.set_result(None)

            timer = self.clock.call_at(self.clock.time() + timeout, expire)
        try:
            await waiter.future
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.future.done():
                waiter.future.cancel()
