"""Start and signal instance process groups (layer 2: the only module that creates processes).

No Python runs between fork and exec: everything the child needs (new session, uid, gid,
supplementary groups, umask, cwd, fds) is done by `subprocess.Popen`'s C code. Its rlimits,
nice and OOM score (`limits.plan`) come by inheritance: procsupd holds its own open-files limit
at the instance's for the duration of the fork, or, where that cannot be done, a helper that
sets them on itself and execs the program (`prlimit`, `nice`, `choom`) is put before argv;
what a child forked now would inherit is read by `inherit`. Exit is observed through a pidfd
(Linux >= 5.3) that the caller registers on its event loop, so there is no watcher thread per
child and no SIGCHLD handler; an idle daemon makes no wakeups. Short commands with a time
limit (health checks) are run to their end by `run_bounded`, on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import grp
import os
import pwd
import resource
import shutil
import signal
import subprocess
from collections.abc import Container, Mapping, Sequence

from procsup import inherit, limits, procfs
from procsup.errors import ProcsupError
from procsup.model import AppSpec

#: Variables kept from the daemon's environment when `inherit_env = false`.
MINIMAL_ENV = ("PATH", "LANG", "HOME", "USER", "LOGNAME")
#: procsupd's own service-manager variables: an instance must never speak for the daemon.
PRIVATE_ENV = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "INVOCATION_ID",
)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Of a bounded command's output (stdout and stderr), this many last bytes are kept.
OUTPUT_TAIL = 4096
#: A bounded command killed at its time limit is waited for this long more; then it is left
#: to be reaped in the background (a process in uninterruptible sleep dies when it wakes).
_KILLED_WAIT = 1.0
#: Poll interval of an exit where pidfds are unavailable, and of a background reap.
_POLL = 0.05


#: Errors of a resource that comes back by itself (a process or open-files limit, memory, a
#: binary being written): a start that fails with one is retried, never final.
TRANSIENT_ERRNOS = frozenset({
    errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ETXTBSY,
})


class SpawnError(ProcsupError):
    """The instance cannot be started. `reason` is what `status` shows. `transient`: for want
    of a resource that may come back (see TRANSIENT_ERRNOS), so the start is worth retrying;
    otherwise the command cannot be executed as configured."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def resource_text(exc: OSError, *, user: str | None = None) -> str:
    """What ran out, for an OSError with an errno of TRANSIENT_ERRNOS: the resource, and whose
    limit it is likely to be, rather than the program it was for."""
    code = exc.errno
    if code == errno.EAGAIN:
        who = user if user is not None else _own_user()
        return f"resource temporarily unavailable (RLIMIT_NPROC of user {who}?)"
    if code == errno.EMFILE:
        soft = _nofile_limit()
        return f"too many open files in procsupd (its RLIMIT_NOFILE is {soft})"
    if code == errno.ENFILE:
        return "too many open files in the system (fs.file-max)"
    if code == errno.ENOMEM:
        return "out of memory"
    if code == errno.ETXTBSY:
        return "the executable is being written (text file busy)"
    return exc.strerror or str(exc)


def _own_user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _nofile_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the child runs as: resolved from names when the instance starts (not at config load,
    so a user created after the config was written works)."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    name: str | None = None
    home: str | None = None

    @classmethod
    def resolve(cls, user: str | None, group: str | None) -> Identity:
        """Look the names up; a user gets its primary group and its supplementary groups unless
        `group` names another primary group. Raises SpawnError naming what is unknown."""
        if user is None and group is None:
            return cls()
        uid = gid = None
        groups: tuple[int, ...] | None = None
        name = home = None
        if user is not None:
            try:
                pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            except (KeyError, ValueError):
                raise SpawnError(f"unknown user: {user}") from None
            uid, gid, name, home = pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir
        if group is not None:
            try:
                gid = (
                    grp.getgrgid(int(group)).gr_gid
                    if group.isdigit()
                    else grp.getgrnam(group).gr_gid
                )
            except (KeyError, ValueError):
                raise SpawnError(f"unknown group: {group}") from None
        if name is not None and gid is not None:
            groups = tuple(sorted(set(os.getgrouplist(name, gid))))
        elif gid is not None:
            groups = (gid,)
        me = os.geteuid()
        if me != 0 and (
            (uid is not None and uid != me) or (gid is not None and gid != os.getegid())
        ):
            who = " and ".join(
                f"{kind} {name}" for kind, name in (("user", user), ("group", group)) if name
            )
            raise SpawnError(f"cannot run as {who}: procsupd is not running as root")
        if me != 0:  # running as ourselves: nothing to switch
            return cls(name=name, home=home)
        return cls(uid=uid, gid=gid, groups=groups, name=name, home=home)


