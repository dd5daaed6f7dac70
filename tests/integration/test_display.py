"""What a real procsupd shows: STATUS= in the table, the shell-syntax warning, the lines of a
failed reload (issue 12)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import PY, Daemon, app_cmd, wait_for


def _row(daemon: Daemon, app: str) -> str:
    """The text table's line of `app` (one instance)."""
    r = daemon.cli("status", app)
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith(f"{app} ")]
    return line


def test_status_text_is_in_the_table_and_goes_when_the_run_ends(
        daemon: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # notify_when sends READY=1 and STATUS=own at once
    daemon.write(f"""
        [apps.talk]
        command = {app_cmd("notify_when", str(gate))}
        ready = "notify"
        autorestart = false
        kill_timeout = "2s"
        """, "watch_config = false")
    daemon.start()
    [row] = daemon.wait_states("talk", "running", 1)
    assert row["status"] == "own"
    assert _row(daemon, "talk").endswith('  "own"')

    # A stop ends the run: its words go with it, from --json and from the table.
    assert daemon.cli("stop", "talk").returncode == 0
    [row] = daemon.wait_states("talk", "stopped", 1)
    assert row["status"] is None
    assert '"own"' not in _row(daemon, "talk")

    # The next run says it again; then it ends on its own (killed, not stopped by us).
    assert daemon.cli("start", "talk").returncode == 0
    wait_for(lambda: daemon.instances("talk")[0]["status"] == "own", 10, "STATUS=own again")
    assert daemon.cli("signal", "SIGKILL", "talk").returncode == 0
    [row] = daemon.wait_states("talk", "exited", 1)
    assert row["status"] is None
    line = _row(daemon, "talk")
    assert '"own"' not in line and "killed by SIGKILL" in line


def test_shell_syntax_warning_from_check_and_reread(daemon: Daemon) -> None:
    daemon.write("""
        [apps.web]
        command = "cd /tmp && ls"
        autorestart = false
        [apps.fine]
        command = "sleep 'a | b'"
        autorestart = false
        """)
    line = daemon.config.read_text().splitlines().index('command = "cd /tmp && ls"') + 1
    warning = (f"{daemon.config}:{line}: app 'web', key 'command': \"cd /tmp && ls\" contains "
               "shell syntax ('cd', '&&'): without shell = true it runs \"cd\" (a shell builtin, "
               "not a program) with \"&&\" as an argument; set shell = true")
    r = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=30, env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"procsupd: warning: {warning}\n"  # one warning: quoted text is meant
    daemon.start()
    [row] = daemon.wait_states("web", "errored", 1)
    assert row["reason"] == "executable not found: cd"  # what the warning foretold
    r = daemon.cli("reread")
    assert r.returncode == 0 and f"procsup: warning: {warning}" in r.stderr, r.stderr
    assert json.loads(daemon.cli("reread", "--json").stdout)["warnings"] == [warning]
    assert warning in daemon.daemon_log()


# Holds an flock on argv[1] as a fork app holds its port: a second process beside it (a
# reload's replacement) cannot get it and exits 1. SIGTERM ends it with code 0.
_HOLDER = """
import fcntl, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
f = open(sys.argv[1], "w")
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("held by the old instance", flush=True)
    sys.exit(1)
while True:
    time.sleep(3600)
"""


def test_a_failed_reload_says_the_instance_was_not_reloaded(
        daemon: Daemon, tmp_path: Path) -> None:
    """The old instance's line said "last run exited with code 0" (its previous run, ended by
    a restart): now it says it was not reloaded, and the error says why (the replacement)."""
    daemon.write(f"""
        [apps.web]
        command = {json.dumps([PY, "-c", _HOLDER, str(tmp_path / "port")])}
        min_uptime = "300ms"
        """, "watch_config = false")
    daemon.start()
    daemon.wait_states("web", "running", 1)
    assert daemon.cli("restart", "web").returncode == 0
    [before] = daemon.wait_states("web", "running", 1)
    assert before["exit_code"] == 0  # the run the restart ended
    r = daemon.cli("reload", "web")
    assert r.returncode == 1
    assert r.stdout == (f"web:0  running  pid {before['pid']}  not reloaded: the old process "
                        "keeps running\n")
    assert "the replacement exited with code 1 before it was ready" in r.stderr, r.stderr
    [after] = daemon.instances("web")
    assert (after["state"], after["pid"]) == ("running", before["pid"])
