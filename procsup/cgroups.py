"""cgroup v2 groups of instance runs (layer 2: the only module that writes to the cgroup tree).

Where procsupd can create cgroup v2 groups (root with a writable hierarchy, or systemd's
`Delegate=yes`), every run of an instance gets a cgroup of its own: stopping it kills the whole
cgroup (`cgroup.kill`), whatever its processes did to their process group or session; its
memory is the cgroup's; `memory_max`, `cpu_weight` and `pids_max` are written to its
controllers where the hierarchy offers them. Nothing here runs between fork and exec: procsupd moves
itself into the new run's (empty) cgroup for the fork and back right after it (`Tree.spawn`),
so the child is born in its cgroup and nothing it forks, however early, is outside it. The
limits are written once procsupd is back home, so they never apply to procsupd itself; and a
kill never reaches a group that holds procsupd (docs/benchmarks.md, "cgroup placement", says why
this and not a write of the child's pid after Popen, or an exec'd helper).

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

import contextlib
import dataclasses
import errno
import itertools
import os
import select
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from procsup import procfs
from procsup.errors import ConfigError, ProcsupError
from procsup.model import AppSpec

_T = TypeVar("_T")

__all__ = [
    "KEY_CONTROLLER",
    "CgroupError",
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
]

#: The app keys that set a controller, and the controller each needs.
KEY_CONTROLLER: Mapping[str, str] = {
    "memory_max": "memory",
    "cpu_weight": "cpu",
    "pids_max": "pids",
}
#: The leaf procsupd moves itself into when it was alone in its cgroup.
SELF_LEAF = "procsupd"
#: Rounds of "SIGKILL every pid in cgroup.procs" where there is no `cgroup.kill` (< 5.14).
_KILL_ROUNDS = 200
#: How often `Events.wait` reads cgroup.events again besides its notifications (seconds).
_RECHECK = 0.0005
_MOUNTINFO_ESCAPES = {"\\040": " ", "\\011": "\t", "\\012": "\n", "\\134": "\\"}


class CgroupError(ProcsupError):
    """A cgroup cannot be used as asked; `reason` is what the log or `status` shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    """One write(2) of `text`: a cgroup interface file takes one value per write."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _words(path: str) -> frozenset[str]:
    try:
        return frozenset(_read(path).split())
    except OSError:
        return frozenset()


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
        mounted = parse_mountinfo(_read(f"/proc/{pid}/mountinfo"))
        path = parse_proc_cgroup(_read(f"/proc/{pid}/cgroup"))
    except OSError:
        return None
    if mounted is None or path is None:
        return None
    own = own_dir(mounted[0], mounted[1], path)
    return Hierarchy(mounted[0], own) if own is not None and os.path.isdir(own) else None


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


def limits_of(spec: AppSpec) -> Limits:
    """The controller settings an app asks for (its `memory_max`, `cpu_weight`, `pids_max`)."""
    return Limits(spec.memory_max, spec.cpu_weight, spec.pids_max)


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
            _write(os.path.join(self.path, "cgroup.procs"), str(pid))
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
            text = _read(f"/proc/{pid}/task/{pid}/children")
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
            return [int(w) for w in _read(os.path.join(self.path, "cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:
            return "populated 1" in _read(os.path.join(self.path, "cgroup.events"))
        except FileNotFoundError:
            return False

    def events(self) -> Events:
        """A waiter on the group's `cgroup.events` (see `Events`)."""
        return Events(os.path.join(self.path, "cgroup.events"))

    def signal(self, sig: int) -> int:
        """`sig` to every process in the group (a stop's kill_signal); how many got it."""
        sent = 0
        me = os.getpid()
        for pid in self.pids():
            if pid == me:
                continue
            try:
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
                _write(os.path.join(self.path, "cgroup.kill"), "1")
                return
            except FileNotFoundError:
                if not os.path.isdir(self.path):
                    return
        freeze = os.path.join(self.path, "cgroup.freeze")
        frozen = False
        if me not in self.pids():
            with contextlib.suppress(OSError):
                _write(freeze, "1")
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
                    _write(freeze, "0")

    def memory(self) -> int:
        """Bytes of memory the group uses: `memory.current` where the memory controller is
        enabled for it (page cache and kernel memory included), else the RSS of its
        processes, summed."""
        try:
            return int(_read(os.path.join(self.path, "memory.current")))
        except (OSError, ValueError):
            return sum(procfs.rss(pid) or 0 for pid in self.pids())

    def set_limits(self, limits: Limits) -> None:
        """Write the limits; CgroupError names a file the group lacks (its controller is not
        enabled) or a value the kernel refused."""
        for name, value in limits.files().items():
            try:
                _write(os.path.join(self.path, name), value)
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

    @property
    def parent(self) -> str:
        return os.path.dirname(self.base)

    def offered(self) -> frozenset[str]:
        """The controllers a run may get: those enabled for the base's children, and those its
        parent offers where procsupd may enable them."""
        have = _words(os.path.join(self.base, "cgroup.controllers"))
        if self._can_enable:
            have |= _words(os.path.join(self.parent, "cgroup.controllers"))
        return have

    def enable(self, controllers: Iterable[str]) -> None:
        """Enable `controllers` for the runs (in the parent's, then the base's
        subtree_control). CgroupError names one the hierarchy does not offer."""
        for ctrl in sorted(set(controllers)):
            if ctrl in _words(os.path.join(self.base, "cgroup.subtree_control")):
                continue
            for where in (self.parent, self.base):
                if ctrl in _words(os.path.join(where, "cgroup.subtree_control")):
                    continue
                try:
                    _write(os.path.join(where, "cgroup.subtree_control"), f"+{ctrl}")
                except OSError as exc:
                    why = ("the hierarchy does not offer it" if exc.errno == errno.ENOENT
                           else "the cgroup holds processes" if exc.errno == errno.EBUSY
                           else exc.strerror or str(exc))
                    raise CgroupError(f"cannot enable the {ctrl} controller in {where}: "
                                      f"{why}") from None

    def create(self, app: str, index: int, limits: Limits = Limits()) -> Group:
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

    def spawn(self, group: Group, start: Callable[[], _T], limits: Limits = Limits()) -> _T:
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
            warning, limits = f"{exc.reason}: it runs without its cgroup limits", Limits()
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

    def close(self) -> None:
        """Remove the base if no group is left in it (the daemon exits cleanly)."""
        with contextlib.suppress(OSError):
            os.rmdir(self.base)


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
    offered = _words(os.path.join(h.own, "cgroup.controllers" if alone
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
