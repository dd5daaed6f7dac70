"""cgroup v2 groups of instance runs (layer 2: the tree of groups, and how runs get into them;
one group's own operations are `cgroup.Group`).

Where procsupd can create cgroup v2 groups (root with a writable hierarchy, or systemd's
`Delegate=yes`), every run of an instance gets a cgroup of its own: stopping it kills the whole
cgroup (`cgroup.kill`), whatever its processes did to their process group or session; its
memory is the cgroup's; `memory_max`, `cpu_weight` and `pids_max` are written to its
controllers where the hierarchy offers them. Nothing here runs between fork and exec. A run
gets into its group one of two ways (docs/benchmarks.md, "cgroup placement", says why these
and not an exec'd helper):

- *exact*, for a run with controller keys: procsupd moves itself into the new run's (empty)
  cgroup for the fork and back right after it (`Tree.start`), so the child is born in its
  cgroup and nothing it forks, however early, is outside its limits. The limits are written
  once procsupd is back home, so they never apply to procsupd itself; and a kill never reaches
  a group that holds procsupd. The cost: a cgroup migration after a pause waits for an RCU
  grace period (~10 ms here), on the loop, before the exec.
- *late*, for every other run: the child is started where procsupd is, and a worker thread
  moves it into its group at once, then whatever it forked meanwhile (its descendants, and the
  children of procsupd that its orphans became and whose environment names the instance),
  pass after pass until none is left outside (`Tree.place_late`). The grace period is paid
  by the worker, not by the exec or the loop; until the move the run's processes are stopped
  by their process group and the subreaper, as without cgroups.

The layout, under procsupd's own cgroup `<own>` (from `/proc/self/cgroup`, found in the cgroup2
mount of `/proc/self/mountinfo`; nothing is hard-coded):

    <own>/
      procsupd/          procsupd itself, when it was alone in <own> (systemd's Delegate=yes,
                         a container): it moves there so that <own> holds no process and may
                         enable controllers for its children ("no internal processes")
      procsup-<id>/      this daemon's base; <id> is the daemon marker (from its state_dir), so
                         a daemon started again with the same state_dir finds what the last one
                         left, and two daemons with different state dirs never meet
        <app>@<i>.<n>/   one run of instance <app>:<i> (<n> counts runs: a reload's replacement
                         and the run it replaces live side by side)

When <own> is the root of the hierarchy (root on a host without systemd, as on this project's CI
machine) procsupd stays where it is: the root is exempt from that rule. When <own> holds other
processes too (procsupd started from a shell), the base is still created there and placement
and kill work, but only the controllers <own> already enables for its children are offered.

Controllers are enabled lazily, when a run asks for one of their keys: in <own>'s and the
base's `cgroup.subtree_control`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from procsup import procfs
from procsup.cgroup import CgroupError, Events, Group, Limits, read, words, write
from procsup.errors import ConfigError
from procsup.model import AppSpec

_T = TypeVar("_T")

__all__ = [
    "KEY_CONTROLLER",
    "CgroupError",
    "Events",
    "Group",
    "Hierarchy",
    "Limits",
    "Support",
    "Tree",
    "app_warnings",
    "find",
    "limits_of",
    "open_tree",
    "own_dir",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "probe",
    "sweep",
]

#: The app keys that set a controller, and the controller each needs.
KEY_CONTROLLER: Mapping[str, str] = {
    "memory_max": "memory",
    "cpu_weight": "cpu",
    "pids_max": "pids",
}
#: Passes of a late placement over what the run forked before its leader was moved.
_SWEEP_PASSES = 8
#: A run without controller settings.
NO_LIMITS = Limits()
#: The leaf procsupd moves itself into when it was alone in its cgroup.
SELF_LEAF = "procsupd"
_MOUNTINFO_ESCAPES = {"\\040": " ", "\\011": "\t", "\\012": "\n", "\\134": "\\"}


# -- parsing (pure) ---------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """A mountinfo path field: the kernel writes space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    for code, char in _MOUNTINFO_ESCAPES.items():
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> tuple[str, str] | None:
    """(mount point, root within the hierarchy) of the cgroup2 mount in `/proc/self/mountinfo`
    text, or None when there is none. Of several, one of the whole hierarchy (root "/") wins,
    else the first. Lines are `id parent maj:min root mountpoint opts [optional...] - fstype
    source superopts` (proc(5)); malformed lines are skipped."""
    found: tuple[str, str] | None = None
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, fs = head.split(), tail.split()
        if not sep or len(fields) < 5 or not fs or fs[0] != "cgroup2":
            continue
        mount = (_unescape(fields[4]), _unescape(fields[3]))
        if mount[1] == "/":
            return mount
        found = found or mount
    return found


