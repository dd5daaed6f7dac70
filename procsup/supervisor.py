"""The supervisor: one asyncio loop that owns the actual state (layer 3).

It is the only place where the pure decisions (`lifecycle.step`) meet the OS (layer 2). Every
outside stimulus (a pidfd becoming readable, a timer, a control command, a signal) becomes an
event fed to `_feed`, which applies the state machine and executes the effects it returns;
nothing here decides what an instance should do next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from procsup import __version__, lifecycle, logs, metrics, spawn, statefile
from procsup.errors import RemoteError, WireError
from procsup.lifecycle import Instance, Policy
from procsup.model import LIVE_STATES, AppSpec, Desired, InstanceId, InstanceView, State

#: Pushes one streamed reply frame to the client (`control.Send`; the daemon wires the two).
Send = Callable[[object], Awaitable[None]]

#: Poll interval while waiting for the rest of a process group after its leader exited.
_DRAIN_POLL = 0.02
#: States in which a `start`/`restart` command considers its work done.
_SETTLED = frozenset({State.RUNNING, State.ERRORED, State.EXITED, State.STOPPED, State.BACKOFF})
#: Queue bound for one `logs -f` follower; a follower that falls this far behind is dropped.
_FOLLOW_QUEUE = 4096


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
    create_time: float | None = None
    exit_status: tuple[int | None, int | None] | None = None
    readers: list[logs.PipeReader] = dataclasses.field(default_factory=list)
    sinks: tuple[logs.LogSink | None, logs.LogSink | None] | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    drain: asyncio.TimerHandle | None = None
    generation: int = 0  # incremented on every spawn


@dataclasses.dataclass(eq=False)
class _Waiter:
    done: Callable[[], bool]
    future: asyncio.Future[None]


class Supervisor:
    """Owns the instances of every app; implements the control `Commands` interface."""

    def __init__(
        self,
        desired: Desired,
        *,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.desired = desired
        self.loop = loop
        self.log = logger
        self.environ = dict(os.environ if environ is None else environ)
        self.slots: dict[str, dict[int, Slot]] = {}
        self.sinks = logs.LogSinks(on_error=self._log_error)
        self.metrics = metrics.Metrics()
        self.config_error: dict[str, object] | None = None
        self._waiters: list[_Waiter] = []
        self._dirty = False
        self._exit = asyncio.Event()
        self._shutting_down = False

    # ------------------------------------------------------------------ start-up and shutdown

    async def start(self) -> None:
        """Stop what a previous daemon left behind, then start every configured instance."""
        await self.recover()
        for spec in self.desired.apps.values():
            self._add_app(spec)
            for slot in self.slots[spec.name].values():
                self._feed(slot, lifecycle.Start())

    async def recover(self) -> None:
        """Processes recorded by a previous daemon that are still alive cannot be adopted (their
        stdout/stderr pipes died with that daemon), so they are stopped: kill_signal to the group,
        then SIGKILL after the app's kill_timeout."""
        d = self.desired.daemon
        left = statefile.leftovers(statefile.read(d.state_dir))
        if not left:
            return
        self.log.warning(
            "stopping %d instance(s) left running by a previous procsupd: %s",
            len(left),
            ", ".join(f"{r.app}:{r.index} (pid {r.pid})" for r in left),
        )
        await asyncio.gather(*(self._stop_leftover(r) for r in left))
        statefile.write(d.state_dir, (), os.getpid())

    async def _stop_leftover(self, rec: statefile.Record) -> None:
        spec = self.desired.apps.get(rec.app)
        sig = spec.kill_signal if spec else signal.SIGTERM
        timeout = spec.kill_timeout if spec else 5.0
        spawn.kill_group(rec.pgid, sig)
        deadline = self.loop.time() + timeout
        while spawn.live_members(rec.pgid):
            if self.loop.time() >= deadline:
                spawn.kill_group(rec.pgid, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(_DRAIN_POLL)

    def request_shutdown(self) -> None:
        """SIGTERM/SIGINT: stop everything, then let the daemon exit."""
        if not self._shutting_down:
            self._shutting_down = True
            self.log.info("shutting down: stopping every app")
            self.loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        try:
            await asyncio.wait_for(self.stop_all(), self.desired.daemon.shutdown_timeout)
        except TimeoutError:
            self.log.error(
                "shutdown_timeout (%.1fs) passed: killing what is left",
                self.desired.daemon.shutdown_timeout,
            )
            for slot in self._all_slots():
                if slot.pgid is not None:
                    spawn.kill_group(slot.pgid, signal.SIGKILL)
        finally:
            self._exit.set()

    async def stop_all(self) -> None:
        """Stop every instance in parallel, each within its own kill_timeout."""
        slots = list(self._all_slots())
        for slot in slots:
            self._feed(slot, lifecycle.Stop())
        await self._wait(lambda: all(s.inst.state not in LIVE_STATES for s in slots))

    async def wait_exit(self) -> None:
        await self._exit.wait()

    def close(self) -> None:
        """Release what is left after the loop's work is done (log files, state record)."""
        for slot in self._all_slots():
            self._release_run(slot)
            self._release_sinks(slot)
        self.sinks.close_all()
        self._write_state()

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen every log file (after logrotate moved them)."""
        self.sinks.reopen_all()
        self.log.info("log files reopened")

    # ------------------------------------------------------------------ the event core

    def _add_app(self, spec: AppSpec) -> None:
        policy = Policy.of(spec)
        self.slots[spec.name] = {
            i: Slot(
                id=InstanceId(spec.name, i),
                inst=Instance(id=InstanceId(spec.name, i)),
                policy=policy,
                spec=spec,
            )
            for i in range(spec.instances)
        }

    def _all_slots(self) -> Iterable[Slot]:
        for app in self.slots.values():
            yield from app.values()

    def _feed(self, slot: Slot, event: lifecycle.Event) -> None:
        """Apply one event to one instance and execute the resulting effects."""
        old = slot.inst
        new, effects = lifecycle.step(old, slot.policy, event, self.loop.time())
        slot.inst = new
        if new.state != old.state:
            self._log_transition(slot, old, new)
        for effect in effects:
            if isinstance(effect, lifecycle.Spawn):
                self._spawn(slot)
            elif isinstance(effect, lifecycle.Kill) and slot.pgid is not None:
                spawn.kill_group(slot.pgid, effect.signal)
        self._arm_timer(slot)
        self._mark_dirty()

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
        self._feed(slot, lifecycle.Tick())

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
        records = [
            statefile.Record(s.id.app, s.id.index, s.proc.pid, s.pgid, s.create_time)
            for s in self._all_slots()
            if s.proc is not None and s.pgid is not None and s.create_time is not None
        ]
        try:
            statefile.write(self.desired.daemon.state_dir, records, os.getpid())
        except OSError as exc:
            self.log.error("cannot record instances in %s: %s", self.desired.daemon.state_dir, exc)

    async def _wait(self, done: Callable[[], bool]) -> None:
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
        try:
            ident = spawn.Identity.resolve(spec.user, spec.group)
            out_sink, err_sink = self._sinks_for(slot)
        except spawn.SpawnError as exc:
            self._feed(slot, lifecycle.SpawnFailed(exc.reason))
            return
        fds: list[int] = []  # write ends, closed in the parent once the child has them
        readers: list[tuple[int, logs.LogSink]] = []
        try:
            out_w = err_w = None
            for sink in (out_sink, err_sink):
                if sink is None:
                    continue
                r, w = logs.open_pipe()
                readers.append((r, sink))
                fds.append(w)
            if out_sink is not None:
                out_w = fds[0]
            if err_sink is not None:
                err_w = fds[-1]
            env = spawn.build_env(
                self.environ,
                inherit=spec.inherit_env,
                app_env=spec.env,
                identity=ident,
                extra={
                    "PROCSUP_APP": spec.name,
                    "PROCSUP_INSTANCE": str(slot.id.index),
                    "PROCSUP_INSTANCES": str(spec.instances),
                },
            )
            proc = spawn.start(
                spawn.Launch(
                    argv=spec.command,
                    env=env,
                    cwd=spec.cwd,
                    identity=ident,
                    umask=spec.umask,
                    stdout=out_w,
                    stderr=err_w,
                )
            )
        except spawn.SpawnError as exc:
            for r, _ in readers:
                os.close(r)
            self._feed(slot, lifecycle.SpawnFailed(exc.reason))
            return
        finally:
            for w in fds:
                os.close(w)
        slot.proc = proc
        slot.pgid = proc.pid
        slot.exit_status = None
        slot.create_time = statefile.leader_create_time(proc.pid)
        slot.generation += 1
        slot.readers = [
            logs.PipeReader(self.loop, r, sink, on_eof=lambda: None) for r, sink in readers
        ]
        slot.pidfd = spawn.pidfd(proc.pid)
        self.loop.add_reader(slot.pidfd, self._on_leader_exit, slot, proc)
        self._feed(slot, lifecycle.Spawned(proc.pid))

    def _sinks_for(self, slot: Slot) -> tuple[logs.LogSink | None, logs.LogSink | None]:
        """The instance's log files, opened on its first start and kept across restarts."""
        if slot.sinks is None:
            spec = slot.spec
            out_path, err_path = spec.log_paths(slot.id.index)
            opened: list[logs.LogSink | None] = []
            try:
                for path in (out_path, err_path):
                    opened.append(
                        None
                        if path is None
                        else self.sinks.acquire(
                            path,
                            date_format=spec.log_date_format,
                            max_size=spec.log_max_size,
                            retain=spec.log_retain,
                        )
                    )
            except OSError as exc:
                for sink in opened:
                    if sink is not None:
                        self.sinks.release(sink)
                raise spawn.SpawnError(f"cannot open log file: {exc}") from None
            slot.sinks = (opened[0], opened[1])
        return slot.sinks

    def _release_sinks(self, slot: Slot) -> None:
        if slot.sinks is not None:
            for sink in slot.sinks:
                if sink is not None:
                    self.sinks.release(sink)
            slot.sinks = None

    def _on_leader_exit(self, slot: Slot, proc: subprocess.Popen[bytes]) -> None:
        status = spawn.reap(proc)
        if status is None:
            return
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        slot.exit_status = status
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
        self._release_run(slot)
        self._feed(slot, lifecycle.Exited(code, sig))

    def _release_run(self, slot: Slot) -> None:
        """Forget the OS handles of the current run (readers finish on their own at EOF)."""
        if slot.drain is not None:
            slot.drain.cancel()
            slot.drain = None
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        slot.readers = [r for r in slot.readers if not r.closed]
        slot.proc = None
        slot.pgid = None
        slot.create_time = None

    def _log_error(self, what: str, exc: OSError) -> None:
        self.log.error("%s: %s", what, exc)

    # ------------------------------------------------------------------ commands

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: object, send: Send) -> object:
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            raise RemoteError(
                WireError.UNKNOWN_COMMAND.value,
                f"this procsupd ({__version__}) does not support {cmd!r}",
            )
        if self._shutting_down and cmd not in ("ping", "version", "status", "logs"):
            raise RemoteError(WireError.SHUTTING_DOWN.value, "procsupd is shutting down")
        result: object = await handler(args, send)
        return result

    async def cmd_ping(self, args: dict[str, Any], send: Send) -> object:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def cmd_version(self, args: dict[str, Any], send: Send) -> object:
        from procsup.protocol import VERSION

        return {"version": __version__, "protocol": VERSION}

    def _select(self, names: Iterable[str]) -> list[Slot]:
        """Resolve `all`, `app` and `app:i` into slots, or raise unknown_app."""
        chosen: dict[InstanceId, Slot] = {}
        for name in names:
            if name == "all":
                chosen.update((s.id, s) for s in self._all_slots())
                continue
            app, _, idx = name.partition(":")
            slots = self.slots.get(app)
            if slots is None or (idx and (not idx.isdigit() or int(idx) not in slots)):
                known = ", ".join(self.slots) or "none"
                raise RemoteError(
                    WireError.UNKNOWN_APP.value, f"unknown app or instance: {name} (apps: {known})"
                )
            for i, slot in slots.items():
                if not idx or int(idx) == i:
                    chosen[slot.id] = slot
        return list(chosen.values())

    def _outcome(self, slots: list[Slot], ok: Callable[[Slot], bool]) -> dict[str, object]:
        rows = [
            {
                "app": s.id.app,
                "instance": s.id.index,
                "state": s.inst.state.value,
                "pid": s.inst.pid,
                "reason": s.inst.reason,
            }
            for s in slots
        ]
        return {"instances": rows, "failed": not all(ok(s) for s in slots)}

    def _started(self, slot: Slot, generation: int) -> bool:
        """A start is done once the instance runs, or its new run ended (the reason tells why)."""
        st = slot.inst.state
        return st in _SETTLED or (st is State.STARTING and slot.generation > generation + 1)

    async def cmd_start(self, args: dict[str, Any], send: Send) -> object:
        slots = self._select(args["apps"])
        gens = {s.id: s.generation for s in slots}
        for slot in slots:
            self._feed(slot, lifecycle.Start())
        if args.get("wait", True):
            await self._wait(lambda: all(self._started(s, gens[s.id]) for s in slots))
        return self._outcome(slots, lambda s: s.inst.state in (State.RUNNING, State.STARTING))

    async def cmd_restart(self, args: dict[str, Any], send: Send) -> object:
        slots = self._select(args["apps"])
        gens = {s.id: s.generation for s in slots}
        for slot in slots:
            self._feed(slot, lifecycle.Restart())
        if args.get("wait", True):
            await self._wait(
                lambda: all(
                    (s.generation > gens[s.id] and self._started(s, gens[s.id] + 1))
                    or s.inst.state is State.ERRORED
                    for s in slots
                )
            )
        return self._outcome(slots, lambda s: s.inst.state in (State.RUNNING, State.STARTING))

    async def cmd_stop(self, args: dict[str, Any], send: Send) -> object:
        slots = self._select(args["apps"])
        for slot in slots:
            self._feed(slot, lifecycle.Stop())
        if args.get("wait", True):
            await self._wait(lambda: all(s.inst.state not in LIVE_STATES for s in slots))
        return self._outcome(
            slots, lambda s: s.inst.state not in LIVE_STATES or not args.get("wait", True)
        )

    async def cmd_signal(self, args: dict[str, Any], send: Send) -> object:
        slots = self._select(args["apps"])
        sig = int(args["signal"])
        done = []
        for slot in slots:
            if slot.pgid is not None and slot.inst.state in LIVE_STATES:
                spawn.kill_group(slot.pgid, sig)
                done.append({"app": slot.id.app, "instance": slot.id.index, "pid": slot.pgid})
        return {"signalled": done, "failed": not done}

    async def cmd_shutdown(self, args: dict[str, Any], send: Send) -> object:
        slots = list(self._all_slots())
        self.request_shutdown()
        if args.get("wait", True):
            await self._exit.wait()
        return {"stopped": len(slots)}

    async def cmd_status(self, args: dict[str, Any], send: Send) -> object:
        slots = self._select(args.get("apps") or ["all"])
        now = self.loop.time()
        live = {s.pgid: now for s in slots if s.pgid is not None}
        usage = self.metrics.sample(live, now) if live else {}
        rows = []
        for s in slots:
            cpu, mem = usage.get(s.pgid, (None, None)) if s.pgid is not None else (None, None)
            inst = s.inst
            up = now - inst.started_at if inst.started_at is not None and inst.pid else None
            rows.append(
                InstanceView(
                    app=s.id.app,
                    instance=s.id.index,
                    pid=inst.pid,
                    state=inst.state,
                    uptime=round(up, 3) if up is not None else None,
                    restarts=inst.restarts,
                    cpu=round(cpu, 1) if cpu is not None else None,
                    memory=mem,
                    exit_code=inst.exit_code,
                    reason=inst.reason,
                ).to_json()
            )
        d = self.desired
        return {
            "config": {
                "path": d.daemon.config_path,
                "applied": self.config_error is None,
                "error": self.config_error,
                "profile": d.profile,
            },
            "instances": rows,
        }

    def _log_files(self, app: str | None, stream: str) -> list[tuple[str, int | None, str, str]]:
        """(app, instance or None for a shared file, stream, path) of the selected logs."""
        slots = self._select([app] if app else ["all"])
        seen: dict[str, tuple[str, int | None, str, str]] = {}
        for s in slots:
            out, err = s.spec.log_paths(s.id.index)
            per_instance = s.spec.instances > 1 and not s.spec.merge_logs
            idx = s.id.index if per_instance else None
            for name, path in (("out", out), ("err", err)):
                if path is None or stream not in (name, "both"):
                    continue
                label = "both" if out == err else name
                seen.setdefault(path, (s.id.app, idx, label, path))
        return list(seen.values())

    async def cmd_logs(self, args: dict[str, Any], send: Send) -> object:
        files = self._log_files(args.get("app"), args.get("stream", "both"))
        n = int(args.get("lines", 20))
        lines: list[dict[str, object]] = []
        for app, idx, stream, path in files:
            if n <= 0:
                break
            with contextlib.suppress(FileNotFoundError):
                lines.extend(
                    {
                        "app": app,
                        "instance": idx,
                        "stream": stream,
                        "text": raw.decode("utf-8", "replace").rstrip("\n"),
                    }
                    for raw in logs.tail(path, n)
                )
        if not args.get("follow"):
            return {"lines": lines}
        await send({"lines": lines})
        return await self._follow(files, send)

    async def _follow(self, files: list[tuple[str, int | None, str, str]], send: Send) -> object:
        queue: asyncio.Queue[tuple[tuple[str, int | None, str, str], bytes]] = asyncio.Queue(
            _FOLLOW_QUEUE
        )
        overflow = False

        def push(meta: tuple[str, int | None, str, str], chunk: bytes) -> None:
            nonlocal overflow
            try:
                queue.put_nowait((meta, chunk))
            except asyncio.QueueFull:
                overflow = True

        unsubscribe = [
            self.sinks.follow(meta[3], functools.partial(push, meta)) for meta in files
        ]
        try:
            while not overflow:
                (app, idx, stream, _), chunk = await queue.get()
                text = chunk.decode("utf-8", "replace")
                await send(
                    {
                        "lines": [
                            {"app": app, "instance": idx, "stream": stream, "text": line}
                            for line in text.splitlines()
                        ]
                    }
                )
            return {"lines": [], "end": "this follower fell too far behind; lines were skipped"}
        finally:
            for unsub in unsubscribe:
                unsub()