#: No attribute of its own: procsupd's original limits, its nice and OOM score.
_DEFAULT_ATTRIBUTES = limits.Wanted()
_NOTHING = limits.Plan()


@dataclasses.dataclass(frozen=True)
class Launch:
    """Everything needed to start one instance."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    identity: Identity = Identity()
    umask: int | None = None
    stdout: int | None = None  # fd to dup onto 1; None = /dev/null
    stderr: int | None = None  # fd to dup onto 2; None = /dev/null
    pass_fds: tuple[int, ...] = ()
    attributes: limits.Wanted = _DEFAULT_ATTRIBUTES  # procsupd's original limits


def wanted(spec: AppSpec) -> limits.Wanted:
    """The spawn-time attributes an app asks for (`limits`, `nice`, `oom_score_adjust`)."""
    return limits.Wanted.of(spec.limits, spec.nice, spec.oom_score_adjust)


#: Where the helpers are looked for besides procsupd's PATH.
_HELPER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_HELPER_PACKAGES = {"prlimit": "util-linux", "nice": "coreutils", "choom": "util-linux"}
_helpers: dict[str, str] = {}  # helper -> the path it was found at


def _helper(name: str) -> str | None:
    path = _helpers.get(name)
    if path is not None and os.access(path, os.X_OK):
        return path
    search = os.pathsep.join(p for p in (os.environ.get("PATH"), _HELPER_PATH) if p)
    found = shutil.which(name, path=search)
    if found is not None:
        _helpers[name] = found
    return found


def problems(spec: AppSpec) -> list[str]:
    """What procsupd, as it runs now, cannot give the app's instances (`limits.problems`):
    for `procsupd --check` and start-up warnings; a start fails with the same words."""
    want = wanted(spec)
    return limits.problems(want, inherit.inherited(want))


def plan(launch: Launch) -> limits.Plan:
    """How `launch` gets its attributes (see limits.plan); raises SpawnError when procsupd
    cannot give them (`limits.problems`)."""
    want = launch.attributes
    # The common case, cheaply: nothing to do unless procsupd raised its open-files limit.
    default = want is _DEFAULT_ATTRIBUTES or want == _DEFAULT_ATTRIBUTES
    if default and not inherit.nofile_raised():
        return _NOTHING
    have = inherit.inherited(want)
    trouble = limits.problems(want, have)
    if trouble:
        raise SpawnError("; ".join(trouble))
    return limits.plan(want, have, inherit.room_below)


def _argv(launch: Launch, plan: limits.Plan) -> tuple[str, ...]:
    """The argv to exec: the command, behind the helpers the plan needs."""
    if not plan.helpers:
        return launch.argv
    paths: dict[str, str] = {}
    for name in plan.helpers:
        found = _helper(name)
        if found is None:
            keys = {"prlimit": ", ".join(f"limits.{n}" for n, _s, _h in plan.prlimit),
                    "nice": "nice", "choom": "oom_score_adjust"}[name]
            raise SpawnError(f"cannot set {keys}: {name} ({_HELPER_PACKAGES[name]}) is not "
                             "installed")
        paths[name] = found
    # The last helper execs the program: a missing one would only show as its exit 127.
    exe = launch.argv[0]
    if "/" in exe:
        found_exe = os.access(os.path.join(launch.cwd or os.getcwd(), exe), os.X_OK)
    else:
        found_exe = shutil.which(exe, path=launch.env.get("PATH", os.defpath)) is not None
    if not found_exe:
        raise SpawnError(f"executable not found: {exe}")
    return limits.helper_argv(plan, launch.argv, paths)


def build_env(
    base: Mapping[str, str],
    *,
    inherit: bool,
    app_env: Mapping[str, str],
    identity: Identity,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The child's environment: inherited (all, or the minimal set), then the app's env, then
    procsup's own variables. HOME/USER/LOGNAME follow `user` when one is set, as systemd does."""
    env = dict(base) if inherit else {k: base[k] for k in MINIMAL_ENV if k in base}
    for key in PRIVATE_ENV:
        env.pop(key, None)
    env.setdefault("PATH", _DEFAULT_PATH)
    if identity.name is not None:
        env["USER"] = env["LOGNAME"] = identity.name
        if identity.home:
            env["HOME"] = identity.home
    env.update(app_env)
    env.update(extra)
    return env


