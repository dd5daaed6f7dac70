"""Faults at start: a process or open-files limit reached is a failed run that is retried
with backoff and recovers by itself; `start` of a crash loop returns after its first run."""

from __future__ import annotations

import os
import pwd
import resource
import time
from pathlib import Path

import pytest

from .conftest import Daemon, app_cmd, wait_for

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: limits are set on the daemon from outside, and the "
    "RLIMIT_NPROC case runs the app as another user")


def _uid_processes(uid: int) -> int:
    count = 0
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{name}").st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@needs_root
def test_rlimit_nproc_backs_off_names_the_limit_and_recovers(daemon: Daemon) -> None:
    nobody = pwd.getpwnam("nobody")
    daemon.write("""
        [apps.web]
        command = ["sleep", "1000"]
        user = "nobody"
        cwd = "/"
        min_uptime = "100ms"
        max_restarts = 1
        """)
    daemon.start()
    (first,) = daemon.wait_states("web", "running", 1)
    assert daemon.proc is not None
    # Linux fails the execve after setuid when the user already has more processes than
    # the limit: one fewer than nobody has now lets no new one in.
    limit = _uid_processes(nobody.pw_uid) - 1
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_NPROC, (limit, limit))
    r = daemon.cli("scale", "web", "2")
    assert r.returncode in (0, 1), r.stderr

    def second_backing_off() -> dict[str, object] | None:
        rows = {i["instance"]: i for i in daemon.instances("web")}
        row = rows.get(1)
        reason = str(row.get("reason")) if row else ""
        return row if row and row["state"] == "backoff" and "retrying" in reason else None

    row = wait_for(second_backing_off, 15, "web:1 in backoff")
    reason = str(row["reason"])
    assert "RLIMIT_NPROC of user nobody" in reason, reason
    assert "cannot execute sleep: resource temporarily unavailable" in reason, reason
    # Far more tries than max_restarts = 1, and still not errored: wait for a few retries.
    wait_for(lambda: "3 failures in a row" in str(
        {i["instance"]: i for i in daemon.instances("web")}[1].get("reason")), 15, "3 retries")
    assert {i["instance"]: i["state"] for i in daemon.instances("web")}[1] == "backoff"
    # The limit comes back (the first instance stops): the second one starts by itself.
    assert daemon.cli("stop", "web:0").returncode == 0
    rows = wait_for(lambda: (rs := {i["instance"]: i for i in daemon.instances("web")})
                    and rs[1]["state"] == "running" and rs, 20, "web:1 running by itself")
    assert rows[0]["state"] == "stopped" and rows[1]["pid"] != first["pid"]


@needs_root
def test_open_files_limit_backs_off_names_procsupd_and_recovers(daemon: Daemon) -> None:
    daemon.write("""
        [apps.web]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        max_restarts = 1
        """)
    daemon.start()
    daemon.wait_states("web", "running", 1)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Room for the control connection and not much more: new instances cannot get their
    # pipes, log files or pidfds.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (_open_fds(pid) + 2, hard))
    try:
        daemon.cli("scale", "web", "3", "--no-wait")

        def backing_off() -> list[dict[str, object]] | None:
            rows = [i for i in daemon.instances("web") if i["instance"] > 0]
            ok = len(rows) == 2 and all(
                r["state"] == "backoff" and "too many open files in procsupd" in str(
                    r["reason"]) for r in rows)
            return rows if ok else None

        rows = wait_for(backing_off, 15, "web:1 and web:2 in backoff for want of fds")
        assert "RLIMIT_NOFILE" in str(rows[0]["reason"])
        assert "cannot execute" not in str(rows[0]["reason"])  # the program is not to blame
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    daemon.wait_states("web", "running", 3, timeout=30)
    assert daemon.ping()


def test_start_of_a_crash_loop_returns_after_its_first_run(daemon: Daemon) -> None:
    """docs/behaviour.md: `start` waits until running or until the first run ended; a crash
    loop with no restart delay and a huge max_restarts must not keep it waiting."""
    daemon.write(f"""
        [apps.crash]
        command = {app_cmd("crasher", "3", "0.2")}
        max_restarts = 100000
        """)
    daemon.start()
    assert daemon.cli("stop", "crash").returncode == 0
    t0 = time.monotonic()
    r = daemon.cli("start", "crash", timeout=20)
    took = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "exited with code 3" in r.stdout + r.stderr, r.stdout
    assert took < 10, took
    t0 = time.monotonic()
    r = daemon.cli("restart", "crash", timeout=20)
    assert r.returncode == 1 and time.monotonic() - t0 < 10, (r.stdout, r.stderr)


def test_a_missing_executable_is_still_errored_at_once(daemon: Daemon, tmp_path: Path) -> None:
    daemon.write(f"""
        [apps.gone]
        command = ["{tmp_path}/no-such-program"]
        """)
    daemon.start()
    (row,) = daemon.wait_states("gone", "errored", 1)
    assert row["reason"] == f"executable not found: {tmp_path}/no-such-program"
