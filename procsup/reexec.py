"""`procsup daemon-reexec` and SIGUSR2: the daemon replaces its program with the code now
installed, in place, and no app notices (layer 4, over the engine; CONTRACT §3 Daemon re-exec).

1. The check: the installed `procsupd --check` (this process's own command line, in a child)
   reads the config. If it fails, nothing changes and the request fails with its reason.
2. Quiet: the applier's lock is taken (no apply, scale or reload is under way, and none begins),
   then the engine is waited for until no reload replaces instances and none is being removed;
   health checks in flight are ended (their instances keep the health they have).
3. The hand-over, in one go, with no loop turn between its steps: the process layer finishes what
   would happen behind the image's back (cgroup placements, the record, procsupd's stdout), the
   engine, the applier and the process layer write what they hold into a `handover.Image`, every
   fd it names is made inheritable, and `execve` runs the same command line with the image's
   memfd named in `$PROCSUP_REEXEC_FD`. Pipes are not read meanwhile: a writer waits in write(2)
   if its pipe fills, and no byte is lost. Clients that connect meanwhile wait in the control
   socket's backlog; the ones connected now see the connection closed.
4. If `execve` fails (the interpreter is gone mid-upgrade), the fds are made close-on-exec again,
   the health checks resume and the daemon goes on as it was; `version` says what failed.

The new image (`daemon`) reads the image and takes everything over: `Applier.take_over`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable

from procsup import __version__, handover, inherit, spawn
from procsup.apply import Applier
from procsup.control import ControlServer
from procsup.errors import RemoteError, WireError
from procsup.running import Processes

#: The installed `procsupd --check` must answer within this.
CHECK_TIMEOUT = 60.0
#: The engine must be quiet (no reload replacing instances) within this, or the re-exec fails.
SETTLE_TIMEOUT = 60.0
#: Health checks in flight are given this long to end once killed.
CHECKS_GONE = 2.0
#: The request's reply goes out before the exec (the requester then waits for the new image).
_REPLY_GRACE = 0.05
_POLL = 0.02


#: The program as it was started, made absolute now (a daemonized procsupd runs in / later):
#: the console script (/usr/bin/procsupd) is executed again as itself, so that the process
#: keeps its name ("procsupd", what the init script's start-stop-daemon --name and pidof look
#: for); `python -m procsup.daemon` is run again as such.
_SCRIPT = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else ""


def _program() -> tuple[str, list[str]]:
    """(the file to execute, argv) that start this daemon again as it was started."""
    if _SCRIPT and not _SCRIPT.endswith(".py") and os.path.isfile(_SCRIPT) and os.access(
            _SCRIPT, os.X_OK):
        return _SCRIPT, [_SCRIPT, *sys.argv[1:]]
    return sys.executable, list(sys.orig_argv)


class Refused(RemoteError):
    """The re-exec does not happen: why (nothing was changed)."""

    def __init__(self, why: str) -> None:
        super().__init__(WireError.FAILED.value, why)
        self.why = why


class Reexec:
    """Carries out re-exec requests of one daemon, one at a time."""

    def __init__(self, *, applier: Applier, layer: Processes, server: ControlServer,
                 foreground: bool, pidfile_fd: Callable[[], int | None],
                 cgroup: tuple[str, str, bool] | None, profile: str | None,
                 started: float, reexecs: int = 0,
                 argv: list[str] | None = None, executable: str | None = None) -> None:
        self.applier = applier
        self.engine = applier.engine
        self.layer = layer
        self.server = server
        self.foreground = foreground
        self.pidfile_fd = pidfile_fd
        self.cgroup = cgroup  # (base, home, can_enable) of the cgroup tree, if any
        self.profile = profile  # `--env`
        self.started = started  # when the daemon first started (time.time())
        self.reexecs = reexecs  # re-execs of this daemon so far
        program, program_argv = _program()
        self.argv = list(program_argv if argv is None else argv)
        self.executable = program if executable is None else executable
        self.busy = False
        self.last_error: str | None = None  # why the latest re-exec did not happen
        self.log = applier.log

    def info(self) -> dict[str, object]:
        """For `version`: re-execs so far, whether one is under way, why the latest one (of
        this image) did not happen, and when the daemon started (before any re-exec)."""
        return {"reexecs": self.reexecs, "reexec_busy": self.busy,
                "reexec_error": self.last_error, "started": self.started}

    async def check(self) -> str | None:
        """Why the code now installed rejects the config (its own words), or None."""
        # The config the daemon reads, named absolutely: a daemonized procsupd runs in /,
        # and a relative `-c` would name another file there (the last `-c` counts).
        argv = (*self.argv, "-c", self.applier.desired.daemon.config_path, "--check")
        try:
            done = await self.layer.run_daemon_check(tuple(argv), CHECK_TIMEOUT)
        except spawn.SpawnError as exc:
            return f"cannot run {argv[0]}: {exc.reason}"
        if done.timed_out:
            return f"procsupd --check did not finish within {CHECK_TIMEOUT:g} s"
        if done.code == 0:
            return None
        lines = [ln.strip() for ln in done.output.decode("utf-8", "replace").splitlines()
                 if ln.strip() and not ln.startswith("procsupd: warning:")]
        said = lines[-1].removeprefix("procsupd: ") if lines else (
            f"it exited with code {done.code}" if done.code is not None else "it was killed")
        return f"the installed procsupd rejects the config: {said}"

    async def request(self, trigger: str) -> None:
        """Check, then re-exec in the background (after the caller's reply). Refused says
        why not; nothing was changed then."""
        if self.busy:
            raise Refused("a re-exec is already under way")
        if self.applier.shutting_down:
            raise Refused("the daemon is shutting down")
        self.busy = True
        try:
            why = await self.check()
            if why is None and self.applier.shutting_down:
                why = "the daemon is shutting down"
        except BaseException:
            self.busy = False
            raise
        if why is not None:
            self.busy = False
            self.last_error = why
            self.log.error("%s: no re-exec: %s", trigger, why)
            raise Refused(why)
        self.log.info("%s: the config passes the check; re-executing", trigger)
        self.applier.spawn_task(self._go(trigger))

    def request_quietly(self) -> None:
        """SIGUSR2."""
        self.applier.spawn_task(self._quietly())

    async def _quietly(self) -> None:
        try:
            await self.request("SIGUSR2")
        except Refused:
            pass  # logged, and shown by `version`

    async def _go(self, trigger: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(_REPLY_GRACE)
            async with self.applier.lock:
                if self.applier.shutting_down:
                    self.last_error = "the daemon began to shut down"
                    return
                deadline = loop.time() + SETTLE_TIMEOUT
                while (why := self.engine.unsettled()) is not None:
                    if loop.time() > deadline:
                        self.last_error = f"{why} for more than {SETTLE_TIMEOUT:g} s"
                        self.log.error("%s: no re-exec: %s", trigger, self.last_error)
                        return
                    await asyncio.sleep(_POLL)
                self.applier.pause_checks()
                deadline = loop.time() + CHECKS_GONE
                while self.layer.checks_running and loop.time() < deadline:
                    await asyncio.sleep(_POLL)
                self._exec()  # returns only if the exec failed
                self.applier.resume_checks()
        finally:
            self.busy = False

    def _image(self) -> handover.Image:
        applier, layer = self.applier, self.layer
        applied, engine_apps = applier.hand_over()
        desired = applier.desired
        base, home, can_enable = self.cgroup if self.cgroup is not None else (None, None, False)
        return handover.Image(
            foreground=self.foreground, applied=applied, engine_apps=engine_apps,
            config_error=applier.config_error, control_fd=self.server.fileno(),
            notify_fd=layer.notify.fileno() if layer.notify is not None else None,
            pidfile_fd=self.pidfile_fd(), slots=tuple(self.engine.hand_over()),
            listeners=tuple(handover.Listener(k[0], k[1], k[2], k[3], sock.fileno())
                            for k, sock in layer.listeners.held.items()),
            old_version=__version__, began=asyncio.get_running_loop().time(),
            files=desired.files, include=desired.daemon.include,
            sources={n: (a.source, a.line) for n, a in self.engine.specs().items()},
            cgroup_base=base, cgroup_home=home, cgroup_can_enable=can_enable,
            reexecs=self.reexecs + 1, config_path=desired.daemon.config_path,
            profile=self.profile, state_dir=desired.daemon.state_dir,
            restart_daemon=applier.restart_daemon, nofile=inherit.original_nofile(),
            started=self.started)

    def _exec(self) -> None:
        """The hand-over and the exec; back here only if the exec failed."""
        self.layer.before_handover()
        image = self._image()
        fds = _fds(image)
        try:
            for fd in fds:
                os.set_inheritable(fd, True)
            image_fd = handover.write(image)
        except OSError as exc:
            self._undo(fds, f"cannot write the hand-over: {exc}")
            return
        env = {**os.environ, handover.ENV: str(image_fd)}
        self.log.info("re-executing %s (%d instances, %d fds handed over)",
                      " ".join(self.argv), len(image.slots), len(fds))
        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            os.execve(self.executable, self.argv, env)  # noqa: S606 (the same daemon, re-run)
        except OSError as exc:
            os.close(image_fd)
            self._undo(fds, f"cannot execute {self.executable}: {exc.strerror or exc}")

    def _undo(self, fds: list[int], why: str) -> None:
        for fd in fds:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
        self.last_error = why
        self.log.error("no re-exec: %s; the daemon goes on as it was", why)


def _fds(image: handover.Image) -> list[int]:
    """Every fd `image` names."""
    fds = [image.control_fd]
    fds += [fd for fd in (image.notify_fd, image.pidfile_fd) if fd is not None]
    fds += [x.fd for x in image.listeners]
    for slot in image.slots:
        if (run := slot.run) is not None:
            fds += [fd for fd in (run.pidfd, run.main_fd) if fd is not None]
            fds += [s.fd for s in run.streams]
    return fds