def _explain(exc: OSError, launch: Launch) -> SpawnError:
    """Turn Popen's fork/exec/chdir failure into the reason shown in `status`."""
    exe = launch.argv[0]
    if exc.errno in TRANSIENT_ERRNOS:
        # Popen names the executable when execve failed, nothing when fork (or the child's
        # setuid/setgroups before exec) did; either way the resource is to blame, not the file.
        # execve's EAGAIN is the new user's RLIMIT_NPROC (Linux checks it after setuid);
        # fork's is the daemon's own user's.
        user = None
        if exc.filename == exe:
            what, user = f"cannot execute {exe}", launch.identity.name
        elif exc.errno in (errno.EAGAIN, errno.ENOMEM):
            what = "fork failed"
        else:
            what = f"cannot start {exe}"  # EMFILE/ENFILE: Popen's own pipe
        return SpawnError(f"{what}: {resource_text(exc, user=user)}", transient=True)
    return SpawnError(_explain_final(exc, launch))


def _explain_final(exc: OSError, launch: Launch) -> str:
    exe = launch.argv[0]
    if launch.cwd is not None and exc.filename == launch.cwd:
        if exc.errno == errno.ENOENT:
            return f"cwd not found: {launch.cwd}"
        if exc.errno == errno.ENOTDIR:
            return f"cwd is not a directory: {launch.cwd}"
        return f"cannot enter cwd {launch.cwd}: {exc.strerror}"
    if exc.errno == errno.ENOENT:
        return f"executable not found: {exe}"
    if exc.errno == errno.EACCES:
        if "/" not in exe and shutil.which(exe, path=launch.env.get("PATH", os.defpath)) is None:
            # execvp reports EACCES when a PATH directory could not be searched, even though
            # the program is in none of them: it is missing, which is what the user must hear.
            return (f"executable not found: {exe} (and some directories of PATH could not be "
                    "searched)")
        return f"permission denied: {exe}"
    if exc.errno == errno.ENOEXEC:
        return f"not an executable format: {exe}"
    return f"cannot execute {exe}: {exc.strerror or exc}"


def start(launch: Launch) -> subprocess.Popen[bytes]:
    """Start the instance in a new session (so its own process group, pgid == pid).

    Its limits, nice and OOM score are set as `plan` says: procsupd's own open-files limit held
    at the instance's while it forks, or helpers before the command. Call it from one thread
    (the loop's). Raises SpawnError when the command cannot be executed at all. The caller
    owns the returned Popen and must reap it (see `reap`)."""
    ident = launch.identity
    how = plan(launch)
    argv = _argv(launch, how)
    restore: tuple[int, int] | None = None
    if how.nofile is not None:
        restore = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, how.nofile)
        except (OSError, ValueError) as exc:
            raise SpawnError(f"cannot set limits.nofile {limits.text(how.nofile[0])}:"
                             f"{limits.text(how.nofile[1])}: {exc}") from None
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=launch.stdout if launch.stdout is not None else subprocess.DEVNULL,
            stderr=launch.stderr if launch.stderr is not None else subprocess.DEVNULL,
            cwd=launch.cwd,
            env=dict(launch.env),
            start_new_session=True,
            close_fds=True,
            pass_fds=launch.pass_fds,
            restore_signals=True,
            user=ident.uid,
            group=ident.gid,
            extra_groups=list(ident.groups) if ident.groups is not None else None,
            umask=launch.umask if launch.umask is not None else -1,
        )
    except SpawnError:
        raise
    except OSError as exc:
        raise _explain(exc, launch) from None
    except (ValueError, subprocess.SubprocessError) as exc:
        raise SpawnError(f"cannot start {launch.argv[0]}: {exc}") from None
    finally:
        if restore is not None:
            # The plan holds the limit only where it can be put back (soft within the same
            # hard limit, or root), so this does not fail.
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, restore)


