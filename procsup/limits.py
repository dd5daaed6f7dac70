"""Spawn-time process attributes: `limits`, `nice`, `oom_score_adjust` (layer 1, pure).

What an instance inherits at fork (procsupd's own rlimits, the spawning thread's nice, the
daemon's oom_score_adj), what it wants (its keys; by default procsupd's *original* open-files
limit, not the one procsupd raised for itself), and how to get from one to the other without
running Python between fork and exec (`plan`):

- nothing, when the wanted values are the inherited ones;
- for RLIMIT_NOFILE's soft limit alone: set procsupd's own soft limit to the wanted one around
  the fork and restore it after (the child inherits rlimits at fork), when the fds procsupd
  holds leave room below it (`room`). Only the soft limit: a lowered hard limit comes back only
  with CAP_SYS_RESOURCE, which even root lacks in many containers;
- else an exec'd helper that sets the values on itself and execs the next (`prlimit`, `nice`,
  `choom`): they exec, they do not fork, so the instance's pid is the program's pid.

`problems` says what procsupd cannot do for a spec (raising a hard limit without
CAP_SYS_RESOURCE, lowering nice without CAP_SYS_NICE, lowering the OOM score without
CAP_SYS_RESOURCE), for `--check` warnings and the start error. spawn executes the plan; schema
validates with the resource table.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Callable, Mapping, Sequence

#: Resource names (as setrlimit(2) names them, without RLIMIT_, and as prlimit's options).
RESOURCES: Mapping[str, int] = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS on Linux, which the resource module does not name
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}
#: Resources counted in bytes: their values may be written as sizes ("512M").
BYTE_RESOURCES = frozenset({"as", "core", "data", "fsize", "memlock", "msgqueue", "rss", "stack"})
#: What the kernel calls unlimited (resource.RLIM_INFINITY).
UNLIMITED = resource.RLIM_INFINITY
NICE_RANGE = (-20, 19)
OOM_RANGE = (-1000, 1000)
#: fds other threads of procsupd (the config loader, the file watch, the executor) and Popen
#: itself (/dev/null, its error pipe) may open while the spawning thread holds procsupd's own
#: open-files limit down at an instance's: lowering is done only with this many free below it.
FORK_HEADROOM = 64

#: (soft, hard), UNLIMITED for no limit
Pair = tuple[int, int]


def above(a: int, b: int) -> bool:
    """Whether limit `a` is higher than `b` (UNLIMITED is the highest)."""
    if a == b:
        return False
    return a == UNLIMITED or (b != UNLIMITED and a > b)


def text(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)


@dataclasses.dataclass(frozen=True)
class Wanted:
    """An instance's attributes as its app sets them: `limits` (name -> (soft, hard), only the
    resources it names), `nice`, `oom_score_adjust` (None: as procsupd's own)."""

    limits: Mapping[str, Pair] = dataclasses.field(default_factory=dict)
    nice: int | None = None
    oom_score_adjust: int | None = None

    @classmethod
    def of(cls, limits: Sequence[tuple[str, int, int]], nice: int | None,
           oom_score_adjust: int | None) -> Wanted:
        return cls({n: (s, h) for n, s, h in limits}, nice, oom_score_adjust)


@dataclasses.dataclass(frozen=True)
class Inherited:
    """What a child of procsupd's spawning thread gets at fork, and what procsupd started with.

    `limits`: the current limit of every resource the plan looks at (name -> pair);
    `original_nofile`: RLIMIT_NOFILE as procsupd was started (before it raised its own soft
    limit), the default of an instance; `nice`: the spawning thread's; `oom_score_adjust`:
    procsupd's; `sys_resource`: it has CAP_SYS_RESOURCE (may raise hard limits and lower the
    OOM score), `sys_nice`: CAP_SYS_NICE (may lower nice); `nice_floor`: the lowest nice it
    may set without (20 - RLIMIT_NICE's soft limit)."""

    limits: Mapping[str, Pair]
    original_nofile: Pair
    nice: int = 0
    oom_score_adjust: int = 0
    sys_resource: bool = False
    sys_nice: bool = False
    nice_floor: int = 20
    nr_open: int = 1048576  # the most RLIMIT_NOFILE may be, even for root (fs.nr_open)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one spawn gets its attributes. `nofile`: procsupd's own RLIMIT_NOFILE for the
    duration of the fork (then restored); `prlimit`: resources set by the `prlimit` helper;
    `nice`: the increment given to `nice -n`; `oom_score_adjust`: the value given to `choom -n`.
    An empty plan (`Plan()`) costs nothing."""

    nofile: Pair | None = None
    prlimit: tuple[tuple[str, int, int], ...] = ()
    nice: int | None = None
    oom_score_adjust: int | None = None

    @property
    def helpers(self) -> tuple[str, ...]:
        """The helper programs this plan execs, in order."""
        return tuple(name for name, used in (
            ("prlimit", bool(self.prlimit)), ("nice", self.nice is not None),
            ("choom", self.oom_score_adjust is not None)) if used)


def effective(wanted: Wanted, inherited: Inherited) -> dict[str, Pair]:
    """The limits the instance must run with where they may differ from the inherited ones:
    the ones it names, and RLIMIT_NOFILE at procsupd's original (soft within the current hard
    limit) when it does not name it."""
    out = dict(wanted.limits)
    if "nofile" not in out:
        soft, hard = inherited.original_nofile
        cur_hard = inherited.limits["nofile"][1]
        if above(hard, cur_hard):
            hard = cur_hard
        out["nofile"] = (cur_hard if above(soft, cur_hard) else soft, hard)
    return out


def plan(wanted: Wanted, inherited: Inherited, room: Callable[[int], bool]) -> Plan:
    """How a spawn gets `wanted` from `inherited`. `room(limit)`: whether procsupd's open fds
    leave FORK_HEADROOM free below `limit` (asked only when the plan would lower procsupd's own
    open-files limit around the fork). Assumes `problems` found nothing."""
    changes = {name: pair for name, pair in effective(wanted, inherited).items()
               if inherited.limits[name] != pair}
    nofile: Pair | None = None
    want = changes.get("nofile")
    if want is not None:
        cur = inherited.limits["nofile"]
        lowers = above(cur[0], want[0])
        if want[1] == cur[1] and (not lowers or (want[0] != UNLIMITED and room(want[0]))):
            nofile = want
            del changes["nofile"]
    nice = None
    if wanted.nice is not None and wanted.nice != inherited.nice:
        nice = wanted.nice - inherited.nice
    oom = None
    if wanted.oom_score_adjust is not None and wanted.oom_score_adjust != \
            inherited.oom_score_adjust:
        oom = wanted.oom_score_adjust
    prlimit = tuple((name, *changes[name]) for name in RESOURCES if name in changes)
    return Plan(nofile=nofile, prlimit=prlimit, nice=nice, oom_score_adjust=oom)


def helper_argv(plan: Plan, argv: Sequence[str], paths: Mapping[str, str]) -> tuple[str, ...]:
    """`argv` behind the helpers of `plan` (each execs the next; `paths`: helper -> its
    absolute path). The program is looked up in the child's PATH by the last helper."""
    prefix: list[str] = []
    if plan.prlimit:
        prefix += [paths["prlimit"],
                   *(f"--{n}={text(s)}:{text(h)}" for n, s, h in plan.prlimit), "--"]
    if plan.nice is not None:
        prefix += [paths["nice"], "-n", str(plan.nice), "--"]
    if plan.oom_score_adjust is not None:
        prefix += [paths["choom"], "-n", str(plan.oom_score_adjust), "--"]
    return (*prefix, *argv)


