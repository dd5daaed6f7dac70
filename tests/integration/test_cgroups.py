"""cgroups with real processes in real cgroups (issue 13, item 5).

Every test works in a base cgroup of its own under the writable cgroup2 hierarchy (found the
way procsupd finds it) and removes every cgroup it made, passed or failed: the fixture kills
what is left in each and removes them. Where procsupd could not create cgroups (no cgroup2
mount, not root), the tests skip with the reason; a controller test skips where the hierarchy
does not offer that controller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from procsup import cgroup, cgroups, procfs, statefile

from .conftest import Daemon, app_cmd, wait_for

pytestmark = pytest.mark.timeout(60)

#: Leaves a process behind that is in no process group or session of the leader's: a
#: double fork whose grandchild calls setsid, then the leader exits 0.
DOUBLE_FORK = "(setsid sleep 1000 &) ; exit 0"
#: A child that calls setsid and lives on beside the leader.
SETSID = "setsid sleep 1000 & exec sleep 1000"
NO_LIMITS = cgroups.Limits()


def _cleanup(tree: cgroups.Tree) -> None:
    assert tree.clear(10) == []
    tree.close()


@pytest.fixture
def tree() -> Iterator[cgroups.Tree]:
    try:
        t = cgroups.open_tree(f"test-{uuid.uuid4().hex[:12]}", move_self=False)
    except cgroups.CgroupError as exc:
        pytest.skip(f"procsupd could not create cgroups here: {exc.reason}")
    try:
        yield t
    finally:
        _cleanup(t)
    assert not os.path.exists(t.base)


def _start(tree: cgroups.Tree, group: cgroups.Group, script: str,
           limits: cgroups.Limits = NO_LIMITS) -> subprocess.Popen[bytes]:
    """`script` run by sh in a session of its own, born in `group` (as procsupd starts it)."""
    return tree.spawn(group, lambda: subprocess.Popen(["/bin/sh", "-c", script],
                                                      start_new_session=True), limits)


def _my_cgroup() -> str | None:
    with open("/proc/self/cgroup") as f:
        return cgroups.parse_proc_cgroup(f.read())


def _wait(cond: object, timeout: float = 10.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_the_hierarchy_is_found_from_proc() -> None:
    h = cgroups.find()
    if h is None:
        pytest.skip("no cgroup2 hierarchy shows this process's cgroup")
    assert os.path.isfile(os.path.join(h.own, "cgroup.procs"))
    with open(os.path.join(h.own, "cgroup.procs")) as f:
        assert str(os.getpid()) in f.read().split()


def test_a_double_fork_and_a_setsid_child_are_killed_with_the_cgroup(
        tree: cgroups.Tree) -> None:
    group = tree.create("web", 0)
    leader = _start(tree, group, DOUBLE_FORK)
    assert leader.wait(10) == 0  # the leader is gone; its grandchild lives on, elsewhere
    other = tree.create("web", 1)
    sibling = _start(tree, other, SETSID)
    def settled() -> bool:  # both in place, and the child's setsid done (it races the read)
        kids = [p for p in other.pids() if p != sibling.pid]
        try:
            return (len(group.pids()) == 1 and len(kids) == 1
                    and os.getsid(kids[0]) != sibling.pid)
        except ProcessLookupError:
            return False

    try:
        _wait(settled)
    except BaseException:
        sibling.kill()
        sibling.wait(10)
        raise
    (orphan,) = group.pids()
    assert os.getsid(orphan) != leader.pid  # left the leader's session
    setsid_child = next(p for p in other.pids() if p != sibling.pid)

    for g in (group, other):
        g.kill()
        events = g.events()
        try:
            assert events.wait(10), "the cgroup is still populated"
        finally:
            events.close()
        assert g.pids() == []
        assert not g.populated()
        assert g.remove()
        assert not os.path.exists(g.path)
    assert sibling.wait(10) == -signal.SIGKILL
    assert not _alive(orphan) and not _alive(setsid_child)


def test_what_a_shell_forks_first_thing_is_born_in_the_cgroup(tree: cgroups.Tree) -> None:
    """A pid written after Popen returns loses this race often (docs/benchmarks.md): the
    double fork of a shell is done before the write. `spawn` has no window."""
    me = _my_cgroup()
    for i in range(20):
        group = tree.create("race", i)
        leader = _start(tree, group, DOUBLE_FORK)
        assert _my_cgroup() == me  # the test process is back home
        assert leader.wait(10) == 0
        assert len(group.pids()) == 1, f"run {i}: the grandchild escaped"
        group.kill()
        assert group.events().wait(10)
        assert group.remove()


def test_a_late_placement_moves_what_was_forked_before_it(tree: cgroups.Tree) -> None:
    """`place_late`: a run started outside any group (as every run without controller keys
    is) is moved with all it forked meanwhile: its children and theirs, and the processes
    `ours` claims among procsupd's children (its orphans, re-parented to us)."""
    group = tree.create("late", 0)
    script = "sleep 1000 & sh -c 'sleep 1000 & exec sleep 1000' & exec sleep 1000"
    stray = subprocess.Popen(["sleep", "1000"])  # a child of ours that `ours` claims
    other = subprocess.Popen(["sleep", "1000"])  # one it does not
    leader = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    try:
        # what the shell forks: a sleep, and a shell that forks one more
        _wait(lambda: len(procfs.descendants(leader.pid)) == 3)
        moved = tree.place_late(group, leader.pid, lambda pid: pid == stray.pid).result(10)
        inside = set(group.pids())
        assert {leader.pid, stray.pid, *procfs.descendants(leader.pid)} <= inside
        assert other.pid not in inside
        assert moved == len(inside) == 5
        assert procfs.stat(other.pid) is not None
    finally:
        group.kill()
        assert group.events().wait(10)
        group.remove()
        for p in (stray, other, leader):
            p.kill()
            p.wait(10)


