"""`ready = "log:REGEX"` with a real daemon and real programs: a line on stdout or on stderr
makes the instance running, with or without log files, with a date prefix in the files that is
not part of what is matched; no such line within ready_timeout is a failed run."""

from __future__ import annotations

import time

from .conftest import Daemon, app_cmd, wait_for


def _state_history(daemon: Daemon, app: str, until: str, timeout: float) -> tuple[float, list[str]]:
    """Poll the state until `until`; how long that took from now, and the states seen."""
    began = time.monotonic()
    seen: list[str] = []

    def reached() -> bool:
        rows = daemon.instances(app)
        state = rows[0]["state"] if rows else "?"
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == until

    wait_for(reached, timeout, f"{app} {until}")
    return time.monotonic() - began, seen


def test_a_line_on_stdout_makes_it_ready_and_the_date_prefix_is_not_matched(
        daemon: Daemon) -> None:
    # "^" anchors at the line as the program wrote it: with the date prefix it could not match.
    daemon.write(f"""
        [apps.db]
        command = {app_cmd("log_ready", "out", "1.5", "Ready to accept connections")}
        ready = "log:^Ready to accept"
        ready_timeout = "20s"
        min_uptime = "100ms"
        log_date_format = "%Y-%m-%d %H:%M:%S"
        """, "watch_config = false")
    daemon.start()
    took, seen = _state_history(daemon, "db", "running", 15)
    assert seen[0] == "starting", seen  # "booting" and "still booting" did not count
    assert seen[-1] == "running"
    assert took > 0.5  # it waited for the line, not for min_uptime
    out = (daemon.log_dir / "db-out.log").read_text()
    assert "Ready to accept connections" in out
    line = next(x for x in out.splitlines() if "Ready to accept" in x)
    assert not line.startswith("Ready"), line  # the file has the prefix; the match did not see it
    assert "db:0: ready: its output matched ^Ready to accept" in daemon.daemon_log()


def test_a_line_on_stderr_with_both_streams_discarded(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.cache]
        command = {app_cmd("log_ready", "err", "1", "* Ready to accept connections tcp")}
        ready = "log:Ready to accept"
        ready_timeout = "20s"
        min_uptime = "100ms"
        out_file = false
        error_file = false

        [apps.other]
        command = {app_cmd("log_ready", "out", "0", "Ready to accept")}
        ready = "log:Ready to accept"
        error_file = false
        """, "watch_config = false")
    daemon.start()
    took, seen = _state_history(daemon, "cache", "running", 15)
    assert seen[0] == "starting" and took > 0.3, (seen, took)
    daemon.wait_states("other", "running", 1)
    assert not list(daemon.log_dir.glob("cache*"))  # read for the match, written nowhere
    assert [p.name for p in daemon.log_dir.glob("other*")] == ["other-out.log"]


def test_no_matching_line_within_ready_timeout_is_a_failed_run(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.mute]
        command = {app_cmd("log_ready", "out", "0", "Ready on another word")}
        ready = "log:Ready to accept"
        ready_timeout = "700ms"
        min_uptime = "100ms"
        max_restarts = 1
        kill_timeout = "2s"
        """, "watch_config = false")
    daemon.start()
    [row] = daemon.wait_states("mute", "errored", 1, timeout=20)
    assert "(last: not ready within ready_timeout 0.7s)" in row["reason"], row
    r = daemon.cli("start", "mute")
    assert r.returncode == 1, r.stdout + r.stderr  # a start waits, and it did not get ready
