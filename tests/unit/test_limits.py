"""The decision of how a spawn gets its limits, nice and OOM score (`limits.plan`), and what
procsupd cannot grant (`limits.problems`): tables, no processes."""

from __future__ import annotations

import pytest

from procsup import limits
from procsup.limits import UNLIMITED as INF
from procsup.limits import Inherited, Plan, Wanted

RAISED = (16384, 524288)  # procsupd's own open-files limit after it raised it
ORIGINAL = (1024, 524288)  # as procsupd was started


def inherited(nofile: tuple[int, int] = RAISED, original: tuple[int, int] = ORIGINAL,
              **kw: object) -> Inherited:
    current = {"nofile": nofile, "nproc": (4000, 4000), "core": (0, INF), "as": (INF, INF)}
    return Inherited(current, original, **kw)  # type: ignore[arg-type]


def room(limit: int) -> bool:
    return True


def no_room(limit: int) -> bool:
    return False


PLANS = [
    # the default: only the open-files limit procsupd raised is put back, around the fork
    ("default, raised", Wanted(), inherited(), room, Plan(nofile=ORIGINAL)),
    ("default, too many fds", Wanted(), inherited(), no_room,
     Plan(prlimit=(("nofile", 1024, 524288),))),
    ("default, not raised", Wanted(), inherited(nofile=ORIGINAL), no_room, Plan()),
    # hard limit lowered from outside below the original soft: soft follows it
    ("default, hard lowered", Wanted(), inherited(nofile=(2000, 2000), original=(4096, 8192)),
     no_room, Plan()),
    # the app's own values, equal to what it inherits: nothing at all
    ("equal to inherited", Wanted({"nproc": (4000, 4000), "core": (0, INF)}, nice=0,
                                  oom_score_adjust=0),
     inherited(nofile=ORIGINAL), no_room, Plan()),
    # soft nofile only: around the fork (raising needs no room)
    ("nofile soft raised", Wanted({"nofile": (65536, 524288)}), inherited(), no_room,
     Plan(nofile=(65536, 524288))),
    ("nofile soft lowered", Wanted({"nofile": (4096, 524288)}), inherited(), room,
     Plan(nofile=(4096, 524288))),
    ("nofile unlimited soft", Wanted({"nofile": (INF, INF)}),
     inherited(nofile=(1024, INF), original=(1024, INF)), room, Plan(nofile=(INF, INF))),
    # a different hard limit: a lowered hard one would not come back, so the helper
    ("nofile hard", Wanted({"nofile": (4096, 4096)}), inherited(), room,
     Plan(prlimit=(("nofile", 4096, 4096),))),
    ("several, in resource order", Wanted({"nproc": (512, 512), "core": (INF, INF)}),
     inherited(), room,
     Plan(nofile=ORIGINAL, prlimit=(("core", INF, INF), ("nproc", 512, 512)))),
    ("nice", Wanted(nice=5), inherited(nofile=ORIGINAL, nice=2), no_room, Plan(nice=3)),
    ("nice lower", Wanted(nice=-5), inherited(nofile=ORIGINAL, sys_nice=True), no_room,
     Plan(nice=-5)),
    ("oom", Wanted(oom_score_adjust=500), inherited(nofile=ORIGINAL, oom_score_adjust=100),
     no_room, Plan(oom_score_adjust=500)),
    ("everything", Wanted({"nproc": (1, 1)}, nice=1, oom_score_adjust=1), inherited(), room,
     Plan(nofile=ORIGINAL, prlimit=(("nproc", 1, 1),), nice=1, oom_score_adjust=1)),
]


@pytest.mark.parametrize(("want", "have", "fds", "expected"),
                         [p[1:] for p in PLANS], ids=[p[0] for p in PLANS])
def test_plan(want: Wanted, have: Inherited, fds: object, expected: Plan) -> None:
    assert limits.plan(want, have, fds) == expected  # type: ignore[arg-type]


def test_room_is_asked_for_the_lowered_limit_only() -> None:
    asked: list[int] = []

    def fds(limit: int) -> bool:
        asked.append(limit)
        return True

    limits.plan(Wanted(), inherited(), fds)
    limits.plan(Wanted({"nofile": (65536, 524288)}), inherited(), fds)
    assert asked == [1024]


def test_helper_argv_chains_helpers_that_exec() -> None:
    plan = Plan(prlimit=(("core", INF, INF), ("nofile", 1024, 4096)), nice=3,
                oom_score_adjust=-5)
    paths = {"prlimit": "/p/prlimit", "nice": "/p/nice", "choom": "/p/choom"}
    assert plan.helpers == ("prlimit", "nice", "choom")
    assert limits.helper_argv(plan, ("sleep", "1"), paths) == (
        "/p/prlimit", "--core=unlimited:unlimited", "--nofile=1024:4096", "--",
        "/p/nice", "-n", "3", "--", "/p/choom", "-n", "-5", "--", "sleep", "1")
    assert limits.helper_argv(Plan(nofile=(1, 2)), ("x",), {}) == ("x",)


PROBLEMS = [
    ("hard above, unprivileged", Wanted({"nproc": (10, INF)}), inherited(),
     "limits.nproc: hard limit unlimited is above procsupd's own (4000), which only root with "
     "CAP_SYS_RESOURCE may raise"),
    ("hard above, privileged", Wanted({"nproc": (10, INF)}), inherited(sys_resource=True), None),
    ("lowering is fine", Wanted({"nproc": (1, 1), "nofile": (8, 8)}), inherited(), None),
    ("nofile above nr_open", Wanted({"nofile": (INF, INF)}), inherited(sys_resource=True),
     "limits.nofile: unlimited is above fs.nr_open (1048576)"),
    ("nice lower", Wanted(nice=-1), inherited(), "nice: -1 is below procsupd's own nice (0)"),
    ("nice lower, RLIMIT_NICE", Wanted(nice=-1), inherited(nice_floor=-5), None),
    ("nice lower, CAP_SYS_NICE", Wanted(nice=-1), inherited(sys_nice=True), None),
    ("nice higher", Wanted(nice=10), inherited(), None),
    ("oom lower", Wanted(oom_score_adjust=-1), inherited(),
     "oom_score_adjust: -1 is below procsupd's own (0)"),
    ("oom lower, privileged", Wanted(oom_score_adjust=-1000), inherited(sys_resource=True), None),
    ("oom higher", Wanted(oom_score_adjust=1000), inherited(), None),
]


@pytest.mark.parametrize(("want", "have", "expected"), [p[1:] for p in PROBLEMS],
                         ids=[p[0] for p in PROBLEMS])
def test_problems(want: Wanted, have: Inherited, expected: str | None) -> None:
    found = limits.problems(want, have)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected), found
