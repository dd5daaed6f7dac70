"""CPU and memory of process groups, and process-table queries (layer 2 leaf).

Every instance is its own session and process group, so "the instance with its children" is
exactly the set of processes whose pgid is the instance leader's pid. It reads the process
table through `procfs` and signals nothing.

Cost: one pass over the process table per call (list the pids, one `getpgid` system call each),
then one `/proc/<pid>/stat` and `statm` read only for the processes that belong to a requested
group. `status` with hundreds of instances therefore stays cheap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping

from procsup import procfs

__all__ = ["Metrics", "scan_groups", "tree_rss"]


def scan_groups(pgids: Collection[int]) -> dict[int, list[int]]:
    """Map each pgid in `pgids` to the pids currently in that process group (one table pass).

    Every requested pgid is a key, with an empty list when no process has it. Zombies that
    are not yet reaped still belong to their group. Pids are in ascending order.
    """
    wanted = set(pgids)
    found: dict[int, list[int]] = {pgid: [] for pgid in wanted}
    if not wanted:
        return found
    for pid in procfs.pids():
        try:
            pgid = os.getpgid(pid)
        except OSError:  # exited since the listing (ESRCH)
            continue
        if pgid in wanted:
            found[pgid].append(pid)
    return found


def tree_rss(leaders: Collection[int]) -> dict[int, int]:
    """RSS bytes of each instance, for `max_memory_restart`: every process of the leader's
    process group plus every descendant of the leader that left the group (a `setsid`
    grandchild), each counted once. A process belongs to the instance whose group it is in, or
    else whose leader is its nearest ancestor. A leader that is gone reads 0; with no leader,
    nothing is read at all.

    Cost, per call: one listing of the pids, one `getpgid` system call each, one
    `/proc/<pid>/stat` read for each process outside every instance group (for its parent,
    walked up with memoization) and one `statm` read per process that belongs to an instance,
    which is what keeps the periodic check cheap with 1000 instances. A process that vanishes
    between listing and reading is not counted.
    """
    wanted = set(leaders)
    result = dict.fromkeys(wanted, 0)
    if not wanted:
        return result
    pids = procfs.pids()
    group: dict[int, int] = {}
    for pid in pids:
        try:
            group[pid] = os.getpgid(pid)
        except OSError:  # exited since the listing
            pass
    owner: dict[int, int | None] = {}

    def owner_of(pid: int) -> int | None:
        chain: list[int] = []
        found: int | None = None
        while True:
            if pid in owner:
                found = owner[pid]
                break
            chain.append(pid)
            if pid in wanted:
                found = pid
                break
            if group.get(pid) in wanted:
                found = group[pid]
                break
            st = procfs.stat(pid)
            if st is None:
                break
            up = st.ppid
            if up <= 1 or len(chain) > 4096:
                break
            pid = up
        for p in chain:
            owner[p] = found
        return found

    for pid in group:
        leader = owner_of(pid)
        if leader is None:
            continue
        result[leader] += procfs.rss(pid) or 0
    return result


class _Reading:
    """One group's totals from a single scan."""

    __slots__ = ("cpu", "rss", "started")

    def __init__(self) -> None:
        self.cpu = 0.0  # cpu seconds, user + system, including reaped children
        self.rss = 0  # bytes
        self.started: float | None = None  # earliest create_time (epoch seconds) of a member


class Metrics:
    """CPU percent (of one core) and RSS per process group, sampled on demand.

    Keeps, per group, the cpu total and `now` of the previous sample, so a sample reports the
    average over the interval since the previous one. The first sample of a group reports the
    average since the group's oldest member (normally the leader) was created.

    CPU time counts each member's own user+system time plus the time of its children it has
    already reaped (`children_user`/`children_system`). That keeps a group's total continuous
    when a member exits and is reaped by another member (a shell running short commands is
    not shown idle). A total that drops (a member reaped from outside the group) reads as 0 %
    for that interval.
    """

    def __init__(self) -> None:
        # pgid -> (cpu seconds total, `now` of that sample)
        self._last: dict[int, tuple[float, float]] = {}
        self._max_percent = 100.0 * float(os.cpu_count() or 1)

    def sample(self, groups: Mapping[int, float], now: float) -> dict[int, tuple[float, int]]:
        """Return pgid -> (cpu percent of one core, rss bytes) for every pgid in `groups`.

        `groups` maps each live instance's pgid to its leader's start time on the caller's
        monotonic clock (unused here; kept so callers pass what they have). `now` is the
        caller's monotonic clock. A group with no process left reads (0.0, 0). Groups not
        passed any more are forgotten, so a pgid reused later starts afresh.
        """
        members = scan_groups(groups.keys())
        result: dict[int, tuple[float, int]] = {}
        wall_now = time.time()
        for pgid, pids in members.items():
            previous = self._last.get(pgid)
            reading = _read_group(pids, want_start=previous is None)
            if not pids:
                percent = 0.0
            elif previous is not None:
                percent = _percent(reading.cpu - previous[0], now - previous[1])
            elif reading.started is not None:
                percent = _percent(reading.cpu, wall_now - reading.started)
            else:
                percent = 0.0
            if pids:
                self._last[pgid] = (reading.cpu, now)
            else:
                self._last.pop(pgid, None)
            result[pgid] = (min(percent, self._max_percent), reading.rss)
        for pgid in list(self._last):
            if pgid not in members:
                del self._last[pgid]
        return result


def _percent(cpu: float, wall: float) -> float:
    if wall <= 0.0 or cpu <= 0.0:
        return 0.0
    return cpu / wall * 100.0


def _read_group(pids: list[int], *, want_start: bool) -> _Reading:
    reading = _Reading()
    boot: float | None = None
    for pid in pids:
        st = procfs.stat(pid)
        if st is None:
            continue  # gone since the listing: not counted
        reading.cpu += (st.utime + st.stime + st.cutime + st.cstime) / procfs.CLOCK_TICKS
        reading.rss += procfs.rss(pid) or 0
        if not want_start:
            continue
        if boot is None:
            # The boot time moves with wall-clock steps: read it once per group, only when needed.
            boot = procfs.boot_time()
        started = boot + st.start_ticks / procfs.CLOCK_TICKS
        if reading.started is None or started < reading.started:
            reading.started = started
    return reading