def problems(wanted: Wanted, inherited: Inherited) -> list[str]:
    """What procsupd cannot give an instance (each a sentence naming the key); empty when all
    of `wanted` can be had."""
    out: list[str] = []
    for name, (_soft, hard) in wanted.limits.items():
        cur_hard = inherited.limits[name][1]
        if name == "nofile" and (hard == UNLIMITED or hard > inherited.nr_open):
            out.append(f"limits.nofile: {text(hard)} is above fs.nr_open ({inherited.nr_open}), "
                       "the most the kernel allows")
        elif not inherited.sys_resource and above(hard, cur_hard):
            out.append(f"limits.{name}: hard limit {text(hard)} is above procsupd's own "
                       f"({text(cur_hard)}), which only root with CAP_SYS_RESOURCE may raise")
    if wanted.nice is not None and not inherited.sys_nice and wanted.nice < inherited.nice \
            and wanted.nice < inherited.nice_floor:
        out.append(f"nice: {wanted.nice} is below procsupd's own nice ({inherited.nice}), "
                   "which only root with CAP_SYS_NICE (or a higher RLIMIT_NICE) may lower")
    if wanted.oom_score_adjust is not None and not inherited.sys_resource \
            and wanted.oom_score_adjust < inherited.oom_score_adjust:
        out.append(f"oom_score_adjust: {wanted.oom_score_adjust} is below procsupd's own "
                   f"({inherited.oom_score_adjust}), which only root with CAP_SYS_RESOURCE may "
                   "lower")
    return out
