"""max_memory_restart, watch and cron_restart with a real procsupd and real processes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from .conftest import Daemon, app_cmd, pid_alive, wait_for, wait_watched
from .test_cluster import _cluster, _free_port, _load_during


def test_a_memory_hog_is_restarted_within_5_s_of_crossing_its_limit(
    daemon: Daemon, tmp_path: Path
) -> None:
    marker = tmp_path / "hogged"
    daemon.write(f"""
        [apps.hog]
        command = {app_cmd("hog", "120", "3", str(marker))}
        max_memory_restart = "60M"
        min_uptime = "100ms"
        [apps.calm]
        command = {app_cmd("sleeper")}
        max_memory_restart = "60M"
        """)
    daemon.start()
    [first] = daemon.wait_states("hog", "running", 1)
    [calm] = daemon.wait_states("calm", "running", 1)
    wait_for(lambda: marker.exists() and marker.read_text().endswith("\n"), 10, "the hog")
    crossed = float(marker.read_text())

    def replaced() -> dict[str, object] | None:
        [row] = daemon.instances("hog")
        return row if row["pid"] not in (None, first["pid"]) and row["state"] == "running" \
            else None

    row = wait_for(replaced, 10, "the hog replaced")
    assert time.time() - crossed < 5.0, "replaced more than 5 s after crossing the limit"
    assert not pid_alive(first["pid"])
    assert row["restarts"] == 1
    assert "max_memory_restart 60M" in row["reason"] and "restarted" in row["reason"]
    assert "over max_memory_restart 60M" in daemon.daemon_log()
    # The replacement does not hog (the marker exists): it stays; the calm app was not touched.
    time.sleep(2.5)
    [again] = daemon.instances("hog")
    assert again["pid"] == row["pid"]
    [calm_now] = daemon.instances("calm")
    assert calm_now["pid"] == calm["pid"] and calm_now["restarts"] == 0


def test_an_app_over_its_limit_from_the_start_backs_off_then_errors(daemon: Daemon) -> None:
    """Not a leak but a limit too low for the app: each run is a failed one for the restart
    policy (backoff between runs, errored after max_restarts), not restarted forever."""
    daemon.write(f"""
        [apps.big]
        command = {app_cmd("hog", "120", "0", "-")}
        max_memory_restart = "60M"
        max_restarts = 2
        exp_backoff_restart_delay = "200ms"
        """)
    daemon.start()
    [row] = daemon.wait_states("big", "errored", 1, timeout=30)
    reason = row["reason"]
    assert reason.startswith("gave up after 2 restarts: each run was over max_memory_restart "
                             "within 2.5s of its start (last: memory "), reason
    assert reason.endswith(" over max_memory_restart 60M)"), reason
    log = daemon.daemon_log()
    assert log.count("over max_memory_restart 60M within 2.5s of its start") == 3  # 3 runs
    assert "restarting in 0.4s" in log  # the backoff doubled


def test_a_leaking_cluster_instance_is_replaced_first_and_no_request_fails(
    daemon: Daemon, tmp_path: Path
) -> None:
    port = _free_port()
    marker = tmp_path / "hogged"
    _cluster(daemon, port, extra=f"""max_memory_restart = "60M"
        env = {{ HOG_MIB = "120", HOG_MARKER = "{marker}" }}""")
    daemon.start()
    before = {r["pid"] for r in daemon.wait_states("web", "running", 2)}

    def leaker_replaced() -> bool:
        if not marker.exists() or not marker.read_text():
            return False
        leaker = int(marker.read_text())
        pids = {r["pid"] for r in daemon.instances("web") if r["state"] == "running"}
        return leaker in before and leaker not in pids and len(pids) == 2 \
            and not pid_alive(leaker)

    _, load = _load_during(port, lambda: wait_for(leaker_replaced, 15, "the leaker replaced"))
    assert load["failed"] == 0, load
    assert load["ok"] > 0
    rows = daemon.instances("web")
    replaced = [r for r in rows if r["pid"] not in before]
    assert len(replaced) == 1
    assert replaced[0]["reason"].startswith("replaced: memory")
    assert "replacing web:" in daemon.daemon_log()


def test_a_burst_of_200_writes_restarts_the_app_once(daemon: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    (src / "node_modules").mkdir()
    daemon.write(f"""
        [apps.dev]
        command = {app_cmd("sleeper")}
        cwd = "{src}"
        watch = true
        min_uptime = "100ms"
        [apps.other]
        command = {app_cmd("sleeper")}
        """)
    daemon.start()
    [first] = daemon.wait_states("dev", "running", 1)
    [other] = daemon.wait_states("other", "running", 1)
    assert daemon.proc is not None
    wait_watched(daemon.proc.pid, src)  # the watch is armed: what follows is seen
    # Ignored paths change, then a burst of 200 writes: one restart, within 2 s of the last
    # write, named after the burst's first file. Had an ignored write counted, it would have
    # restarted the app before the burst (a second restart) or be named instead (the events
    # come in order).
    for i in range(20):
        (src / ".git" / f"obj{i}").write_text("x")
        (src / "node_modules" / f"m{i}.js").write_text("x")
        (src / f"debug{i}.log").write_text("x")
    for i in range(200):
        (src / f"mod{i % 25}.py").write_text(f"v = {i}\n")
    last = time.monotonic()
    row = wait_for(lambda: next((r for r in daemon.instances("dev")
                                 if r["pid"] not in (None, first["pid"])), None), 5, "restart")
    assert time.monotonic() - last < 2.5
    time.sleep(1.5)  # a second restart would have happened by now
    [row] = daemon.wait_states("dev", "running", 1)
    assert row["restarts"] == 1
    assert row["reason"].startswith(f"restarted: watch: {src / 'mod0.py'} changed"), row
    [other_now] = daemon.instances("other")
    assert other_now["pid"] == other["pid"]


def test_saving_the_fix_of_a_crashed_app_runs_it(daemon: Daemon, tmp_path: Path) -> None:
    """PM2's watch workflow: the app crashes until its code is fixed; the save that fixes it
    starts it again, although the restart policy had given up (errored) or was waiting."""
    src = tmp_path / "src"
    src.mkdir()
    sleeper = json.loads(app_cmd("sleeper"))
    script = f'test -f fixed.py || exit 3; exec {" ".join(sleeper)}'
    daemon.write(f"""
        [apps.dev]
        command = ["/bin/sh", "-c", {json.dumps(script)}]
        cwd = "{src}"
        watch = true
        max_restarts = 1
        min_uptime = "100ms"
        [apps.slow]
        command = ["/bin/sh", "-c", {json.dumps(script)}]
        cwd = "{src}"
        watch = true
        restart_delay = "60s"
        """)
    daemon.start()
    [gave_up] = daemon.wait_states("dev", "errored", 1)
    assert gave_up["reason"].startswith("gave up after 1 restart")
    daemon.wait_states("slow", "backoff", 1)  # would wait a minute before its next try
    assert daemon.proc is not None
    wait_watched(daemon.proc.pid, src)
    (src / "fixed.py").write_text("ok = True\n")
    [dev] = daemon.wait_states("dev", "running", 1, timeout=5)
    assert dev["reason"].startswith("restarted: watch: ") and dev["restarts"] == 0
    [slow] = daemon.wait_states("slow", "running", 1, timeout=5)
    assert slow["reason"].startswith("restarted: watch: ")


def test_procsups_own_files_in_a_watched_directory_do_not_restart_it(
    daemon: Daemon, tmp_path: Path
) -> None:
    """A project-local setup: the daemon's state, pidfile, socket and logs under the app's
    watched directory. A restart writes the instance record; counting that would restart the
    app forever."""
    src = tmp_path / "src"
    src.mkdir()
    daemon.state_dir = src / "state"
    daemon.log_dir = src / "logs"
    daemon.write(f"""
        [apps.dev]
        command = {app_cmd("sleeper")}
        cwd = "{src}"
        watch = true
        ignore_watch = []
        min_uptime = "100ms"
        """)
    daemon.start()
    [first] = daemon.wait_states("dev", "running", 1)
    assert daemon.proc is not None
    wait_watched(daemon.proc.pid, src, src / "state", src / "logs")
    assert daemon.cli("restart", "dev").returncode == 0  # writes the record, the logs
    [second] = daemon.wait_states("dev", "running", 1)
    assert second["pid"] != first["pid"]
    time.sleep(2.0)  # a restart by the watch would have happened by now
    [row] = daemon.instances("dev")
    assert row["pid"] == second["pid"] and row["restarts"] == 0, row
    assert (src / "state" / "instances.json").exists()
    # A file of the app's own still counts.
    (src / "app.py").write_text("v = 2\n")
    wait_for(lambda: daemon.instances("dev")[0]["pid"] not in (None, second["pid"]), 5,
             "the restart by the watch")


def test_next_cron_restart_is_shown_in_status(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.nightly]
        command = {app_cmd("sleeper")}
        cron_restart = "30 4 * * *"
        [apps.plain]
        command = {app_cmd("sleeper")}
        """)
    daemon.start()
    [row] = daemon.wait_states("nightly", "running", 1)
    planned = datetime.fromisoformat(row["next_cron_restart"])
    now = datetime.now().astimezone()
    assert (planned.hour, planned.minute, planned.second) == (4, 30, 0)
    assert timedelta(0) < planned - now <= timedelta(days=1)
    [plain] = daemon.wait_states("plain", "running", 1)
    assert plain["next_cron_restart"] is None
    # Adding a monitor is applied live: the instance keeps running, the plan shows up.
    text = daemon.config.read_text()
    with_cron = text.replace("[apps.plain]\n", '[apps.plain]\ncron_restart = "0 5 * * *"\n')
    daemon.config.write_text(with_cron)
    assert daemon.cli("update").returncode == 0
    [plain_now] = daemon.instances("plain")
    assert plain_now["pid"] == plain["pid"]
    assert datetime.fromisoformat(plain_now["next_cron_restart"]).hour == 5
    bad = daemon.config.read_text().replace("30 4 * * *", "61 4 * * *")
    daemon.config.write_text(bad)
    done = daemon.cli("update")
    assert done.returncode == 1
    said = done.stdout + done.stderr
    assert "cron_restart" in said and "out of range" in said


