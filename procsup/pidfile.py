"""The daemon's pidfile, held with flock(2) (layer 2 leaf; the only module that locks).

The lock, not the file's existence, says a daemon is running: the kernel drops it when the
holder dies, even by SIGKILL, so a stale file never blocks a start. The pid inside is for
humans and for the "already running (pid N)" message.

Works as python-daemon's `DaemonContext(pidfile=PidFile(path))`, which calls `__enter__` in the
detached child (so the pid written is the daemon's) and `__exit__` on close, and directly
(`with PidFile(path):`) in foreground mode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from types import TracebackType

from procsup.errors import ProcsupError

__all__ = ["PidFile", "read_app_pid"]


class PidFile:
    """An exclusive flock on `path`, holding the current pid while acquired."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release`."""
        return self._fd is not None

    def acquire(self) -> None:
        """Lock the pidfile and write our pid into it; keep it locked until `release`.

        Creates the parent directory (mode 0755) when missing. The descriptor is close-on-exec
        so no child process ever inherits the lock. Raises ProcsupError naming the holder's
        pid when another live process holds the lock, OSError when the file cannot be opened.
        Does nothing when this object already holds the lock.
        """
        if self._fd is not None:
            return
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = f"pid {pid}" if pid is not None else "pid unknown"
                raise ProcsupError(
                    f"procsupd already running ({holder}, pidfile {self.path})"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that released between our open and our flock unlinked the file we
            # locked; a third process may already lock a new file at the path. Only a lock on
            # the file the path names now counts.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except BaseException:
            # Interrupted (a signal's SystemExit, a full disk): leave no file naming us behind.
            self.release()
            raise

    @classmethod
    def adopt(cls, path: str, fd: int) -> PidFile:
        """The pidfile `fd`, locked by the previous image of this process (a re-exec handed
        it over; the lock belongs to the open file, so it was never released)."""
        os.set_inheritable(fd, False)
        pf = cls(path)
        pf._fd = fd
        return pf

    def fileno(self) -> int | None:
        return self._fd

    def release(self) -> None:
        """Remove the pidfile if it is still ours, then drop the lock. Idempotent."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            # Unlink before unlocking, so no one can lock the file just before it vanishes.
            if _same_file(fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def is_locked(self) -> int | None:
        """Pid of the live process holding the pidfile, or None when no one holds it.

        Probes without keeping the lock and without creating the file. A file left by a dead
        daemon is not locked: None. Gives 0 when the file is locked but holds no pid yet (the
        holder is between locking and writing). A lock this object holds counts as held.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                return pid if pid is not None else 0
            return None
        finally:
            os.close(fd)  # also drops the probe's shared lock

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PidFile({self.path!r}, held={self.held})"


def read_app_pid(path: str) -> int | str:
    """The pid an app's daemonized server wrote to `path` (its `pidfile`), or why there is
    none yet: "missing", or what is wrong with the file. Not locked: the file is the app's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "missing"
        return f"cannot read it: {exc.strerror or exc}"
    try:
        pid = _read_pid(fd)
    finally:
        os.close(fd)
    return pid if pid is not None else "it holds no pid"


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
