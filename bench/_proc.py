"""Watching processes for the benchmarks: /proc readers, kernel process events (fork, exec,
exit with timestamps), CPU and context-switch counters, waiting for a quiet machine."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any


def proc_stat(pid: int) -> tuple[str, str, int, int, int] | None:
    """(comm, state, ppid, utime + stime in ticks, threads) of `pid`, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ..." — comm may hold spaces and parens: split at the last ")".
    close = raw.rfind(b")")
    comm = raw[raw.find(b"(") + 1 : close].decode(errors="replace")
    fields = raw[close + 2 :].split()
    return (
        comm,
        fields[0].decode(),
        int(fields[1]),
        int(fields[11]) + int(fields[12]),
        int(fields[17]),
    )


def children(ppid: int) -> list[int]:
    """Live (non-zombie) children of `ppid`, by a scan of the process table."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[2] == ppid and st[1] != "Z":
                out.append(int(name))
    return out


class ExecWatch:
    """Notices when children of `ppid` have exec'd (the replacement runs), with timestamps.

    `execs`, `forks` and `exits` map pids to CLOCK_MONOTONIC nanoseconds (the clock of
    `time.monotonic_ns()`): when a child of `ppid` completed exec(), when a child of `ppid`
    was created, and when a process listed in `track_exits` ended. Two implementations:
    `NetlinkWatch` (kernel timestamps, the watcher blocks: it perturbs nothing) when the netlink
    proc connector is allowed (CAP_NET_ADMIN, i.e. root), else `PollWatch`.

    Why not a tight polling loop: on this 2-vCPU VM a busy watcher occupies one CPU, and the
    killed process and the supervisor then wait for it to be preempted: the latency of a
    pidfd wake-up goes from 0.36 ms to 2.6 ms (median), which would measure the watcher.
    """

    method = ""

    def __init__(self) -> None:
        self.ppid: int | None = None
        self.execs: dict[int, int] = {}
        self.forks: dict[int, int] = {}
        self.exits: dict[int, int] = {}
        self.track_exits: set[int] = set()
        #: the exec that counts is a child's n-th (2: one helper such as prlimit execs first)
        self.execs_needed = 1
        #: where exec counts are not seen (polling): the comm of the program that counts
        self.program: str | None = None
        self._exec_counts: dict[int, int] = {}

    def reset(self) -> None:
        """Forget what was seen (events already queued are dropped)."""
        self._exec_counts.clear()
        self.execs.clear()
        self.forks.clear()
        self.exits.clear()
        self.track_exits.clear()

    def _pump(self, timeout: float) -> None:
        raise NotImplementedError

    def wait(self, cond: Callable[[ExecWatch], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            self._pump(min(left, 0.1))

    def settle(self, seconds: float) -> None:
        """Take in the events of the next `seconds` (to see that nothing more happens)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._pump(min(left, 0.1))

    def close(self) -> None:
        pass

    def __enter__(self) -> ExecWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_PROC_EVENT_FORK = 0x1
_PROC_EVENT_EXEC = 0x2
_PROC_EVENT_EXIT = 0x80000000
_NLMSG_DONE = 3
_SO_RCVBUFFORCE = 33  # not exported by the socket module


class NetlinkWatch(ExecWatch):
    """The kernel's process events connector: fork/exec/exit of every process, each stamped
    with ktime_get_ns() (CLOCK_MONOTONIC) when it happened."""

    method = "netlink proc connector (kernel timestamps)"

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        try:
            try:  # room for bursts (200 spawns = 600 events); FORCE needs CAP_NET_ADMIN
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 32 << 20)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
            self.sock.bind((0, _CN_IDX_PROC))
            # nlmsghdr + cn_msg{idx=CN_IDX_PROC, val=CN_VAL_PROC, len=4} + PROC_CN_MCAST_LISTEN
            body = struct.pack("=IIIIHH", _CN_IDX_PROC, 1, 0, 0, 4, 0) + struct.pack("=I", 1)
            self.sock.send(struct.pack("=IHHII", 16 + len(body), _NLMSG_DONE, 0, 0, 0) + body)
        except BaseException:
            self.sock.close()
            raise

    def reset(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65536)
        except BlockingIOError:
            pass
        super().reset()

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        self._handle(data)
        self.sock.setblocking(False)
        try:
            while True:
                self._handle(self.sock.recv(65536))
        except BlockingIOError:
            pass

    def _handle(self, data: bytes) -> None:
        off = 0
        while off + 16 <= len(data):
            length = struct.unpack_from("=I", data, off)[0]
            if length < 52:
                break
            what, _cpu, ts = struct.unpack_from("=IIQ", data, off + 36)
            a, b, c, d = struct.unpack_from("=IIII", data, off + 52)
            if what == _PROC_EVENT_FORK:
                # parent pid, parent tgid, child pid, child tgid; child pid != tgid: a thread
                if b == self.ppid and c == d:
                    self.forks[c] = ts
            elif what == _PROC_EVENT_EXEC:
                if a in self.forks and a not in self.execs:
                    n = self._exec_counts[a] = self._exec_counts.get(a, 0) + 1
                    if n >= self.execs_needed:
                        self.execs[a] = ts
            elif what == _PROC_EVENT_EXIT and a == b and a in self.track_exits:
                self.exits[a] = ts
            off += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


