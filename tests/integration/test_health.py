"""Health checks with a real procsupd, real servers and real check commands: tcp, http and
command checks, the restart after health_failures and its reason, `health` in status, the
time limit of a command, no overlap, a check stopped with its instance, and a cluster app
replaced first without a refused connection."""

from __future__ import annotations

import os
import pwd
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, app_cmd, pid_alive, wait_for
from .test_cluster import _cluster, _free_port, _load_during

FAST = """health_interval = "200ms"
        health_timeout = "2s"
        min_uptime = "100ms\""""


def row(daemon: Daemon, app: str, index: int = 0) -> dict[str, Any]:
    return next(r for r in daemon.instances(app) if r["instance"] == index)


def wait_health(daemon: Daemon, app: str, health: str, timeout: float = 10) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = row(daemon, app)
        return r if r["state"] == "running" and r["health"] == health else None

    return wait_for(check, timeout, f"{app} {health}")  # type: ignore[no-any-return]


def wait_replaced(daemon: Daemon, app: str, old: int, timeout: float = 10) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = row(daemon, app)
        return r if r["pid"] not in (None, old) and r["state"] == "running" else None

    return wait_for(check, timeout, f"{app} restarted")  # type: ignore[no-any-return]


def test_a_server_that_stops_accepting_is_restarted_after_3_failed_tcp_checks(
    daemon: Daemon,
) -> None:
    port = _free_port()
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("health_server", str(port))}
        ready = "tcp://127.0.0.1:{port}"
        health = "tcp://127.0.0.1:{port}"
        {FAST}
        [apps.plain]
        command = {app_cmd("sleeper")}
        """)
    daemon.start()
    first = wait_health(daemon, "web", "healthy")
    assert row(daemon, "plain")["health"] is None  # no check: null
    text = daemon.cli("status").stdout
    assert text.splitlines()[0].split()[:5] == ["APP", "ID", "PID", "STATE", "HEALTH"]
    assert [line.split()[4] for line in text.splitlines()[1:]] == ["healthy", "-"]
    os.kill(first["pid"], signal.SIGUSR1)  # closes its listener, keeps running
    closed = time.monotonic()
    again = wait_replaced(daemon, "web", first["pid"])
    took = time.monotonic() - closed
    assert 0.3 < took < 5.0, took  # three checks 200 ms apart, then the restart
    refused = f"cannot connect to 127.0.0.1:{port}: connection refused"
    assert again["reason"] == f"restarted: health check failed 3 times: {refused}"
    assert again["restarts"] == 1
    assert not pid_alive(first["pid"])
    log = daemon.daemon_log()
    for n in (1, 2):  # each failure a warning (their words may differ on a loaded machine)
        assert f"web:0: health check failed ({n} of 3): " in log
    assert f"web: restarting instance 0: health check failed 3 times: {refused}" in log
    assert wait_health(daemon, "web", "healthy")["pid"] == again["pid"]  # the new run serves


def test_http_check_2xx_and_3xx_pass_and_a_500_restarts(daemon: Daemon, tmp_path: Path) -> None:
    port, moved = _free_port(), _free_port()
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("health_server", str(port))}
        cwd = "{tmp_path}"
        ready = "tcp://127.0.0.1:{port}"
        health = "http://127.0.0.1:{port}/healthz"
        {FAST}
        [apps.moved]
        command = {app_cmd("health_server", str(moved))}
        health = "http://127.0.0.1:{moved}/moved"
        health_interval = "200ms"
        """)
    daemon.start()
    first = wait_health(daemon, "web", "healthy")
    wait_health(daemon, "moved", "healthy")  # a 302 passes
    (tmp_path / f"sick-{first['pid']}").touch()  # this process answers 500 from now on
    again = wait_replaced(daemon, "web", first["pid"])
    assert again["reason"] == ("restarted: health check failed 3 times: GET /healthz answered "
                               "500 Internal Server Error")
    wait_health(daemon, "web", "healthy")  # the new process is not sick
    assert row(daemon, "moved")["restarts"] == 0


def test_command_checks_exit_0_exit_1_and_one_that_hangs_is_killed(
    daemon: Daemon, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    pids = tmp_path / "pids"
    never = 'health_failures = 1000'  # count, never restart: the reason stays to be read
    daemon.write(f"""
        [apps.ok]
        command = {app_cmd("sleeper")}
        health = ["sh", "-c", "exit 0"]
        {FAST}
        [apps.bad]
        command = {app_cmd("sleeper")}
        cwd = "{work}"
        env = {{ CHECK_VAR = "v1" }}
        health = ["sh", "-c",
                  "echo $PWD $PROCSUP_APP:$PROCSUP_INSTANCE $CHECK_VAR $PROCSUP_PID; exit 1"]
        {FAST}
        {never}
        [apps.hang]
        command = {app_cmd("sleeper")}
        health = ["sh", "-c", "echo $$ >> {pids}; exec sleep 60"]
        health_interval = "200ms"
        health_timeout = "300ms"
        min_uptime = "100ms"
        {never}
        """)
    daemon.start()
    wait_health(daemon, "ok", "healthy")
    bad = wait_health(daemon, "bad", "unhealthy")
    said = f"sh exited with code 1: {work} bad:0 v1 {bad['pid']}"
    assert bad["reason"].startswith("health check failed (")
    assert bad["reason"].endswith(f" of 1000): {said}"), bad["reason"]
    hang = wait_health(daemon, "hang", "unhealthy")
    assert hang["reason"].endswith("sh did not finish within health_timeout 300ms (killed)")
    assert "HEALTH" in daemon.cli("status", "bad").stdout
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 3, 10, "three checks")
    started = [int(p) for p in pids.read_text().split()]
    # every check but the one running now is gone: killed after its 300 ms
    wait_for(lambda: not any(pid_alive(p) for p in started[:-1]), 5, "the checks killed")
    rows = {r["app"]: r for r in daemon.instances()}
    assert all(r["restarts"] == 0 and r["state"] == "running" for r in rows.values())


