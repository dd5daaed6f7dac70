"""`procsup daemon-reexec` and SIGUSR2 (issue 14): a real procsupd replaces its program in
place, and its real children never notice: the same pids, uptimes, counters, states, STATUS=,
runtime overrides; log lines whole, once and in order across the exec; a cluster port that
refuses no connection; the notify socket and the control socket still answering. A config that
the installed code rejects refuses the re-exec with the reason, and changes nothing."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from .conftest import Daemon, app_cmd, pid_alive, wait_for
from .test_cluster import _cluster, _free_port, _get, _load_during

APPS = f"""
    [apps.sleepy]
    command = ["sleep", "1000"]
    instances = 2
    min_uptime = "100ms"

    [apps.beat]
    command = {app_cmd("notifier")}
    ready = "notify"
    ready_timeout = "5s"

    [apps.halves]
    command = {app_cmd("halves")}

    [apps.idle]
    command = ["sleep", "1001"]

    [apps.grow]
    command = ["sleep", "1002"]
    """


def _version(daemon: Daemon) -> dict[str, Any]:
    r = daemon.cli("version", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["daemon"]  # type: ignore[no-any-return]


def _rows(daemon: Daemon) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["app"], r["instance"]): r for r in daemon.instances()}


def _check_lines(path: Path) -> int:
    """Every line of `path` whole, and numbered 0, 1, 2, ... with none missing or repeated;
    how many there are. The last may be the half its writer had written when the daemon's
    shutdown stopped it (written with a newline, as the partial line of an ended run is)."""
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends in the middle of a line"
    lines.pop()
    if lines and re.fullmatch(rb"n=%06d a{20}" % (len(lines) - 1), lines[-1]):
        lines.pop()
    for i, line in enumerate(lines):
        assert re.fullmatch(rb"n=%06d a{20}b{20}" % i, line), f"line {i} is {line[:60]!r}"
    return len(lines)


def test_reexec_keeps_every_app_as_it_was(daemon: Daemon) -> None:
    daemon.write(APPS, "watch_config = false")
    daemon.start()
    for app in ("sleepy", "beat", "halves", "idle", "grow"):
        daemon.wait_states(app, "running")
    wait_for(lambda: _rows(daemon)[("beat", 0)]["status"] == "beating", 10, "STATUS=beating")
    assert daemon.cli("stop", "idle").returncode == 0  # runtime overrides: a stop, a scale
    r = daemon.cli("scale", "grow", "3")
    assert r.returncode == 0, r.stderr
    daemon.wait_states("grow", "running", 3)
    wait_for(lambda: (daemon.log_dir / "halves-out.log").stat().st_size > 10_000, 10,
             "the writer under way")
    before = _rows(daemon)
    assert before[("idle", 0)]["state"] == "stopped"
    daemon_pid = daemon.proc.pid if daemon.proc is not None else None

    r = daemon.cli("daemon-reexec", timeout=120)
    assert r.returncode == 0, r.stderr + daemon.daemon_log()
    assert "procsupd re-executed: " in r.stdout and f"pid {daemon_pid}" in r.stdout
    assert daemon.proc is not None and daemon.proc.poll() is None  # the same process
    v = _version(daemon)
    assert v["reexecs"] == 1 and v["pid"] == daemon_pid
    after = _rows(daemon)
    assert after.keys() == before.keys()
    for key, row in before.items():
        now = after[key]
        for field in ("pid", "state", "restarts", "status", "exit_code", "reason"):
            assert now[field] == row[field], (key, field, row[field], now[field])
        if row["uptime"] is not None:
            assert now["uptime"] >= row["uptime"], key  # not reset by the exec
    assert "re-executed from" in daemon.daemon_log()

    # SIGUSR2 does the same; the notify socket and the log capture go on across both.
    os.kill(daemon.proc.pid, signal.SIGUSR2)
    wait_for(lambda: _version(daemon)["reexecs"] == 2, 60, "the SIGUSR2 re-exec")
    assert {k: r["pid"] for k, r in _rows(daemon).items()} == {
        k: r["pid"] for k, r in before.items()}
    # A crash after the re-execs is seen and restarted as ever; a stop still stops.
    victim = before[("sleepy", 0)]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: (row := _rows(daemon)[("sleepy", 0)])["state"] == "running"
             and row["pid"] != victim and row["restarts"] == 1, 10, "the restart")
    # The heartbeat of `beat` (WATCHDOG=1 every 0.1 s) reaches the new image: still running.
    assert _rows(daemon)[("beat", 0)]["state"] == "running"
    # Every process stops with the daemon: none was lost track of.
    pids = [r["pid"] for r in _rows(daemon).values() if r["pid"]]
    assert daemon.stop_daemon() == 0
    assert not [p for p in pids if pid_alive(p)]
    assert _check_lines(daemon.log_dir / "halves-out.log") > 100


def test_a_config_the_installed_code_rejects_refuses_the_reexec(daemon: Daemon) -> None:
    daemon.write(APPS, "watch_config = false")
    daemon.start()
    daemon.wait_states("sleepy", "running", 2)
    pids = {k: r["pid"] for k, r in _rows(daemon).items()}
    text = daemon.config.read_text()
    daemon.config.write_text(text + '\n[apps.bad]\ncommand = ["x"]\ninstances = "many"\n')
    r = daemon.cli("daemon-reexec", timeout=120)
    assert r.returncode == 1
    assert "rejects the config" in r.stderr and "apps.toml:" in r.stderr, r.stderr
    assert "instances" in r.stderr
    v = _version(daemon)
    assert v["reexecs"] == 0 and v["reexec_error"]
    assert {k: r["pid"] for k, r in _rows(daemon).items()} == pids
    # Fixed, it goes through: the daemon still runs the applied config (not the file's).
    daemon.config.write_text(text)
    r = daemon.cli("daemon-reexec", timeout=120)
    assert r.returncode == 0, r.stderr
    assert {k: r["pid"] for k, r in _rows(daemon).items()} == pids


def test_a_cluster_port_refuses_no_connection_across_a_reexec(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port)
    daemon.start()
    pids = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    r, results = _load_during(port, lambda: daemon.cli("daemon-reexec", timeout=120))
    assert r.returncode == 0, r.stderr
    assert results["failed"] == 0 and results["ok"] > 0, results
    assert {r["pid"] for r in daemon.instances("web")} == pids
    assert {_get(port) for _ in range(40)} <= pids
    # The daemon still holds the port: restarted instances get it as before.
    assert daemon.cli("restart", "web").returncode == 0
    new = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    assert not new & pids
    assert _get(port) in new
