"""Declarative apply with a real daemon: update, SIGHUP, saved file, scale, reread, dump."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import PY, Daemon, app_cmd, pid_alive, wait_for

FIVE = """
    [apps.keep]
    command = {sleeper}
    instances = 2
    min_uptime = "100ms"
    [apps.edit]
    command = {sleeper}
    min_uptime = "100ms"
    [apps.gone]
    command = ["sleep", "1000"]
    min_uptime = "100ms"
    [apps.up]
    command = ["sleep", "1001"]
    min_uptime = "100ms"
    [apps.down]
    command = ["sleep", "1002"]
    instances = 3
    min_uptime = "100ms"
    """

CHANGED = """
    [apps.keep]
    command = {sleeper}
    instances = 2
    min_uptime = "100ms"
    [apps.edit]
    command = {sleeper}
    min_uptime = "100ms"
    env = {{ EDITED = "yes" }}
    [apps.up]
    command = ["sleep", "1001"]
    instances = 3
    min_uptime = "100ms"
    [apps.down]
    command = ["sleep", "1002"]
    instances = 1
    min_uptime = "100ms"
    [apps.new]
    command = ["sleep", "1003"]
    min_uptime = "100ms"
    """


def _pids(daemon: Daemon) -> dict[tuple[str, int], int]:
    return {(r["app"], r["instance"]): r["pid"] for r in daemon.instances() if r["pid"]}


def _start_five(daemon: Daemon, extra: str = "") -> dict[tuple[str, int], int]:
    daemon.write(FIVE.format(sleeper=app_cmd("sleeper")), extra)
    daemon.start()
    wait_for(lambda: len(_pids(daemon)) == 8 and all(
        r["state"] == "running" for r in daemon.instances()), 10, "five apps running")
    return _pids(daemon)


def _write_changed(daemon: Daemon, extra: str = "", *, by_rename: bool = False) -> None:
    text = daemon.header(extra) + textwrap.dedent(CHANGED.format(sleeper=app_cmd("sleeper")))
    if by_rename:  # as editors save: write a temporary file, rename it over the original
        tmp = daemon.config.with_name(".apps.toml.swp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, daemon.config)
    else:
        daemon.config.write_text(text)


CHANGED_KEYS = {("keep", 0), ("keep", 1), ("edit", 0), ("up", 0), ("up", 1), ("up", 2),
                ("down", 0), ("new", 0)}


def _check_applied(daemon: Daemon, before: dict[tuple[str, int], int], *, wait: bool) -> None:
    """The changed config is applied. `wait`: poll for it (SIGHUP, a saved file: nobody to
    wait for); else it must hold at once (`update` returns once the plan executed)."""
    def applied() -> dict[tuple[str, int], int] | None:
        rows = daemon.instances()
        p = {(r["app"], r["instance"]): r["pid"] for r in rows if r["pid"]}
        if set(p) == CHANGED_KEYS and all(r["state"] == "running" for r in rows):
            return p
        return None

    if wait:
        after = wait_for(applied, 10, "the changed config to be applied")
        old = [before[k] for k in (("gone", 0), ("down", 1), ("down", 2), ("edit", 0))]
        wait_for(lambda: not any(pid_alive(pid) for pid in old), 5, "old processes stopped")
    else:
        rows = daemon.instances()
        after = applied()
        assert after is not None, f"update returned before its plan ran: {rows}"
        for key in (("gone", 0), ("down", 1), ("down", 2), ("edit", 0)):
            assert not pid_alive(before[key]), f"{key} still running after update returned"
    # unchanged apps and kept instances keep their processes
    for key in (("keep", 0), ("keep", 1), ("up", 0), ("down", 0)):
        assert after[key] == before[key], key
    # the edited app was restarted with its new env; the removed app and extra instances are gone
    assert after[("edit", 0)] != before[("edit", 0)]
    assert b"EDITED=yes" in Path(f"/proc/{after[('edit', 0)]}/environ").read_bytes()
    assert daemon.status()["config"]["applied"] is True


def test_update_applies_exactly_what_changed(daemon: Daemon) -> None:
    before = _start_five(daemon, "watch_config = false")
    _write_changed(daemon, "watch_config = false")
    r = daemon.cli("reread", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert [(a["action"], a["app"], a["instances"]) for a in plan["actions"]] == [
        ("stop", "gone", [0]),
        ("scale", "down", [1, 2]),
        ("restart", "edit", [0]),
        ("scale", "up", [1, 2]),
        ("start", "new", [0]),
    ]
    assert plan["restart_daemon"] == []
    assert _pids(daemon) == before  # reread changes nothing
    r = daemon.cli("update")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restart" in r.stdout and "edit" in r.stdout
    _check_applied(daemon, before, wait=False)
    r = daemon.cli("reread")
    assert r.returncode == 0 and "no changes" in r.stdout


def test_sighup_applies(daemon: Daemon) -> None:
    before = _start_five(daemon, "watch_config = false")
    _write_changed(daemon, "watch_config = false")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    _check_applied(daemon, before, wait=True)


def test_saving_the_file_applies_it(daemon: Daemon) -> None:
    before = _start_five(daemon)
    t0 = time.monotonic()
    _write_changed(daemon, by_rename=True)
    _check_applied(daemon, before, wait=True)
    assert time.monotonic() - t0 < 5


def test_invalid_config_changes_nothing_until_fixed(daemon: Daemon) -> None:
    before = _start_five(daemon, "watch_config = false")
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace('[apps.edit]\n', '[apps.edit]\ncomand = "x"\n', 1))
    r = daemon.cli("update")
    assert r.returncode == 1
    line = good.splitlines().index("[apps.edit]") + 2
    assert f"apps.toml:{line}" in r.stderr and "comand" in r.stderr
    assert "did you mean 'command'" in r.stderr
    r = daemon.cli("reread")
    assert r.returncode == 1 and "comand" in r.stderr
    st = daemon.status()
    assert st["config"]["applied"] is False and "comand" in st["config"]["error"]
    assert _pids(daemon) == before
    table = daemon.cli("status").stdout
    assert "not applied" in table or "comand" in table
    daemon.config.write_text(good.replace('[apps.edit]\n', '[apps.edit]\nkill_timeout = "2s"\n'))
    r = daemon.cli("update")
    assert r.returncode == 0, r.stderr
    st = daemon.status()
    assert st["config"]["applied"] is True and st["config"]["error"] is None
    assert _pids(daemon) == before  # kill_timeout is live: nothing restarted


def test_half_written_save_is_not_reported_when_the_next_read_is_fine(daemon: Daemon) -> None:
    before = _start_five(daemon)
    text = daemon.config.read_text()
    with open(daemon.config, "w") as f:  # truncate-and-write in two steps, as some editors do
        f.write(text[: len(text) // 2])
        f.flush()
        time.sleep(0.05)
        f.write(text[len(text) // 2:] + '\n[apps.late]\ncommand = ["sleep", "1004"]\n')
    wait_for(lambda: any(r["app"] == "late" for r in daemon.instances()), 5, "late app started")
    assert daemon.status()["config"]["applied"] is True
    assert all(_pids(daemon)[k] == v for k, v in before.items())
    assert "config not applied" not in daemon.daemon_log()


def test_live_keys_apply_without_restart(daemon: Daemon) -> None:
    daemon.write("""
        [apps.tick]
        command = ["/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"]
        min_uptime = "100ms"
        """, "watch_config = false")
    daemon.start()
    [row] = daemon.wait_states("tick", "running", 1)
    text = daemon.config.read_text() + 'log_date_format = "%Y"\nout_file = "moved.log"\n'
    daemon.config.write_text(text)
    r = daemon.cli("update")
    assert r.returncode == 0, r.stderr
    assert "live" in r.stdout
    moved = daemon.log_dir / "moved.log"
    wait_for(lambda: moved.exists() and re.search(r"^\d{4} tick$", moved.read_text(), re.M),
             5, "prefixed lines in the new file")
    assert daemon.instances("tick")[0]["pid"] == row["pid"]


def test_stopped_instances_stay_stopped_on_update_unless_their_app_changes(
        daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        instances = 2
        min_uptime = "100ms"
        [apps.t]
        command = ["sleep", "1003"]
        min_uptime = "100ms"
        """, "watch_config = false")
    daemon.start()
    daemon.wait_states("s", "running", 2)
    assert daemon.cli("stop", "s:1").returncode == 0
    daemon.config.write_text(daemon.config.read_text().replace('"1003"', '"1004"'))
    r = daemon.cli("reread", "--json")
    assert [(a["action"], a["app"]) for a in json.loads(r.stdout)["actions"]] == [
        ("restart", "t")]
    assert daemon.cli("update").returncode == 0
    assert {r["instance"]: r["state"] for r in daemon.instances("s")} == {
        0: "running", 1: "stopped"}
    daemon.config.write_text(daemon.config.read_text().replace(
        "instances = 2", 'instances = 2\nmax_restarts = 3'))
    r = daemon.cli("reread", "--json")
    assert json.loads(r.stdout)["actions"] == [
        {"action": "start", "app": "s", "instances": [1],
         "reason": "stopped by command; its definition changed"}]
    assert daemon.cli("update").returncode == 0
    daemon.wait_states("s", "running", 2)


