"""The processes an instance left behind (layer 3, under `running`, which alone uses it).

procsupd is a child subreaper (`spawn.become_subreaper`): when a process of an instance dies,
its children are re-parented to procsupd, not to init. Those in the instance's own process
group are handled with the group (`killpg`); this module keeps the others, which left the
group with `setsid` or `setpgid` (a daemonizing program: memcached `-d`, redis
`--daemonize yes`, nginx without `daemon off`), and says which run each belongs to:

1. its process group or session is a run's (the leader's pid), or the group of a process
   already known to belong to a run;
2. else its environment names the instance (`PROCSUP_APP`, `PROCSUP_INSTANCE` next to this
   daemon's marker; nginx and redis overwrite theirs for the process title, so this is not
   enough alone);
3. else, when the scan runs for a leader that just exited, that leader's run: a process is
   re-parented when its parent dies, and the leader's exit is what made its direct children
   orphans (the kernel re-parents them before the leader's pidfd reports the exit).

A process none of these names stays unowned: procsupd still reaps it, and stops it at
shutdown. Strays are our children, so their pids cannot be reused before we reap them.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Generic, TypeVar

from procsup import procfs, spawn, statefile

Owner = TypeVar("Owner")


@dataclasses.dataclass(eq=False)
class Stray(Generic[Owner]):
    """A live child of procsupd outside any run's process group."""

    pid: int
    pgid: int
    start_ticks: int
    owner: Owner | None


class Orphans(Generic[Owner]):
    """The strays of procsupd's runs. `runs` maps a leader pid (= its pgid and session) to its
    run; `by_instance` finds a run by (app, index) from a marked environment."""

    def __init__(
        self,
        marker: str,
        runs: Mapping[int, Owner],
        by_instance: Callable[[str, int], Owner | None],
    ) -> None:
        self.marker = marker
        self._runs = runs
        self._by_instance = by_instance
        self.strays: dict[int, Stray[Owner]] = {}  # by pid, until reaped
        # The process groups strays lead, and whose: what a stray forked stays in its group
        # after the stray itself is gone (then re-parented to us, found by this).
        self._groups: dict[int, Owner] = {}

    def scan(
        self, skip: Collection[int] = (), exiting: Owner | None = None, *, every: bool = False
    ) -> list[Stray[Owner]]:
        """Find the children of procsupd that are neither run leaders nor in `skip` (health
        checks) nor known: attribute each (see the module's rules; `exiting`, the run whose
        leader just exited, takes those nothing else names). A child nothing names is left for
        a later scan that can tell (its exiting run's), unless `every` (the daemon closes: all
        are taken, unowned). The new strays."""
        found: list[Stray[Owner]] = []
        for pid in procfs.children():
            if pid in self._runs or pid in skip or pid in self.strays:
                continue
            st = procfs.stat(pid)
            if st is None or st.dead:
                continue
            owner = self._owner(st)
            if owner is None:
                owner = exiting
            if owner is None and not every:
                continue
            stray = Stray(pid, st.pgrp, st.start_ticks, owner)
            self.strays[pid] = stray
            if owner is not None and st.pgrp not in self._runs:
                self._groups.setdefault(st.pgrp, owner)
            found.append(stray)
        return found

    def adopt(self, owner: Owner, strays: Iterable[tuple[int, int, int]],
              groups: Iterable[int]) -> None:
        """A re-exec hands over `owner`'s strays (pid, pgid, start ticks) and the groups they
        lead: known as before, whatever their environment says now. One that is gone, or
        whose pid is another process's now, is left out."""
        for pid, pgid, ticks in strays:
            st = procfs.stat(pid)
            if st is not None and not st.dead and st.start_ticks == ticks:
                self.strays[pid] = Stray(pid, pgid, ticks, owner)
        for g in groups:
            self._groups.setdefault(g, owner)

    def groups_of(self, owner: Owner) -> list[int]:
        return [g for g, o in self._groups.items() if o is owner]

    def _owner(self, st: procfs.Stat) -> Owner | None:
        for key in (st.pgrp, st.session):
            if (run := self._runs.get(key)) is not None:
                return run
            if (run := self._groups.get(key)) is not None:
                return run
        m = statefile.marked(st.pid, self.marker)
        if m is not None and m.app is not None and m.index is not None:
            return self._by_instance(m.app, m.index)
        return None

    def of(self, owner: Owner | None) -> list[Stray[Owner]]:
        return [s for s in self.strays.values() if s.owner is owner]

    def reaped(self, pids: Iterable[int]) -> list[Owner]:
        """These children were reaped: they are gone. The owners of the strays among them
        (whose children are now re-parented to procsupd: scan with `exiting` = each)."""
        owners: list[Owner] = []
        for pid in pids:
            stray = self.strays.pop(pid, None)
            if stray is not None and stray.owner is not None and stray.owner not in owners:
                owners.append(stray.owner)
        return owners

    def alive(self, owner: Owner) -> bool:
        """Whether a stray of `owner`, or a process of a group a stray of it leads, lives."""
        if any(s.owner is owner for s in self.strays.values()):
            return True
        return any(o is owner and spawn.live_members(g) for g, o in self._groups.items())

    def signal(self, owner: Owner, sig: int) -> int:
        """`sig` to the strays of `owner` and to the groups they lead (what a stray forked
        stays in its group). How many groups and processes were signalled."""
        sent = 0
        for g, o in self._groups.items():
            if o is owner:
                sent += spawn.kill_group(g, sig)
        for s in self.of(owner):
            if s.pgid not in self._groups:
                sent += spawn.signal_pid(s.pid, sig)
        return sent

    def signal_found(self, found: Iterable[Stray[Owner]], sig: int,
                     skip: Collection[int] = ()) -> int:
        """`sig` to strays just found (`scan`) of runs that are being stopped: each, or the
        group it leads; not those in `skip` (signalled already), nor the known strays, which
        had it when they were found. How many groups and processes were signalled."""
        sent = 0
        for s in found:
            if s.pid in skip or s.owner is None:
                continue
            if self._groups.get(s.pgid) is s.owner and s.pgid == s.pid:
                sent += spawn.kill_group(s.pgid, sig)
            else:
                sent += spawn.signal_pid(s.pid, sig)
        return sent

    def covered(self, owner: Owner) -> tuple[set[int], set[int]]:
        """What `signal(owner, ...)` reaches: (the process groups, the single pids)."""
        groups = {g for g, o in self._groups.items() if o is owner}
        return groups, {s.pid for s in self.of(owner) if s.pgid not in groups}

    def forget(self, owner: Owner) -> None:
        """The run is released: what is left of its strays (none, normally) is unowned."""
        for s in self.of(owner):
            s.owner = None
        for g in [g for g, o in self._groups.items() if o is owner]:
            del self._groups[g]

    def kill_all(self) -> int:
        """SIGKILL every stray and every group a stray leads (the daemon is closing, or its
        shutdown_timeout passed: nothing of an app may stay). How many strays there were."""
        for g in self._groups:
            spawn.kill_group(g, signal.SIGKILL)
        for s in self.strays.values():
            if s.pgid == s.pid:
                spawn.kill_group(s.pgid, signal.SIGKILL)
            else:
                spawn.signal_pid(s.pid, signal.SIGKILL)
        return len(self.strays)


def first_pid(strays: Iterable[Stray[Owner]]) -> int | None:
    """The lowest pid of `strays` (the first forked, in practice), None if there are none."""
    return min((s.pid for s in strays), default=None)
