"""`limits`, `nice`, `oom_score_adjust` with a real procsupd: read back from /proc of the
instance and of a process it forks; by default the open-files limit procsupd was started with,
not the one it raised for itself; what procsupd cannot grant is `errored` with the reason."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procsup.daemon import WANT_NOFILE

from .conftest import Daemon, wait_for

HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
START_SOFT = 1024


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as {"Max open files": (soft, hard), ...}."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, rest = line[:26].strip(), line[26:].split()
        out[name] = (rest[0], rest[1])
    return out


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def oom_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def program_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@contextlib.contextmanager
def soft_nofile(soft: int) -> Iterator[None]:
    """Whatever this test starts meanwhile (procsupd) starts with soft RLIMIT_NOFILE `soft`."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, saved[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


needs_raise = pytest.mark.skipif(
    HARD_NOFILE != resource.RLIM_INFINITY and HARD_NOFILE <= START_SOFT,
    reason="the open-files hard limit leaves procsupd nothing to raise")


@needs_raise
def test_by_default_an_instance_gets_the_limits_procsupd_was_started_with(
        daemon: Daemon) -> None:
    daemon.write("""
        [apps.web]
        command = ["sh", "-c", "sleep 1000 & wait"]
        """)
    with soft_nofile(START_SOFT):
        daemon.start()
    assert daemon.proc is not None
    (row,) = daemon.wait_states("web", "running", 1)
    pid = row["pid"]
    own = limits_of(daemon.proc.pid)
    raised = WANT_NOFILE if HARD_NOFILE == resource.RLIM_INFINITY else min(
        WANT_NOFILE, HARD_NOFILE)
    assert own["Max open files"][0] == str(raised)  # procsupd raised its own
    child = wait_for(lambda: children_of(pid), 5, "the instance's child")[0]
    for p in (pid, child):  # the instance, and what it forks
        mine = limits_of(p)
        assert mine["Max open files"] == (str(START_SOFT), own["Max open files"][1])
        for name, pair in own.items():
            if name != "Max open files":
                assert mine[name] == pair, name
        assert nice_of(p) == nice_of(daemon.proc.pid)
        assert oom_of(p) == oom_of(daemon.proc.pid)
    # procsupd's own limit is back where it raised it (it was held down for the fork only)
    assert limits_of(daemon.proc.pid)["Max open files"][0] == str(raised)


def test_the_app_keys_are_read_back_from_the_instance_and_its_children(
        daemon: Daemon) -> None:
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    own_oom = oom_of(os.getpid())
    nice, oom = min(19, own_nice + 7), min(1000, own_oom + 250)
    daemon.write(f"""
        [apps.web]
        command = ["sh", "-c", "sleep 1000 & wait"]
        limits = {{ nofile = [512, 768], core = 0, nproc = [500, 600], as = "4G" }}
        nice = {nice}
        oom_score_adjust = {oom}
        """)
    daemon.start()
    (row,) = daemon.wait_states("web", "running", 1)
    pid = row["pid"]
    assert program_of(pid) == "sh"  # the helpers exec'd: the instance's pid is the program's
    child = wait_for(lambda: children_of(pid), 5, "the instance's child")[0]
    for p in (pid, child):
        mine = limits_of(p)
        assert mine["Max open files"] == ("512", "768")
        assert mine["Max core file size"] == ("0", "0")
        assert mine["Max processes"] == ("500", "600")
        assert mine["Max address space"] == (str(4 << 30), str(4 << 30))
        assert nice_of(p) == nice
        assert os.getpriority(os.PRIO_PROCESS, p) == nice
        assert oom_of(p) == oom

    # A change of the keys is a change of the app: applied, it restarts with the new values.
    daemon.write(f"""
        [apps.web]
        command = ["sh", "-c", "sleep 1000 & wait"]
        limits = {{ nofile = [512, 768], core = 0, nproc = [500, 600], as = "4G" }}
        nice = {nice}
        oom_score_adjust = {oom - 1}
        """)
    r = daemon.cli("update")
    assert r.returncode == 0, r.stderr
    (row,) = wait_for(lambda: [r for r in daemon.instances("web")
                               if r["state"] == "running" and r["pid"] != pid], 10,
                      "the restarted instance")
    assert oom_of(row["pid"]) == oom - 1


def test_what_procsupd_cannot_grant_is_errored_with_the_reason_and_check_warns(
        daemon: Daemon) -> None:
    daemon.write("""
        [apps.web]
        command = ["sleep", "1000"]
        limits = { nofile = "unlimited" }
        [apps.ok]
        command = ["sleep", "1000"]
        """)
    check = subprocess.run(
        [sys.executable, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
        capture_output=True, text=True, timeout=30, env=daemon.env)
    assert check.returncode == 0, check.stderr
    assert f"warning: {daemon.config}:" in check.stderr
    assert ("app 'web': limits.nofile: unlimited is above fs.nr_open" in check.stderr), (
        check.stderr)
    daemon.start()
    daemon.wait_states("ok", "running", 1)
    (row,) = daemon.wait_states("web", "errored", 1)
    assert row["reason"].startswith("limits.nofile: unlimited is above fs.nr_open ("), row
    assert row["restarts"] == 0  # final: not retried


@pytest.mark.nonroot
@pytest.mark.skipif(os.geteuid() == 0, reason="root may lower nice and the OOM score")
def test_unprivileged_procsupd_cannot_lower_nice_or_the_oom_score(daemon: Daemon) -> None:
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    floor = 20 - resource.getrlimit(resource.RLIMIT_NICE)[0]
    if own_nice == -20 or floor <= own_nice - 1:
        pytest.skip("RLIMIT_NICE lets this user lower its nice")
    daemon.write(f"""
        [apps.nice]
        command = ["sleep", "1000"]
        nice = {own_nice - 1}
        [apps.oom]
        command = ["sleep", "1000"]
        oom_score_adjust = -1000
        """)
    daemon.start()
    (row,) = daemon.wait_states("nice", "errored", 1)
    assert row["reason"].startswith(f"nice: {own_nice - 1} is below procsupd's own nice"), row
    (row,) = daemon.wait_states("oom", "errored", 1)
    assert row["reason"].startswith("oom_score_adjust: -1000 is below procsupd's own"), row


def test_a_cluster_instance_behind_the_helpers_keeps_its_socket_activation_pid(
        daemon: Daemon) -> None:
    """The helpers exec the activation shell, which execs the program: LISTEN_PID, the shell's
    $$, is still the instance's pid, and the inherited socket is still fd 3."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon.write(f"""
        [apps.web]
        command = ["sleep", "1000"]
        exec_mode = "cluster"
        listen = "tcp://127.0.0.1:{port}"
        limits = {{ core = 0, nofile = [300, 400] }}
        oom_score_adjust = {min(1000, oom_of(os.getpid()) + 1)}
        """)
    daemon.start()
    (row,) = daemon.wait_states("web", "running", 1)
    pid = row["pid"]
    wait_for(lambda: program_of(pid) == "sleep", 5, "the program's exec")
    env = dict(item.split("=", 1) for item in
               Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert env["LISTEN_PID"] == str(pid)
    assert env["LISTEN_FDS"] == "1"
    assert os.readlink(f"/proc/{pid}/fd/3").startswith("socket:")
    assert limits_of(pid)["Max open files"] == ("300", "400")