def pidfd(pid: int) -> int | None:
    """A pidfd that becomes readable when `pid` exits (non-blocking, close-on-exec), or None
    where pidfds are not available (kernel < 5.3, a seccomp filter): then poll `exit_status`."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


ExitStatus = tuple[int | None, int | None]  # (code, None) | (None, signal) | (None, None)


def exit_status(pid: int, fd: int | None) -> ExitStatus | None:
    """The exit status of our child `pid` once it has ended, without reaping it (None while it
    runs); `reap` collects it. Reaping the leader at once is safe for the group: the kernel
    does not hand out a pid number while any process still uses it as its process-group id,
    so `pgid` keeps naming this group for as long as a member of it lives."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    try:
        info = os.waitid(os.P_PIDFD, fd, flags) if fd is not None else os.waitid(
            os.P_PID, pid, flags)
    except ChildProcessError:
        return None, None  # reaped elsewhere: the status is unknown
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status, None
    return None, info.si_status  # CLD_KILLED / CLD_DUMPED


@dataclasses.dataclass(eq=False)
class Child:
    """A child this image of procsupd did not start (a re-exec took it over): what `reap` and
    the process layer read of a Popen."""

    pid: int
    returncode: int | None = None


def reap(proc: subprocess.Popen[bytes] | Child, status: ExitStatus) -> None:
    """Collect the zombie of an ended child (after `exit_status` said it ended)."""
    try:
        os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        pass
    code, sig = status
    proc.returncode = code if code is not None else (-sig if sig is not None else -1)


#: prctl(2) option that makes the caller the reaper of its orphaned descendants.
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make procsupd a child subreaper (Linux >= 3.4): a process that an instance leaves
    behind (a double fork, a daemonizing program) is re-parented to procsupd instead of init,
    so it stays in view, is reaped by us and can be stopped with its instance. Whether it
    worked (a seccomp filter may refuse prctl)."""
    import ctypes  # only here: one call at start-up

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_children(keep: Container[int]) -> list[int]:
    """Reap every ended child of procsupd that is not in `keep` (the pids whose status the
    caller still needs: instance leaders, health checks): orphans re-parented to procsupd as
    subreaper (or as PID 1). Returns the pids reaped."""
    reaped: list[int] = []
    for pid in procfs.children():
        if pid in keep:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(pid)
    return reaped


def kill_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the whole process group. False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # members we may not signal (setuid): they exist
    return True


def signal_pid(pid: int, sig: int) -> bool:
    """Send `sig` to one process (a leader whose exit was not yet reaped); whether it was."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (zombies included)."""
    return kill_group(pgid, 0)