def parse_proc_cgroup(text: str) -> str | None:
    """The cgroup v2 path in `/proc/<pid>/cgroup` text (the `0::/path` line), or None when the
    process has none (a v1-only system). The path may itself hold ':'."""
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if hid == "0" and sep and not controllers and path.startswith("/"):
            return path
    return None


def own_dir(mount: str, root: str, path: str) -> str | None:
    """The directory of cgroup `path` (as `/proc/self/cgroup` says it) under a cgroup2 mount of
    the hierarchy at `mount` showing it from `root`; None when the mount does not show it (a
    path outside a cgroup namespace reads "/../x", or outside a mount of a subtree)."""
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None
        path = path[len(root.rstrip("/")):] or "/"
    parts = [p for p in path.split("/") if p]
    if ".." in parts or "." in parts or path.endswith(" (deleted)"):
        return None
    return os.path.join(mount, *parts) if parts else mount


# -- the hierarchy ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """The cgroup2 mount and procsupd's own cgroup directory under it."""

    mount: str
    own: str

    @property
    def own_is_root(self) -> bool:
        """Whether procsupd's cgroup is the root of the hierarchy (exempt from "no internal
        processes"). The root has no `cgroup.type`; every other cgroup has one."""
        return not os.path.exists(os.path.join(self.own, "cgroup.type"))


def find(pid: int | str = "self") -> Hierarchy | None:
    """The cgroup2 hierarchy and `pid`'s cgroup in it, from /proc; None where there is none
    (not mounted, a v1-only system, the cgroup outside the mount)."""
    try:
        mounted = parse_mountinfo(read(f"/proc/{pid}/mountinfo"))
        path = parse_proc_cgroup(read(f"/proc/{pid}/cgroup"))
    except OSError:
        return None
    if mounted is None or path is None:
        return None
    own = own_dir(mounted[0], mounted[1], path)
    return Hierarchy(mounted[0], own) if own is not None and os.path.isdir(own) else None


def limits_of(spec: AppSpec) -> Limits:
    """The controller settings an app asks for (its `memory_max`, `cpu_weight`, `pids_max`)."""
    return Limits(spec.memory_max, spec.cpu_weight, spec.pids_max)


