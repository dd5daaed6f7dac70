"""depends_on with a real procsupd and real processes: each condition, the waiting state and
its reasons, start order, stop order (recorded by the programs themselves), `start APP` of a
stopped stack, `stop APP` naming its dependents."""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import Daemon, app_cmd, wait_for


def events(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def stack(log: Path, *, migrate_exit: int = 0) -> str:
    return f"""
        [apps.worker]
        command = {app_cmd("stage", str(log), "worker")}
        depends_on = {{ web = "started" }}
        min_uptime = "100ms"

        [apps.web]
        command = {app_cmd("stage", str(log), "web")}
        instances = 2
        depends_on = {{ db = "ready", migrate = "completed" }}
        min_uptime = "300ms"

        [apps.migrate]
        command = {app_cmd("stage", str(log), "migrate", "--after", "0.3",
                           "--exit", str(migrate_exit))}
        autorestart = false
        depends_on = ["db"]

        [apps.db]
        command = {app_cmd("stage", str(log), "db")}
        min_uptime = "500ms"
        """


def test_a_stack_starts_in_dependency_order_and_stops_in_reverse(daemon: Daemon) -> None:
    log = daemon.root / "stack.log"
    daemon.write(stack(log))
    daemon.start()
    # While db is starting, the rest waits, each saying what for.
    first = {r["app"]: r for r in daemon.instances()}
    if first["db"]["state"] == "starting":
        assert first["web"]["state"] == "waiting"
        assert first["web"]["reason"].startswith("waiting for db (ready)")
        assert first["migrate"]["reason"] == "waiting for db (ready)"
        assert first["worker"]["reason"] == "waiting for web (started)"
        assert first["web"]["pid"] is None
    daemon.wait_states("worker", "running", 1, timeout=20)
    daemon.wait_states("web", "running", 2)
    got = events(log)
    assert got[:3] == ["start db", "start migrate", "done migrate"]
    # worker needs web "started" (alive): it is spawned right after both web instances, and
    # may write its line before they write theirs
    assert sorted(got[3:]) == ["start web", "start web", "start worker"]
    (mig,) = daemon.instances("migrate")
    assert (mig["state"], mig["exit_code"]) == ("exited", 0)

    assert daemon.stop_daemon() == 0
    stops = [e for e in events(log) if e.startswith("stop")]
    assert stops == ["stop worker", "stop web", "stop web", "stop db"]


def test_a_failed_dependency_leaves_its_dependents_waiting_with_the_reason(
        daemon: Daemon) -> None:
    log = daemon.root / "stack.log"
    daemon.write(stack(log, migrate_exit=3))
    daemon.start()
    rows = daemon.wait_states("web", "waiting", 2, timeout=20)
    wait_for(lambda: daemon.instances("web")[0]["reason"]
             == "waiting for migrate: exited with code 3", 10, "web's reason")
    assert all(r["pid"] is None for r in rows)
    (worker,) = daemon.instances("worker")
    assert (worker["state"], worker["reason"]) == ("waiting", "waiting for web (started)")
    # `start web` returns (a dependency that cannot come by itself), failing with the reason
    began = time.monotonic()
    r = daemon.cli("start", "web")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "waiting for migrate: exited with code 3" in r.stdout
    assert time.monotonic() - began < 10
    assert "start web" not in events(log)


def test_start_app_starts_its_stopped_dependencies_first(daemon: Daemon) -> None:
    log = daemon.root / "stack.log"
    daemon.write(stack(log))
    daemon.start()
    daemon.wait_states("worker", "running", 1, timeout=20)
    r = daemon.cli("stop", "all")
    assert r.returncode == 0, r.stderr
    stops = [e for e in events(log) if e.startswith("stop")]
    assert stops == ["stop worker", "stop web", "stop web", "stop db"]
    log.write_text("")
    r = daemon.cli("start", "web")  # db is started first; migrate completed: not run again
    assert r.returncode == 0, r.stdout + r.stderr
    assert events(log)[:1] == ["start db"]
    assert sorted(events(log)[1:]) == ["start web", "start web"]
    assert [r["state"] for r in daemon.instances("web")] == ["running", "running"]
    assert daemon.instances("worker")[0]["state"] == "stopped"  # not a dependency of web


def test_stop_of_a_dependency_names_its_running_dependents(daemon: Daemon) -> None:
    log = daemon.root / "stack.log"
    daemon.write(stack(log))
    daemon.start()
    daemon.wait_states("worker", "running", 1, timeout=20)
    r = daemon.cli("stop", "db")
    assert r.returncode == 0, r.stderr
    assert "still running, and depending on what was stopped: web" in r.stdout
    # ordering is not coupling: web keeps running without db
    assert [r["state"] for r in daemon.instances("web")] == ["running", "running"]
