"""One cgroup v2 group: a directory of the hierarchy (layer 2, under `cgroups`, which lays the
tree out; `running` uses the groups it hands out).

What a run's group is asked for, each a read or one write(2) of an interface file: move a
process in (`cgroup.procs`), list, signal and kill its processes (`cgroup.kill`, or a frozen
group's pids one by one before Linux 5.14), wait for it to empty (`cgroup.events`), read its
memory, write the controller limits of its run, remove it. Nothing here decides where a group
is or which controllers are enabled: that is `cgroups.Tree`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import select
import signal
import time
from collections.abc import Collection

from procsup import procfs
from procsup.errors import ProcsupError

__all__ = ["CgroupError", "Events", "Group", "Limits", "read", "words", "write"]

#: Rounds of "SIGKILL every pid in cgroup.procs" where there is no `cgroup.kill` (< 5.14).
_KILL_ROUNDS = 200
#: How often `Events.wait` reads cgroup.events again besides its notifications (seconds).
_RECHECK = 0.0005


class CgroupError(ProcsupError):
    """A cgroup cannot be used as asked; `reason` is what the log or `status` shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read(path: str) -> str:
    """The text of an interface file (OSError as open(2) and read(2) give it)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def write(path: str, text: str) -> None:
    """One write(2) of `text`: a cgroup interface file takes one value per write."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def words(path: str) -> frozenset[str]:
    """The words of an interface file (a controller list); none when it cannot be read."""
    try:
        return frozenset(read(path).split())
    except OSError:
        return frozenset()


@dataclasses.dataclass(frozen=True)
class Limits:
    """The controller settings of one run; None = not set (the kernel's default)."""

    memory_max: int | None = None  # bytes: memory.max
    cpu_weight: int | None = None  # 1..10000: cpu.weight
    pids_max: int | None = None  # pids.max

    def files(self) -> dict[str, str]:
        """Interface file -> value to write, for the keys that are set."""
        out = {}
        if self.memory_max is not None:
            out["memory.max"] = str(self.memory_max)
        if self.cpu_weight is not None:
            out["cpu.weight"] = str(self.cpu_weight)
        if self.pids_max is not None:
            out["pids.max"] = str(self.pids_max)
        return out

    def controllers(self) -> frozenset[str]:
        return frozenset(name.partition(".")[0] for name in self.files())


