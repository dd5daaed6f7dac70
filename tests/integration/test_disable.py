"""`stop` across applies, and `disable`/`enable` (issue 12): a real procsupd, real children,
the real CLI, the record in a real state_dir; applies by `update`, SIGHUP and saves of a
watched file; a SIGKILLed daemon started again."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .conftest import Daemon, pid_alive, wait_for

# Each run writes one line to its log on start, so a test can count the runs of an app.
APPS = """
    [apps.web]
    command = ["/bin/sh", "-c", "echo started; exec sleep 1000"]
    instances = 2
    min_uptime = "100ms"
    kill_timeout = "2s"

    [apps.db]
    command = ["sleep", "1001"]
    min_uptime = "100ms"
    """

EXTRA = """
    [apps.extra]
    command = ["sleep", "1002"]
    min_uptime = "100ms"
    """


def _runs(daemon: Daemon, app: str = "web") -> int:
    """How many runs of `app` wrote their start line (every instance's own log file)."""
    return sum(p.read_text().count("started\n") for p in daemon.log_dir.glob(f"{app}-out*.log"))


def _record(daemon: Daemon) -> list[str]:
    return json.loads((daemon.state_dir / "disabled.json").read_text())["apps"]  # type: ignore[no-any-return]


def _running(daemon: Daemon, app: str) -> set[int]:
    return {r["pid"] for r in daemon.wait_states(app, "running")}


def test_a_stop_survives_a_save_that_adds_another_app(daemon: Daemon) -> None:
    """The issue's case: with watch_config, adding an app to the file restarted the app a
    `stop` had stopped. Now it stays stopped; a change of its own definition starts it."""
    daemon.write(APPS)  # watch_config is on by default
    daemon.start()
    daemon.wait_states("web", "running", 2)
    assert daemon.cli("stop", "web").returncode == 0
    runs = _runs(daemon)
    daemon.config.write_text(daemon.config.read_text() + EXTRA)
    daemon.wait_states("extra", "running", 1, timeout=10)  # the save was applied
    rows = daemon.instances("web")
    assert [r["state"] for r in rows] == ["stopped", "stopped"], rows
    assert _runs(daemon) == runs
    r = daemon.cli("reread", "--json")
    assert json.loads(r.stdout)["actions"] == []
    # its own definition changes (a live key): the stop is over
    daemon.config.write_text(daemon.config.read_text().replace(
        'kill_timeout = "2s"', 'kill_timeout = "3s"'))
    daemon.wait_states("web", "running", 2, timeout=10)
    assert _runs(daemon) == runs + 2


def test_disable_holds_across_applies_and_a_sigkilled_daemon_until_enable(
        daemon: Daemon) -> None:
    daemon.write(APPS)
    daemon.start()
    web = _running(daemon, "web")
    assert len(web) == 2
    r = daemon.cli("disable", "web")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("web disabled: stays stopped until `procsup enable web`\n")
    assert not any(pid_alive(p) for p in web)  # `disable` returns once they are gone
    assert _record(daemon) == ["web"]
    rows = daemon.instances("web")
    assert [(x["state"], x["disabled"]) for x in rows] == [("stopped", True)] * 2, rows
    assert [x["disabled"] for x in daemon.instances("db")] == [False]
    assert "disabled: `procsup enable web` starts it" in daemon.cli("status").stdout
    runs = _runs(daemon)

    # no command starts it
    for argv in (("start", "web"), ("restart", "web"), ("reload", "web"), ("start", "web:1")):
        r = daemon.cli(*argv)
        assert r.returncode == 1, argv
        assert r.stderr == "procsup: web is disabled: `procsup enable web` starts it\n", argv
    db = _running(daemon, "db")
    assert daemon.cli("start", "all").returncode == 0
    assert daemon.cli("restart", "all").returncode == 0  # restarts db only
    assert _running(daemon, "db") != db
    assert daemon.cli("scale", "web", "3").returncode == 0  # slots only (until the next apply)
    assert [x["state"] for x in daemon.instances("web")] == ["stopped"] * 3

    # nor does any apply: update of its own change, SIGHUP, a save that adds another app
    text = daemon.config.read_text().replace("exec sleep 1000", "exec sleep 1005")
    daemon.config.write_text(text)
    r = daemon.cli("update")
    assert r.returncode == 0, r.stderr
    assert "update   web: command changed (disabled: nothing starts)" in r.stdout, r.stdout
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.config.write_text(text + EXTRA)
    daemon.wait_states("extra", "running", 1, timeout=10)
    # (a scale now could race the save's or SIGHUP's apply, which undoes it: as the contract
    # says, a scale lasts until the next apply)
    assert [x["state"] for x in daemon.instances("web")] == ["stopped"] * 2
    assert _runs(daemon) == runs

    # the daemon dies by SIGKILL and starts again: still disabled, never started
    others = _running(daemon, "db") | _running(daemon, "extra")
    daemon.proc.kill()
    daemon.proc.wait(10)
    daemon.start()
    rows = daemon.instances("web")
    assert [(x["state"], x["disabled"]) for x in rows] == [("stopped", True)] * 2, rows
    now = _running(daemon, "db") | _running(daemon, "extra")
    wait_for(lambda: not any(pid_alive(p) for p in others), 10, "the old instances gone")
    assert len(now) == 2 and not now & others
    assert sorted(daemon.app_processes()) == sorted(now)  # exactly db and extra run
    assert _runs(daemon) == runs
    assert "disabled (procsup enable starts them): web" in daemon.daemon_log()

    r = daemon.cli("enable", "web")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("web enabled\n")
    assert len(_running(daemon, "web")) == 2
    assert _record(daemon) == []
    assert [x["disabled"] for x in daemon.instances("web")] == [False, False]
    assert _runs(daemon) == runs + 2


def test_a_removed_app_stays_disabled_when_it_comes_back(daemon: Daemon) -> None:
    daemon.write(APPS, "watch_config = false")
    daemon.start()
    daemon.wait_states("web", "running", 2)
    assert daemon.cli("disable", "web").returncode == 0
    runs = _runs(daemon)
    full = daemon.config.read_text()
    daemon.config.write_text(full.replace("[apps.web]", "[apps.web_was]"))
    assert daemon.cli("update").returncode == 0
    assert _record(daemon) == ["web"]
    daemon.wait_states("web_was", "running", 2)  # another name is another app
    daemon.config.write_text(full)
    r = daemon.cli("reread")
    assert "disabled web: nothing starts (`procsup enable web` starts it)" in r.stdout, r.stdout
    assert daemon.cli("update").returncode == 0
    assert [x["state"] for x in daemon.instances("web")] == ["stopped", "stopped"]
    assert _runs(daemon) == runs
    # enable of a name the config no longer has removes its record
    daemon.config.write_text(full.replace("[apps.web]", "[apps.web_was]"))
    assert daemon.cli("update").returncode == 0
    r = daemon.cli("enable", "web")
    assert r.returncode == 0, r.stderr
    assert "web enabled (the config has no app web: only its record went)" in r.stdout
    assert _record(daemon) == []
    r = daemon.cli("enable", "web")
    assert r.returncode == 1 and "unknown app" in r.stderr  # neither configured nor disabled


def test_disable_refuses_what_is_not_an_app(daemon: Daemon) -> None:
    daemon.write(APPS, "watch_config = false")
    daemon.start()
    for argv, text in ((("disable", "wbe"), "unknown app"), (("disable", "all"), "app names"),
                       (("disable", "web:0"), "app names")):
        r = daemon.cli(*argv)
        assert r.returncode == 1 and text in r.stderr, (argv, r.stderr)
    assert not (daemon.state_dir / "disabled.json").exists()
    assert len(_running(daemon, "web")) == 2


def test_a_disabled_record_that_cannot_be_read_fails_the_start(
        daemon: Daemon, tmp_path: Path) -> None:
    daemon.write(APPS, "watch_config = false")
    daemon.state_dir.mkdir(parents=True)
    (daemon.state_dir / "disabled.json").write_text("{not json")
    proc = daemon.start(wait=False)
    assert proc.wait(20) == 1
    assert "cannot read the disabled apps" in daemon.daemon_log()
    assert "disabled.json: not JSON" in daemon.daemon_log()
    assert not daemon.app_processes()
