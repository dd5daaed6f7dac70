"""`procsupd`: arguments, `--check`, daemonizing, and the serve loop (layer 4).

Daemon mode follows python-daemon's rules, in this order: validate the config in the
foreground; open a readiness pipe and fork; the parent waits on the pipe and exits 0 or 1 with
the daemon's message; the child enters `DaemonContext` (which detaches again, closes every other
fd and takes the flock'd pidfile) and only then creates the event loop, signal handlers and
sockets. So `procsupd` returns exactly when the control socket serves, or fails with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import grp
import logging
import logging.handlers
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable, Sequence

from procsup import (
    __version__,
    cgroups,
    config,
    handover,
    inherit,
    logtargets,
    paths,
    pidfile,
    spawn,
    statefile,
    systemd,
)
from procsup.apply import Applier
from procsup.commands import Commands
from procsup.control import ControlServer
from procsup.errors import ConfigError, ExitCode, ProcsupError
from procsup.model import STDIO, AppSpec, Desired
from procsup.reexec import Reexec
from procsup.running import Processes, Report
from procsup.supervisor import Supervisor

#: Open-files limit we try to reach so that 1000 instances (2 pipes, a pidfd and up to 2 log
#: files each) fit with room to spare.
WANT_NOFILE = 16384
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="procsupd", description="procsup daemon: runs the apps of a TOML config"
    )
    p.add_argument(
        "-c",
        "--config",
        help="config file (default: $PROCSUP_CONFIG, else the per-user or system default)",
    )
    p.add_argument(
        "-n",
        "--foreground",
        action="store_true",
        help="stay in the foreground and log to stderr (systemd Type=notify, containers)",
    )
    p.add_argument("--env", metavar="PROFILE", help="active env profile (overrides [procsup] env)")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print the apps it would run, and exit",
    )
    p.add_argument("--version", action="version", version=f"procsupd {__version__}")
    return p.parse_args(argv)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANT_NOFILE if hard == resource.RLIM_INFINITY else min(WANT_NOFILE, hard)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def attribute_warnings(desired: Desired) -> list[str]:
    """`limits`, `nice` or `oom_score_adjust` that this procsupd (its user, its hard limits)
    cannot give: a valid config (as root it may be fine), but those instances would not start."""
    out: list[str] = []
    for name, spec in desired.apps.items():
        where = f"{spec.source}:{spec.line}: " if spec.line else (
            f"{spec.source}: " if spec.source else "")
        out.extend(f"{where}app {name!r}: {problem}: its instances will not start (errored)"
                   for problem in spawn.problems(spec))
    return out


def prepare_dirs(desired: Desired) -> None:
    d = desired.daemon
    for key, path, mode in (("log_dir", d.log_dir, 0o755), ("state_dir", d.state_dir, 0o700)):
        try:
            os.makedirs(path, mode, exist_ok=True)
        except OSError as exc:
            raise ProcsupError(
                f"[procsup] {key}: cannot create {path}: {exc.strerror or exc}") from None


def cgroup_warnings(desired: Desired) -> list[str]:
    """cgroups (issue 13): the apps' cgroup keys that will have no effect here (cgroups off,
    none to be had, a controller the hierarchy does not offer). With `[procsup] cgroups =
    true` and no cgroups to be had, ProcsupError says why. Reads /proc and the cgroup tree
    only when something asks for cgroups."""
    setting = desired.daemon.cgroups
    wanted = any(getattr(spec, key) is not None
                 for spec in desired.apps.values() for key in cgroups.KEY_CONTROLLER)
    if setting is False or not (wanted or setting is True):
        return cgroups.app_warnings(desired.apps, cgroups.Support(None), setting)
    support = cgroups.probe()
    if setting is True and support.reason is not None:
        raise ProcsupError(f"[procsup] cgroups = true, but {support.reason}")
    return cgroups.app_warnings(desired.apps, support, setting)


def open_cgroups(desired: Desired, logger: logging.Logger) -> cgroups.Tree | None:
    """cgroups (issue 13): the daemon's base cgroup per `[procsup] cgroups`, or None (process
    groups only; the reason logged). With `cgroups = true` and none to be had, ProcsupError."""
    setting = desired.daemon.cgroups
    if setting is False:
        return None
    try:
        tree = cgroups.open_tree(statefile.daemon_marker(desired.daemon.state_dir))
    except cgroups.CgroupError as exc:
        if setting is True:
            raise ProcsupError(f"[procsup] cgroups = true, but {exc.reason}") from None
        logger.info("instances run without cgroups: %s", exc.reason)
        return None
    logger.info("each instance runs in a cgroup of its own under %s", tree.base)
    return tree


def check_runtime_dirs(desired: Desired) -> None:
    """Create the directories of the control socket and the pidfile (0755) and refuse to use
    one that someone else could tamper with: owned by another user than us or root, or writable
    by group or others without the sticky bit (as `/tmp` has). The per-user fallback
    `/tmp/procsup-<uid>` is only a name: another local user may have made it first, and could
    then swap the socket or the pidfile."""
    d = desired.daemon
    me = os.geteuid()
    for key, path in (("socket", d.socket), ("pidfile", d.pidfile)):
        parent = os.path.dirname(path) or "."
        try:
            os.makedirs(parent, 0o755, exist_ok=True)
            st = os.stat(parent)
        except OSError as exc:
            raise ProcsupError(
                f"[procsup] {key}: cannot create {parent}: {exc.strerror or exc}") from None
        if st.st_uid not in (me, 0):
            raise ProcsupError(
                f"[procsup] {key}: {parent} belongs to uid {st.st_uid}, not to you (uid {me}) "
                "or root; remove it, or set XDG_RUNTIME_DIR or the key to a directory of yours")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ProcsupError(
                f"[procsup] {key}: {parent} is writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could replace the {key}; "
                f"chmod go-w {parent}, or use another directory")


def socket_gid(desired: Desired) -> int | None:
    name = desired.daemon.socket_group
    if name is None:
        return None
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        raise ProcsupError(f"[procsup] socket_group: unknown group {name!r}") from None


def setup_logging(desired: Desired, foreground: bool) -> logging.Logger:
    """The daemon's log: stderr with -n, else <log_dir>/procsupd.log. Installed on the root
    logger so that every module's messages (and asyncio's) land there too: after DaemonContext
    stderr is /dev/null, and a diagnostic that goes nowhere is how things die silently. With -n
    and stderr going to the journal (under systemd), each line carries the sd-daemon priority
    prefix (`<3>` error ... `<7>` debug) and no date: the journal stamps it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if foreground:
        handler = logtargets.DaemonLogHandler()  # (routed through the apps' outlet: serve)
    else:
        handler = logging.handlers.WatchedFileHandler(desired.daemon.daemon_log)
    if foreground and systemd.stderr_to_journal():
        handler.setFormatter(systemd.PriorityFormatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logging.getLogger("procsupd")


def stdio_warnings(desired: Desired) -> list[str]:
    """Apps that log to procsupd's stdout/stderr ("-"), which a daemonized procsupd points at
    /dev/null: their output would be lost (it is discarded; run `procsupd -n` for that)."""
    return [f'{app.source}: app {name!r}: {key} = "-" writes to procsupd\'s {stream}, which is '
            "/dev/null unless procsupd runs in the foreground (-n): that output is discarded"
            for name, app in desired.apps.items()
            for key, stream in (("out_file", "stdout"), ("error_file", "stderr"))
            if getattr(app, key) == STDIO]


def read_disabled(state_dir: str) -> frozenset[str]:
    """The apps `procsup disable` recorded in state_dir. A record that cannot be read is a
    start-up failure, with the reason: guessing would start apps someone disabled."""
    try:
        return statefile.read_disabled(state_dir)
    except (OSError, ValueError) as exc:
        raise ProcsupError(
            f"cannot read the disabled apps: {exc}; fix or remove the file "
            f"(removing it enables every app)") from None


def reopen_cgroups(image: handover.Image, logger: logging.Logger) -> cgroups.Tree | None:
    """After a re-exec: the cgroup tree the previous image used, if it used one."""
    if image.cgroup_base is None or image.cgroup_home is None:
        return None
    try:
        return cgroups.reopen(image.cgroup_base, image.cgroup_home, image.cgroup_can_enable)
    except cgroups.CgroupError as exc:
        logger.error("%s: instances started from now on run without cgroups", exc.reason)
        return None


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What a re-exec hands the new image (besides the config): `handover.Image`, and the
    engine's definitions when a `scale` made them differ from the applied config."""

    image: handover.Image
    engine_apps: dict[str, AppSpec] | None


async def serve(
    desired: Desired, logger: logging.Logger, on_ready: ReadyCallback, profile: str | None,
    *, pidfile_fd: Callable[[], int | None] = lambda: None, resumed: Resumed | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT or `procsup shutdown`, then stop every app; the exit code.
    `resumed`: this image follows a re-exec, and takes over what the previous one ran."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda _loop, ctx: logger.error(
            "unexpected error: %s", ctx.get("message"), exc_info=ctx.get("exception")
        )
    )
    image = resumed.image if resumed is not None else None
    state_dir = desired.daemon.state_dir
    disabled = read_disabled(state_dir)  # before the first apply: no disabled app starts
    tree = open_cgroups(desired, logger) if image is None else reopen_cgroups(image, logger)
    processes = _Layer(loop, logger, state_dir, tree)
    engine = Supervisor(loop=loop, logger=logger, processes=processes.bind)
    layer = processes.layer
    own_log = [h for h in logging.getLogger().handlers
               if isinstance(h, logtargets.DaemonLogHandler)]
    for h in own_log:  # a stalled reader of stderr must not stall the loop through our log
        h.route(layer.targets)
    applier = Applier(engine, desired, profile_override=profile, disabled=disabled,
                      check_command=layer.run_check)
    if disabled:
        logger.info("disabled (procsup enable starts them): %s", ", ".join(sorted(disabled)))

    async def prepare() -> None:
        await layer.recover(desired.apps)
        layer.start_notify(desired.daemon.socket + ".notify")

    commands = Commands(engine, applier, follow=layer.follow, cgroups=layer.cgroups is not None,
                        cgroup_memory=layer.cgroup_memory if layer.cgroups is not None else None)
    server = ControlServer(
        desired.daemon.socket,
        commands,
        mode=desired.daemon.socket_mode,
        group_gid=socket_gid(desired),
        logger=logger,
    )
    reexec = Reexec(
        applier=applier, layer=layer, server=server, foreground=on_ready.foreground,
        pidfile_fd=pidfile_fd,
        cgroup=(tree.base, tree.home, tree.can_enable) if tree is not None else None,
        profile=profile, started=image.started if image is not None else time.time(),
        reexecs=image.reexecs if image is not None else 0)
    commands.reexec = reexec
    if image is None:
        await server.start()
    else:
        server.adopt(image.control_fd)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP]
    try:
        loop.add_signal_handler(signal.SIGTERM, applier.request_shutdown)
        loop.add_signal_handler(signal.SIGINT, applier.request_shutdown)
        loop.add_signal_handler(signal.SIGUSR1, layer.reopen_logs)
        loop.add_signal_handler(signal.SIGUSR2, reexec.request_quietly)
        loop.add_signal_handler(signal.SIGHUP, applier.request_reload)
        # Orphans of the apps are ours to reap and to stop: as a container's init, or as the
        # child subreaper everywhere else (CONTRACT §3 Processes).
        if os.getpid() != 1 and not spawn.become_subreaper():
            logger.warning("cannot become a child subreaper (prctl refused): processes that "
                           "apps leave outside their process group are re-parented to init")
        loop.add_signal_handler(signal.SIGCHLD, layer.reap_orphans)
        signals.append(signal.SIGCHLD)
        if resumed is not None:
            take_over(applier, layer, resumed)
            logger.info(
                "procsupd %s re-executed from %s (pid %d, %d apps, %d instances taken over "
                "in %.0f ms)", __version__, resumed.image.old_version, os.getpid(),
                len(desired.apps), len(resumed.image.slots),
                (loop.time() - resumed.image.began) * 1000)
            on_ready(None)
        else:
            await applier.start(prepare)
        if resumed is None and engine.shutting_down:
            on_ready("stopped by a signal or `procsup shutdown` during start-up")
        elif resumed is None:
            logger.info(
                "procsupd %s serving %s (pid %d, %d apps)",
                __version__, desired.daemon.socket, os.getpid(), len(desired.apps),
            )
            on_ready(None)
        await applier.wait_exit()
    except BaseException:
        # Whatever went wrong, the apps must not outlive the daemon unrecorded.
        logger.exception("procsupd failed; stopping every app")
        applier.request_shutdown()
        await applier.wait_exit()
        raise
    finally:
        await server.close()
        applier.close()
        for h in own_log:
            h.route(None)
        layer.close()
        for sig in signals:
            loop.remove_signal_handler(sig)
    logger.info("procsupd exiting")
    return 0