class Tree:
    """The daemon's base cgroup and the groups of its runs (see the module docstring)."""

    def __init__(self, hierarchy: Hierarchy, base: str, *, can_enable: bool,
                 home: str | None = None) -> None:
        self.hierarchy = hierarchy
        self.base = base
        #: procsupd's own cgroup after `open_tree` (<own>, or <own>/procsupd), where `spawn`
        #: brings it back
        self.home = home if home is not None else hierarchy.own
        self._can_enable = can_enable  # <own> holds no process (or is the root)
        self._counter = itertools.count()
        #: the worker of `place_late`, made on first use
        self._placer: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def parent(self) -> str:
        return os.path.dirname(self.base)

    @property
    def can_enable(self) -> bool:
        return self._can_enable

    def offered(self) -> frozenset[str]:
        """The controllers a run may get: those enabled for the base's children, and those its
        parent offers where procsupd may enable them."""
        have = words(os.path.join(self.base, "cgroup.controllers"))
        if self._can_enable:
            have |= words(os.path.join(self.parent, "cgroup.controllers"))
        return have

    def enable(self, controllers: Iterable[str]) -> None:
        """Enable `controllers` for the runs (in the parent's, then the base's
        subtree_control). CgroupError names one the hierarchy does not offer."""
        for ctrl in sorted(set(controllers)):
            if ctrl in words(os.path.join(self.base, "cgroup.subtree_control")):
                continue
            for where in (self.parent, self.base):
                if ctrl in words(os.path.join(where, "cgroup.subtree_control")):
                    continue
                try:
                    write(os.path.join(where, "cgroup.subtree_control"), f"+{ctrl}")
                except OSError as exc:
                    why = ("the hierarchy does not offer it" if exc.errno == errno.ENOENT
                           else "the cgroup holds processes" if exc.errno == errno.EBUSY
                           else exc.strerror or str(exc))
                    raise CgroupError(f"cannot enable the {ctrl} controller in {where}: "
                                      f"{why}") from None

    def create(self, app: str, index: int, limits: Limits = NO_LIMITS) -> Group:
        """A new, empty group for a run of `app:index`, with `limits` written (their
        controllers enabled first). CgroupError says why not; nothing is left behind then.
        For a group to `spawn` into, leave `limits` out here and give them to `spawn`."""
        if limits.controllers():
            self.enable(limits.controllers())
        while True:
            group = Group(os.path.join(self.base, f"{app}@{index}.{next(self._counter)}"))
            try:
                os.mkdir(group.path)
                break
            except FileExistsError:  # a leftover of an earlier daemon: take the next number
                continue
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {group.path}: "
                                  f"{exc.strerror or exc}") from None
        try:
            group.set_limits(limits)
        except CgroupError:
            group.remove()
            raise
        return group

    def spawn(self, group: Group, start: Callable[[], _T], limits: Limits = NO_LIMITS) -> _T:
        """`start()` (which forks and execs: `spawn.start`) with procsupd inside the empty
        `group`, so the child is born in it; then procsupd goes home and `limits` are written
        (their controllers must be enabled: `create` with the same limits, or `enable`).

        While procsupd is in the group, so are its other threads (for a fraction of a
        millisecond: docs/benchmarks.md), and what it allocates is charged to the group.
        CgroupError: procsupd could not enter the group (nothing was started), or the limits
        could not be written (the process runs, in its group: the caller kills the group).
        Leaving cannot fail as long as `home` exists; if it does, procsupd stays in the group,
        which `Group.kill` then never kills, and CgroupError says so."""
        me = os.getpid()
        try:
            group.place(me)
        except ProcessLookupError:  # (cannot happen for ourselves)
            raise CgroupError(f"cannot enter cgroup {group.path}") from None
        try:
            result = start()
        finally:
            self._go_home(group)
        if limits.files():
            group.set_limits(limits)
        return result

    def start(self, app: str, index: int, limits: Limits,
              start: Callable[[], _T]) -> tuple[_T, Group | None, str | None]:
        """`start()` born in a new group of run `app:index` with `limits`: its result, the
        group, and a warning (None when all went as asked). A cgroup problem never keeps an
        instance from starting: a controller that cannot be had leaves the run in a group
        without limits, a group that cannot be made or entered leaves it outside any (the
        warning says which). What `start` raises is raised, the empty group removed."""
        warning = None
        try:
            group = self.create(app, index, limits)
        except CgroupError as exc:
            warning, limits = f"{exc.reason}: it runs without its cgroup limits", NO_LIMITS
            try:
                group = self.create(app, index)
            except CgroupError as again:
                return start(), None, f"{again.reason}: it runs outside any cgroup"
        try:
            group.place(os.getpid())
        except (CgroupError, ProcessLookupError) as exc:
            group.remove()
            return start(), None, f"{exc}: it runs outside any cgroup"
        try:
            result = start()
        except BaseException:
            self._go_home(group)
            group.remove()
            raise
        finally:
            if os.getpid() in group.pids():
                self._go_home(group)
        try:
            group.set_limits(limits)
        except CgroupError as exc:
            warning = f"{exc.reason}: it runs without its cgroup limits"
        return result, group, warning

    def _go_home(self, group: Group) -> None:
        last: BaseException | None = None
        for _ in range(3):
            try:
                Group(self.home).place(os.getpid())
                return
            except (CgroupError, ProcessLookupError) as exc:
                last = exc
        raise CgroupError(f"procsupd could not leave cgroup {group.path} for {self.home}: "
                          f"{last}")

    def groups(self) -> list[Group]:
        """Every run group under the base (at start-up: what an earlier daemon left)."""
        try:
            names = sorted(e.name for e in os.scandir(self.base) if e.is_dir())
        except FileNotFoundError:
            return []
        return [Group(os.path.join(self.base, n)) for n in names]

    def clear(self, timeout: float = 5.0) -> list[Group]:
        """Kill every group under the base, wait up to `timeout` seconds for them to empty and
        remove them: recovery of what an earlier daemon left (after its kill_signal had its
        time), or the last resort at shutdown. Blocks; the groups still there after it."""
        left = self.groups()
        for group in left:
            group.kill()
        deadline = time.monotonic() + timeout
        for group in left:
            events = group.events() if os.path.isdir(group.path) else None
            if events is not None:
                events.wait(max(0.0, deadline - time.monotonic()))
                events.close()
            group.remove()
        return [g for g in left if os.path.isdir(g.path)]

    def place_late(self, group: Group, pid: int,
                   ours: Callable[[int], bool]) -> concurrent.futures.Future[int]:
        """Move the run that process `pid` leads, started outside any group, into the empty
        `group`, in the worker thread (`sweep`; `ours` is called there). The future's result:
        how many processes were moved; its exception: CgroupError when the leader could not
        be moved (it runs outside the group)."""
        if self._placer is None:
            self._placer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="procsup-cgroup")
        return self._placer.submit(sweep, group, pid, ours)

    def settle(self) -> None:
        """Wait for the placements under way to end (the daemon is closing: what was moved
        must be where `groups` finds it); those not begun are cancelled."""
        if self._placer is not None:
            self._placer.shutdown(wait=True, cancel_futures=True)
            self._placer = None

    def close(self) -> None:
        """Settle the placements, then remove the base if no group is left in it (the daemon
        exits cleanly)."""
        self.settle()
        with contextlib.suppress(OSError):
            os.rmdir(self.base)


