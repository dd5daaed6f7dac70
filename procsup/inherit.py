"""What a child that procsupd forks now inherits (layer 2, reads only): its rlimits (and
RLIMIT_NOFILE as procsupd was started, before it raised its own: what instances get by
default), its nice and the range it may set, its OOM score adjustment, its capabilities
(CAP_SYS_RESOURCE, CAP_SYS_NICE), fs.nr_open, and whether procsupd's open fds leave room below
a limit for the fork (`room_below`). `limits.plan` decides from these values; `spawn` asks
here, then forks.
"""

from __future__ import annotations

import os
import resource

from procsup import limits

#: "nofile": RLIMIT_NOFILE as procsupd was started, before it raised its own soft limit
#: (`remember_limits`); absent: as now (a process that never raised it).
_ORIGINAL: dict[str, limits.Pair] = {}


def remember_limits(nofile: limits.Pair | None = None) -> None:
    """Record procsupd's RLIMIT_NOFILE as it was started: what instances get by default. Call it
    once, before procsupd raises its own limit (after a re-exec: with what the previous image
    recorded, `original_nofile`)."""
    _ORIGINAL["nofile"] = nofile if nofile is not None else _pair(
        resource.getrlimit(resource.RLIMIT_NOFILE))


def original_nofile() -> limits.Pair | None:
    """What `remember_limits` recorded."""
    return _ORIGINAL.get("nofile")


def _pair(pair: tuple[int, int]) -> limits.Pair:
    return pair[0], pair[1]


def inherited(want: limits.Wanted) -> limits.Inherited:
    """What a child forked now by this thread would get, as far as `want` needs to know (only
    what it names is read: the default case reads one limit)."""
    names = {"nofile", *want.limits}
    current = {n: _pair(resource.getrlimit(limits.RESOURCES[n])) for n in names}
    nice = os.getpriority(os.PRIO_PROCESS, 0) if want.nice is not None else 0
    floor = 20
    if want.nice is not None:
        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
        floor = -20 if soft == limits.UNLIMITED else 20 - soft
    oom = _own_oom_score_adjust() if want.oom_score_adjust is not None else 0
    nr_open = _nr_open() if "nofile" in want.limits else 1 << 20
    return limits.Inherited(
        current, _ORIGINAL.get("nofile", current["nofile"]), nice=nice, oom_score_adjust=oom,
        sys_resource=_capable(_CAP_SYS_RESOURCE), sys_nice=_capable(_CAP_SYS_NICE),
        nice_floor=floor, nr_open=nr_open)


_CAP_SYS_NICE = 23
_CAP_SYS_RESOURCE = 24
_CAPS: list[int] = []  # procsupd's effective capabilities, read once (they do not change)


def _capable(cap: int) -> bool:
    """Whether procsupd has capability `cap` in its effective set (root in a container often
    lacks CAP_SYS_RESOURCE)."""
    if not _CAPS:
        mask = 0
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("CapEff:"):
                        mask = int(line.split()[1], 16)
        except (OSError, ValueError, IndexError):
            mask = ~0 if os.geteuid() == 0 else 0
        _CAPS.append(mask)
    return bool(_CAPS[0] >> cap & 1)


def _own_oom_score_adjust() -> int:
    try:
        with open("/proc/self/oom_score_adj", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def room_below(limit: int) -> bool:
    """Whether procsupd's open fds leave FORK_HEADROOM free below `limit`, so that the next
    FORK_HEADROOM opens of any thread get numbers below it (the kernel gives the lowest free
    fd). First the cheap sufficient test: the size of procsupd's fd table (FDSize, above its
    highest fd) leaves that room. Else the count of the open fds: fewer than `limit -
    FORK_HEADROOM` leave it too; the number of the fd opened to count is the lowest free one
    (every fd below it is open), a quick no for a daemon that holds many."""
    bound = limit - limits.FORK_HEADROOM
    if bound <= 0:
        return False
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = os.read(fd, 8192)
        finally:
            os.close(fd)
        at = status.index(b"FDSize:") + len(b"FDSize:")
        if int(status[at:status.index(b"\n", at)]) <= bound:
            return True
        fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return False
    try:
        if fd >= bound:
            return False
        count = 0
        with os.scandir(fd) as it:
            for _entry in it:
                count += 1
                if count > bound:
                    return False
        return True
    finally:
        os.close(fd)


def nofile_raised() -> bool:
    """Whether procsupd's RLIMIT_NOFILE is no longer the one it was started with (the cheap
    test of the common spawn, which wants just that)."""
    original = _ORIGINAL.get("nofile")
    return original is not None and _pair(resource.getrlimit(resource.RLIMIT_NOFILE)) != original
