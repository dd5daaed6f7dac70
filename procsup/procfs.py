"""Reading the process table from `/proc` (layer 2 leaf, below the OS-resource modules).

The one place that parses `/proc/<pid>/stat`, lists pids and reads a process's environ, and
the one definition of a process that is dead but still listed (`is_dead`): state `Z` (a zombie,
waiting for its parent to reap it) or `X` (dead, seen only in the instant of the reap). Neither
holds memory, files or anything but its pid and its exit status, so every caller that asks
"is it still running" means "listed and not dead". A zombie still belongs to its process group
and still has a start time and the CPU times it used.

Linux only. It reads and never writes; it imports nothing from procsup. Reads are unbuffered
`os.read`: a scan reads hundreds of these files, and an `open()` file object costs more than
the read itself. A process that goes away between the listing and the read is not an error: it
reads as None and a scan skips it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

__all__ = [
    "CLOCK_TICKS",
    "PAGE_SIZE",
    "Stat",
    "boot_time",
    "children",
    "descendants",
    "environ",
    "is_dead",
    "parse_stat",
    "pids",
    "read",
    "rss",
    "stat",
    "stats",
]

#: Units of the tick fields of `Stat` (USER_HZ) and of the pages of `/proc/<pid>/statm`.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# States of a process that has exited: Z zombie, X dead (only in the instant of the reap).
_DEAD = frozenset(("Z", "X"))
# Read size for /proc files: a stat line is far shorter, an environ usually is.
_CHUNK = 65536


def is_dead(state: str) -> bool:
    """Whether a process in `state` (field 3 of `/proc/<pid>/stat`) has exited and only waits
    to be reaped: it holds nothing but its pid."""
    return state in _DEAD


@dataclasses.dataclass(frozen=True, slots=True)
class Stat:
    """The fields of `/proc/<pid>/stat` procsup uses (proc(5) numbers them from 1)."""

    pid: int
    state: str  # field 3, one letter: R S D Z T t X I ...
    ppid: int  # field 4
    pgrp: int  # field 5
    session: int  # field 6
    utime: int  # field 14, clock ticks (CLOCK_TICKS a second)
    stime: int  # field 15
    cutime: int  # field 16: of children it has reaped
    cstime: int  # field 17
    start_ticks: int  # field 22: clock ticks after boot, fixed at fork

    @property
    def dead(self) -> bool:
        """See `is_dead`."""
        return is_dead(self.state)


def parse_stat(pid: int, data: bytes) -> Stat:
    """`Stat` from the text of `/proc/<pid>/stat`. Raises ValueError for a short or
    malformed line (a task torn down mid-read can give one)."""
    # b"pid (comm) state ppid pgrp ..." where comm may hold spaces and parentheses: only the
    # last ")" closes it. fields[0] is field 3 of proc(5).
    fields = data[data.rindex(b")") + 2 :].split()
    if len(fields) < 22:
        raise ValueError(f"short /proc/{pid}/stat: {len(fields)} fields after the name")
    return Stat(
        pid=pid,
        state=fields[0].decode("ascii", "replace"),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
        start_ticks=int(fields[19]),
    )


def read(pid: int, name: str) -> bytes | None:
    """The whole of `/proc/<pid>/<name>`, or None when it cannot be read (gone; another user's
    environ)."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # ENOENT/ESRCH once gone, EACCES for other users' environ
    try:
        chunks: list[bytes] = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
    except OSError:
        return None  # the process went away between open and read
    finally:
        os.close(fd)
    return b"".join(chunks)


def stat(pid: int) -> Stat | None:
    """`/proc/<pid>/stat` parsed, or None when there is no such process (a zombie is one)."""
    data = read(pid, "stat")
    if data is None:
        return None
    try:
        return parse_stat(pid, data)
    except ValueError:
        return None


def rss(pid: int) -> int | None:
    """Resident set size of `pid` in bytes (0 for a zombie), or None when it cannot be read.

    From `/proc/<pid>/statm` (what `ps` and psutil show), not field 24 of `stat`: since Linux
    6.2 that one is a per-CPU approximation that may lag by pages.
    """
    data = read(pid, "statm")
    try:
        return int(data.split()[1]) * PAGE_SIZE if data is not None else None
    except (ValueError, IndexError):
        return None


def environ(pid: int) -> bytes | None:
    """The environment `pid` was exec'd with (NUL-terminated entries), or None when unreadable.
    A zombie's reads empty."""
    return read(pid, "environ")


def pids() -> list[int]:
    """Every pid listed in `/proc`, ascending ([] when `/proc` cannot be read)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def children(pid: int | None = None) -> list[int]:
    """The pids of the children of `pid` (default: the calling process), zombies included: the
    `children` file of each of its threads (CONFIG_PROC_CHILDREN, on in every distribution
    kernel), so the cost is that of the children, not of the process table; a scan of the
    table where the files are missing. [] when `pid` is gone."""
    me = os.getpid() if pid is None else pid
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        tids = []
    found: list[int] = []
    for tid in tids:
        data = read(me, f"task/{tid}/children")
        if data is None:
            if not os.path.isdir(f"/proc/{me}/task/{tid}"):
                continue  # the thread (or the process) ended meanwhile
            return [st.pid for st in stats() if st.ppid == me]
        found.extend(int(x) for x in data.split())
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` now (children, theirs, ...), parents before their children.
    A snapshot: what forks meanwhile is seen by the next call."""
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def stats() -> Iterator[Stat]:
    """`Stat` of every process that can be read, in pid order (one pass over the table)."""
    for pid in pids():
        st = stat(pid)
        if st is not None:
            yield st


def boot_time() -> float:
    """The boot time in epoch seconds (`btime` of `/proc/stat`): a start time in ticks plus
    this is the epoch start time. The kernel moves it with wall-clock steps, so it is read
    afresh each call."""
    with open("/proc/stat", "rb") as f:
        data = f.read()
    for line in data.splitlines():
        if line.startswith(b"btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")