def sweep(group: Group, pid: int, ours: Callable[[int], bool],
          passes: int = _SWEEP_PASSES) -> int:
    """Move `pid` and what it forked into `group`: its descendants, and the children of
    procsupd for which `ours(pid)` is true (the run's orphans, re-parented to procsupd before
    they were seen below `pid`), again until a pass finds none outside the group (at most
    `passes`: a process that forks faster than it is moved is left to the process group and
    the subreaper). A process is moved with all its threads; one that forks while being moved
    has its child in the group or outside, where the next pass sees it. The number moved.
    CgroupError: the kernel refused to move the leader (a gone leader is no error: what it
    left is still swept)."""
    moved = 0
    try:
        group.place(pid)
        moved += 1
    except ProcessLookupError:
        pass
    for _ in range(passes):
        inside = set(group.pids())
        outside = [p for p in procfs.descendants(pid) if p not in inside]
        outside += [p for p in procfs.children() if p not in inside and ours(p)]
        if not outside:
            break
        for p in outside:
            with contextlib.suppress(ProcessLookupError, CgroupError):
                group.place(p)
                moved += 1
    return moved


def open_tree(name: str, *, hierarchy: Hierarchy | None = None,
              move_self: bool = True) -> Tree:
    """Set up the daemon's base cgroup `procsup-<name>` (see the module docstring), moving
    procsupd into `<own>/procsupd` when it is alone in its cgroup (`move_self`). CgroupError
    says why procsupd cannot create cgroups here: what `version --json` reports as
    `"cgroups": false`, with this reason in the daemon's log."""
    h = hierarchy if hierarchy is not None else find()
    if h is None:
        raise CgroupError("no cgroup2 hierarchy shows procsupd's cgroup (not mounted, or a "
                          "cgroup v1 system)")
    if not os.access(os.path.join(h.own, "cgroup.procs"), os.W_OK) or not os.access(
            h.own, os.W_OK):
        raise CgroupError(f"procsupd cannot write its cgroup {h.own} (run it as root, or "
                          "under systemd with Delegate=yes)")
    can_enable = h.own_is_root
    home = h.own
    if not can_enable:
        others = set(Group(h.own).pids()) - {os.getpid()}
        if not others and move_self:
            leaf = Group(os.path.join(h.own, SELF_LEAF))
            with contextlib.suppress(FileExistsError):
                os.mkdir(leaf.path)
            try:
                leaf.place(os.getpid())
            except (CgroupError, ProcessLookupError) as exc:
                raise CgroupError(f"cannot move procsupd into {leaf.path}: {exc}") from None
            can_enable, home = True, leaf.path
    base = os.path.join(h.own, f"procsup-{name}")
    try:
        os.mkdir(base)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {base}: {exc.strerror or exc}") from None
    return Tree(h, base, can_enable=can_enable, home=home)