class PollWatch(ExecWatch):
    """Without the proc connector: look at the pids allocated since the last look
    (/proc/sys/kernel/ns_last_pid), every 0.2 ms. Timestamps are when the watcher looked, so
    they are late by up to the interval plus the watcher's own wake-up latency."""

    method = "polling /proc every 0.2 ms"
    interval = 0.0002

    def __init__(self) -> None:
        super().__init__()
        self.last = _last_pid() or 1
        self.pid_max = _pid_max()
        self._pending: set[int] = set()  # children seen before their exec
        self._unseen: dict[int, int] = {}  # allocated pids not yet in /proc, with a give-up time

    def reset(self) -> None:
        super().reset()
        self.last = _last_pid() or 1
        self._pending.clear()
        self._unseen.clear()

    def _pump(self, timeout: float) -> None:
        time.sleep(self.interval)
        now = time.monotonic_ns()
        last = _last_pid()
        if last is None:
            candidates = [int(n) for n in os.listdir("/proc") if n.isdigit()]
        elif last >= self.last:
            candidates = list(range(self.last + 1, last + 1))
        else:  # the pid counter wrapped
            candidates = [*range(self.last + 1, self.pid_max + 1), *range(1, last + 1)]
        self.last = last or self.last
        for pid in self.track_exits - self.exits.keys():
            st = proc_stat(pid)
            if st is None or st[1] == "Z":
                self.exits[pid] = now
        for pid in {*candidates, *self._pending, *self._unseen}:
            if pid in self.execs:
                continue
            st = proc_stat(pid)
            if st is None:
                if pid not in self._unseen:
                    self._unseen[pid] = now + 200_000_000  # not yet visible: look for 0.2 s
                elif now > self._unseen[pid]:
                    del self._unseen[pid]
                self._pending.discard(pid)
                continue
            self._unseen.pop(pid, None)
            comm, state, ppid, _, _ = st
            if ppid != self.ppid or state == "Z":
                self._pending.discard(pid)
                continue
            self.forks.setdefault(pid, now)
            if comm != self.parent_comm() and self.program in (None, comm):
                self.execs[pid] = now
                self._pending.discard(pid)
            else:
                self._pending.add(pid)

    _parent_comm: str | None = None

    def parent_comm(self) -> str:
        """Before exec a child still has its parent's comm; after, the program's."""
        if self._parent_comm is None and self.ppid is not None:
            st = proc_stat(self.ppid)
            self._parent_comm = st[0] if st else ""
        return self._parent_comm or ""


def exec_watch() -> ExecWatch:
    """The best watcher this process may use."""
    try:
        return NetlinkWatch()
    except OSError:
        return PollWatch()


def _last_pid() -> int | None:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _pid_max() -> int:
    with open("/proc/sys/kernel/pid_max", "rb") as f:
        return int(f.read())


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


#: How long `wait_quiet` may wait (set by --quiet-wait).
QUIET = {"max_wait": 30.0}


def wait_quiet(max_wait: float | None = None, threshold: float = 0.1, window: float = 0.3) -> float:
    """Wait until the machine is nearly idle: less than `threshold` of all CPUs busy over
    `window` seconds (0.1 on 2 CPUs = a fifth of one core), for at most `max_wait` seconds.

    On a shared machine other work (someone's test suite) can double a CPU-bound figure; the
    benchmarks call this before each timed run. Returns the busy fraction of the last window,
    which the benchmarks record; a value above `threshold` means the wait gave up."""
    max_wait = QUIET["max_wait"] if max_wait is None else min(max_wait, QUIET["max_wait"])
    if max_wait <= 0:
        return float("nan")
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = _cpu_jiffies()
        time.sleep(window)
        b1, t1 = _cpu_jiffies()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy < threshold or time.monotonic() > deadline:
            return busy


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    """Poll `cond` until it returns a truthy value; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def task_counters(pid: int) -> dict[str, float]:
    """CPU time and context switches of a process, summed over all its threads.

    cpu_ticks: utime + stime from /proc/<pid>/stat (whole process, clock ticks);
    cpu_ns: sum of /proc/<pid>/task/*/schedstat run time (ns, finer grained);
    switches: voluntary + nonvoluntary context switches summed over /proc/<pid>/task/*/status
    (each is one time a thread went to sleep or was preempted, i.e. at least one wake-up).
    """
    st = proc_stat(pid)
    assert st is not None, f"process {pid} is gone"
    ns = 0
    switches = 0
    vol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n = int(line.split()[1])
                        switches += n
                        if line.startswith("voluntary"):
                            vol += n
        except OSError:
            continue  # a thread that just ended
    return {
        "cpu_ticks": st[3],
        "cpu_ns": ns,
        "switches": switches,
        "voluntary": vol,
        "threads": st[4],
    }