def signal_pids(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    """Signal individual processes (used for leftovers found by scanning the process table)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def live_members(pgid: int) -> list[int]:
    """Pids of the group's processes that are not zombies (`procfs.is_dead`).

    A zombie holds nothing but its pid, and whether it is reaped soon depends on its parent (a
    container's PID 1 may never reap; procsupd keeps a leader's zombie on purpose), so a group of
    only zombies counts as gone. The cheap `killpg(pgid, 0)` answers the common case; the process
    table is scanned only when it says the group still has members."""
    if not group_alive(pgid):
        return []
    return [st.pid for st in procfs.stats() if st.pgrp == pgid and not st.dead]


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and has not exited (not a zombie: `procfs.is_dead`)."""
    st = procfs.stat(pid)
    return st is not None and not st.dead


@dataclasses.dataclass(frozen=True)
class Finished:
    """How a bounded command ended: `code` or `signal` as `exit_status` says (both None when
    it was killed at its time limit and had not ended yet), whether it was `timed_out`, and the
    last OUTPUT_TAIL bytes of what it wrote to stdout and stderr."""

    code: int | None
    signal: int | None
    timed_out: bool
    output: bytes

    @property
    def last_line(self) -> str:
        """Its last line of output that is not blank, printable, at most 200 characters."""
        lines = self.output.decode("utf-8", "replace").strip().splitlines()
        return "".join(c if c.isprintable() else "?" for c in lines[-1][:200]) if lines else ""


async def run_bounded(launch: Launch, timeout: float, *,
                      running: set[int] | None = None) -> Finished:
    """Run a short command (a health check) to its end within `timeout` seconds.

    It gets a session of its own, stdin from /dev/null and one pipe for stdout and stderr (the
    last OUTPUT_TAIL bytes are kept; `launch.stdout`/`stderr` are ignored). When its time is
    up, its whole process group gets SIGKILL; when its leader ends, whatever it left in its
    group is killed too, so nothing of it outlives it. It never blocks the loop: the exit is
    watched through a pidfd (polled where there is none), the output read as it comes.
    Cancelled, it kills the group likewise (then re-raises). `running` holds its pid until it
    is reaped (for a reaper of orphans that must leave it alone). Raises SpawnError when the
    command cannot be started.
    """
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()  # both non-inheritable: Popen dup2s the write end onto 1, 2
    try:
        proc = start(dataclasses.replace(launch, stdout=write_fd, stderr=write_fd))
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    if running is not None:
        running.add(proc.pid)
    tail = bytearray()
    ended: asyncio.Future[None] = loop.create_future()
    fd = pidfd(proc.pid)
    poll: asyncio.TimerHandle | None = None

    def read_output() -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(read_fd, 65536):
                tail.extend(chunk)
                del tail[:-OUTPUT_TAIL]
            loop.remove_reader(read_fd)  # end of file: every writer is gone

    def check_exit() -> None:
        nonlocal poll
        poll = None
        if exit_status(proc.pid, fd) is not None:
            if not ended.done():
                ended.set_result(None)
            if fd is not None:
                loop.remove_reader(fd)
        elif fd is None:
            poll = loop.call_later(_POLL, check_exit)

    os.set_blocking(read_fd, False)
    loop.add_reader(read_fd, read_output)
    if fd is not None:
        loop.add_reader(fd, check_exit)
    else:
        check_exit()
    status: ExitStatus | None = None
    timed_out = False
    try:
        if not (await asyncio.wait({ended}, timeout=timeout))[0]:
            timed_out = True
            kill_group(proc.pid, signal.SIGKILL)
            await asyncio.wait({ended}, timeout=_KILLED_WAIT)
        if ended.done():
            status = exit_status(proc.pid, fd)
        # The leader's zombie keeps its pid from reuse, so this reaches its group only.
        kill_group(proc.pid, signal.SIGKILL)
        read_output()
    except BaseException:  # cancelled: its time is up too
        kill_group(proc.pid, signal.SIGKILL)
        raise
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)
        if poll is not None:
            poll.cancel()
        if fd is not None:
            loop.remove_reader(fd)
            os.close(fd)
        if status is not None:
            reap(proc, status)
            if running is not None:
                running.discard(proc.pid)
        else:
            _reap_later(loop, proc, running)
    code, sig = status if status is not None else (None, None)
    return Finished(code, sig, timed_out, bytes(tail))


def _reap_later(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes],
                running: set[int] | None) -> None:
    """Reap a killed bounded command once it has ended, polling in the background."""
    status = exit_status(proc.pid, None)
    if status is None:
        loop.call_later(_POLL, _reap_later, loop, proc, running)
        return
    reap(proc, status)
    if running is not None:
        running.discard(proc.pid)
