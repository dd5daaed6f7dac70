"""The process layer (layer 3, under the engine): the OS side of every run.

`Processes` starts a run (the command, or for a cluster app the activation shell handed the
daemon-held listening sockets; pipes into its log files; $NOTIFY_SOCKET in its environment),
watches its leader exit (a pidfd, or polling where there is none), drains the rest of its process
group and the processes it left outside the group (`orphans`: re-parented to procsupd, the
subreaper), checks readiness (tcp/http probe, READY=1, a matching log line) and heartbeats
(WATCHDOG=1), moves live output to new log files, records the live runs in `state_dir`, runs
health check commands as their instance runs (`run_check`), and stops what a previous daemon
left.

It decides nothing and owns no instance bookkeeping: `spawn` returns the new `Run` (or why it
could not start), and what a run does later (its exit, readiness, a missed heartbeat) is reported
to the engine as a `lifecycle` event through the `report` callback it is given, always from a
callback of the loop, never from inside a call the engine made. Only this module writes a `Run`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol

from procsup import (
    handover,
    lifecycle,
    listeners,
    listening,
    logs,
    notify,
    orphans,
    pidfile,
    pipes,
    probes,
    procfs,
    recovery,
    sockets,
    spawn,
    statefile,
    units,
)
from procsup.cgroup import CgroupError
from procsup.cgroups import Group, Tree, limits_of
from procsup.logtargets import Target, Targets
from procsup.model import AppSpec, ExecMode, InstanceId
from procsup.spawn import Finished

#: Poll interval while waiting for the rest of a process group after its leader exited.
DRAIN_POLL = 0.02
#: Exit polling interval where pidfds are unavailable.
_EXIT_POLL = 0.05
#: How often a daemonized command's pidfile is looked for until it names its process.
_PIDFILE_POLL = 0.05
#: A cluster instance is checked for the use of its sockets this long after its spawn (or
#: min_uptime, if longer): a server has bound or closed what it will by then.
_SOCKET_CHECK_DELAY = 1.0
#: How long after a spawn its leader is recorded at the latest (the exec has finished by then,
#: so reading its start does not wait for it; the spawns of a batch share one write).
_RECORD_DELAY = 0.003
#: A log file that cannot be opened for these reasons may open later (space, fds come back).
_LOG_TRANSIENT_ERRNOS = spawn.TRANSIENT_ERRNOS | {errno.ENOSPC, errno.EDQUOT}



@dataclasses.dataclass(eq=False)
class Capture:
    """One output stream of one run: the pipe reader and the log file it writes to (held for
    as long as the reader lives, so a file is closed only when its last writer is done; a
    reader outlives its run until it reads EOF)."""

    stream: str  # "out" | "err"
    reader: pipes.PipeReader | None = None
    sink: Target | None = None


@dataclasses.dataclass(eq=False)
class Run:
    """One run of one instance: its process group and the handles that watch it. The engine
    reads `pid` and `status`; everything else is this module's."""

    id: InstanceId
    spec: AppSpec  # the definition it runs (live keys updated by `retarget`)
    proc: subprocess.Popen[bytes] | spawn.Child  # (a Child: taken over by a re-exec)
    started: float  # the loop's clock at spawn
    captures: list[Capture]
    status: str | None = None  # the last STATUS= it sent
    pidfd: int | None = None
    poll: asyncio.TimerHandle | None = None  # exit polling where pidfds are unavailable
    drain: asyncio.TimerHandle | None = None
    exit_status: tuple[int | None, int | None] | None = None
    probe: asyncio.Task[None] | None = None  # tcp/http readiness probe
    heartbeat_timeout: float | None = None  # set by the engine while the instance is running
    heartbeat: asyncio.TimerHandle | None = None
    beaten: bool = False  # it has sent WATCHDOG=1 at least once
    stopping: bool = False  # the engine sent its kill signal: a stop, not a crash
    background: int | None = None  # exited 0 leaving this process running (it daemonized)
    signalled: int | None = None  # the latest signal of a stop, for strays found later
    # With `pidfile`: the process it names once adopted (the instance's from then on), its
    # pidfd, and the poll for the file between the command's exit and the adoption.
    main: int | None = None
    main_fd: int | None = None
    pidfile_poll: asyncio.TimerHandle | None = None
    failure: str | None = None  # why the run failed, whatever its exit code (its pidfile)
    warning: str | None = None  # shown in status: a cluster instance ignores its sockets
    socket_check: asyncio.TimerHandle | None = None
    released: bool = False
    cgroup: Group | None = None  # cgroups (issue 13): the run's own cgroup, if any
    placing: concurrent.futures.Future[int] | None = None  # its late placement, under way
    _record: statefile.Record | None = None
    _record_read: bool = False

    @property
    def record(self) -> statefile.Record | None:
        """The run's entry in the instance record, with the leader's start ticks; None if the
        leader was reaped before the first call. Read at the first call, not at the spawn:
        /proc/<pid>/stat waits for the exec to finish (0.7 - 1.4 ms here), time a batch of
        spawns would spend one after the other instead of letting the execs run beside the
        next spawn. Reading it
        before the leader is reaped is exact: until then its pid cannot be reused."""
        if not self._record_read and self.proc.returncode is None:
            self._record_read = True
            ticks = statefile.leader_start_ticks(self.proc.pid)
            if ticks is not None:
                self._record = statefile.Record(self.id.app, self.id.index, self.proc.pid,
                                                self.proc.pid, ticks)
        return self._record

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the process group id."""
        return self.proc.pid

    @property
    def target(self) -> int:
        """The process that is the instance: the adopted `pidfile` process, else the leader."""
        return self.main if self.main is not None else self.proc.pid

    @property
    def log_health(self) -> tuple[logs.LogHealth, ...]:
        """The run's log files that refused writes (each file once), for status."""
        found = (c.sink.health for c in self.captures if c.sink is not None)
        return tuple({h.path: h for h in found if h is not None}.values())


