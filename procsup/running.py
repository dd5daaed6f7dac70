"""The process side of every instance (layer 3, under supervisor): a `Slot` per instance and
the OS resources of its current run.

`Processes` starts a run (the command, or for a cluster app the activation shell handed the
daemon-held listening sockets; pipes into its log files; $NOTIFY_SOCKET in its environment),
watches its leader exit (a pidfd, or polling where there is none), drains the rest of its process
group, checks readiness (tcp/http probe, READY=1) and heartbeats (WATCHDOG=1), and moves live
output to new log files. It decides nothing: what it observes goes back to the supervisor as a
`lifecycle` event through the `feed` callback it is given, and the event core there applies the
state machine and asks for the next run.
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

from procsup import lifecycle, logs, notify, probes, sockets, spawn, statefile, units
from procsup.lifecycle import Instance, Policy
from procsup.model import LIVE_STATES, AppSpec, ExecMode, InstanceId, State

#: Poll interval while waiting for the rest of a process group after its leader exited.
DRAIN_POLL = 0.02
#: Exit polling interval where pidfds are unavailable.
_EXIT_POLL = 0.05


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
    beaten: bool = False  # the current run has sent WATCHDOG=1 at least once
    note: str | None = None  # why a monitor last replaced or restarted it (shown in status)


#: feed(slot, event): hands what a run did to the supervisor's event core.
Feed = Callable[[Slot, lifecycle.Event], None]


class Processes:
    """Owns the OS side of every run: its process group, pidfd, pipes, probe and heartbeat
    timer, plus the notify socket and the listening sockets of cluster apps. Log files belong
    to the `sinks` it is given (the supervisor reopens and closes them)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        sinks: logs.LogSinks,
        feed: Feed,
        *,
        environ: Mapping[str, str],
        marker: str,
    ) -> None:
        self.loop = loop
        self.log = log
        self.sinks = sinks
        self._feed = feed
        self.environ = environ
        self.marker = marker
        self.notify: notify.NotifyServer | None = None
        self._by_pgid: dict[int, Slot] = {}  # live instances by process group (notify senders)
        # Listening sockets of cluster apps, held for the app's life: per app ("shared") or
        # per instance slot ("reuseport", so a replacement gets the same socket). The key
        # includes the addresses and balance, so a changed `listen` binds anew.
        self.listeners: dict[tuple[str, int | None, str, str], socket.socket] = {}

    def start_notify(self, path: str) -> None:
        """The $NOTIFY_SOCKET every instance gets, beside the control socket."""
        server = notify.NotifyServer(self.loop, path, self._on_notify)
        try:
            server.start()
        except OSError as exc:
            self.log.error("no notify socket at %s (%s): instances with ready = \"notify\" "
                           "will not become ready", path, exc)
            return
        self.notify = server

    def close(self) -> None:
        """Close the notify socket and every listening socket (the daemon is done)."""
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        for sock in self.listeners.values():
            sockets.release(sock)
        self.listeners.clear()

    # ------------------------------------------------------------------ one run

    def spawn(self, slot: Slot) -> None:
        """Start a run of `slot` (the lifecycle's `Spawn` effect) and feed `Spawned(pid)`, or
        `SpawnFailed(reason)` when it cannot start (executable not found, a socket that cannot
        be bound, a log file that cannot be opened, ...)."""
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
            self._feed(slot, lifecycle.SpawnFailed(reason))
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
        self._feed(slot, lifecycle.Spawned(proc.pid))
        if spec.ready.startswith(("tcp://", "http://")) and slot.proc is proc:
            slot.probe = self.loop.create_task(self._probe(slot, proc))

    async def _probe(self, slot: Slot, proc: subprocess.Popen[bytes]) -> None:
        """Poll the instance's tcp/http readiness target until it answers or ready_timeout."""
        started = slot.inst.started_at if slot.inst.started_at is not None else self.loop.time()
        ok = await probes.wait_ready(slot.spec.ready, deadline=started + slot.spec.ready_timeout)
        slot.probe = None
        if ok and slot.proc is proc:
            self._feed(slot, lifecycle.Ready())

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
            self._feed(slot, lifecycle.Ready())  # a tcp/http probe is not cut short by it
        if fields.get("WATCHDOG") == "1":
            slot.beaten = True
            self.arm_heartbeat(slot)
        if fields.get("STOPPING") == "1":
            self.log.info("%s: says it is stopping", slot.id)

    def arm_heartbeat(self, slot: Slot) -> None:
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
        self.log.warning("%s: no WATCHDOG=1 within heartbeat_timeout %s%s", slot.id, timeout,
                         "" if slot.beaten else " (none since it started)")
        # A run that never beat is not a hang but an app that does not send heartbeats (or
        # not yet when ready): a failed run for the restart policy, not a restart forever.
        unstable = None if slot.beaten else (
            f"each run sent no WATCHDOG=1 within heartbeat_timeout {timeout} of being ready")
        self._feed(slot, lifecycle.Recycle(f"no WATCHDOG=1 within heartbeat_timeout {timeout}",
                                           unstable))

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

    def close_listeners(self, slots: Iterable[Slot], specs: Mapping[str, AppSpec]) -> None:
        """Close the sockets no instance can use any more (app removed, an address or
        `balance` changed, reuseport slot scaled away), once the instances that used them are
        gone: running processes keep their own copies, and a socket no process accepts on
        would make clients hang instead of being refused. `slots` is every instance, `specs`
        the applied definition of every app."""
        wanted: set[tuple[str, int | None, str, str]] = set()
        for slot in slots:
            spec = slot.spec
            if spec.exec_mode is not ExecMode.CLUSTER:
                continue
            if slot.retiring and slot.inst.state not in LIVE_STATES:
                continue
            index = slot.id.index if spec.balance == "reuseport" else None
            wanted.update((spec.name, index, a, spec.balance) for a in spec.listen)
        for name, spec in specs.items():  # slots not started yet keep their sockets too
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

    def retarget(self, slot: Slot) -> None:
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
            slot.drain = self.loop.call_later(DRAIN_POLL, self._drain, slot)
            return
        code, sig = slot.exit_status
        if slot.inst.state is not State.STOPPING:  # unplanned: say how, whatever happens next
            how = f"exited with code {code}" if code is not None else (
                f"killed by {units.signal_name(sig)}" if sig is not None else "ended")
            # A clean exit (a job, a one-shot) is news, not a problem; anything else warns.
            level = logging.INFO if code == 0 else logging.WARNING
            self.log.log(level, "%s: pid %d %s after %s", slot.id, pgid, how,
                             units.format_duration(round(
                                 self.loop.time() - (slot.inst.started_at or 0), 3)))
        self.release_run(slot)
        self._feed(slot, lifecycle.Exited(code, sig))

    def release_run(self, slot: Slot) -> None:
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
        slot.beaten = False
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