class Events:
    """Readable (as a file descriptor, for `loop.add_reader`) when a group's `cgroup.events`
    changes: an epoll set holding the file for EPOLLPRI, which kernfs raises on every change
    (a cgroup.events fd itself polls always readable, so it cannot go to the loop directly).
    `populated()` reads the file again, which also re-arms it. Close it when done."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._epoll = select.epoll()
        try:
            self._epoll.register(self._fd, select.EPOLLPRI)
        except OSError:
            self.close()
            raise

    def fileno(self) -> int:
        return self._epoll.fileno()

    def populated(self) -> bool:
        """Whether a live process is in the group or below it (zombies do not count)."""
        self._epoll.poll(0)  # drain the readiness, or the loop would see it again
        try:
            text = os.pread(self._fd, 4096, 0).decode()
        except OSError:  # the group was removed
            return False
        return "populated 1" in text

    def wait(self, timeout: float) -> bool:
        """Block until the group is empty or `timeout` seconds passed; whether it is empty.

        The kernel sends at most one notification per file every 10 ms (cgroup_file_notify),
        so `populated 0` right after `populated 1` (a run killed just after it was placed) may
        be told 10-15 ms late; the file itself is current at once. So the wait also reads it
        again every _RECHECK seconds: a killed group is seen empty within a fraction of a
        millisecond of its last exit."""
        deadline = time.monotonic() + timeout
        while self.populated():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._epoll.poll(min(left, _RECHECK))
        return True

    def close(self) -> None:
        self._epoll.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


@dataclasses.dataclass(frozen=True)
class Group:
    """One run's cgroup (a directory of the hierarchy)."""

    path: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def instance(self) -> tuple[str, int] | None:
        """(app, index) from the directory's name `<app>@<i>.<n>`; None for another name."""
        app, at, rest = self.name.rpartition("@")
        index = rest.partition(".")[0]
        return (app, int(index)) if at and app and index.isdigit() else None

    def place(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the group. Raises ProcessLookupError when
        it is gone, CgroupError when the kernel refuses (a pids.max reached, no permission)."""
        try:
            write(os.path.join(self.path, "cgroup.procs"), str(pid))
        except ProcessLookupError:
            raise
        except OSError as exc:
            raise CgroupError(f"cannot move pid {pid} into cgroup {self.path}: "
                              f"{exc.strerror or exc}") from None

    def place_children(self, pid: int) -> list[int]:
        """Move the children `pid` has now into the group too (what a program forked before it
        was placed itself, when it is placed after its start); the ones moved. Grandchildren
        of that instant are not seen: `Tree.spawn` has no such gap."""
        try:
            text = read(f"/proc/{pid}/task/{pid}/children")
        except OSError:
            return []
        moved = []
        for word in text.split():
            with contextlib.suppress(ProcessLookupError, CgroupError):
                self.place(int(word))
                moved.append(int(word))
        return moved

    def pids(self) -> list[int]:
        """The processes in the group now (cgroup.procs: live ones; zombies have left it)."""
        try:
            return [int(w) for w in read(os.path.join(self.path, "cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:
            return "populated 1" in read(os.path.join(self.path, "cgroup.events"))
        except FileNotFoundError:
            return False

    def events(self) -> Events:
        """A waiter on the group's `cgroup.events` (see `Events`)."""
        return Events(os.path.join(self.path, "cgroup.events"))

    def signal(self, sig: int, *, besides: Collection[int] = (),
               besides_pids: Collection[int] = ()) -> int:
        """`sig` to every process in the group (a stop's kill_signal) but those in the process
        groups `besides` and the pids `besides_pids` (which were signalled already: a
        program may take a second SIGTERM or SIGINT as "stop now"); how many got it."""
        sent = 0
        me = os.getpid()
        for pid in self.pids():
            if pid == me or pid in besides_pids:
                continue
            try:
                if besides and os.getpgid(pid) in besides:
                    continue
                os.kill(pid, sig)
                sent += 1
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def kill(self) -> None:
        """SIGKILL to every process in the group and below, including those forked meanwhile:
        `cgroup.kill` (Linux >= 5.14) does it in the kernel at once; elsewhere the group is
        frozen (where `cgroup.freeze` exists, so nothing forks), then every pid gets SIGKILL,
        round after round until none is left. Returns without waiting for them to be gone
        (`events().wait`). Never procsupd itself: a group it is in (a failed move home
        after a spawn) has its other processes killed one by one."""
        me = os.getpid()
        if me not in self.pids():
            try:
                write(os.path.join(self.path, "cgroup.kill"), "1")
                return
            except FileNotFoundError:
                if not os.path.isdir(self.path):
                    return
        freeze = os.path.join(self.path, "cgroup.freeze")
        frozen = False
        if me not in self.pids():
            with contextlib.suppress(OSError):
                write(freeze, "1")
                frozen = True
        try:
            for _ in range(_KILL_ROUNDS):
                if not [p for p in self.pids() if p != me]:
                    return
                self.signal(signal.SIGKILL)
                time.sleep(0.001)
        finally:
            if frozen:  # a killed frozen task dies when thawed
                with contextlib.suppress(OSError):
                    write(freeze, "0")

    def memory(self) -> int:
        """Bytes of memory the group uses: `memory.current` where the memory controller is
        enabled for it (page cache and kernel memory included), else the RSS of its
        processes, summed."""
        try:
            return int(read(os.path.join(self.path, "memory.current")))
        except (OSError, ValueError):
            return sum(procfs.rss(pid) or 0 for pid in self.pids())

    def set_limits(self, limits: Limits) -> None:
        """Write the limits; CgroupError names a file the group lacks (its controller is not
        enabled) or a value the kernel refused."""
        for name, value in limits.files().items():
            try:
                write(os.path.join(self.path, name), value)
            except FileNotFoundError:
                raise CgroupError(f"cgroup {self.path} has no {name}: the "
                                  f"{name.partition('.')[0]} controller is not enabled for it"
                                  ) from None
            except OSError as exc:
                raise CgroupError(f"cannot set {name} = {value} in {self.path}: "
                                  f"{exc.strerror or exc}") from None

    def remove(self) -> bool:
        """Remove the directory once the group is empty; whether it is gone (False: still
        populated, EBUSY)."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise CgroupError(f"cannot remove cgroup {self.path}: {exc.strerror}") from None
        return True