def test_scale_command_until_next_apply(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        instances = 2
        min_uptime = "100ms"
        """, "watch_config = false")
    daemon.start()
    rows = daemon.wait_states("s", "running", 2)
    r = daemon.cli("scale", "s", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    # `scale` returns once the plan executed: no polling for it
    rows4 = daemon.instances("s")
    assert [(x["instance"], x["state"]) for x in rows4] == [
        (i, "running") for i in range(4)], rows4
    assert [x["pid"] for x in rows4[:2]] == [x["pid"] for x in rows]
    env = Path(f"/proc/{rows4[3]['pid']}/environ").read_bytes()
    assert b"PROCSUP_INSTANCE=3\0" in env and b"PROCSUP_INSTANCES=4\0" in env
    r = daemon.cli("scale", "s", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    rows1 = daemon.instances("s")
    assert [(x["instance"], x["state"]) for x in rows1] == [(0, "running")], rows1
    assert rows1[0]["pid"] == rows[0]["pid"]
    assert not any(pid_alive(x["pid"]) for x in rows4[1:])
    assert daemon.cli("scale", "nope", "2").returncode == 1
    # the next apply brings back the configured count
    assert daemon.cli("update").returncode == 0
    rows2 = daemon.instances("s")
    assert [(x["instance"], x["state"]) for x in rows2] == [(0, "running"), (1, "running")], rows2
    assert rows2[0]["pid"] == rows[0]["pid"]


def test_an_app_with_no_instances_says_how_to_run_it(daemon: Daemon) -> None:
    """What `autostart = false` imports to: `start` explains `scale` instead of calling a
    configured app unknown."""
    daemon.write("""
        [apps.idle]
        command = ["sleep", "1000"]
        instances = 0
        """, "watch_config = false")
    daemon.start()
    r = daemon.cli("start", "idle")
    assert r.returncode == 1
    assert "idle has no instances (instances = 0): run some with procsup scale idle N" \
        in r.stderr, r.stderr
    assert daemon.cli("scale", "idle", "1").returncode == 0
    daemon.wait_states("idle", "running", 1)


def test_scaling_back_up_while_a_scale_down_is_still_stopping(daemon: Daemon) -> None:
    """Instances that linger in `stopping` (they ignore SIGTERM) after a scale-down: an update
    back to 3 starts the third at once, and the lingering ones stay visible until gone."""
    daemon.write("""
        [apps.slow]
        command = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"]
        instances = 4
        min_uptime = "100ms"
        kill_timeout = "4s"
        """, "watch_config = false")
    daemon.start()
    rows = daemon.wait_states("slow", "running", 4)
    assert daemon.cli("scale", "--no-wait", "slow", "2").returncode == 0
    wait_for(lambda: [r["state"] for r in daemon.instances("slow")].count("stopping") == 2, 5,
             "two instances stopping")
    daemon.config.write_text(daemon.config.read_text().replace("instances = 4", "instances = 3"))
    r = daemon.cli("update")
    assert r.returncode == 0, r.stdout + r.stderr

    def three_running() -> list[dict[str, object]] | None:
        live = [x for x in daemon.instances("slow") if x["state"] == "running"]
        return live if len(live) == 3 else None

    live = wait_for(three_running, 3, "a third instance running before the old ones are gone")
    assert {x["instance"] for x in live} == {0, 1, 2}
    # The old slow:2 and slow:3 are still stopping (kill_timeout 4s), and still shown.
    lingering = [x for x in daemon.instances("slow") if x["state"] == "stopping"]
    assert sorted(x["pid"] for x in lingering) == sorted(x["pid"] for x in rows[2:])
    rows3 = daemon.wait_states("slow", "running", 3, timeout=15)  # the old ones are gone
    assert not any(pid_alive(x["pid"]) for x in rows[2:])
    assert daemon.cli("reread", "--json").stdout.count('"action"') == 0  # nothing pending
    assert {x["instance"] for x in rows3} == {0, 1, 2}


def test_daemon_keys_needing_a_restart_are_reported(daemon: Daemon) -> None:
    _start_five(daemon, "watch_config = false")
    text = daemon.config.read_text().replace(daemon.pidfile, daemon.pidfile + ".new")
    daemon.config.write_text(text)
    r = daemon.cli("reread", "--json")
    assert json.loads(r.stdout)["restart_daemon"] == ["pidfile"]
    r = daemon.cli("update")
    assert r.returncode == 0 and "pidfile" in r.stdout
    assert daemon.status()["config"]["restart_daemon"] == ["pidfile"]
    assert os.path.exists(daemon.pidfile)  # still the one in use


def test_dump_round_trips(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FROM_FILE=1\n")
    daemon.write(f"""
        [apps.a]
        command = {app_cmd("sleeper")}
        cwd = "{tmp_path}"
        instances = 2
        env = {{ A = "1" }}
        env_file = [".env"]
        env_production = {{ A = "2" }}
        log_date_format = "%H:%M:%S"
        kill_signal = "SIGINT"
        min_uptime = "100ms"
        [apps.b]
        command = "echo hi && sleep 100"
        shell = true
        out_file = false
        """, 'env = "production"\nwatch_config = false')
    daemon.start()
    r = daemon.cli("dump")
    assert r.returncode == 0, r.stderr
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(r.stdout)
    os.chmod(dumped, 0o644)
    check = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(dumped)],
                           capture_output=True, text=True, timeout=20, env=daemon.env)
    assert check.returncode == 0, check.stderr
    # applying the dump changes nothing
    daemon.config.write_text(r.stdout)
    r2 = daemon.cli("reread", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["actions"] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies to a root daemon")
def test_root_daemon_refuses_a_config_others_can_write(daemon: Daemon) -> None:
    _start_five(daemon, "watch_config = false")
    os.chmod(daemon.config, 0o666)
    r = daemon.cli("update")
    assert r.returncode == 1 and "writable" in r.stderr
    os.chmod(daemon.config, 0o644)
    daemon.stop_daemon()
    os.chmod(daemon.config, 0o664)
    bad = subprocess.run([PY, "-m", "procsup.daemon", "-n", "-c", str(daemon.config)],
                         capture_output=True, text=True, timeout=20, env=daemon.env)
    assert bad.returncode == 78 and "writable" in bad.stderr


def test_include_glob_files_added_and_removed_are_applied(daemon: Daemon) -> None:
    (daemon.root / "apps.d").mkdir()
    daemon.write("""
        [apps.main]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        """, 'include = ["apps.d/*.toml"]')
    daemon.start()
    [main] = daemon.wait_states("main", "running", 1)
    extra = daemon.root / "apps.d" / "extra.toml"
    tmp = daemon.root / "apps.d" / ".extra.toml.tmp"  # does not match the glob
    tmp.write_text('[apps.extra]\ncommand = ["sleep", "1001"]\nmin_uptime = "100ms"\n')
    os.chmod(tmp, 0o644)
    os.replace(tmp, extra)
    daemon.wait_states("extra", "running", 1)
    extra.unlink()
    wait_for(lambda: not daemon.instances("extra"), 5, "the removed file's app stopped")
    assert daemon.instances("main")[0]["pid"] == main["pid"]
    assert daemon.status()["config"]["applied"] is True


def test_fixing_a_file_first_included_by_an_invalid_save_applies_it(daemon: Daemon) -> None:
    """The save that adds `include` is refused (the included file is broken); saving the fix of
    that file, not of the main one, applies both."""
    apps = """
        [apps.main]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        """
    daemon.write(apps)
    daemon.start()
    [main] = daemon.wait_states("main", "running", 1)
    (daemon.root / "apps.d").mkdir()
    extra = daemon.root / "apps.d" / "extra.toml"
    extra.write_text('[apps.extra]\ncommand = ["sleep", "1001"]\ninstances = 1.5\n')
    os.chmod(extra, 0o644)
    daemon.write(apps, 'include = ["apps.d/*.toml"]')
    wait_for(lambda: "instances" in (daemon.status()["config"].get("error") or ""), 5,
             "the broken include reported")
    extra.write_text('[apps.extra]\ncommand = ["sleep", "1001"]\nmin_uptime = "100ms"\n')
    daemon.wait_states("extra", "running", 1, timeout=5)
    assert daemon.status()["config"]["applied"] is True
    assert daemon.instances("main")[0]["pid"] == main["pid"]


def test_profile_switch_restarts_only_apps_whose_env_changed(daemon: Daemon) -> None:
    apps = """
        [apps.plain]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        [apps.profiled]
        command = ["sleep", "1001"]
        min_uptime = "100ms"
        env_production = { LEVEL = "warn" }
        """
    daemon.write(apps, 'watch_config = false\nenv = "development"')
    daemon.start()
    [plain] = daemon.wait_states("plain", "running", 1)
    [profiled] = daemon.wait_states("profiled", "running", 1)
    daemon.write(apps, 'watch_config = false\nenv = "production"')
    r = daemon.cli("update")
    assert r.returncode == 0, r.stderr
    assert daemon.status()["config"]["profile"] == "production"
    [new] = daemon.wait_states("profiled", "running", 1)
    assert new["pid"] != profiled["pid"]
    assert b"LEVEL=warn\0" in Path(f"/proc/{new['pid']}/environ").read_bytes()
    assert daemon.instances("plain")[0]["pid"] == plain["pid"]
