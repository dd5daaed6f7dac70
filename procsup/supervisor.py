"""The supervisor: one asyncio loop that owns the actual state (layer 3).

With its two parts, `running` (the OS side of every run) and `apply` (the desired state), it is
the only place where the pure decisions (`lifecycle.step`, `reconcile.plan`) meet the OS
(layer 2). This module owns the instance table, the daemon's start-up and shutdown, and the
event core: every outside stimulus (a pidfd becoming readable, a timer, a control command, a
signal, a saved config file) becomes an event fed to `feed`, which applies the state machine and
executes the effects it returns; nothing here decides what an instance should do next, and
executing a plan makes no decision the planner did not make.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping

from procsup import lifecycle, logs, metrics, monitors, reconcile, spawn, statefile, units
from procsup.apply import Applier
from procsup.lifecycle import Instance
from procsup.model import LIVE_STATES, AppSpec, Desired, ExecMode, State
from procsup.running import DRAIN_POLL, Processes, Slot

__all__ = ["SETTLED", "Slot", "Supervisor"]

#: States in which a `start`/`restart` considers its work done (contract: running or errored;
#: exited and stopped too, as nothing more will happen without another command).
SETTLED = frozenset({State.RUNNING, State.ERRORED, State.EXITED, State.STOPPED})


@dataclasses.dataclass(eq=False)
class _Waiter:
    done: Callable[[], bool]
    future: asyncio.Future[None]


class Supervisor:
    """Owns the instances of every app and drives them towards the desired state: its
    `processes` run them, its `applier` executes configs, `scale`, `reload` and monitor
    recycles, and `feed` is the one way an instance changes state."""

    def __init__(
        self,
        desired: Desired,
        *,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        environ: Mapping[str, str] | None = None,
        profile_override: str | None = None,
    ) -> None:
        self.desired = desired
        self.loop = loop
        self.log = logger
        self.slots: dict[str, dict[int, Slot]] = {}
        self.specs: dict[str, AppSpec] = {}  # the applied definition of every app
        self.sinks = logs.LogSinks(on_error=self._log_error)
        self.metrics = metrics.Metrics()
        self.config_error: str | None = None
        self.restart_daemon: tuple[str, ...] = ()
        self.shutting_down = False
        self._waiters: list[_Waiter] = []
        self._dirty = False
        # What instances.json holds now (state_dir, records): a change of state that does not
        # change the records (ready, stopping, ...) writes nothing, so a rolling reload's step
        # from READY=1 to the next spawn does no file I/O.
        self._state_written: tuple[str, tuple[statefile.Record, ...]] | None = None
        self._exit = asyncio.Event()
        self.started_up = asyncio.Event()  # set once recovery and the first apply are done
        self.marker = statefile.daemon_marker(desired.daemon.state_dir)
        self._tasks: set[asyncio.Task[object]] = set()
        self.replacements: list[Slot] = []
        self.outgoing: list[Slot] = []  # replaced by a reload, still stopping
        self.processes = Processes(
            loop, logger, self.sinks, self.feed,
            environ=dict(os.environ if environ is None else environ), marker=self.marker,
        )
        self.applier = Applier(self, profile_override=profile_override)
        self.monitors = monitors.Monitors(
            loop, logger, self.applier.recycle, self.applier.leaders)

    # ------------------------------------------------------------------ start-up and shutdown

    async def start(self) -> None:
        """Stop what a previous daemon left behind, then start every configured instance.
        A shutdown asked for meanwhile waits for this to end, then stops what was started."""
        try:
            await self.recover()
            self.processes.start_notify(self.desired.daemon.socket + ".notify")
            if not self.shutting_down:
                await self.applier.apply(self.desired, wait=False)
                self.applier.update_watch()
        finally:
            self.started_up.set()

    async def recover(self) -> None:
        """Processes recorded by a previous daemon that are still alive cannot be adopted (their
        stdout/stderr pipes died with that daemon), so they are stopped: kill_signal to the group,
        then SIGKILL after the app's kill_timeout. A process forked (or exec'ing) during a scan
        can be missed by it, so scan again until a scan finds nothing (a few rounds at most)."""
        records = statefile.leftovers(statefile.read(self.desired.daemon.state_dir))
        for _ in range(3):
            if not await self._recover_once(records):
                break
            records = []
        statefile.write(self.desired.daemon.state_dir, (), os.getpid())

    async def _recover_once(self, records: list[statefile.Record]) -> bool:
        """One round of `recover`; whether it found anything to stop."""
        groups: dict[int, str] = {}  # pgid -> app
        for rec in records:
            groups[rec.pgid] = rec.app
        # Every instance carries the marker in its environment, and so do its children: that
        # also finds what the record missed (a daemon killed before it wrote it) and the
        # children of a leader that is gone, without ever matching an unrelated process.
        strays: list[int] = []
        for m in statefile.marked_processes(self.marker):
            if m.pgid == m.pid or m.pgid in groups:
                groups.setdefault(m.pgid, m.app or "?")
            else:
                strays.append(m.pid)
        if not groups and not strays:
            return False
        self.log.warning(
            "stopping what a previous procsupd left running: %s",
            ", ".join(f"{app} (process group {g})" for g, app in groups.items())
            + (f", {len(strays)} more process(es)" if strays else ""),
        )
        await asyncio.gather(
            *(self._stop_leftover(pgid, app) for pgid, app in groups.items()),
            self._stop_pids(strays),
        )
        return True

    async def _stop_leftover(self, pgid: int, app: str) -> None:
        spec = self.desired.apps.get(app)
        sig = spec.kill_signal if spec else signal.SIGTERM
        timeout = spec.kill_timeout if spec else 5.0
        spawn.kill_group(pgid, sig)
        deadline = self.loop.time() + timeout
        while spawn.live_members(pgid):
            if self.loop.time() >= deadline:
                spawn.kill_group(pgid, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(DRAIN_POLL)

    async def _stop_pids(self, pids: list[int]) -> None:
        """Marked processes outside any recorded group (they called setsid): SIGTERM, then
        SIGKILL after 5 s."""
        spawn.signal_pids(pids, signal.SIGTERM)
        deadline = self.loop.time() + 5.0
        while pids := [p for p in pids if spawn.pid_alive(p)]:
            if self.loop.time() >= deadline:
                spawn.signal_pids(pids, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(DRAIN_POLL)

    def request_shutdown(self) -> None:
        """SIGTERM/SIGINT/`procsup shutdown`: stop everything, then let the daemon exit."""
        if not self.shutting_down:
            self.shutting_down = True
            self.monitors.close()  # no restart may begin while everything stops
            self.log.info("shutting down: stopping every app")
            self.spawn_task(self._shutdown())

    async def _shutdown(self) -> None:
        timeout = self.desired.daemon.shutdown_timeout
        try:
            await self.started_up.wait()  # recovery first: its slots must exist to be stopped
            async with self.applier.lock:  # let a running apply finish its step first
                await asyncio.wait_for(self.stop_all(), timeout)
        except TimeoutError:
            self.log.error("shutdown_timeout (%.1fs) passed: killing what is left", timeout)
            for slot in self.all_slots():
                if slot.pgid is not None:
                    spawn.kill_group(slot.pgid, signal.SIGKILL)
        finally:
            self._exit.set()

    async def stop_all(self) -> None:
        """Stop every instance in parallel, each within its own kill_timeout."""
        slots = list(self.all_slots())
        for slot in slots:
            self.feed(slot, lifecycle.Stop())
        await self.wait(lambda: all(s.inst.state not in LIVE_STATES for s in slots))

    async def wait_exit(self) -> None:
        await self._exit.wait()

    def close(self) -> None:
        """Release what is left once the loop's work is done (watcher, readers, files, record)."""
        self.monitors.close()
        self.applier.close()
        self.processes.close()
        self._write_state()  # while the handles still say what (if anything) is left
        for slot in self.all_slots():
            self.processes.release_run(slot)
            for cap in slot.captures:
                if cap.reader is not None:
                    cap.reader.close()
        self.sinks.close_all()

    def reap_orphans(self) -> None:
        """SIGCHLD when procsupd is PID 1: reap re-parented orphans (never an instance leader,
        whose status is read through its pidfd and which is reaped once its group is gone)."""
        keep = {s.proc.pid for s in self.all_slots() if s.proc is not None}
        spawn.reap_orphans(keep)

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen every log file (after logrotate moved them)."""
        self.sinks.reopen_all()
        self.log.info("log files reopened")

    def _log_error(self, what: str, exc: OSError) -> None:
        self.log.error("%s: %s", what, exc)

    def spawn_task(self, coro: asyncio.Future[object] | object) -> None:
        task: asyncio.Task[object] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ the event core

    def all_slots(self) -> Iterable[Slot]:
        for app in self.slots.values():
            yield from app.values()
        yield from self.replacements  # a reload's new instances, until they take over
        yield from self.outgoing  # the instances they replaced, until they are gone

    def feed(self, slot: Slot, event: lifecycle.Event) -> None:
        """Apply one event to one instance and execute the resulting effects."""
        if isinstance(event, lifecycle.Start | lifecycle.Stop | lifecycle.Restart):
            slot.note = None  # a command or an apply: a monitor's old reason no longer applies
        old = slot.inst
        new, effects = lifecycle.step(old, slot.policy, event, self.loop.time())
        slot.inst = new
        if new.state != old.state:
            self._log_transition(slot, old, new)
        for effect in effects:
            if isinstance(effect, lifecycle.Spawn):
                self.processes.spawn(slot)
            elif isinstance(effect, lifecycle.Kill) and slot.pgid is not None:
                if effect.signal == signal.SIGKILL and old.state is State.STOPPING:
                    self.log.warning("%s: still running after kill_timeout %s: SIGKILL to its "
                                     "process group", slot.id, units.format_duration(
                                         slot.policy.kill_timeout))
                spawn.kill_group(slot.pgid, effect.signal)
        self._arm_timer(slot)
        if new.state is State.RUNNING and old.state is not State.RUNNING:
            self.processes.arm_heartbeat(slot)
        elif new.state is not State.RUNNING and slot.heartbeat is not None:
            slot.heartbeat.cancel()
            slot.heartbeat = None
        if slot.retiring and slot.inst.state not in LIVE_STATES:
            self.forget(slot)
        self._mark_dirty()

    def forget(self, slot: Slot) -> None:
        """A retired slot is stopped: it leaves the table (and its app, if it was the last)."""
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        app = self.slots.get(slot.id.app)
        if app is not None and app.get(slot.id.index) is slot:
            del app[slot.id.index]
            if not app and slot.id.app not in self.specs:
                del self.slots[slot.id.app]
        if slot in self.outgoing:
            self.outgoing.remove(slot)
        if slot.spec.exec_mode is ExecMode.CLUSTER:
            self.close_listeners()  # its sockets may have no user left

    def close_listeners(self) -> None:
        """Close the listening sockets no instance of the applied apps can use any more."""
        self.processes.close_listeners(self.all_slots(), self.specs)

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
            slot.timer = self.loop.call_at(deadline, self._on_deadline, slot)

    def _on_deadline(self, slot: Slot) -> None:
        slot.timer = None
        slot.timer_at = None
        self.feed(slot, lifecycle.Tick())

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Once per loop turn after changes: record instances on disk, wake command waiters."""
        self._dirty = False
        self._write_state()
        still = []
        for w in self._waiters:
            if w.future.done():
                continue
            if w.done():
                w.future.set_result(None)
            else:
                still.append(w)
        self._waiters = still

    def _write_state(self) -> None:
        """Record the live instances in the state dir, unless that is what it holds already."""
        records = tuple(
            statefile.Record(s.id.app, s.id.index, s.proc.pid, s.pgid, s.start_ticks)
            for s in self.all_slots()
            if s.proc is not None and s.pgid is not None and s.start_ticks is not None
        )
        state = (self.desired.daemon.state_dir, records)
        if state == self._state_written:
            return
        self._state_written = None  # unknown until the write succeeded
        try:
            statefile.write(state[0], records, os.getpid())
            self._state_written = state
        except OSError as exc:
            self.log.error("cannot record instances in %s: %s", self.desired.daemon.state_dir, exc)

    async def wait(self, done: Callable[[], bool]) -> None:
        """Return once `done()` holds; it is checked after every change of state."""
        if done():
            return
        waiter = _Waiter(done, self.loop.create_future())
        self._waiters.append(waiter)
        try:
            await waiter.future
        finally:
            if not waiter.future.done():
                waiter.future.cancel()

    @staticmethod
    def started(slot: Slot) -> bool:
        """Whether a start or restart is done: the instance runs, or is errored, exited or
        stopped (a later command superseded it). A crash loop is done when the policy gives
        up; `backoff` and `starting` are not settled."""
        return slot.inst.state in SETTLED

    # ------------------------------------------------------------------ desired state (apply.py)

    def load(self) -> Desired:
        """Read the config file again (includes, profile); raises ConfigError."""
        return self.applier.load()

    def plan(self, new: Desired) -> reconcile.Plan:
        """What applying `new` would do (`reread`)."""
        return self.applier.plan(new)

    async def reload(
        self, trigger: str, *, wait: bool = False, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Read the config and apply it (`Applier.reload`)."""
        return await self.applier.reload(trigger, wait=wait, failures=failures)

    def request_reload(self, trigger: str = "SIGHUP") -> None:
        """SIGHUP: apply the config in the background."""
        self.applier.request_reload(trigger)

    async def scale(self, app: str, count: int, *, wait: bool) -> list[Slot]:
        """`procsup scale`: run `count` instances of `app` until the next config apply."""
        return await self.applier.scale(app, count, wait=wait)

    async def reload_apps(self, targets: Mapping[str, list[int]]) -> str | None:
        """`procsup reload`: a rolling replacement of these instances, one at a time."""
        return await self.applier.reload_apps(targets)