class RunHandle(Protocol):
    """A run as the engine sees it: what `spawn` returned, read-only (a fake process layer
    has its own kind)."""

    @property
    def pid(self) -> int: ...
    @property
    def status(self) -> str | None: ...
    @property
    def log_health(self) -> tuple[logs.LogHealth, ...]: ...
    @property
    def warning(self) -> str | None: ...


#: report(run, event): what a run did, for the engine's event queue.
Report = Callable[[RunHandle, lifecycle.Event], None]


class _Keep:
    """The children `spawn.reap_children` must not reap, without building their union."""

    def __init__(self, *parts: Collection[int]) -> None:
        self.parts = parts

    def __contains__(self, pid: object) -> bool:
        return any(pid in part for part in self.parts)


def _own(run: RunHandle) -> Run:
    assert isinstance(run, Run), run  # the engine hands back only what spawn returned
    return run


class Processes:
    """Owns the OS side of every run (process group, pidfd, pipes, probe, heartbeat timer), the
    log files (`sinks`), the notify socket, the listening sockets of cluster apps and the
    instance record in `state_dir`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        report: Report,
        *,
        environ: Mapping[str, str],
        marker: str,
        state_dir: str,
        cgroup_tree: Tree | None = None,
    ) -> None:
        self.loop = loop
        self.cgroups = cgroup_tree  # cgroups (issue 13): None = process groups only
        self.log = log
        self._report = report
        self.environ = environ
        self.marker = marker
        self.state_dir = state_dir
        self.sinks = logs.LogSinks(report=self.log.log)
        self.targets = Targets(loop, self.sinks, self.log.log, environ)
        self.notify: notify.NotifyServer | None = None
        self._runs: dict[int, Run] = {}  # live runs (not yet released) by pid = pgid
        self._checks: set[int] = set()  # health check commands not yet reaped
        self._readers: set[Capture] = set()  # every stream still being read
        # What runs left outside their process group (re-parented to us), and whose.
        self.orphans: orphans.Orphans[Run] = orphans.Orphans(marker, self._runs,
                                                              self._by_instance)
        self.listeners = listeners.Listeners()  # of cluster apps, held for the app's life
        # What instances.json holds now: a change of state that does not change the records
        # (ready, stopping, ...) writes nothing, so a rolling reload's step from READY=1 to
        # the next spawn does no file I/O.
        self._recorded: tuple[statefile.Record, ...] | None = None
        self._record_timer: asyncio.TimerHandle | None = None
        self._last_spawn = -_RECORD_DELAY  # the loop's clock at the newest spawn
        # The previous daemon's record is read by `recover`: nothing overwrites it before.
        self._recovered = False
        # Work on orphans is done once per loop turn, for all the exits, stops and SIGCHLDs of
        # the turn (a scan reads the list of procsupd's children: once, not once per exit).
        self._batch: asyncio.Handle | None = None
        self._exited: list[Run] = []  # leaders reaped this turn, awaiting `_after_exit`
        self._scan_wanted = False
        self._reap_wanted = False
        self._mains: set[int] = set()  # adopted pidfile processes: reaped by their runs

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
        """The daemon is done: record what (if anything) is left, then close every handle,
        reader, log file, listening socket and the notify socket."""
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if self.cgroups is not None:  # cgroups (issue 13): no move under way from here on
            self.cgroups.settle()
        self.listeners.release_all()
        self.record(now=True)
        for run in list(self._runs.values()):
            self._release(run)
        self._kill_strays()
        for cap in list(self._readers):
            if cap.reader is not None:
                cap.reader.close()
        self.sinks.close_all()
        self.targets.close()
        if self.cgroups is not None:  # cgroups (issue 13): the base, if nothing is left
            self.cgroups.close()

    # ------------------------------------------------------------------ one run

    def _env(self, iid: InstanceId, spec: AppSpec, ident: spawn.Identity,
             extra: Mapping[str, str]) -> dict[str, str]:
        """The environment of instance `iid`'s processes: procsup's variables over its own."""
        return spawn.build_env(
            self.environ, inherit=spec.inherit_env, app_env=spec.env, identity=ident,
            extra={"PROCSUP_APP": spec.name, "PROCSUP_INSTANCE": str(iid.index),
                   "PROCSUP_INSTANCES": str(spec.instances), statefile.MARKER_VAR: self.marker,
                   **extra})

    def spawn(self, iid: InstanceId, spec: AppSpec) -> Run | lifecycle.SpawnFailed:
        """Start a run of instance `iid` from `spec`: the new `Run`, or why it cannot start
        (executable not found, a socket that cannot be bound, a log file that cannot be
        opened, ...; `transient` when a resource ran out: a process limit, open files)."""
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
                held = self.listeners.get(spec, iid.index)
                fds = [s.fileno() for s in held]
                argv, extra = sockets.activation_argv(
                    spec.command, fds, sockets.fd_names(spec.listen))
                pass_fds = tuple(fds)
            if self.notify is not None:
                extra["NOTIFY_SOCKET"] = self.notify.path
            ident = spawn.Identity.resolve(spec.user, spec.group)
            out_fds: dict[str, int | None] = {"out": None, "err": None}
            # ready = "log:REGEX": both streams look for the line, until one of them saw it
            watch = (pipes.LineMatch(pipes.pattern(spec.ready[4:]))
                     if spec.ready.startswith("log:") else None)
            for stream, path in zip(("out", "err"), spec.log_paths(iid.index), strict=True):
                if path is None and watch is None:
                    continue  # discarded: the child writes to /dev/null, no pipe at all
                # (a discarded stream is still read for ready = "log:...", into no file)
                cap = Capture(stream, sink=None if path is None
                              else self._acquire(spec, iid.index, stream, path))
                captures.append(cap)
                r, w = pipes.open_pipe()
                write_ends.append(w)
                out_fds[stream] = w
                cap.reader = pipes.PipeReader(
                    self.loop, r, cap.sink, on_eof=functools.partial(self._capture_done, cap),
                    watch=watch)
            env = self._env(iid, spec, ident, extra)
            launch = spawn.Launch(
                argv=argv, env=env, cwd=spec.cwd, identity=ident, umask=spec.umask,
                stdout=out_fds["out"], stderr=out_fds["err"], pass_fds=pass_fds,
                attributes=spawn.wanted(spec),
            )
            group = None
            if self.cgroups is None:
                proc = spawn.start(launch)
            elif limits_of(spec).files():  # cgroups (issue 13): born in its group, exactly
                proc, group, warning = self.cgroups.start(
                    iid.app, iid.index, limits_of(spec), lambda: spawn.start(launch))
                if warning is not None:
                    self.log.warning("%s: %s", iid, warning)
            else:  # moved into it by the worker (`_place_late`)
                group = self._late_group(iid)
                since = _boot_ticks()
                try:
                    proc = spawn.start(launch)
                except BaseException:
                    if group is not None:
                        group.remove()
                    raise
        except (spawn.SpawnError, OSError) as exc:
            for cap in captures:
                if cap.reader is not None:
                    cap.reader.close()
                self._capture_done(cap)
            if isinstance(exc, spawn.SpawnError):
                return lifecycle.SpawnFailed(exc.reason, transient=exc.transient)
            # pipe(2) or a Popen pipe: only the daemon's resources can fail here.
            if exc.errno in spawn.TRANSIENT_ERRNOS:
                return lifecycle.SpawnFailed(
                    f"cannot set up output pipes: {spawn.resource_text(exc)}", transient=True)
            return lifecycle.SpawnFailed(f"cannot set up output pipes: {exc}")
        finally:
            for w in write_ends:
                os.close(w)
        run = Run(iid, spec, proc, self.loop.time(), captures, cgroup=group)
        if group is not None and not limits_of(spec).files():
            self._place_late(run, group, since)
        self._last_spawn = run.started
        self._readers.update(captures)
        self._runs[proc.pid] = run
        self._watch_exit(run)
        if spec.exec_mode is ExecMode.CLUSTER:
            inherited = [os.fstat(fd).st_ino for fd in fds]
            run.socket_check = self.loop.call_later(
                max(spec.min_uptime, _SOCKET_CHECK_DELAY), self._check_sockets, run, inherited)
        if spec.ready.startswith(("tcp://", "http://")):
            run.probe = self.loop.create_task(self._probe(run))
        elif watch is not None:  # no output is read before the loop runs again
            watch.on_match = functools.partial(self._log_ready, run, watch)
        return run

    async def run_check(self, iid: InstanceId, spec: AppSpec, pid: int) -> str | None:
        """Run the health check command of `spec` (`health` as an argv) for instance `iid`,
        whose process is `pid`, as the instance runs: its user and groups, cwd, umask and
        environment (with PROCSUP_PID = `pid`; without its notify or listening sockets), in a
        session of its own, killed with its group after health_timeout. None when it exited 0
        in time, else what went wrong ("exited with code 1: <its last line of output>")."""
        argv = spec.health
        assert isinstance(argv, tuple), argv
        try:
            ident = spawn.Identity.resolve(spec.user, spec.group)
            launch = spawn.Launch(argv=argv, env=self._env(iid, spec, ident, {
                "PROCSUP_PID": str(pid)}), cwd=spec.cwd, identity=ident, umask=spec.umask,
                attributes=spawn.wanted(spec))
            done = await spawn.run_bounded(launch, spec.health_timeout, running=self._checks)
        except spawn.SpawnError as exc:
            return f"cannot run the check: {exc.reason}"
        if done.timed_out:
            return (f"{argv[0]} did not finish within health_timeout "
                    f"{units.format_duration(spec.health_timeout)} (killed)")
        if done.code == 0:
            return None
        last = done.last_line
        return f"{argv[0]} {units.exit_text(done.code, done.signal)}{': ' + last if last else ''}"

    def _late_group(self, iid: InstanceId) -> Group | None:
        """cgroups (issue 13): a new group for a run of `iid` that is to be placed late."""
        assert self.cgroups is not None
        try:
            return self.cgroups.create(iid.app, iid.index)
        except CgroupError as exc:
            self.log.warning("%s: %s: it runs outside any cgroup", iid, exc.reason)
            return None

    def _place_late(self, run: Run, group: Group, since: int) -> None:
        """cgroups (issue 13): have the worker move the new run into `group`, with what it
        forked and what its orphans became (procsupd's children started since the spawn, no
        run's leader and no health check, whose environment names the instance: `since` in
        clock ticks after boot); `_placed` follows, on the loop."""
        assert self.cgroups is not None
        marker, app, index = self.marker, run.id.app, run.id.index
        runs, checks = self._runs, self._checks

        def ours(pid: int) -> bool:  # in the worker thread: reads only
            if pid in runs or pid in checks:
                return False
            st = procfs.stat(pid)
            if st is None or st.dead or st.start_ticks < since:
                return False
            m = statefile.marked(pid, marker)
            return m is not None and m.app == app and m.index == index

        run.placing = self.cgroups.place_late(group, run.pid, ours)
        run.placing.add_done_callback(functools.partial(self._placed_soon, run))

    def _placed_soon(self, run: Run, future: concurrent.futures.Future[int]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is gone
            self.loop.call_soon_threadsafe(self._placed, run, future)

    def _placed(self, run: Run, future: concurrent.futures.Future[int]) -> None:
        """cgroups (issue 13): the late placement of `run` is done. If it failed the run goes
        on outside any group; a stop that began meanwhile gets its signal in the group too."""
        run.placing = None
        group = run.cgroup
        if group is None:
            return
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or exc is not None:
            why = exc.reason if isinstance(exc, CgroupError) else f"cannot place it: {exc}"
            self.log.warning("%s: %s: it runs outside any cgroup", run.id, why)
            if group.remove():
                run.cgroup = None
            return
        if run.stopping and run.signalled is not None and not run.released:
            self._signal_cgroup(run, run.signalled)

    def _signal_cgroup(self, run: Run, sig: int) -> None:
        """cgroups (issue 13): a stop's `sig` to what is in the run's cgroup besides its
        process group and its known strays, which have it already (once is what a program
        expects: a second SIGINT is "stop now" to many); SIGKILL by `cgroup.kill`."""
        if run.cgroup is None or run.placing is not None:
            return  # not placed yet: `_placed` calls again
        if sig == signal.SIGKILL:
            run.cgroup.kill()
            return
        groups, pids = self.orphans.covered(run)
        run.cgroup.signal(sig, besides=groups | {run.pid}, besides_pids=pids)

    def kill(self, handle: RunHandle, sig: int) -> None:
        """The engine's `Kill` effect: `sig` to the run's whole process group, which is now
        being stopped (what is left of it after its leader exits has the rest of the
        kill_timeout to go, instead of being killed at once as after a crash)."""
        run = _own(handle)
        if not run.released:
            run.stopping = True
            run.signalled = sig
            spawn.kill_group(run.pid, sig)
            self.orphans.signal(run, sig)  # the strays known; those not yet: in the batch
            self._signal_cgroup(run, sig)
            self._scan_wanted = True
            self._soon()

    def signal(self, handle: RunHandle, sig: int, *, leader: bool = False) -> bool:
        """`sig` to the run's process group, or its leader (before its exit is reaped, so the
        pid is its own); whether it was delivered."""
        run = _own(handle)
        if run.main is not None:  # the adopted process: it, or it and the strays' groups
            if run.released or run.main_fd is None:
                return False
            return spawn.signal_pid(run.main, sig) if leader else bool(
                self.orphans.signal(run, sig))
        if run.released or (leader and run.exit_status is not None):
            return False
        return spawn.signal_pid(run.pid, sig) if leader else spawn.kill_group(run.pid, sig)

    def kill_all(self) -> None:
        """shutdown_timeout passed: SIGKILL to every live process group."""
        for run in self._runs.values():
            spawn.kill_group(run.pid, signal.SIGKILL)
            if run.cgroup is not None:  # cgroups (issue 13)
                run.cgroup.kill()
        self.orphans.scan(self._checks, every=True)
        self.orphans.kill_all()

    def live_pids(self) -> set[int]:
        return set(self._runs)

    def cgroup_memory(self, pids: Iterable[int]) -> dict[int, int]:
        """cgroups (issue 13): leader pid -> bytes of memory of its run's cgroup, for the runs
        of `pids` that have one (`status` shows it instead of the process group's RSS)."""
        return {pid: run.cgroup.memory() for pid in pids
                if (run := self._runs.get(pid)) is not None and run.cgroup is not None
                and run.placing is None}

    async def _probe(self, run: Run) -> None:
        """Poll the run's tcp/http readiness target until it answers or ready_timeout."""
        ok = await probes.wait_ready(run.spec.ready,
                                     deadline=run.started + run.spec.ready_timeout)
        run.probe = None
        if ok and not run.released:
            self._report(run, lifecycle.Ready())

    def _log_ready(self, run: Run, watch: pipes.LineMatch) -> None:
        """A line of the run's output matched its `ready = "log:..."` (from a reader's loop
        callback): it is ready; its readers stop matching."""
        if not run.released:
            self.log.info("%s: ready: its output matched %s", run.id, watch.pattern.pattern)
            self._report(run, lifecycle.Ready())

    def _on_notify(self, msg: notify.Message) -> None:
        """A datagram on $NOTIFY_SOCKET: attributed by the kernel-checked sender pid to the
        instance whose process group it belongs to; anyone else is ignored."""
        pgid = notify.sender_group(msg.pid)
        run = self._runs.get(pgid) if pgid is not None else None
        if run is None:
            return
        fields = msg.fields
        if "STATUS" in fields:
            run.status = fields["STATUS"]
        if fields.get("READY") == "1" and run.spec.ready == "notify":
            self._report(run, lifecycle.Ready())  # a tcp/http probe is not cut short by it
        if fields.get("WATCHDOG") == "1":
            run.beaten = True
            self._arm_heartbeat(run)
        if fields.get("STOPPING") == "1":
            self.log.info("%s: says it is stopping", run.id)

    def watch_heartbeat(self, handle: RunHandle, timeout: float | None) -> None:
        """While the instance is running (`timeout` = its heartbeat_timeout), a missing
        WATCHDOG=1 for that long is reported; None stops watching."""
        run = _own(handle)
        run.heartbeat_timeout = timeout
        self._arm_heartbeat(run)

    def _arm_heartbeat(self, run: Run) -> None:
        if run.heartbeat is not None:
            run.heartbeat.cancel()
            run.heartbeat = None
        if run.heartbeat_timeout is not None and not run.released:
            run.heartbeat = self.loop.call_later(
                run.heartbeat_timeout, self._heartbeat_missed, run)

    def _heartbeat_missed(self, run: Run) -> None:
        run.heartbeat = None
        timeout = units.format_duration(run.heartbeat_timeout or 0)
        self.log.warning("%s: no WATCHDOG=1 within heartbeat_timeout %s%s", run.id, timeout,
                         "" if run.beaten else " (none since it started)")
        # A run that never beat is not a hang but an app that does not send heartbeats (or
        # not yet when ready): a failed run for the restart policy, not a restart forever.
        unstable = None if run.beaten else (
            f"each run sent no WATCHDOG=1 within heartbeat_timeout {timeout} of being ready")
        self._report(run, lifecycle.Recycle(
            f"no WATCHDOG=1 within heartbeat_timeout {timeout}", unstable))

    def close_listeners(
        self, users: Iterable[tuple[AppSpec, int]], specs: Mapping[str, AppSpec]
    ) -> None:
        """The engine's call: close the listening sockets nobody can use any more
        (`listeners.Listeners.close_unused`)."""
        self.listeners.close_unused(users, specs)

    def _watch_exit(self, run: Run) -> None:
        fd = spawn.pidfd(run.pid)
        if fd is not None:
            try:
                self.loop.add_reader(fd, self._on_leader_exit, run)
                run.pidfd = fd
                return
            except OSError:
                os.close(fd)
        run.poll = self.loop.call_later(_EXIT_POLL, self._on_leader_exit, run)

    def _acquire(self, spec: AppSpec, index: int, stream: str, path: str) -> Target:
        try:
            return self.targets.acquire(spec, index, stream, path)
        except OSError as exc:
            # A full disk or fd table comes back; a permission or a path problem does not.
            if exc.errno in _LOG_TRANSIENT_ERRNOS:
                why = (spawn.resource_text(exc) if exc.errno in spawn.TRANSIENT_ERRNOS
                       else exc.strerror or str(exc))
                raise spawn.SpawnError(f"cannot open log file {path}: {why}",
                                       transient=True) from None
            raise spawn.SpawnError(f"cannot open log file: {exc}") from None
        except ValueError as exc:
            raise spawn.SpawnError(f"cannot open log file: {exc}") from None

    def _capture_done(self, cap: Capture) -> None:
        """The stream ended (EOF, or the run never started): let go of its log file."""
        cap.reader = None
        self._readers.discard(cap)
        if cap.sink is not None:
            self.targets.release(cap.sink)
            cap.sink = None

    def retarget(self, handle: RunHandle, spec: AppSpec) -> None:
        """The run's live keys changed (a live apply). When its log files or their settings
        changed, the running streams continue into the new files at once, without a
        restart."""
        run = _own(handle)
        old, run.spec = run.spec, spec
        index = run.id.index
        if (old.log_paths(index), old.log_date_format, old.log_max_size, old.log_retain,
                old.log_format) == (spec.log_paths(index), spec.log_date_format,
                                    spec.log_max_size, spec.log_retain, spec.log_format):
            return
        paths = dict(zip(("out", "err"), spec.log_paths(index), strict=True))
        for cap in run.captures:
            if cap.reader is None or cap.reader.closed:
                continue
            path = paths[cap.stream]
            try:
                new = None if path is None else self._acquire(spec, index, cap.stream, path)
            except spawn.SpawnError as exc:
                self.log.error("%s: keeps its old log file: %s", run.id, exc.reason)
                continue
            was, cap.sink = cap.sink, new
            cap.reader.sink = new
            if was is not None:
                self.targets.release(was)

    def _on_leader_exit(self, run: Run) -> None:
        run.poll = None
        if run.released:  # a stale callback
            return
        status = spawn.exit_status(run.pid, run.pidfd)
        if status is None:
            if run.pidfd is None:
                run.poll = self.loop.call_later(_EXIT_POLL, self._on_leader_exit, run)
            return
        if run.pidfd is not None:
            self.loop.remove_reader(run.pidfd)
            os.close(run.pidfd)
            run.pidfd = None
        run.exit_status = status
        # Reap now: a zombie leader would keep `killpg(pgid, 0)` succeeding and force a scan of
        # the process table on every exit; the pgid stays reserved while a member lives.
        spawn.reap(run.proc, status)
        # Its children outside its group are ours now (subreaper): they are part of this run,
        # found by the batch's scan, which then goes on with `_after_exit`.
        self._exited.append(run)
        self._soon()

    def _soon(self) -> None:
        if self._batch is None:
            self._batch = self.loop.call_soon(self._run_batch)

    def _run_batch(self) -> None:
        """The orphan work of one loop turn: reap what ended (SIGCHLD), one scan of procsupd's
        children for the leaders that exited and the stops that began (a child nothing else
        names goes to an exited leader's run), the stop signal to the strays
        found of a stopping run, then what follows each exit."""
        self._batch = None
        exited, self._exited = self._exited, []
        if self._reap_wanted:
            self._reap_wanted = False
            self._reap()
        if exited or self._scan_wanted:
            self._scan_wanted = False
            # Several leaders that exited in one turn cannot be told apart for a child nothing
            # else names: the first takes it (it is stopped either way: with a stop, or as the
            # rest of a run that ended).
            found = self.orphans.scan(self._checks, exiting=exited[0] if exited else None)
            for st in found:
                if (owner := st.owner) is not None:
                    self._signal_found(owner, [st])
        for run in exited:
            if not run.released:
                self._after_exit(run)

    def _after_exit(self, run: Run) -> None:
        """The leader exited and the strays it left are known: what follows."""
        assert run.exit_status is not None
        if not run.stopping and run.exit_status[0] == 0:
            if run.spec.pidfile is not None:  # it put itself in the background, as declared
                self._await_pidfile(run)
                return
            run.background = orphans.first_pid(self.orphans.of(run))
        self._drain(run)

    def _await_pidfile(self, run: Run) -> None:
        """The command exited 0: wait (until its ready_timeout, counted from the spawn) for its
        pidfile to name a live process of this run (one it left outside its group, or in it),
        then make that process the instance's. Else the run fails, and what it left is
        stopped."""
        run.pidfile_poll = None
        path = run.spec.pidfile
        assert path is not None
        if run.released:
            return
        if run.stopping:  # a stop came while it was starting in the background
            self._drain(run)
            return
        got = pidfile.read_app_pid(path)
        why = None
        if isinstance(got, int):
            self._adopt(run)
            st = procfs.stat(got)
            mine = self.orphans.strays.get(got)
            if st is None or st.dead:
                why = f"pidfile {path} names pid {got}, which is not running"
            elif (mine is None or mine.owner is not run) and st.pgrp != run.pid:
                why = f"pidfile {path} names pid {got}, which is not a process of this instance"
            else:
                self._adopt_main(run, got)
                return
        elif got != "missing":
            why = f"pidfile {path}: {got}"
        # A stale file (a pid of an earlier run) or a half-written one may still be replaced
        # by the server: only the deadline makes what is wrong with it final.
        if self.loop.time() < run.started + run.spec.ready_timeout:
            run.pidfile_poll = self.loop.call_later(_PIDFILE_POLL, self._await_pidfile, run)
            return
        if why is None:
            why = (f"the command exited with code 0 and its pidfile {path} did not appear "
                   f"within ready_timeout {units.format_duration(run.spec.ready_timeout)}")
        self.log.warning("%s: %s", run.id, why)
        run.failure = why
        self._drain(run)

    def _adopt_main(self, run: Run, pid: int) -> None:
        """`pid`, named by the run's pidfile, is the instance from now on."""
        fd = spawn.pidfd(pid)
        run.main = pid
        run.main_fd = fd
        self._mains.add(pid)
        if fd is not None:
            self.loop.add_reader(fd, self._on_main_exit, run)
        else:
            run.poll = self.loop.call_later(_EXIT_POLL, self._on_main_exit, run)
        self.log.info("%s: supervising pid %d from pidfile %s", run.id, pid, run.spec.pidfile)
        self._report(run, lifecycle.Adopted(pid))

    def _on_main_exit(self, run: Run) -> None:
        """The adopted process ended (its pidfd is readable; it is our child, re-parented to
        procsupd, so its status is ours to read, unless it was another process's child)."""
        run.poll = None
        if run.released or run.main is None:
            return
        if run.main_fd is None and spawn.pid_alive(run.main):
            run.poll = self.loop.call_later(_EXIT_POLL, self._on_main_exit, run)
            return
        status = spawn.exit_status(run.main, run.main_fd)
        if status is None:  # not reaped, not a zombie of ours: another's child that ended
            status = (None, None)
        if run.main_fd is not None:
            self.loop.remove_reader(run.main_fd)
            os.close(run.main_fd)
            run.main_fd = None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(run.main, os.WNOHANG)
        self._mains.discard(run.main)
        self.orphans.reaped([run.main])
        run.exit_status = status
        self._adopt(run)
        self._drain(run)

    def _drain(self, run: Run) -> None:
        """The leader is gone; the run ends when its whole process group is gone.

        While stopping, the rest of the group gets the remaining kill_timeout (the lifecycle's
        deadline sends SIGKILL). After an unexpected exit, what the leader left behind in its
        group is killed at once, as systemd does for a service's control group."""
        run.drain = None
        assert run.exit_status is not None
        # (A stray that dies is reaped on SIGCHLD, and its own orphans found then: `_reap`.)
        # cgroups (issue 13): the run ends when its cgroup is empty too
        if (spawn.live_members(run.pid) or self.orphans.alive(run) or run.placing is not None
                or (run.cgroup is not None and run.cgroup.populated())):
            if not run.stopping:
                spawn.kill_group(run.pid, signal.SIGKILL)
                self.orphans.signal(run, signal.SIGKILL)
                if run.cgroup is not None:
                    run.cgroup.kill()
            run.drain = self.loop.call_later(DRAIN_POLL, self._drain, run)
            return
        code, sig = run.exit_status
        if run.background is not None:
            self.log.warning("%s: pid %d exited with code 0 and left pid %d running in the "
                             "background (stopped)", run.id, run.pid, run.background)
        elif not run.stopping:  # unplanned: say how, whatever happens next
            # A clean exit (a job, a one-shot) is news, not a problem; anything else warns.
            level = logging.INFO if code == 0 else logging.WARNING
            self.log.log(level, "%s: pid %d %s after %s", run.id, run.target,
                         units.exit_text(code, sig),
                         units.format_duration(round(self.loop.time() - run.started, 3)))
        self._release(run)
        self._report(run, lifecycle.Exited(code, sig, background=run.background,
                                           failure=run.failure))

    def _release(self, run: Run) -> None:
        """Forget the OS handles of the run (its readers finish on their own at EOF)."""
        run.released = True
        for handle in (run.drain, run.poll, run.probe, run.heartbeat, run.pidfile_poll,
                       run.socket_check):
            if handle is not None:
                handle.cancel()
        run.drain = run.poll = run.probe = run.heartbeat = run.pidfile_poll = None
        run.socket_check = None
        if run.main_fd is not None:
            self.loop.remove_reader(run.main_fd)
            os.close(run.main_fd)
            run.main_fd = None
        if run.main is not None:
            self._mains.discard(run.main)
        if self._runs.get(run.pid) is run:
            del self._runs[run.pid]
        self.orphans.forget(run)
        if run.pidfd is not None:
            self.loop.remove_reader(run.pidfd)
            os.close(run.pidfd)
            run.pidfd = None
        if run.exit_status is not None and run.proc.returncode is None:
            spawn.reap(run.proc, run.exit_status)
        if run.cgroup is not None and run.cgroup.remove():  # cgroups (issue 13): once empty
            run.cgroup = None

    # ------------------------------------------------------------------ re-exec (issue 14)

    def before_handover(self) -> None:
        """A re-exec is about to replace this image: finish what another thread or a timer
        would complete after it (late cgroup placements, the record), end the readers of runs
        that are gone (what they still hold goes into their files), flush procsupd's own
        stdout/stderr and the journal. Nothing else changes: if the exec fails, the daemon
        goes on as it was."""
        if self.cgroups is not None:
            self.cgroups.settle()
            for run in list(self._runs.values()):
                if run.placing is not None and run.placing.done():
                    self._placed(run, run.placing)
        live = {id(c) for r in self._runs.values() for c in r.captures}
        for cap in [c for c in self._readers if id(c) not in live]:
            if cap.reader is not None:
                cap.reader.close()
            self._capture_done(cap)
        self.record(now=True)
        self.targets.flush()

    def run_record(self, handle: RunHandle) -> handover.RunRecord:
        """What the next image needs of this run to go on watching it."""
        run = _own(handle)
        rec = run.record
        streams = tuple(
            handover.Stream(c.stream, c.reader.fd, c.reader.partial, c.reader.watching)
            for c in run.captures if c.reader is not None and not c.reader.closed)
        return handover.RunRecord(
            pid=run.pid, started=run.started, start_ticks=rec.start_ticks if rec else None,
            pidfd=run.pidfd, status=run.status, exit_status=run.exit_status,
            beaten=run.beaten, stopping=run.stopping, signalled=run.signalled,
            background=run.background, main=run.main, main_fd=run.main_fd,
            failure=run.failure, warning=run.warning,
            cgroup=run.cgroup.path if run.cgroup is not None else None,
            probing=run.probe is not None, awaiting_pidfile=run.pidfile_poll is not None,
            streams=streams,
            strays=tuple(handover.Stray(s.pid, s.pgid, s.start_ticks)
                         for s in self.orphans.of(run)),
            groups=tuple(self.orphans.groups_of(run)))

    async def run_daemon_check(self, argv: tuple[str, ...], timeout: float) -> Finished:
        """Run procsupd's own `--check` (a re-exec's first step: the code now installed reads
        the config) as a bounded command, known as a check so the orphan reaper leaves it
        alone. Raises SpawnError when it cannot be started."""
        launch = spawn.Launch(argv=argv, env=dict(self.environ))
        return await spawn.run_bounded(launch, timeout, running=self._checks)

    @property
    def checks_running(self) -> int:
        return len(self._checks)

    def handover_fds(self) -> list[int]:
        """The fds of the listening sockets and the notify socket (the runs' are in their
        records)."""
        fds = [sock.fileno() for sock in self.listeners.held.values()]
        if self.notify is not None:
            fds.append(self.notify.fileno())
        return fds

    def adopt(self, iid: InstanceId, spec: AppSpec, rec: handover.RunRecord) -> Run:
        """Go on watching a run the previous image started (after a re-exec), as it was: its
        pipes (the partial line included) into its log files, its exit, its strays, its
        cgroup, its readiness probe, a pidfile it waited for."""
        watch = (pipes.LineMatch(pipes.pattern(spec.ready[4:]))
                 if spec.ready.startswith("log:") and any(s.watching for s in rec.streams)
                 else None)
        paths = dict(zip(("out", "err"), spec.log_paths(iid.index), strict=True))
        captures = []
        for s in rec.streams:
            os.set_inheritable(s.fd, False)
            path = paths.get(s.stream)
            sink = None
            if path is not None:
                try:
                    sink = self._acquire(spec, iid.index, s.stream, path)
                except spawn.SpawnError as exc:  # read on (the writer must not block), into nothing
                    self.log.error("%s: %s; its %s output is discarded", iid, exc.reason,
                                   s.stream)
            cap = Capture(s.stream, sink=sink)
            cap.reader = pipes.PipeReader(
                self.loop, s.fd, sink, on_eof=functools.partial(self._capture_done, cap),
                watch=watch if s.watching else None, partial=s.partial)
            captures.append(cap)
        group = None
        if rec.cgroup is not None and self.cgroups is not None:
            group = Group(rec.cgroup)
        run = Run(iid, spec, spawn.Child(rec.pid), rec.started, captures, status=rec.status,
                  beaten=rec.beaten, stopping=rec.stopping, signalled=rec.signalled,
                  background=rec.background, failure=rec.failure, warning=rec.warning,
                  cgroup=group, exit_status=rec.exit_status)
        if rec.start_ticks is not None:
            run._record = statefile.Record(iid.app, iid.index, rec.pid, rec.pid, rec.start_ticks)
        run._record_read = True
        self._readers.update(captures)
        self._runs[rec.pid] = run
        self.orphans.adopt(run, ((s.pid, s.pgid, s.start_ticks) for s in rec.strays),
                           rec.groups)
        for fd in (rec.pidfd, rec.main_fd):
            if fd is not None:
                os.set_inheritable(fd, False)
        if rec.main is not None:  # the process its pidfile named: the leader is gone
            run.main, run.main_fd = rec.main, rec.main_fd
            self._mains.add(rec.main)
            if rec.main_fd is not None:
                self.loop.add_reader(rec.main_fd, self._on_main_exit, run)
            else:
                run.poll = self.loop.call_later(_EXIT_POLL, self._on_main_exit, run)
        elif rec.exit_status is not None:  # the leader exited: what followed goes on
            if rec.awaiting_pidfile:
                run.pidfile_poll = self.loop.call_later(0, self._await_pidfile, run)
            else:
                run.drain = self.loop.call_later(0, self._drain, run)
        elif rec.pidfd is not None:
            run.pidfd = rec.pidfd
            self.loop.add_reader(rec.pidfd, self._on_leader_exit, run)
        else:
            run.poll = self.loop.call_later(_EXIT_POLL, self._on_leader_exit, run)
        if rec.probing:
            run.probe = self.loop.create_task(self._probe(run))
        if watch is not None:
            watch.on_match = functools.partial(self._log_ready, run, watch)
        return run

    def adopted(self, notify_fd: int | None, listeners: Iterable[handover.Listener]) -> None:
        """The runs are taken over: the notify socket and the listening sockets too; the
        record is this image's to write from now on (nothing to recover: nothing is lost)."""
        if notify_fd is not None:
            os.set_inheritable(notify_fd, False)
            server = notify.NotifyServer(self.loop, "", self._on_notify)
            server.adopt(notify_fd)
            self.notify = server
        for x in listeners:
            os.set_inheritable(x.fd, False)
            self.listeners.held[(x.app, x.index, x.address, x.balance)] = sockets.adopt(x.fd)
        self._recorded = ()
        self._recovered = True
        self._scan_wanted = True  # what was re-parented to us during the exec
        self._reap_wanted = True
        self._soon()

    # ------------------------------------------------------------------ the daemon's processes

    def _record_due(self) -> None:
        self._record_timer = None
        self.record(now=True)

    def record(self, *, now: bool = False) -> None:
        """Record the live runs in the state dir, unless that is what it holds already. With a
        run spawned less than _RECORD_DELAY ago (its exec may be finishing) the write is made
        by a timer at the end of that delay instead; `now`: at once (the daemon is closing)."""
        if not self._recovered and not self._runs:
            return  # the previous daemon's record is still to be read by `recover`
        if not now and self.loop.time() - self._last_spawn < _RECORD_DELAY:
            if self._record_timer is None:
                self._record_timer = self.loop.call_later(_RECORD_DELAY, self._record_due)
            return
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        records = tuple(rec for r in self._runs.values() if (rec := r.record) is not None)
        if self.orphans.strays:  # what runs left outside their groups, found again on recovery
            records += tuple(
                statefile.Record(o.id.app, o.id.index, s.pid, s.pgid, s.start_ticks)
                for s in self.orphans.strays.values() if (o := s.owner) is not None)
        if records == self._recorded:
            return
        self._recorded = None  # unknown until the write succeeded
        try:
            statefile.write(self.state_dir, records, os.getpid())
            self._recorded = records
        except OSError as exc:
            self.log.error("cannot record instances in %s: %s", self.state_dir, exc)

    def reap_orphans(self) -> None:
        """SIGCHLD: reap the orphans re-parented to procsupd (subreaper, or PID 1), in this
        loop turn's batch (however many SIGCHLDs it brought)."""
        self._reap_wanted = True
        self._soon()

    def _reap(self) -> None:
        """Reap the ended children that are no instance leader (their status is read through
        their pidfd; each is reaped once its group is gone), no health check and no adopted
        pidfile process (reaped by its run)."""
        reaped = spawn.reap_children(_Keep(self._runs, self._checks, self._mains))
        if reaped:
            # A stray's children are re-parented to procsupd when it dies: they are its run's
            # (and so is a child of its leader that exited meanwhile: found here, it must have
            # the stop's signal here, as the batch's scan skips what is known).
            for owner in self.orphans.reaped(reaped):
                if not owner.released:
                    self._adopt(owner)

    def _adopt(self, run: Run) -> None:
        """Scan for strays after a process of `run` died (its orphans are ours now); those
        found during a stop get the stop's signal at once."""
        self._signal_found(run, self.orphans.scan(self._checks, exiting=run))

    def _signal_found(self, run: Run, found: list[orphans.Stray[Run]]) -> None:
        """Strays of `run` just found: if it is being stopped, they get its stop signal (but
        those in its cgroup, which had it: `_signal_cgroup`)."""
        if found and run.stopping and run.signalled is not None and not run.released:
            inside = (run.cgroup.pids() if run.cgroup is not None and run.placing is None
                      else ())
            self.orphans.signal_found(found, run.signalled, skip=inside)

    def _check_sockets(self, run: Run, inherited: list[int]) -> None:
        """A while after a cluster instance started: does it use the listening sockets it was
        handed (fd 3, 4, ...)? A server without socket activation closes them, or keeps fd 3
        open unused and binds a port of its own; either way the app's port hangs. Said in
        status (the run's `warning`) and the daemon log; nothing is restarted for it."""
        run.socket_check = None
        if run.released or run.stopping or run.exit_status is not None:
            return
        run.warning = listening.unused_socket(run.pid, inherited)
        if run.warning is not None:
            self.log.warning("%s: %s", run.id, run.warning)

    def _by_instance(self, app: str, index: int) -> Run | None:
        for run in self._runs.values():
            if run.id.app == app and run.id.index == index:
                return run
        return None

    def _kill_strays(self) -> None:
        """The daemon is closing: no process of an app may outlive it. SIGKILL whatever is
        left outside the stopped groups, and reap it (bounded: a process in uninterruptible
        sleep dies when it wakes, re-parented to init by then)."""
        self.orphans.scan(self._checks, every=True)
        if not self.orphans.kill_all():
            return
        self.log.warning("killed %d process(es) that apps left behind",
                         len(self.orphans.strays))
        for _ in range(50):
            self._reap()
            if not self.orphans.strays:
                return
            time.sleep(0.01)

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen every log file (after logrotate moved them)."""
        self.sinks.reopen_all()
        self.log.info("log files reopened")

    def follow(self, path: str, callback: logs.Follower) -> Callable[[], None]:
        """Call `callback` with every chunk written to the log file `path`; the unsubscriber."""
        return self.sinks.follow(path, callback)

    async def recover(self, apps: Mapping[str, AppSpec]) -> None:
        """Stop what a previous daemon left (`recovery.recover`; with cgroups, also what is
        left in their cgroups), then allow the record to be written (`apps`: the definitions
        to take stop signals and timeouts from)."""
        await recovery.recover(self.state_dir, self.marker, apps, self.log)
        if self.cgroups is not None:  # cgroups (issue 13): what is left in their cgroups
            await self._recover_cgroups()
        self._recorded = ()
        self._recovered = True

    async def _recover_cgroups(self) -> None:
        """cgroups (issue 13): every group left under the base by a previous daemon: SIGTERM to
        its processes, then, after 5 s, the cgroup kill; the groups are removed."""
        assert self.cgroups is not None
        groups = self.cgroups.groups()
        if not groups:
            return
        self.log.warning("stopping what a previous procsupd left in %d cgroup(s) under %s",
                         len(groups), self.cgroups.base)
        for group in groups:
            group.signal(signal.SIGTERM)
        deadline = self.loop.time() + 5.0
        while any(g.populated() for g in groups) and self.loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        left = await asyncio.to_thread(self.cgroups.clear, 5.0)
        if left:
            self.log.error("cannot remove cgroup(s): %s", ", ".join(g.path for g in left))


def _boot_ticks() -> int:
    """Now, as a process start time in /proc/<pid>/stat counts it (clock ticks after boot),
    rounded down (a process started from now on reads this or later)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * procfs.CLOCK_TICKS) - 1
