"""The supervisor: one asyncio loop that owns the actual state (layer 3).

It is the only place where the pure decisions (`lifecycle.step`, `reconcile.plan`) meet the OS
(layer 2). Every outside stimulus (a pidfd becoming readable, a timer, a control command, a
signal, a saved config file) becomes an event fed to `_feed`, which applies the state machine and
executes the effects it returns; nothing here decides what an instance should do next, and
executing a plan makes no decision the planner did not make.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping

from procsup import (
    config,
    lifecycle,
    logs,
    metrics,
    monitors,
    notify,
    probes,
    reconcile,
    sockets,
    spawn,
    statefile,
    units,
    watch,
)
from procsup.errors import ConfigError
from procsup.lifecycle import Instance, Policy
from procsup.model import LIVE_STATES, AppSpec, Desired, ExecMode, InstanceId, State

#: Poll interval while waiting for the rest of a process group after its leader exited.
_DRAIN_POLL = 0.02
#: States in which a `start`/`restart` considers its work done (contract: running or errored;
#: exited and stopped too, as nothing more will happen without another command).
SETTLED = frozenset({State.RUNNING, State.ERRORED, State.EXITED, State.STOPPED})

#: Exit polling interval where pidfds are unavailable.
_EXIT_POLL = 0.05
#: During a large start, yield to the loop this often so the instance record is written and
#: the control socket answers.
_YIELD_EVERY = 16
#: A save of a watched file is applied this long after the last event of a burst.
_DEBOUNCE = 0.2
#: A watched file that reads as invalid is read again this long after, before it is reported
#: (an editor may still be writing it).
_RECHECK = 0.5


@dataclasses.dataclass(eq=False)
class Capture:
    """One output stream of one run: the pipe reader and the log file it writes to (held for
    as long as the reader lives, so a file is closed only when its last writer is done)."""

    stream: str  # "out" | "err"
    reader: logs.PipeReader | None = None
    sink: logs.LogSink | None = None


@dataclasses.dataclass(eq=False)
class Slot:
    """One instance and the OS resources of its current run."""

    id: InstanceId
    inst: Instance
    policy: Policy
    spec: AppSpec
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    pgid: int | None = None
    start_ticks: int | None = None
    exit_status: tuple[int | None, int | None] | None = None
    captures: list[Capture] = dataclasses.field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    drain: asyncio.TimerHandle | None = None
    poll: asyncio.TimerHandle | None = None  # exit polling where pidfds are unavailable
    generation: int = 0  # incremented on every spawn
    retiring: bool = False  # removed by a plan or `scale`: forgotten once stopped
    status: str | None = None  # the last STATUS= the instance sent
    probe: asyncio.Task[None] | None = None  # tcp/http readiness probe of the current run
    heartbeat: asyncio.TimerHandle | None = None  # heartbeat_timeout watch
    note: str | None = None  # why a monitor last replaced or restarted it (shown in status)


@dataclasses.dataclass(eq=False)
class _Waiter:
    done: Callable[[], bool]
    future: asyncio.Future[None]


class Supervisor:
    """Owns the instances of every app and drives them towards the desired state."""

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
        self.environ = dict(os.environ if environ is None else environ)
        self.profile_override = profile_override
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
        self._apply_lock = asyncio.Lock()
        self._watch: watch.ConfigWatch | None = None
        self._debounce: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.notify: notify.NotifyServer | None = None
        self.replacements: list[Slot] = []
        self._by_pgid: dict[int, Slot] = {}  # live instances by process group (notify senders)
        # Listening sockets of cluster apps, held for the app's life: per app ("shared") or
        # per instance slot ("reuseport", so a replacement gets the same socket). The key
        # includes the addresses and balance, so a changed `listen` binds anew.
        self.listeners: dict[tuple[str, int | None, str, str], socket.socket] = {}
        self.outgoing: list[Slot] = []  # replaced by a reload, still stopping
        self.monitors = monitors.Monitors(loop, logger, self._recycle, self._leaders)

    # ------------------------------------------------------------------ start-up and shutdown

    async def start(self) -> None:
        """Stop what a previous daemon left behind, then start every configured instance.
        A shutdown asked for meanwhile waits for this to end, then stops what was started."""
        try:
            await self.recover()
            self._start_notify()
            if not self.shutting_down:
                await self.apply(self.desired, wait=False)
                self._update_watch()
        finally:
            self.started_up.set()

    def _start_notify(self) -> None:
        """The $NOTIFY_SOCKET every instance gets, beside the control socket."""
        path = self.desired.daemon.socket + ".notify"
        server = notify.NotifyServer(self.loop, path, self._on_notify)
        try:
            server.start()
        except OSError as exc:
            self.log.error("no notify socket at %s (%s): instances with ready = \"notify\" "
                           "will not become ready", path, exc)
            return
        self.notify = server

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
            await asyncio.sleep(_DRAIN_POLL)

    async def _stop_pids(self, pids: list[int]) -> None:
        """Marked processes outside any recorded group (they called setsid): SIGTERM, then
        SIGKILL after 5 s."""
        spawn.signal_pids(pids, signal.SIGTERM)
        deadline = self.loop.time() + 5.0
        while pids := [p for p in pids if spawn.pid_alive(p)]:
            if self.loop.time() >= deadline:
                spawn.signal_pids(pids, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(_DRAIN_POLL)

    def request_shutdown(self) -> None:
        """SIGTERM/SIGINT/`procsup shutdown`: stop everything, then let the daemon exit."""
        if not self.shutting_down:
            self.shutting_down = True
            self.monitors.close()  # no restart may begin while everything stops
            self.log.info("shutting down: stopping every app")
            self._spawn_task(self._shutdown())

    async def _shutdown(self) -> None:
        timeout = self.desired.daemon.shutdown_timeout
        try:
            await self.started_up.wait()  # recovery first: its slots must exist to be stopped
            async with self._apply_lock:  # let a running apply finish its step first
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
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        for sock in self.listeners.values():
            sockets.release(sock)
        self.listeners.clear()
        self._write_state()  # while the handles still say what (if anything) is left
        for slot in self.all_slots():
            self._release_run(slot)
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

    def _spawn_task(self, coro: asyncio.Future[object] | object) -> None:
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
                self._spawn(slot)
            elif isinstance(effect, lifecycle.Kill) and slot.pgid is not None:
                if effect.signal == signal.SIGKILL and old.state is State.STOPPING:
                    self.log.warning("%s: still running after kill_timeout %s: SIGKILL to its "
                                     "process group", slot.id, units.format_duration(
                                         slot.policy.kill_timeout))
                spawn.kill_group(slot.pgid, effect.signal)
        self._arm_timer(slot)
        if new.state is State.RUNNING and old.state is not State.RUNNING:
            self._arm_heartbeat(slot)
        elif new.state is not State.RUNNING and slot.heartbeat is not None:
            slot.heartbeat.cancel()
            slot.heartbeat = None
        if slot.retiring and slot.inst.state not in LIVE_STATES:
            self._forget(slot)
        self._mark_dirty()

    def _forget(self, slot: Slot) -> None:
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
            self._close_listeners()  # its sockets may have no user left

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

    # ------------------------------------------------------------------ running processes

    def _spawn(self, slot: Slot) -> None:
        spec = slot.spec
        captures: list[Capture] = []
        write_ends: list[int] = []  # closed in the parent once the child has them
        try:
            argv: tuple[str, ...] = spec.command
            pass_fds: tuple[int, ...] = ()
            extra: dict[str, str] = {}
            if spec.exec_mode is ExecMode.CLUSTER:
                # The activation shell execs the command, so a missing executable would only
                # show as exit 127: look it up first, to be errored with the reason instead.
                exe = spec.command[0]
                if "/" in exe:
                    found = os.access(os.path.join(spec.cwd or os.getcwd(), exe), os.X_OK)
                else:
                    path = spec.env.get("PATH", self.environ.get("PATH"))
                    found = shutil.which(exe, path=path) is not None
                if not found:
                    raise spawn.SpawnError(f"executable not found: {exe}")
                fds = [s.fileno() for s in self._listeners_for(slot)]
                argv, extra = sockets.activation_argv(
                    spec.command, fds, sockets.fd_names(spec.listen))
                pass_fds = tuple(fds)
            if self.notify is not None:
                extra["NOTIFY_SOCKET"] = self.notify.path
            ident = spawn.Identity.resolve(spec.user, spec.group)
            out_fds: dict[str, int | None] = {"out": None, "err": None}
            for stream, path in zip(("out", "err"), spec.log_paths(slot.id.index), strict=True):
                if path is None:
                    continue  # discarded: the child writes to /dev/null, no pipe at all
                cap = Capture(stream, sink=self._acquire(spec, path))
                captures.append(cap)
                r, w = logs.open_pipe()
                write_ends.append(w)
                out_fds[stream] = w
                cap.reader = logs.PipeReader(
                    self.loop, r, cap.sink, on_eof=functools.partial(self._capture_done, cap)
                )
            env = spawn.build_env(
                self.environ,
                inherit=spec.inherit_env,
                app_env=spec.env,
                identity=ident,
                extra={
                    "PROCSUP_APP": spec.name,
                    "PROCSUP_INSTANCE": str(slot.id.index),
                    "PROCSUP_INSTANCES": str(spec.instances),
                    statefile.MARKER_VAR: self.marker,
                    **extra,
                },
            )
            proc = spawn.start(
                spawn.Launch(
                    argv=argv, env=env, cwd=spec.cwd, identity=ident, umask=spec.umask,
                    stdout=out_fds["out"], stderr=out_fds["err"], pass_fds=pass_fds,
                )
            )
        except (spawn.SpawnError, OSError) as exc:
            reason = (
                exc.reason
                if isinstance(exc, spawn.SpawnError)
                else f"cannot set up output pipes: {exc}"
            )
            for cap in captures:
                if cap.reader is not None:
                    cap.reader.close()
                self._capture_done(cap)
            self.feed(slot, lifecycle.SpawnFailed(reason))
            return
        finally:
            for w in write_ends:
                os.close(w)
        slot.proc = proc
        slot.pgid = proc.pid
        slot.exit_status = None
        slot.start_ticks = statefile.leader_start_ticks(proc.pid)
        slot.generation += 1
        slot.captures = [c for c in slot.captures if c.reader is not None] + captures
        self._watch_exit(slot, proc)
        self._by_pgid[proc.pid] = slot
        slot.status = None
        self.feed(slot, lifecycle.Spawned(proc.pid))
        if spec.ready.startswith(("tcp://", "http://")) and slot.proc is proc:
            slot.probe = self.loop.create_task(self._probe(slot, proc))

    async def _probe(self, slot: Slot, proc: subprocess.Popen[bytes]) -> None:
        """Poll the instance's tcp/http readiness target until it answers or ready_timeout."""
        started = slot.inst.started_at if slot.inst.started_at is not None else self.loop.time()
        ok = await probes.wait_ready(slot.spec.ready, deadline=started + slot.spec.ready_timeout)
        slot.probe = None
        if ok and slot.proc is proc:
            self.feed(slot, lifecycle.Ready())

    def _on_notify(self, msg: notify.Message) -> None:
        """A datagram on $NOTIFY_SOCKET: attributed by the kernel-checked sender pid to the
        instance whose process group it belongs to; anyone else is ignored."""
        pgid = notify.sender_group(msg.pid)
        slot = self._by_pgid.get(pgid) if pgid is not None else None
        if slot is None or slot.proc is None:
            return
        fields = msg.fields
        if "STATUS" in fields:
            slot.status = fields["STATUS"]
        if fields.get("READY") == "1" and slot.spec.ready == "notify":
            self.feed(slot, lifecycle.Ready())  # a tcp/http probe is not cut short by it
        if fields.get("WATCHDOG") == "1":
            self._arm_heartbeat(slot)
        if fields.get("STOPPING") == "1":
            self.log.info("%s: says it is stopping", slot.id)

    def _arm_heartbeat(self, slot: Slot) -> None:
        """(Re)start the heartbeat_timeout countdown of a running instance."""
        if slot.heartbeat is not None:
            slot.heartbeat.cancel()
            slot.heartbeat = None
        timeout = slot.spec.heartbeat_timeout
        if timeout is not None and slot.inst.state is State.RUNNING:
            slot.heartbeat = self.loop.call_later(timeout, self._heartbeat_missed, slot)

    def _heartbeat_missed(self, slot: Slot) -> None:
        slot.heartbeat = None
        timeout = units.format_duration(slot.spec.heartbeat_timeout or 0)
        self.log.warning("%s: no WATCHDOG=1 within heartbeat_timeout %s: restarting", slot.id,
                         timeout)
        self.feed(slot, lifecycle.Recycle(f"no WATCHDOG=1 within heartbeat_timeout {timeout}"))

    def _listeners_for(self, slot: Slot) -> list[socket.socket]:
        """The cluster app's listening sockets for this instance, in `listen` order, bound on
        first use and held for the app's life (per slot with balance = "reuseport"). Sockets
        are kept per address, so a `listen` change keeps the addresses it did not touch (their
        old instances still hold them). SpawnError names an address that cannot be bound."""
        spec = slot.spec
        reuseport = spec.balance == "reuseport"
        socks = []
        for address in spec.listen:
            key = (spec.name, slot.id.index if reuseport else None, address, spec.balance)
            sock = self.listeners.get(key)
            if sock is None:
                try:
                    sock = sockets.bind(address, reuseport=reuseport)
                except sockets.BindError as exc:
                    raise spawn.SpawnError(str(exc)) from None
                self.listeners[key] = sock
            socks.append(sock)
        return socks

    def _close_listeners(self) -> None:
        """Close the sockets no instance can use any more (app removed, an address or
        `balance` changed, reuseport slot scaled away), once the instances that used them are
        gone: running processes keep their own copies, and a socket no process accepts on
        would make clients hang instead of being refused."""
        wanted: set[tuple[str, int | None, str, str]] = set()
        for slot in self.all_slots():
            spec = slot.spec
            if spec.exec_mode is not ExecMode.CLUSTER:
                continue
            if slot.retiring and slot.inst.state not in LIVE_STATES:
                continue
            index = slot.id.index if spec.balance == "reuseport" else None
            wanted.update((spec.name, index, a, spec.balance) for a in spec.listen)
        for name, spec in self.specs.items():  # slots not started yet keep their sockets too
            if spec.exec_mode is ExecMode.CLUSTER and spec.balance != "reuseport":
                wanted.update((name, None, a, spec.balance) for a in spec.listen)
        for key in [k for k in self.listeners if k not in wanted]:
            sockets.release(self.listeners.pop(key))

    def _watch_exit(self, slot: Slot, proc: subprocess.Popen[bytes]) -> None:
        fd = spawn.pidfd(proc.pid)
        if fd is not None:
            try:
                self.loop.add_reader(fd, self._on_leader_exit, slot, proc)
                slot.pidfd = fd
                return
            except OSError:
                os.close(fd)
        slot.poll = self.loop.call_later(_EXIT_POLL, self._on_leader_exit, slot, proc)

    def _acquire(self, spec: AppSpec, path: str) -> logs.LogSink:
        try:
            return self.sinks.acquire(
                path, date_format=spec.log_date_format, max_size=spec.log_max_size,
                retain=spec.log_retain,
            )
        except (OSError, ValueError) as exc:
            raise spawn.SpawnError(f"cannot open log file: {exc}") from None

    def _capture_done(self, cap: Capture) -> None:
        """The stream ended (EOF, or the run never started): let go of its log file."""
        cap.reader = None
        if cap.sink is not None:
            self.sinks.release(cap.sink)
            cap.sink = None

    def _retarget(self, slot: Slot) -> None:
        """The instance's log files or their settings changed (a live apply): the running
        streams continue into the new files at once, without a restart."""
        paths = dict(zip(("out", "err"), slot.spec.log_paths(slot.id.index), strict=True))
        for cap in slot.captures:
            if cap.reader is None or cap.reader.closed:
                continue
            path = paths[cap.stream]
            try:
                new = None if path is None else self._acquire(slot.spec, path)
            except spawn.SpawnError as exc:
                self.log.error("%s: keeps its old log file: %s", slot.id, exc.reason)
                continue
            old, cap.sink = cap.sink, new
            cap.reader.sink = new
            if old is not None:
                self.sinks.release(old)

    def _on_leader_exit(self, slot: Slot, proc: subprocess.Popen[bytes]) -> None:
        slot.poll = None
        if slot.proc is not proc:  # a stale callback of an earlier run
            return
        status = spawn.exit_status(proc.pid, slot.pidfd)
        if status is None:
            if slot.pidfd is None:
                slot.poll = self.loop.call_later(_EXIT_POLL, self._on_leader_exit, slot, proc)
            return
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        slot.exit_status = status
        # Reap now: a zombie leader would keep `killpg(pgid, 0)` succeeding and force a scan of
        # the process table on every exit; the pgid stays reserved while a member lives.
        spawn.reap(proc, status)
        self._drain(slot)

    def _drain(self, slot: Slot) -> None:
        """The leader is gone; the instance ends when its whole process group is gone.

        While stopping, the rest of the group gets the remaining kill_timeout (the lifecycle's
        deadline sends SIGKILL). After an unexpected exit, what the leader left behind in its
        group is killed at once, as systemd does for a service's control group."""
        slot.drain = None
        pgid = slot.pgid
        assert pgid is not None and slot.exit_status is not None
        if spawn.live_members(pgid):
            if slot.inst.state is not State.STOPPING:
                spawn.kill_group(pgid, signal.SIGKILL)
            slot.drain = self.loop.call_later(_DRAIN_POLL, self._drain, slot)
            return
        code, sig = slot.exit_status
        if slot.inst.state is not State.STOPPING:  # unplanned: say how, whatever happens next
            how = f"exited with code {code}" if code is not None else (
                f"killed by {units.signal_name(sig)}" if sig is not None else "ended")
            self.log.warning("%s: pid %d %s after %s", slot.id, pgid, how,
                             units.format_duration(round(
                                 self.loop.time() - (slot.inst.started_at or 0), 3)))
        self._release_run(slot)
        self.feed(slot, lifecycle.Exited(code, sig))

    def _release_run(self, slot: Slot) -> None:
        """Forget the OS handles of the current run (readers finish on their own at EOF)."""
        if slot.drain is not None:
            slot.drain.cancel()
            slot.drain = None
        if slot.poll is not None:
            slot.poll.cancel()
            slot.poll = None
        if slot.probe is not None:
            slot.probe.cancel()
            slot.probe = None
        if slot.heartbeat is not None:
            slot.heartbeat.cancel()
            slot.heartbeat = None
        if slot.pgid is not None and self._by_pgid.get(slot.pgid) is slot:
            del self._by_pgid[slot.pgid]
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        if slot.proc is not None and slot.exit_status is not None and slot.proc.returncode is None:
            spawn.reap(slot.proc, slot.exit_status)
        slot.captures = [c for c in slot.captures if c.reader is not None]
        slot.proc = None
        slot.pgid = None
        slot.start_ticks = None

    def _log_error(self, what: str, exc: OSError) -> None:
        self.log.error("%s: %s", what, exc)

    # ------------------------------------------------------------------ desired state

    def running(self) -> dict[str, reconcile.Running]:
        """What runs, as the planner sees it."""
        out = {}
        for name, spec in self.specs.items():
            slots = [s for s in self.slots.get(name, {}).values() if not s.retiring]
            stopped = tuple(s.id.index for s in slots if s.inst.state is State.STOPPED)
            out[name] = reconcile.Running(spec, len(slots), stopped)
        return out

    def load(self) -> Desired:
        """Read the config file again (includes, profile); raises ConfigError."""
        try:
            return config.load(
                self.desired.daemon.config_path,
                profile=self.profile_override,
                require_root_owned=os.geteuid() == 0,
            )
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}",
                              file=self.desired.daemon.config_path) from None

    def plan(self, new: Desired) -> reconcile.Plan:
        return reconcile.plan(self.running(), new.apps, self.desired.daemon, new.daemon)

    async def apply(
        self, new: Desired, *, wait: bool, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Make `new` the desired state and execute the plan that gets there. One apply at a
        time; stops run (and finish) before anything starts, so freed resources are free. A
        rollout that had to stop is appended to `failures`; its app keeps the definition its
        instances still run, and the config counts as not applied."""
        if failures is None:
            failures = []
        async with self._apply_lock:
            if self.shutting_down:
                return reconcile.Plan()
            plan = self.plan(new)
            self.restart_daemon = plan.restart_daemon
            old_daemon = self.desired.daemon
            # Keep the settings a running daemon cannot change; take every live one.
            self.desired = dataclasses.replace(
                new, daemon=dataclasses.replace(
                    new.daemon, **{k: getattr(old_daemon, k) for k in reconcile.RESTART_DAEMON_KEYS}
                ),
            )
            stopping: list[Slot] = []
            starting: list[tuple[Slot, int]] = []
            downs = {
                id(a) for a in plan.actions
                if a.action == reconcile.STOP or (
                    a.action == reconcile.SCALE
                    and reconcile.scales_down(a, len(self.slots.get(a.app, {}))))
            }
            for action in plan.actions:
                if id(action) in downs:
                    stopping += self._retire(action.app, action.instances)
            if action_stops := [s for s in stopping if s.inst.state in LIVE_STATES]:
                await self.wait(lambda: all(s.inst.state not in LIVE_STATES for s in action_stops))
            previous = dict(self.specs)
            for name in [n for n in self.specs if n not in new.apps]:
                del self.specs[name]
            for name, spec in new.apps.items():
                self._set_spec(name, spec)
            self._close_listeners()
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
                    slots = [self.slots[action.app][i] for i in action.instances]
                    for slot in slots:
                        self.feed(slot, lifecycle.Stop())
                    await self.wait(lambda slots=slots: all(  # type: ignore[misc]
                        s.inst.state not in LIVE_STATES for s in slots))
                    self._close_listeners()
                    for slot in slots:
                        starting.append((slot, slot.generation))
                        self.feed(slot, lifecycle.Start())
                elif action.action == reconcile.RESTART:
                    for i in action.instances:
                        slot = self.slots[action.app][i]
                        starting.append((slot, slot.generation))
                        self.feed(slot, lifecycle.Restart())
                elif id(action) not in downs and action.action in (reconcile.START,
                                                                   reconcile.SCALE):
                    for i in action.instances:
                        slot = self._slot(action.app, i)
                        starting.append((slot, slot.generation))
                        self.feed(slot, lifecycle.Start())
                        if len(starting) % _YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # record what runs so far; answer clients
            self.config_error = "; ".join(failures[failed_before:]) or None
            for line in plan.describe():
                self.log.info("apply: %s", line)
            self.monitors.configure(self.specs)
        if wait and starting:
            await self.wait(lambda: all(self.started(s) for s, _ in starting))
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
        old = self.specs.get(name)
        self.specs[name] = spec
        policy = Policy.of(spec)
        for slot in self.slots.get(name, {}).values():
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
                self._retarget(slot)

    def _slot(self, app: str, index: int) -> Slot:
        slots = self.slots.setdefault(app, {})
        slot = slots.get(index)
        if slot is None or slot.retiring:
            spec = self.specs[app]
            iid = InstanceId(app, index)
            slot = Slot(id=iid, inst=Instance(id=iid), policy=Policy.of(spec), spec=spec)
            slots[index] = slot
        return slot

    def _retire(self, app: str, indexes: Iterable[int]) -> list[Slot]:
        """Stop these instances and forget them once they are stopped."""
        retired = []
        for i in indexes:
            slot = self.slots.get(app, {}).get(i)
            if slot is None:
                continue
            slot.retiring = True
            retired.append(slot)
            if slot.inst.state in LIVE_STATES or slot.inst.state is State.BACKOFF:
                self.feed(slot, lifecycle.Stop())
            else:
                self._forget(slot)
        return retired

    async def scale(self, app: str, count: int, *, wait: bool) -> list[Slot]:
        """`procsup scale`: run `count` instances of `app` until the next config apply."""
        async with self._apply_lock:
            current = sorted(i for i, s in self.slots.get(app, {}).items() if not s.retiring)
            gone = self._retire(app, [i for i in current if i >= count])
            # PROCSUP_INSTANCES of the next runs; per-instance log names when crossing 1
            self._set_spec(app, dataclasses.replace(self.specs[app], instances=count))
            added = [self._slot(app, i) for i in range(len(current), count)]
            self._close_listeners()
            for slot in added:
                self.feed(slot, lifecycle.Start())
            self.monitors.configure(self.specs)
        if wait:
            await self.wait(lambda: all(s.inst.state not in LIVE_STATES for s in gone)
                            and all(self.started(s) for s in added))
        return gone + added

    async def reload_apps(self, targets: Mapping[str, list[int]]) -> str | None:
        """`procsup reload`: a rolling replacement of these instances, one at a time."""
        async with self._apply_lock:
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
            await self.wait(lambda: all(s.inst.state not in LIVE_STATES for s in stopping))

    async def _roll(
        self, app: str, indexes: Iterable[int], stopping: list[Slot], only_running: bool
    ) -> str | None:
        for index in indexes:
            if self.shutting_down:
                return f"reload of {app} stopped: procsupd is shutting down"
            old = self.slots.get(app, {}).get(index)
            if old is None or old.retiring:
                continue
            if old.inst.state not in (State.RUNNING, State.STARTING):  # nothing to keep serving
                if only_running:
                    continue
                self.feed(old, lifecycle.Restart())
                await self.wait(lambda old=old: self.started(old))  # type: ignore[misc]
                continue
            spec = self.specs[app]
            new = Slot(id=old.id, inst=Instance(id=old.id), policy=Policy.of(spec), spec=spec)
            self.replacements.append(new)
            self.feed(new, lifecycle.Start())
            limit = spec.ready_timeout + spec.min_uptime + spec.kill_timeout + 1.0
            try:
                await asyncio.wait_for(self.wait(lambda new=new: (  # type: ignore[misc]
                    new.inst.state is State.RUNNING
                    or new.inst.state in (State.ERRORED, State.EXITED, State.STOPPED,
                                          State.BACKOFF)
                    or new.generation > 1)), limit)  # its first run already ended
            except TimeoutError:
                pass
            superseded = (self.shutting_down or self.slots.get(app, {}).get(index) is not old
                          or old.inst.state not in (State.RUNNING, State.STARTING))
            if superseded and new.inst.state in LIVE_STATES:
                new.retiring = True
                self.feed(new, lifecycle.Stop())
                await self.wait(lambda new=new: new.inst.state not in LIVE_STATES)  # type: ignore[misc]
                self.replacements.remove(new)
                return (f"reload of {app} stopped at {new.id}: the instance was stopped or "
                        "procsupd is shutting down")
            if new.inst.state is not State.RUNNING:
                if new.inst.exit_code is not None or new.generation > 1:
                    reason = (f"the replacement was not ready within ready_timeout "
                              f"{units.format_duration(spec.ready_timeout)} or ended")
                else:
                    reason = new.inst.reason or f"the replacement is {new.inst.state.value}"
                new.retiring = True
                self.feed(new, lifecycle.Stop())
                await self.wait(lambda new=new: new.inst.state not in LIVE_STATES)  # type: ignore[misc]
                self.replacements.remove(new)
                return (f"reload of {app} stopped at {new.id}: {reason}; "
                        "the old instances keep running")
            self.replacements.remove(new)
            self.slots[app][index] = new
            old.retiring = True
            stopping.append(old)
            self.outgoing.append(old)
            self.feed(old, lifecycle.Stop())
        return None

    # ------------------------------------------------------------------ monitors (monitors.py)

    def _leaders(self) -> dict[tuple[str, int], monitors.Leader]:
        """The leader pid of every live instance of the applied apps. While a reload replaces
        an instance, its replacement (later in `all_slots`) stands for it: a leaking
        replacement is a leaking instance too, and the old one is on its way out."""
        out: dict[tuple[str, int], monitors.Leader] = {}
        for slot in self.all_slots():
            if slot.proc is not None and not slot.retiring and slot.inst.state in LIVE_STATES:
                started = slot.inst.started_at
                out[(slot.id.app, slot.id.index)] = monitors.Leader(
                    slot.proc.pid, self.loop.time() if started is None else started)
        return out

    def _recycle(self, app: str, index: int | None, reason: str, *, revive: bool = False,
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
        if self.shutting_down or app not in self.specs:
            return
        current = self.slots.get(app, {})
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
                    self.feed(slot, lifecycle.Restart())
                    slot.note = f"restarted: {reason}"  # after the feed, which clears notes
        if not indexes:
            return
        if self.specs[app].exec_mode is ExecMode.CLUSTER and unstable is None:
            self._spawn_task(self._replace(app, indexes, reason))
            return
        self.log.info("%s: restarting %s: %s", app,
                      "every instance" if index is None else f"instance {index}", reason)
        for i in indexes:
            slot = current[i]
            slot.note = f"restarted: {reason}"
            self.feed(slot, lifecycle.Recycle(reason, unstable))

    async def _replace(self, app: str, indexes: list[int], reason: str) -> None:
        self.log.info("%s: replacing %s one at a time: %s", app,
                      ", ".join(f"{app}:{i}" for i in indexes), reason)
        async with self._apply_lock:
            # What changed while this waited for an apply, a scale or a reload: only the
            # instances still running are replaced (a stopped one stays stopped).
            current = self.slots.get(app, {})
            indexes = [i for i in indexes if i in current and not current[i].retiring
                       and current[i].inst.state in (State.RUNNING, State.STARTING)]
            if self.shutting_down or not indexes:
                return
            before = {i: current[i] for i in indexes}
            failure = await self.rolling(app, indexes, only_running=True)
            for i in indexes:
                slot = self.slots.get(app, {}).get(i)
                if slot is not None and slot is not before[i]:
                    slot.note = f"replaced: {reason}"
                elif slot is not None and failure:
                    slot.note = f"{reason}; {failure}"
        if failure:
            self.log.error("%s: %s", app, failure)

    @staticmethod
    def started(slot: Slot) -> bool:
        """Whether a start or restart is done: the instance runs, or is errored, exited or
        stopped (a later command superseded it). A crash loop is done when the policy gives
        up; `backoff` and `starting` are not settled."""
        return slot.inst.state in SETTLED

    # ------------------------------------------------------------------ config reload triggers

    async def reload(
        self, trigger: str, *, wait: bool = False, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Read the config and apply it (`update`, SIGHUP, a saved file). An invalid config
        changes nothing: the error is logged, kept for `status`, and raised."""
        try:
            new = self.load()
        except ConfigError as exc:
            self.config_error = str(exc)
            self.log.error("%s: config not applied: %s", trigger, exc)
            raise
        plan = await self.apply(new, wait=wait, failures=failures)
        self._update_watch()
        return plan

    def request_reload(self, trigger: str = "SIGHUP") -> None:
        """SIGHUP: apply the config in the background."""
        self._spawn_task(self._reload_quietly(trigger))

    async def _reload_quietly(self, trigger: str) -> None:
        try:
            await self.reload(trigger)
        except ConfigError:
            pass  # logged and shown in status by reload()

    def _update_watch(self) -> None:
        """(Re)watch the config files, or stop watching, per `watch_config`."""
        d = self.desired
        if not d.daemon.watch_config:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            return
        if self._watch is None:
            self._watch = watch.ConfigWatch(self.loop, self._on_config_event)
        self._watch.watch(d.files, d.daemon.include)

    def _on_config_event(self, path: str) -> None:
        """A watched file changed: apply once the burst of events is over (debounced)."""
        if self._debounce is not None:
            self._debounce.cancel()
        self._debounce = self.loop.call_later(_DEBOUNCE, self._saved, False)

    def _saved(self, recheck: bool) -> None:
        self._debounce = None
        if self.shutting_down:
            return
        try:
            new = self.load()
        except ConfigError as exc:
            if not recheck:  # maybe half-written: read again before calling it broken
                self._debounce = self.loop.call_later(_RECHECK, self._saved, True)
                return
            self.config_error = str(exc)
            self.log.error("saved config not applied: %s", exc)
            return
        self._spawn_task(self._apply_saved(new))

    async def _apply_saved(self, new: Desired) -> None:
        await self.apply(new, wait=False)
        self._update_watch()