def test_a_late_placement_of_a_gone_leader_is_no_error(tree: cgroups.Tree) -> None:
    group = tree.create("gone", 0)
    leader = subprocess.Popen(["true"])
    leader.wait(10)
    assert tree.place_late(group, leader.pid, lambda pid: False).result(10) == 0
    missing = cgroups.Group(os.path.join(tree.base, "no-such-group"))
    alive = subprocess.Popen(["sleep", "1000"])
    try:
        with pytest.raises(cgroups.CgroupError, match="cannot move pid"):
            tree.place_late(missing, alive.pid, lambda pid: False).result(10)
    finally:
        alive.kill()
        alive.wait(10)
    assert group.remove()


def test_kill_never_reaches_procsupd_itself(tree: cgroups.Tree) -> None:
    group = tree.create("self", 0)
    proc = _start(tree, group, SETSID)
    _wait(lambda: len(group.pids()) == 2)
    group.place(os.getpid())  # as if procsupd had failed to leave after a spawn
    try:
        group.kill()  # survived: this test goes on
        _wait(lambda: group.pids() == [os.getpid()])
    finally:
        cgroups.Group(tree.home).place(os.getpid())
    assert proc.wait(10) == -signal.SIGKILL
    assert group.events().wait(10)
    assert group.remove()


def test_kill_without_cgroup_kill_falls_back_to_sigkill_of_every_pid(
        tree: cgroups.Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tree.create("fallback", 0)
    proc = _start(tree, group, SETSID)
    _wait(lambda: len(group.pids()) == 2)
    real_write = cgroup.write

    def no_cgroup_kill(path: str, text: str) -> None:
        if path.endswith("cgroup.kill"):
            raise FileNotFoundError(path)  # as on Linux < 5.14
        real_write(path, text)

    monkeypatch.setattr(cgroup, "write", no_cgroup_kill)
    group.kill()
    assert group.events().wait(10)
    assert proc.wait(10) == -signal.SIGKILL
    assert group.remove()


def test_pids_memory_and_signal(tree: cgroups.Tree) -> None:
    group = tree.create("mem", 0)
    script = ("import time, sys; b = b'x' * (32 << 20); sys.stdout.write('ok\\n'); "
              "sys.stdout.flush(); time.sleep(1000)")
    # placed after its start, as a program started elsewhere would be
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            start_new_session=True)
    group.place(proc.pid)
    assert group.place_children(proc.pid) == []
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ok\n"
    assert group.pids() == [proc.pid]
    assert group.memory() >= 32 << 20
    assert group.signal(signal.SIGTERM) == 1
    assert proc.wait(10) == -signal.SIGTERM
    proc.stdout.close()
    assert group.events().wait(10)
    assert group.memory() < 32 << 20
    assert group.remove()