def test_checks_never_overlap_and_the_daemon_keeps_answering(
    daemon: Daemon, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    script = f"echo start $(date +%s%N) >> {record}; sleep 0.3; echo end $(date +%s%N) >> {record}"
    daemon.write(f"""
        [apps.slow]
        command = {app_cmd("sleeper")}
        health = ["sh", "-c", "{script}"]
        health_interval = "100ms"
        health_timeout = "2s"
        min_uptime = "100ms"
        """)
    daemon.start()
    wait_for(lambda: record.exists() and record.read_text().count("end") >= 5, 15,
             "five checks")
    slowest = 0.0
    for _ in range(5):  # the loop is not held by a check in flight
        began = time.monotonic()
        assert daemon.cli("ping").returncode == 0
        slowest = max(slowest, time.monotonic() - began)
    assert slowest < 2.0, slowest
    marks = [line.split() for line in record.read_text().splitlines()]
    ends = [m for m in marks if m[0] == "end"]
    marks = marks[:2 * len(ends)]  # whole checks only
    assert [m[0] for m in marks] == ["start", "end"] * len(ends)
    times = [int(m[1]) for m in marks]
    assert times == sorted(times)  # each check starts after the previous one ended
    assert row(daemon, "slow")["health"] == "healthy"


def test_a_check_in_flight_is_stopped_with_its_instance(daemon: Daemon, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    daemon.write(f"""
        [apps.app]
        command = {app_cmd("sleeper")}
        health = ["sh", "-c", "echo $$ >> {pids}; exec sleep 60"]
        health_interval = "200ms"
        health_timeout = "30s"
        min_uptime = "100ms"
        """)
    daemon.start()
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 10, "a check in flight")
    check = int(pids.read_text().split()[0])
    assert pid_alive(check)
    assert row(daemon, "app")["health"] == "unknown"  # no result yet: the check still runs
    r = daemon.cli("stop", "app")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not pid_alive(check), 3, "the check stopped with its instance")
    assert len(pids.read_text().split()) == 1  # and none began since
    assert row(daemon, "app")["health"] == "unknown"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_a_command_check_runs_as_the_apps_user(daemon: Daemon) -> None:
    daemon.write("""
        [apps.u]
        command = ["/bin/sh", "-c", "exec sleep 100"]
        cwd = "/"
        user = "nobody"
        health = ["/bin/sh", "-c", "echo uid=$(id -u) user=$USER; exit 1"]
        health_interval = "200ms"
        health_failures = 1000
        """)
    daemon.start()
    r = wait_health(daemon, "u", "unhealthy")
    nobody = pwd.getpwnam("nobody").pw_uid
    assert r["reason"].endswith(f"/bin/sh exited with code 1: uid={nobody} user=nobody")


def test_a_cluster_instance_failing_its_check_is_replaced_first_and_nothing_is_refused(
    daemon: Daemon, tmp_path: Path
) -> None:
    port = _free_port()
    _cluster(daemon, port, extra=f"""cwd = "{tmp_path}"
        health = ["sh", "-c", "test ! -e sick-$PROCSUP_PID"]
        health_interval = "200ms"
        health_timeout = "2s\"""")
    daemon.start()
    rows = daemon.wait_states("web", "running", 2)
    before = {r["pid"] for r in rows}
    wait_for(lambda: all(r["health"] == "healthy" for r in daemon.instances("web")), 10,
             "both healthy")
    sick = rows[0]["pid"]

    def replaced() -> bool:
        now = daemon.instances("web")
        pids = {r["pid"] for r in now if r["state"] == "running"}
        return sick not in pids and len(pids) == 2 and not pid_alive(sick)

    (tmp_path / f"sick-{sick}").touch()
    _, load = _load_during(port, lambda: wait_for(replaced, 15, "the sick one replaced"))
    assert load["failed"] == 0, load
    assert load["ok"] > 0
    new = [r for r in daemon.instances("web") if r["pid"] not in before]
    assert len(new) == 1 and new[0]["instance"] == rows[0]["instance"]
    assert new[0]["reason"] == ("replaced: health check failed 3 times: sh exited with code 1")
    assert "replacing web:" in daemon.daemon_log()
    assert wait_for(lambda: all(r["health"] == "healthy" for r in daemon.instances("web")), 10,
                    "both healthy again")