def take_over(applier: Applier, layer: Processes, resumed: Resumed) -> None:
    """After a re-exec: the notify and listening sockets, then every instance with its run,
    as the previous image left them; the config's state as it was (applied, or the error)."""
    image = resumed.image
    layer.adopted(image.notify_fd, image.listeners)
    applier.config_error = image.config_error
    applier.restart_daemon = image.restart_daemon
    applier.take_over(resumed.engine_apps, image.slots)


class _Layer:
    """The process layer, made when the engine hands it its report callback (`bind`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logger: logging.Logger,
                 state_dir: str, cgroup_tree: cgroups.Tree | None = None) -> None:
        self.loop, self.logger, self.state_dir = loop, logger, state_dir
        self.cgroup_tree = cgroup_tree
        self._layer: Processes | None = None

    def bind(self, report: Report) -> Processes:
        self._layer = Processes(
            self.loop, self.logger, report, environ=dict(os.environ),
            marker=statefile.daemon_marker(self.state_dir), state_dir=self.state_dir,
            cgroup_tree=self.cgroup_tree)
        return self._layer

    @property
    def layer(self) -> Processes:
        assert self._layer is not None
        return self._layer


class ReadyCallback:
    """Reports start-up success or failure once: to systemd (-n) or to the waiting parent."""

    def __init__(self, fd: int | None, foreground: bool) -> None:
        self.fd = fd
        self.foreground = foreground
        self.done = False

    def __call__(self, error: str | None) -> None:
        if self.done:
            return
        self.done = True
        if self.fd is not None:
            msg = b"ok\n" if error is None else f"error: {error}\n".encode()
            try:
                os.write(self.fd, msg)
            except OSError as exc:  # the waiting parent is gone (Ctrl-C): serve anyway
                logging.getLogger("procsupd").warning("start-up report not delivered: %s", exc)
            finally:
                os.close(self.fd)
                self.fd = None
        elif error is None and self.foreground:
            systemd.ready()


def run(
    desired: Desired,
    *,
    foreground: bool,
    ready: ReadyCallback,
    lock: pidfile.PidFile | None,
    profile: str | None = None,
    held: pidfile.PidFile | None = None,
    resumed: Resumed | None = None,
) -> int:
    """Everything after the process is what it will stay (foreground, or daemonized). `lock`
    is acquired here (unless `resumed`: the previous image holds it for us) and released at
    the end; `held` is a pidfile someone else holds (DaemonContext)."""
    try:
        # The instances' default: what we were started with (before a re-exec: what the
        # first image was started with).
        inherit.remember_limits(resumed.image.nofile if resumed is not None else None)
        raise_nofile()
        prepare_dirs(desired)
        logger = setup_logging(desired, foreground)
    except (OSError, ProcsupError) as exc:
        ready(f"cannot prepare directories or the log: {exc}")
        say(f"procsupd: {exc}", journal=foreground and systemd.stderr_to_journal())
        return ExitCode.FAILED
    holder = lock if lock is not None else held
    try:
        if lock is not None and resumed is None:
            lock.acquire()
        try:
            return asyncio.run(serve(
                desired, logger, ready, profile, resumed=resumed,
                pidfile_fd=lambda: holder.fileno() if holder is not None else None))
        finally:
            if lock is not None:
                lock.release()
    except ProcsupError as exc:
        logger.error("%s", exc)
        ready(str(exc))
        return ExitCode.FAILED
    except Exception as exc:  # the boundary: report whatever stopped the daemon
        logger.exception("cannot start")
        ready(f"cannot start: {exc}")
        return ExitCode.FAILED


def daemonize(desired: Desired, profile: str | None) -> int:
    """Fork; the parent returns the daemon's verdict, the child becomes the daemon."""
    import daemon as python_daemon  # python-daemon

    holder = pidfile.PidFile(desired.daemon.pidfile).is_locked()
    if holder is not None:
        print(
            f"procsupd: already running (pid {holder}, pidfile {desired.daemon.pidfile})",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        answer = b"".join(chunks).decode(errors="replace").strip()
        if answer == "ok":
            return ExitCode.OK
        reason = answer.removeprefix("error: ") or (
            f"the daemon exited during start-up; see {desired.daemon.daemon_log}"
        )
        print(f"procsupd: {reason}", file=sys.stderr)
        return ExitCode.FAILED
    os.close(r)
    ready = ReadyCallback(w, foreground=False)
    try:
        os.makedirs(os.path.dirname(desired.daemon.pidfile), 0o755, exist_ok=True)
        held = pidfile.PidFile(desired.daemon.pidfile)
        ctx = python_daemon.DaemonContext(
            files_preserve=[w],
            umask=0o022,
            working_directory="/",
            pidfile=held,
            detach_process=True,
            signal_map={},
            prevent_core=False,
        )
        ctx.open()
    except Exception as exc:  # the boundary: whatever stops the start is the reason shown
        ready(str(exc))
        os._exit(1)
    code = run(desired, foreground=False, ready=ready, lock=None, profile=profile, held=held)
    ctx.close()
    os._exit(code)


def say(text: str, priority: int = systemd.ERR, *, journal: bool = False) -> None:
    """A line for stderr before the daemon's log exists (why it does not start, a warning).
    `journal`: stderr is the journal (-n under systemd), so the line carries its sd-daemon
    priority prefix, as the log's lines do: `journalctl -u procsup -p err` shows why a start
    failed, where an unprefixed line would be info."""
    print(systemd.prefixed(text, priority) if journal else text, file=sys.stderr)


def _from_dump(text: str, image: handover.Image, name: str) -> Desired:
    """The config the previous image had applied (its `dump` text), as `config.load` reads
    it, with what `dump` leaves out put back: the files and includes it came from, where each
    app was defined, the profile."""
    path = os.path.join(image.state_dir, f".reexec-{name}-{os.getpid()}.toml")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        loaded = config.load(path, require_root_owned=os.geteuid() == 0)
    finally:
        os.unlink(path)
    apps = {}
    for n, app in loaded.apps.items():
        source, line = image.sources.get(n, (None, None))
        apps[n] = dataclasses.replace(app, source=source, line=line)
    return dataclasses.replace(
        loaded, apps=apps, files=image.files, profile=image.profile, warnings=(),
        daemon=dataclasses.replace(loaded.daemon, config_path=image.config_path,
                                   include=image.include))


def resume(fd_text: str) -> int:
    """This process was re-executed (`reexec`): take over from the image in fd `fd_text`.
    No config check (the previous image ran it with this code) and no daemonizing (the
    process already is what it was)."""
    try:
        image = handover.read(int(fd_text))
    except (ValueError, handover.HandoverError) as exc:
        say(f"procsupd: cannot take over after a re-exec (fd {fd_text}): {exc}")
        return ExitCode.FAILED
    try:
        desired = _from_dump(image.applied, image, "applied")
        engine_apps = (dict(_from_dump(image.engine_apps, image, "engine").apps)
                       if image.engine_apps is not None else None)
    except (ConfigError, OSError) as exc:
        say(f"procsupd: cannot read the applied config after a re-exec: {exc}")
        return ExitCode.FAILED
    lock = (pidfile.PidFile.adopt(desired.daemon.pidfile, image.pidfile_fd)
            if image.pidfile_fd is not None else None)
    return run(desired, foreground=image.foreground,
               ready=ReadyCallback(None, foreground=image.foreground), lock=lock,
               profile=image.profile, resumed=Resumed(image, engine_apps))


def main(argv: Sequence[str] | None = None) -> int:
    fd_text = os.environ.pop(handover.ENV, None)
    args = parse_args(argv)
    if fd_text is not None and not args.check:
        return resume(fd_text)
    journal = args.foreground and not args.check and systemd.stderr_to_journal()
    path = args.config or paths.default_config_path()
    try:
        # As root, refuse config files that anyone but root could have written (contract §3).
        desired = config.load(path, profile=args.env, require_root_owned=os.geteuid() == 0)
    except ConfigError as exc:
        say(f"procsupd: invalid config: {exc}", journal=journal)
        return ExitCode.FAILED if args.check else ExitCode.CONFIG
    except OSError as exc:
        say(f"procsupd: cannot read config: {exc}", journal=journal)
        return ExitCode.FAILED if args.check else ExitCode.CONFIG
    for warning in (*desired.warnings, *attribute_warnings(desired),
                    *([] if args.foreground else stdio_warnings(desired))):
        say(f"procsupd: warning: {warning}", systemd.WARNING, journal=journal)
    try:
        for warning in cgroup_warnings(desired):
            say(f"procsupd: warning: {warning}", systemd.WARNING, journal=journal)
    except ProcsupError as exc:
        say(f"procsupd: {exc}", journal=journal)
        return ExitCode.FAILED
    if args.check:
        print(config.describe(desired), end="")  # its text ends with the newline
        return ExitCode.OK
    try:
        check_runtime_dirs(desired)
    except ProcsupError as exc:
        say(f"procsupd: {exc}", journal=journal)
        return ExitCode.FAILED
    if args.foreground:
        return run(
            desired,
            foreground=True,
            ready=ReadyCallback(None, foreground=True),
            lock=pidfile.PidFile(desired.daemon.pidfile),
            profile=args.env,
        )
    return daemonize(desired, args.env)


if __name__ == "__main__":
    sys.exit(main())