@pytest.mark.slow
def test_cron_restart_fires_on_the_minute(daemon: Daemon) -> None:
    """A real minute: `* * * * *` restarts the app at the next minute boundary, and runs a
    job that exited (PM2's periodic script: `cron_restart` with `autorestart = false`)."""
    daemon.write(f"""
        [apps.tick]
        command = {app_cmd("sleeper")}
        cron_restart = "* * * * *"
        min_uptime = "100ms"
        [apps.job]
        command = {app_cmd("crasher", "0")}
        autorestart = false
        cron_restart = "* * * * *"
        """)
    daemon.start()
    [job] = daemon.wait_states("job", "exited", 1)
    job_log = daemon.log_dir / "job-out.log"
    assert job_log.read_text().count("crashing with 0") == 1
    [first] = daemon.wait_states("tick", "running", 1)
    planned = datetime.fromisoformat(first["next_cron_restart"])
    wait = (planned - datetime.now().astimezone()).total_seconds()
    assert 0 < wait <= 60
    row = wait_for(lambda: next((r for r in daemon.instances("tick")
                                 if r["pid"] not in (None, first["pid"])), None),
                   wait + 5, "the cron restart")
    fired = datetime.now().astimezone()
    assert fired >= planned
    assert (fired - planned).total_seconds() < 3
    assert row["reason"].startswith("restarted: cron_restart '* * * * *'")
    assert datetime.fromisoformat(row["next_cron_restart"]) == planned + timedelta(minutes=1)
    # The job ran once more at the same minute, and exited again.
    wait_for(lambda: job_log.read_text().count("crashing with 0") == 2, 5, "the job's second run")
    [job] = daemon.wait_states("job", "exited", 1)
    assert job["restarts"] == 0


def test_a_change_does_not_start_instances_stopped_by_command(
    daemon: Daemon, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    port = _free_port()
    _cluster(daemon, port, extra=f'cwd = "{src}"\n        watch = true')
    daemon.start()
    daemon.wait_states("web", "running", 2)
    assert daemon.cli("stop", "web:1").returncode == 0
    [kept] = [r for r in daemon.instances("web") if r["instance"] == 0]
    assert daemon.proc is not None
    wait_watched(daemon.proc.pid, src)
    (src / "app.py").write_text("changed\n")
    # The running instance is replaced; the stopped one stays stopped.
    wait_for(lambda: next((r for r in daemon.instances("web") if r["instance"] == 0
                           and r["pid"] not in (None, kept["pid"])
                           and r["state"] == "running"), None), 10, "web:0 replaced")
    time.sleep(1.0)
    [stopped] = [r for r in daemon.instances("web") if r["instance"] == 1]
    assert stopped["state"] == "stopped" and stopped["pid"] is None
