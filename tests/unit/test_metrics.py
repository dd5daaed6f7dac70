"""metrics: CPU/RSS per process group, group membership and liveness, with real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from procsup.metrics import Metrics, scan_groups, tree_rss
from procsup.spawn import group_alive

BUSY = "while True: pass"


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start commands each in its own session; kill their whole groups afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        if proc.stdin is not None:
            proc.stdin.close()


def group_members(pgid: int) -> list[int]:
    return scan_groups((pgid,))[pgid]


def test_group_alive_follows_the_group(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn("sleep", "30")
    assert group_alive(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert not group_alive(proc.pid)


def test_group_members_include_children_and_outlive_the_leader(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    # The shell leads the group; both sleeps inherit its pgid. `read` keeps the shell alive
    # until we close its stdin.
    leader = spawn("sh", "-c", "sleep 30 & sleep 30 & read x")
    wait_for(lambda: len(group_members(leader.pid)) == 3, what="3 members")
    members = group_members(leader.pid)
    children = {c.pid for c in psutil.Process(leader.pid).children()}
    assert set(members) == {leader.pid} | children
    assert members == sorted(members)

    assert leader.stdin is not None
    leader.stdin.close()  # the shell exits; its children stay in the group
    leader.wait(timeout=5)
    assert set(group_members(leader.pid)) == children
    assert group_alive(leader.pid)


def test_group_members_of_unknown_group_is_empty() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait(timeout=5)
    assert group_members(proc.pid) == []
    assert scan_groups([]) == {}
    assert scan_groups([proc.pid]) == {proc.pid: []}


def test_rss_is_summed_over_the_group(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # A leader holding 40 MiB and a child holding 40 MiB, written so they are resident.
    hold = "import sys; b = b'x' * (40 << 20); sys.stdin.read()"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {hold!r}])\n{hold}\n"
    leader = spawn(sys.executable, "-c", code)
    wait_for(lambda: len(group_members(leader.pid)) == 2, what="the child")

    def both_resident() -> bool:
        rss = [psutil.Process(p).memory_info().rss for p in group_members(leader.pid)]
        return len(rss) == 2 and min(rss) > 40 << 20

    wait_for(both_resident, what="40 MiB resident in both")
    ((cpu, rss),) = Metrics().sample({leader.pid: 0.0}, time.monotonic()).values()
    expected = sum(psutil.Process(p).memory_info().rss for p in group_members(leader.pid))
    assert rss > 80 << 20
    assert abs(rss - expected) < 4 << 20
    assert cpu >= 0.0


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_cpu_percent_of_busy_and_idle_groups(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """The percentages match the CPU time the processes really got (a loaded machine gives a
    busy loop less than a core, so the expectation is measured, not assumed)."""
    busy = spawn(sys.executable, "-c", BUSY)
    idle = spawn("sleep", "30")
    metrics = Metrics()
    groups = {busy.pid: 0.0, idle.pid: 0.0}
    created = psutil.Process(busy.pid).create_time()
    time.sleep(0.3)
    t1 = time.monotonic()
    first = metrics.sample(groups, t1)
    cpu1, wall1 = _cpu_seconds(busy.pid), time.time()
    # First sample: average since the leader was created (psutil create_time vs wall clock).
    assert first[busy.pid][0] == pytest.approx(100.0 * cpu1 / (wall1 - created), abs=10.0)
    assert first[busy.pid][0] > first[idle.pid][0]
    assert first[idle.pid][0] < 10.0
    time.sleep(0.4)
    t2 = time.monotonic()
    second = metrics.sample(groups, t2)
    cpu2 = _cpu_seconds(busy.pid)
    assert second[busy.pid][0] == pytest.approx(100.0 * (cpu2 - cpu1) / (t2 - t1), abs=10.0)
    assert 0.0 < second[busy.pid][0] <= 100.0 * (os.cpu_count() or 1)
    assert second[idle.pid][0] < 10.0
    assert second[idle.pid][1] > 0


def test_cpu_uses_the_callers_clock_between_samples(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    busy = spawn(sys.executable, "-c", BUSY)
    metrics = Metrics()
    metrics.sample({busy.pid: 0.0}, 0.0)
    time.sleep(0.2)
    # The caller says 1000 s passed: ~0.2 s of cpu over 1000 s is about 0 %.
    assert metrics.sample({busy.pid: 0.0}, 1000.0)[busy.pid][0] < 1.0


def test_forgotten_group_starts_afresh(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    busy = spawn(sys.executable, "-c", BUSY)
    created = psutil.Process(busy.pid).create_time()
    metrics = Metrics()
    time.sleep(0.2)
    metrics.sample({busy.pid: 0.0}, 0.0)
    assert metrics.sample({}, 500.0) == {}
    time.sleep(0.2)
    # Had the group been remembered, this would be cpu over 1000 s of caller time: ~0 %.
    # Forgotten, it is measured since the leader's creation again: busy.
    value = metrics.sample({busy.pid: 0.0}, 1000.0)[busy.pid][0]
    cpu, wall = _cpu_seconds(busy.pid), time.time()
    assert cpu > 0.05  # it did run (even on a loaded machine): ~0 % would be wrong
    assert value == pytest.approx(100.0 * cpu / (wall - created), abs=10.0)


def test_cpu_of_reaped_children_counts(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # The leader only waits; short-lived children burn the cpu. Their time reaches the
    # leader's children_* counters when reaped, so the group reads busy, not idle.
    code = (
        "import subprocess, sys\n"
        "burn = 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.05: pass'\n"
        "while True: subprocess.run([sys.executable, '-c', burn])\n"
    )
    leader = spawn(sys.executable, "-c", code)
    metrics = Metrics()

    def group_cpu() -> float:  # the leader's own time and its reaped children's
        t = psutil.Process(leader.pid).cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    time.sleep(0.2)
    t1 = time.monotonic()
    metrics.sample({leader.pid: 0.0}, t1)
    before = group_cpu()
    time.sleep(0.6)
    t2 = time.monotonic()
    cpu, _ = metrics.sample({leader.pid: 0.0}, t2)[leader.pid]
    spent = group_cpu() - before
    assert spent > 0.05  # the children burnt cpu (some, even on a loaded machine)
    # Within 30 %: the leader's own time alone (it only waits) would be far below.
    assert cpu == pytest.approx(100.0 * spent / (t2 - t1), rel=0.3, abs=2.0)


def test_vanished_group_reads_zero() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait(timeout=5)
    assert Metrics().sample({proc.pid: 0.0}, time.monotonic()) == {proc.pid: (0.0, 0)}


def test_sample_200_groups_is_fast() -> None:
    procs = [subprocess.Popen(["sleep", "30"], start_new_session=True) for _ in range(200)]
    try:
        groups = {p.pid: 0.0 for p in procs}
        metrics = Metrics()
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            result = metrics.sample(groups, time.monotonic())
            timings.append(time.perf_counter() - t0)
        assert set(result) == set(groups)
        assert all(rss > 0 for _, rss in result.values())
        # Typically ~11 ms here; the bound leaves room for slow CI machines.
        assert min(timings) < 0.25, timings
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=5)


def test_tree_rss_counts_the_group_and_descendants_that_left_it(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """A child in the leader's group and a grandchild that called setsid both count."""
    hold = "import sys; b = b'x' * (30 << 20); sys.stdin.read()"
    escaped = f"import os; os.setsid(); {hold}"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {hold!r}])\n"
        f"subprocess.Popen([sys.executable, '-c', {escaped!r}])\n"
        "sys.stdin.read()\n"
    )
    leader = spawn(sys.executable, "-c", code)
    other = spawn(sys.executable, "-c", hold)  # another instance: counted apart

    def tree() -> list[psutil.Process]:
        root = psutil.Process(leader.pid)
        return [root, *root.children(recursive=True)]

    def resident() -> bool:
        procs = tree()
        big = [p for p in procs if p.memory_info().rss > 30 << 20]
        return len(procs) == 3 and len(big) == 2 and \
            psutil.Process(other.pid).memory_info().rss > 30 << 20

    wait_for(resident, timeout=10, what="both children resident")
    assert len(group_members(leader.pid)) == 2  # the setsid grandchild left the group

    # The children may still be paging in their interpreter when they pass 30 MiB: compare
    # once both readings, taken a moment apart, agree (they must, within a few MiB).
    seen: dict[int, int] = {}

    def agree() -> bool:
        seen.update(tree_rss([leader.pid, other.pid, 999_999_999]))
        expected = sum(p.memory_info().rss for p in tree())
        return abs(seen[leader.pid] - expected) < 4 << 20

    wait_for(agree, timeout=10, what="tree_rss to match psutil's sum")
    rss = seen
    assert rss[leader.pid] > 60 << 20
    assert 30 << 20 < rss[other.pid] < 60 << 20
    assert rss[999_999_999] == 0
    assert tree_rss([]) == {}