def test_a_populated_group_is_not_removed(tree: cgroups.Tree) -> None:
    group = tree.create("busy", 0)
    proc = _start(tree, group, "exec sleep 1000")
    try:
        assert group.populated()
        assert not group.remove()
        assert os.path.isdir(group.path)
    finally:
        group.kill()
        proc.wait(10)
    assert group.events().wait(10)
    assert group.remove()


def test_the_waiter_is_a_file_descriptor_for_the_loop(tree: cgroups.Tree) -> None:
    import select

    group = tree.create("wait", 0)
    proc = _start(tree, group, "exec sleep 1000")
    events = group.events()
    try:
        assert events.populated()
        assert select.select([events], [], [], 0)[0] == []  # nothing changed yet
        proc.kill()
        ready = select.select([events], [], [], 5)[0]  # told, if up to 10-15 ms late
        assert ready == [events]
        assert not events.populated()
        assert select.select([events], [], [], 0)[0] == []  # re-armed by the read
    finally:
        events.close()
        proc.wait(10)
    assert group.remove()


def test_groups_lists_what_an_earlier_daemon_left(tree: cgroups.Tree) -> None:
    a = tree.create("web", 0)
    b = tree.create("web", 0)  # a replacement beside the run it replaces
    proc = _start(tree, b, SETSID)
    assert a.path != b.path
    again = cgroups.Tree(tree.hierarchy, tree.base, can_enable=False)
    assert [g.path for g in again.groups()] == sorted([a.path, b.path])
    assert {g.instance() for g in again.groups()} == {("web", 0)}
    c = again.create("web", 0)  # numbering continues past the leftovers
    assert c.path not in (a.path, b.path)
    assert again.clear(10) == []  # recovery: every leftover killed and removed
    assert again.groups() == []
    assert proc.wait(10) == -signal.SIGKILL


@pytest.mark.parametrize(("key", "limits", "file", "value"), [
    ("memory_max", cgroups.Limits(memory_max=64 << 20), "memory.max", str(64 << 20)),
    ("cpu_weight", cgroups.Limits(cpu_weight=50), "cpu.weight", "50"),
    ("pids_max", cgroups.Limits(pids_max=7), "pids.max", "7"),
])
def test_controllers_where_the_hierarchy_offers_them(
        tree: cgroups.Tree, key: str, limits: cgroups.Limits, file: str, value: str) -> None:
    controller = cgroups.KEY_CONTROLLER[key]
    if controller not in tree.offered():
        with pytest.raises(cgroups.CgroupError, match=controller):
            tree.create("lim", 0, limits)
        assert tree.groups() == []  # nothing left behind
        pytest.skip(f"the hierarchy does not offer the {controller} controller "
                    f"(cgroup.controllers of {tree.parent}: "
                    f"{' '.join(sorted(tree.offered())) or 'none'})")
    group = tree.create("lim", 0, limits)
    with open(os.path.join(group.path, file)) as f:
        assert f.read().strip() == value
    # spawned into: written once procsupd is back home, so they never bind procsupd
    group = tree.create("lim", 1, limits)
    proc = _start(tree, group, "exec sleep 1000", limits)
    with open(os.path.join(group.path, file)) as f:
        assert f.read().strip() == value
    group.kill()
    proc.wait(10)


def test_pids_max_stops_a_fork_beyond_it(tree: cgroups.Tree) -> None:
    if "pids" not in tree.offered():
        pytest.skip("the hierarchy does not offer the pids controller")
    limits = cgroups.Limits(pids_max=2)
    group = tree.create("forky", 0, limits)
    proc = _start(tree, group, "sleep 1; sleep 1000 & sleep 1000 & sleep 1000 & wait", limits)
    try:
        _wait(lambda: len(group.pids()) >= 2)
        time.sleep(1.5)
        assert len(group.pids()) == 2
    finally:
        group.kill()
        proc.wait(10)


