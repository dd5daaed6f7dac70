"""pidfile: flock-held pidfile, exercised by real processes."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procsup.errors import ProcsupError
from procsup.pidfile import PidFile

HOLDER = textwrap.dedent(
    """
    import sys, time
    from procsup.pidfile import PidFile
    PidFile(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child printed nothing in time"
    return proc.stdout.readline()


@pytest.fixture
def holder() -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """Start a child process that acquires the pidfile and sleeps; SIGKILL it afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(path: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE)
        procs.append(proc)
        assert read_line(proc) == b"locked\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_acquire_writes_pid_and_release_removes(tmp_path: Path) -> None:
    path = tmp_path / "run" / "procsupd.pid"
    pidfile = PidFile(str(path))
    assert pidfile.is_locked() is None
    pidfile.acquire()
    try:
        assert pidfile.held
        assert path.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o700 == 0o700
        assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0
        # A second handle in the same process is refused too: flock is per open file.
        assert PidFile(str(path)).is_locked() == os.getpid()
        with pytest.raises(ProcsupError):
            PidFile(str(path)).acquire()
        pidfile.acquire()  # already held by this object: no-op
    finally:
        pidfile.release()
    assert not path.exists()
    assert not pidfile.held
    pidfile.release()  # idempotent


def test_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "p.pid"
    with PidFile(str(path)) as pidfile:
        assert pidfile.held
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()


def test_live_holder_blocks_and_kill_9_frees(
    tmp_path: Path, holder: Callable[[Path], subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "procsupd.pid"
    child = holder(path)
    assert path.read_text() == f"{child.pid}\n"
    pidfile = PidFile(str(path))
    assert pidfile.is_locked() == child.pid
    with pytest.raises(ProcsupError) as info:
        pidfile.acquire()
    assert str(info.value) == f"procsupd already running (pid {child.pid}, pidfile {path})"
    assert not pidfile.held
    assert path.read_text() == f"{child.pid}\n"  # the failed attempt changed nothing

    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=5)
    # The kernel dropped the lock with the process; the stale file does not block a start.
    assert path.exists()
    assert pidfile.is_locked() is None
    pidfile.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        pidfile.release()


def test_stale_file_with_garbage_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "procsupd.pid"
    path.write_text("not a pid at all, and longer than the pid we will write\n")
    pidfile = PidFile(str(path))
    assert pidfile.is_locked() is None
    with pidfile:
        assert path.read_text() == f"{os.getpid()}\n"


def test_is_locked_does_not_create_the_file(tmp_path: Path) -> None:
    path = tmp_path / "procsupd.pid"
    assert PidFile(str(path)).is_locked() is None
    assert not path.exists()


def test_release_leaves_a_file_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "procsupd.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    path.unlink()
    path.write_text("12345\n")  # someone else's pidfile now sits at the path
    pidfile.release()
    assert path.read_text() == "12345\n"


def test_child_processes_do_not_inherit_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "procsupd.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    # close_fds=False: only close-on-exec keeps the descriptor out of the child.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        close_fds=False,
    )
    try:
        assert read_line(child) == b"up\n"
        fd_dir = f"/proc/{child.pid}/fd"
        targets = set()
        for name in os.listdir(fd_dir):
            with contextlib.suppress(FileNotFoundError):
                targets.add(os.readlink(os.path.join(fd_dir, name)))
        assert any(t.startswith("pipe:") for t in targets)  # the listing does see its fds
        assert str(path) not in targets
        # And the lock goes with our release although the child still runs.
        pidfile.release()
        assert PidFile(str(path)).is_locked() is None
        with PidFile(str(path)):
            pass
    finally:
        child.kill()
        child.wait(timeout=5)
        assert child.stdout is not None
        child.stdout.close()
        pidfile.release()


FAILED_WRITE = textwrap.dedent(
    """
    import resource, signal, sys
    from procsup.pidfile import PidFile
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the default kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    pidfile = PidFile(sys.argv[1])
    try:
        pidfile.acquire()
    except OSError as exc:
        print(exc.errno, pidfile.held, flush=True)
    """
)


def test_a_failed_write_leaves_no_file_and_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "procsupd.pid"
    out = subprocess.run([sys.executable, "-c", FAILED_WRITE, str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["27", "False"], out  # EFBIG; the object holds nothing
    assert not path.exists()
    assert PidFile(str(path)).is_locked() is None


DAEMON = textwrap.dedent(
    """
    import sys, time
    import daemon
    from procsup.pidfile import PidFile
    with daemon.DaemonContext(pidfile=PidFile(sys.argv[1]), umask=0o022):
        # Say "open" only once the context is: a SIGTERM before python-daemon registers its
        # close would leave the pidfile (python-daemon's window, not ours).
        open(sys.argv[1] + ".open", "w").close()
        time.sleep(60)
    """
)


def test_works_as_python_daemon_pidfile(tmp_path: Path) -> None:
    path = tmp_path / "procsupd.pid"
    launcher = subprocess.Popen([sys.executable, "-c", DAEMON, str(path)])
    daemon_pid = 0
    try:
        launcher.wait(timeout=10)  # the launcher exits once the daemon has detached
        wait_for(lambda: Path(f"{path}.open").exists(), what="the daemon context to open")
        daemon_pid = int(path.read_text())
        assert daemon_pid != launcher.pid  # written after the detaching forks
        assert PidFile(str(path)).is_locked() == daemon_pid
        with pytest.raises(ProcsupError, match=f"pid {daemon_pid}"):
            PidFile(str(path)).acquire()
        # python-daemon's SIGTERM handler closes the context, which releases the pidfile.
        os.kill(daemon_pid, signal.SIGTERM)
        wait_for(lambda: not path.exists(), what="pidfile removal")
        assert PidFile(str(path)).is_locked() is None
    finally:
        if daemon_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon_pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=5)