def reopen(base: str, home: str, can_enable: bool) -> Tree:
    """The tree a previous image of this procsupd opened (a re-exec handed it over): its base
    and procsupd's home as they are, nothing moved or created. CgroupError if they are gone."""
    h = find()
    if h is None or not os.path.isdir(base):
        raise CgroupError(f"the cgroup tree {base} the previous image used is gone")
    return Tree(Hierarchy(h.mount, os.path.dirname(base)), base, can_enable=can_enable,
                home=home)


@dataclasses.dataclass(frozen=True)
class Support:
    """What procsupd could do here, found without creating anything (`probe`): `reason` is
    why it cannot create cgroups (None: it can), `offered` the controllers its runs could
    get."""

    reason: str | None
    offered: frozenset[str] = frozenset()


def probe(hierarchy: Hierarchy | None = None) -> Support:
    """Whether procsupd, in the cgroup this process is in, could create cgroups, and which
    controllers it could give its runs (the decisions of `open_tree`, made without writing):
    those its cgroup offers where it could enable them (the root, or procsupd alone in its
    cgroup, as under systemd's Delegate=yes), else those already enabled for its children."""
    h = hierarchy if hierarchy is not None else find()
    if h is None:
        return Support("no cgroup2 hierarchy shows procsupd's cgroup (not mounted, or a cgroup "
                       "v1 system)")
    if not (os.access(h.own, os.W_OK) and os.access(os.path.join(h.own, "cgroup.procs"),
                                                    os.W_OK)):
        return Support(f"procsupd cannot write its cgroup {h.own} (run it as root, or under "
                       "systemd with Delegate=yes)")
    alone = h.own_is_root or not set(Group(h.own).pids()) - {os.getpid()}
    offered = words(os.path.join(h.own, "cgroup.controllers" if alone
                                  else "cgroup.subtree_control"))
    return Support(None, offered)


def app_warnings(apps: Mapping[str, AppSpec], support: Support,
                 setting: str | bool = "auto") -> list[str]:
    """The `procsupd --check` (and start-up) warnings for apps whose cgroup keys will have no
    effect: cgroups are off (`setting` false), procsupd cannot create them, or the hierarchy
    does not offer the controller. Located like config warnings (`file:line: app, key`)."""
    out = []
    for name, spec in apps.items():
        for key, controller in KEY_CONTROLLER.items():
            if getattr(spec, key) is None:
                continue
            if setting is False:
                why = "[procsup] cgroups = false: it has no effect"
            elif support.reason is not None:
                why = f"procsupd cannot create cgroups here ({support.reason}): it has no effect"
            elif controller not in support.offered:
                offered = " ".join(sorted(support.offered)) or "none"
                why = (f"the cgroup hierarchy does not offer the {controller} controller "
                       f"(offered: {offered}): it has no effect")
            else:
                continue
            out.append(str(ConfigError(why, file=spec.source, line=spec.line, app=name,
                                       key=key)))
    return out