def test_open_tree_moves_a_lone_procsupd_into_a_leaf(tree: cgroups.Tree) -> None:
    """systemd's Delegate=yes: procsupd alone in its cgroup moves into <own>/procsupd and
    makes its base beside it, so <own> may enable controllers for its children."""
    own = tree.create("own", 0)  # stands for the service's cgroup
    code = (
        "import os, sys; from procsup import cgroups\n"
        "sys.stdin.readline()\n"
        f"h = cgroups.Hierarchy({tree.hierarchy.mount!r}, {own.path!r})\n"
        "t = cgroups.open_tree('x', hierarchy=h)\n"
        "print(t.base, t._can_enable, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        own.place(proc.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        base, can_enable = proc.stdout.readline().split()
        assert base == os.path.join(own.path, "procsup-x")
        assert can_enable == "True"
        assert os.path.isdir(base)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
        for leaf in ("procsup-x", cgroups.SELF_LEAF):
            path = os.path.join(own.path, leaf)
            _wait(lambda p=path: not cgroups.Group(p).populated())  # type: ignore[misc]
            if os.path.isdir(path):
                os.rmdir(path)


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "apps.toml"
    conf.write_text(f'[procsup]\nstate_dir = "{tmp_path}/state"\n{text}')
    return subprocess.run([sys.executable, "-m", "procsup.daemon", "--check", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_check_warns_where_the_hierarchy_lacks_a_controller(tmp_path: Path) -> None:
    support = cgroups.probe()
    r = _check(tmp_path, '[apps.web]\ncommand = "sleep 1"\nmemory_max = "64M"\n'
                         "cpu_weight = 50\npids_max = 8\n")
    assert r.returncode == 0, r.stderr
    for key, controller in cgroups.KEY_CONTROLLER.items():
        line = next((w for w in r.stderr.splitlines() if f"key {key!r}" in w), None)
        if support.reason is None and controller in support.offered:
            assert line is None, r.stderr
        else:
            assert line is not None and "it has no effect" in line, r.stderr
            assert "apps.toml:4: app 'web'" in line or "apps.toml:3: app 'web'" in line
    assert "web" in r.stdout  # the apps it would run, as ever


def test_check_says_nothing_without_cgroup_keys(tmp_path: Path) -> None:
    r = _check(tmp_path, '[apps.web]\ncommand = "sleep 1"\n')
    assert r.returncode == 0 and "cgroup" not in r.stderr, r.stderr


def test_cgroups_true_fails_where_there_are_none(tmp_path: Path) -> None:
    r = _check(tmp_path, 'cgroups = true\n[apps.web]\ncommand = "sleep 1"\n')
    if cgroups.probe().reason is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and "cgroups = true, but" in r.stderr, r.stderr


# -- the daemon -------------------------------------------------------------------------------


def _daemon_tree(daemon: Daemon) -> cgroups.Tree:
    h = cgroups.find()
    assert h is not None
    base = os.path.join(h.own, f"procsup-{statefile.daemon_marker(str(daemon.state_dir))}")
    return cgroups.Tree(h, base, can_enable=False)


#: An app that leaves a process outside its process group, and one without the daemon's
#: environment marker (as nginx and redis rewrite theirs): only the cgroup still holds it.
ESCAPER = """
    [apps.web]
    command = "env -i /usr/bin/setsid sleep 1000 & exec sleep 1000"
    shell = true
    min_uptime = "100ms"
    kill_timeout = "1s"
"""


@pytest.fixture
def cgroup_daemon(daemon: Daemon) -> Iterator[tuple[Daemon, cgroups.Tree]]:
    support = cgroups.probe()
    if support.reason is not None:
        pytest.skip(f"procsupd could not create cgroups here: {support.reason}")
    daemon.write(ESCAPER, 'cgroups = "auto"')
    tree = _daemon_tree(daemon)
    try:
        yield daemon, tree
    finally:
        daemon.cleanup()
        tree.clear(10)
        tree.close()


def _escaper_pids(tree: cgroups.Tree) -> list[int]:
    def two() -> list[int] | None:
        groups = tree.groups()
        pids = groups[0].pids() if len(groups) == 1 else []
        return pids if len(pids) == 2 else None
    return wait_for(two, 10, "both processes in the instance's cgroup")  # type: ignore[no-any-return]


def test_the_daemon_runs_each_instance_in_a_cgroup_and_stop_kills_all_of_it(
        cgroup_daemon: tuple[Daemon, cgroups.Tree]) -> None:
    daemon, tree = cgroup_daemon
    daemon.start()
    (row,) = daemon.wait_states("web", "running")
    r = daemon.cli("version", "--json")
    assert json.loads(r.stdout)["daemon"]["cgroups"] is True, r.stdout
    pids = _escaper_pids(tree)
    assert row["pid"] in pids
    outside = next(p for p in pids if p != row["pid"])
    assert os.getsid(outside) != row["pid"]  # not in the instance's session
    # status: the memory of the whole cgroup (here: RSS of both, no memory controller)
    expected = sum(procfs.rss(p) or 0 for p in pids)
    assert daemon.instances("web")[0]["memory"] >= expected * 0.9
    r = daemon.cli("stop", "web")
    assert r.returncode == 0, r.stderr
    assert not _alive(outside)
    assert tree.groups() == []  # the run's cgroup is removed with it
    assert daemon.stop_daemon() == 0
    assert not os.path.exists(tree.base)  # and the base at a clean exit


def test_a_restarted_daemon_stops_what_its_predecessor_left_in_cgroups(
        cgroup_daemon: tuple[Daemon, cgroups.Tree]) -> None:
    daemon, tree = cgroup_daemon
    daemon.start()
    daemon.wait_states("web", "running")
    old = _escaper_pids(tree)
    assert daemon.proc is not None
    daemon.proc.kill()  # no marker, no process group: only its cgroup remembers it
    daemon.proc.wait(10)
    daemon.start()
    daemon.wait_states("web", "running")
    wait_for(lambda: not any(_alive(p) for p in old), 15, "the old processes gone")
    assert len(_escaper_pids(tree)) == 2  # the new run, alone
    assert "previous procsupd left in 1 cgroup" in daemon.daemon_log(), daemon.daemon_log()
    assert daemon.stop_daemon() == 0


@pytest.mark.parametrize("setting", ['"auto"', "false"])
def test_a_stop_signals_every_process_once(daemon: Daemon, setting: str) -> None:
    """The stop's SIGTERM reaches the leader, a helper in its group, the helper's child that
    left the session (re-parented to procsupd, silently, when the helper exits) and an orphan
    (re-parented to procsupd before the stop) exactly once each, with or without cgroups: the
    process group, the strays and the cgroup are each signalled, but nobody twice (a second
    SIGINT or SIGTERM is "stop now, skip the cleanup" to many programs). The orphan's exit
    finds the helper's child: without cgroups, that is where it must get its signal."""
    if setting != "false" and (why := cgroups.probe().reason) is not None:
        pytest.skip(f"procsupd could not create cgroups here: {why}")
    log = daemon.root / "terms.log"
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("term_count", str(log))}
        min_uptime = "100ms"
        kill_timeout = "10s"
    """, f"cgroups = {setting}")
    daemon.start()
    daemon.wait_states("web", "running")

    def lines(kind: str) -> list[int]:
        text = log.read_text() if log.exists() else ""
        return [int(w.split()[1]) for w in text.splitlines() if w.startswith(kind + " ")]

    ups = wait_for(lambda: len(lines("up")) == 4 and lines("up"), 10, "four processes up")
    if setting != "false":  # all four end up in the run's cgroup (late placement)
        tree = _daemon_tree(daemon)
        wait_for(lambda: len(g := tree.groups()) == 1 and set(ups) <= set(g[0].pids()), 10,
                 "the four processes in the run's cgroup")
    r = daemon.cli("stop", "web")
    assert r.returncode == 0, r.stderr
    assert sorted(lines("term")) == sorted(ups), log.read_text()
    assert not any(_alive(p) for p in ups)
    assert daemon.stop_daemon() == 0
