"""Cluster mode with a real daemon: one loopback port shared by socket-activated instances,
kept open across crashes and rolling reloads; readiness by notify; reload aborts."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from .conftest import APPS, Daemon, app_cmd, pid_alive, wait_for

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ppid(pid: int) -> int:
    """The parent of a live process, from /proc (the field after the parenthesised name)."""
    line = Path(f"/proc/{pid}/stat").read_text()
    return int(line[line.rindex(")") + 2:].split()[1])


def _get(port: int, path: str = "/") -> int:
    """One request; the answering instance's pid."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        return int(resp.read())
    finally:
        conn.close()


def _venv_tool(name: str) -> Path:
    """A console script of the test extras beside this interpreter; skip the test without it."""
    tool = Path(sys.executable).with_name(name)
    if not tool.exists():
        pytest.skip(f"{name} is not installed (it is in the test extras)")
    return tool


def _load_during(port: int, action: Callable[[], T]) -> tuple[T, dict[str, int]]:
    """Run `action` while a client sends requests one after another (bounded in number and by
    the action's end); returns its result and the count of answered and failed requests."""
    stop = threading.Event()
    results = {"ok": 0, "failed": 0}

    def client() -> None:
        while not stop.is_set() and results["ok"] + results["failed"] < 20000:
            try:
                _get(port)
                results["ok"] += 1
            except OSError:
                results["failed"] += 1

    t = threading.Thread(target=client)
    t.start()
    try:
        return action(), results
    finally:
        stop.set()
        t.join(10)


def _cluster(daemon: Daemon, port: int, mode: str = "notify", extra: str = "") -> None:
    ready = 'ready = "notify"' if mode == "notify" else ""
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("activated_http", mode)}
        exec_mode = "cluster"
        instances = 2
        listen = ["tcp://127.0.0.1:{port}"]
        {ready}
        ready_timeout = "3s"
        kill_timeout = "2s"
        min_uptime = "100ms"
        {extra}
        """, "watch_config = false")


def test_instances_share_one_port_across_a_crash(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port)
    daemon.start()
    rows = daemon.wait_states("web", "running", 2)
    pids = {r["pid"] for r in rows}
    assert all(r["status"] == "serving on fd 3" for r in rows)
    for r in rows:  # exactly stdin/out/err and the socket at fd 3: nothing of the daemon leaks
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{r['pid']}/fd")) == [0, 1, 2, 3]
    seen = {_get(port) for _ in range(40)}
    assert seen <= pids
    for _ in range(50):  # both instances serve: nothing fails
        _get(port)
    # Kill one instance between two requests. The port never closes, so no connection is
    # refused. A connection the dying instance had already accepted may be reset (it goes with
    # the process: kill() returns before the process is gone); once it is gone, every request
    # is answered.
    os.kill(rows[0]["pid"], signal.SIGKILL)
    refused = 0
    for _ in range(50):
        try:
            _get(port)
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            pass
    assert refused == 0
    wait_for(lambda: not pid_alive(rows[0]["pid"]), 10, "the killed instance gone")
    for _ in range(100):
        _get(port)
    wait_for(lambda: {r["pid"] for r in daemon.instances("web") if r["state"] == "running"}
             - pids, 10, "the replacement")
    log = (daemon.log_dir / "web-out-0.log").read_text()
    assert "names tcp-127.0.0.1-" in log


def test_rolling_reload_serves_throughout(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port)
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    r, results = _load_during(port, lambda: daemon.cli("reload", "web", timeout=60))
    assert r.returncode == 0, r.stdout + r.stderr
    assert results["failed"] == 0 and results["ok"] > 0, results
    new = {x["pid"] for x in daemon.wait_states("web", "running", 2)}
    assert not new & old
    assert not any(pid_alive(p) for p in old)


def test_reload_with_a_replacement_that_never_gets_ready_keeps_the_old(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port)
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    # the next runs never send READY=1
    daemon.config.write_text(daemon.config.read_text().replace('"notify"]', '"never"]'))
    r = daemon.cli("update", timeout=60)
    rows = daemon.instances("web")
    assert {x["pid"] for x in rows} == old
    assert all(x["state"] == "running" for x in rows)
    assert _get(port) in old
    assert r.returncode == 1
    assert "not ready" in r.stderr and "old instances keep running" in r.stderr


def test_a_port_in_use_makes_only_that_app_errored(daemon: Daemon) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        daemon.write(f"""
            [apps.web]
            command = {app_cmd("activated_http")}
            exec_mode = "cluster"
            listen = ["tcp://127.0.0.1:{port}"]
            [apps.other]
            command = ["sleep", "1000"]
            min_uptime = "100ms"
            """)
        daemon.start()
        [web] = daemon.wait_states("web", "errored", 1)
        assert str(port) in web["reason"] and "in use" in web["reason"]
        daemon.wait_states("other", "running", 1)


def test_reuseport_gives_each_slot_its_own_socket(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port, extra='balance = "reuseport"')
    daemon.start()
    rows = daemon.wait_states("web", "running", 2)
    inodes = {Path(f"/proc/{r['pid']}/fd/3").readlink() for r in rows}
    assert len(inodes) == 2  # two different sockets on one port
    seen = {_get(port) for _ in range(200)}
    assert seen == {r["pid"] for r in rows}
    # the replacement of a slot receives that slot's socket
    before = Path(f"/proc/{rows[0]['pid']}/fd/3").readlink()
    os.kill(rows[0]["pid"], signal.SIGKILL)
    new = wait_for(lambda: next((x for x in daemon.instances("web") if x["instance"] == 0
                                 and x["state"] == "running" and x["pid"] != rows[0]["pid"]),
                                None), 10, "replacement of web:0")
    assert Path(f"/proc/{new['pid']}/fd/3").readlink() == before


def test_gunicorn_with_its_native_socket_activation(daemon: Daemon) -> None:
    gunicorn = _venv_tool("gunicorn")
    port = _free_port()
    daemon.write(f"""
        [apps.gu]
        command = ["{gunicorn}", "--workers", "2", "--chdir", "{APPS}", "wsgi_app:application"]
        exec_mode = "cluster"
        instances = 2
        listen = ["tcp://127.0.0.1:{port}"]
        ready = "notify"
        ready_timeout = "20s"
        kill_timeout = "10s"
        """, "watch_config = false")
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("gu", "running", 2, timeout=30)}
    # Four requests at once, each holding its sync worker 2 s: a busy worker cannot accept, so
    # the idle workers (two per instance) take the others from the one shared port.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = set(pool.map(lambda _: _get(port, "/?sleep=2"), range(4)))
    assert {_ppid(w) for w in workers} == old, workers  # workers of both instances served
    r, results = _load_during(port, lambda: daemon.cli("reload", "gu", timeout=120))
    assert r.returncode == 0, r.stdout + r.stderr
    assert results["failed"] == 0 and results["ok"] > 0, results
    new = {x["pid"] for x in daemon.wait_states("gu", "running", 2)}
    assert not new & old


def test_heartbeat_timeout_restarts_a_silent_instance(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.beat]
        command = {app_cmd("notifier", "0.6")}
        ready = "notify"
        heartbeat_timeout = "400ms"
        min_uptime = "100ms"
        [apps.steady]
        command = {app_cmd("notifier")}
        ready = "notify"
        heartbeat_timeout = "2s"  # beats every 0.1 s: a wide margin on a loaded machine
        """, "watch_config = false")
    daemon.start()
    [first] = daemon.wait_states("beat", "running", 1)
    assert first["status"] == "beating"
    wait_for(lambda: (rows := daemon.instances("beat")) and rows[0]["pid"] not in (
        None, first["pid"]), 10, "restart after the heartbeats stopped")
    assert not pid_alive(first["pid"])
    [steady] = daemon.wait_states("steady", "running", 1)
    assert steady["restarts"] == 0  # still beating: never restarted
    assert "heartbeat_timeout" in daemon.daemon_log()


def test_an_app_that_never_beats_backs_off_then_errors(daemon: Daemon) -> None:
    """heartbeat_timeout on an app that sends no WATCHDOG=1 at all: not a hang to restart
    forever, but failed runs for the restart policy; one that beat and then hung is restarted
    as before (the steady/beat test above)."""
    daemon.write(f"""
        [apps.mute]
        command = {app_cmd("notifier", "0")}
        ready = "notify"
        heartbeat_timeout = "300ms"
        min_uptime = "100ms"
        max_restarts = 2
        """, "watch_config = false")
    daemon.start()
    [row] = daemon.wait_states("mute", "errored", 1, timeout=15)
    assert row["reason"] == ("gave up after 2 restarts: each run sent no WATCHDOG=1 within "
                             "heartbeat_timeout 300ms of being ready (last: no WATCHDOG=1 "
                             "within heartbeat_timeout 300ms)"), row
    assert daemon.daemon_log().count("(none since it started)") == 3


def test_tcp_readiness_for_a_fork_app(daemon: Daemon) -> None:
    port = _free_port()
    daemon.write(f"""
        [apps.srv]
        command = ["/bin/sh", "-c",
                   "sleep 3; exec {sys.executable} -m http.server {port} --bind 127.0.0.1"]
        ready = "tcp://127.0.0.1:{port}"
        ready_timeout = "10s"
        """, "watch_config = false")
    daemon.start()
    # alive but not listening yet: starting, not running (min_uptime alone would say running)
    assert daemon.instances("srv")[0]["state"] == "starting"
    daemon.wait_states("srv", "running", 1, timeout=15)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_reload_of_a_fork_app_whose_replacement_cannot_run_beside_it_says_why(
        daemon: Daemon, tmp_path: Path) -> None:
    """A fork app that holds no port but cannot run twice (a lock) rolls, and its replacement
    exits at once. The reload says so, and how to get a new process; the old one keeps
    running. (A fork app that holds its port is restarted stop-then-start instead:
    test_reload_truth.py.)"""
    lock = tmp_path / "app.lock"
    code = (f"import fcntl, time; f = open({str(lock)!r}, 'w'); "
            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); time.sleep(600)")
    daemon.write(f"""
        [apps.srv]
        command = {json.dumps([sys.executable, "-c", code])}
        min_uptime = "500ms"
        """, "watch_config = false")
    daemon.start()
    [old] = daemon.wait_states("srv", "running", 1)
    r = daemon.cli("reload", "srv")
    assert r.returncode == 1
    assert "the replacement exited with code 1 before it was ready" in r.stderr, r.stderr
    assert "use restart" in r.stderr and "the old instances keep running" in r.stderr
    [now] = daemon.instances("srv")
    assert now["pid"] == old["pid"] and now["state"] == "running"
    assert daemon.cli("restart", "srv").returncode == 0
    assert daemon.wait_states("srv", "running", 1)[0]["pid"] != old["pid"]


def test_node_server_listening_on_fd_3(daemon: Daemon) -> None:
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    port = _free_port()
    script = APPS / "node_server.js"
    daemon.write(f"""
        [apps.node]
        command = ["{node}", "{script}"]
        exec_mode = "cluster"
        instances = 2
        listen = ["tcp://127.0.0.1:{port}"]
        min_uptime = "300ms"
        kill_timeout = "3s"
        """, "watch_config = false")
    daemon.start()
    rows = daemon.wait_states("node", "running", 2, timeout=20)
    pids = {r["pid"] for r in rows}
    seen: set[int] = set()
    for _ in range(2000):  # the kernel may favour one acceptor for a while: bounded loop
        seen.add(_get(port))
        if seen == pids:
            break
    assert seen == pids  # both instances accept on the one shared socket
    r = daemon.cli("reload", "node", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not {x["pid"] for x in daemon.wait_states("node", "running", 2)} & pids


def test_unix_socket_listener_with_a_mode(daemon: Daemon) -> None:
    path = daemon.run_dir / "web.sock"
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("activated_http", "notify")}
        exec_mode = "cluster"
        instances = 2
        listen = ["unix:{path}?mode=0600"]
        ready = "notify"
        """, "watch_config = false")
    daemon.start()
    daemon.wait_states("web", "running", 2)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200")
    assert daemon.stop_daemon() == 0
    assert not path.exists()  # the socket file goes with the app


def test_uvicorn_on_the_inherited_fd(daemon: Daemon) -> None:
    uvicorn = _venv_tool("uvicorn")
    port = _free_port()
    daemon.write(f"""
        [apps.asgi]
        command = ["{uvicorn}", "--fd", "3", "--app-dir", "{APPS}", "asgi_app:app"]
        exec_mode = "cluster"
        instances = 2
        listen = ["tcp://127.0.0.1:{port}"]
        ready = "http://127.0.0.1:{port}/"
        min_uptime = "300ms"
        """, "watch_config = false")
    daemon.start()
    rows = daemon.wait_states("asgi", "running", 2, timeout=30)
    pids = {r["pid"] for r in rows}
    seen: set[int] = set()
    for _ in range(2000):
        seen.add(_get(port))
        if seen == pids:
            break
    assert seen == pids


def _all_answer(port: int, n: int = 40) -> bool:
    """n fresh connections, each answered (a socket nobody accepts on would hang them)."""
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/")
            if conn.getresponse().status != 200:
                return False
        except OSError:
            return False
        finally:
            conn.close()
    return True


def test_scale_down_with_reuseport_leaves_no_socket_without_acceptor(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port, extra='balance = "reuseport"')
    daemon.start()
    daemon.wait_states("web", "running", 2)
    assert daemon.cli("scale", "web", "1").returncode == 0
    daemon.wait_states("web", "running", 1)
    assert _all_answer(port)


def test_listen_change_keeps_the_unchanged_address(daemon: Daemon) -> None:
    port, port2 = _free_port(), _free_port()
    _cluster(daemon, port)
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    text = daemon.config.read_text().replace(
        f'listen = ["tcp://127.0.0.1:{port}"]',
        f'listen = ["tcp://127.0.0.1:{port}", "tcp://127.0.0.1:{port2}"]')
    daemon.config.write_text(text.replace('"notify"]', '"notify", "two"]'))
    r = daemon.cli("update", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    new = {x["pid"] for x in daemon.wait_states("web", "running", 2)}
    assert not new & old
    assert _all_answer(port) and _all_answer(port2)


def test_stop_during_a_reload_stops_old_and_replacement(daemon: Daemon, tmp_path: Path) -> None:
    port = _free_port()
    slow = tmp_path / "slow.sh"  # replacements take a while to get ready
    slow.write_text(f"#!/bin/sh\nsleep 1.5\nexec {sys.executable} "
                    f"{APPS / 'activated_http.py'}"
                    " notify\n")
    slow.chmod(0o755)
    _cluster(daemon, port)
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    daemon.config.write_text(daemon.config.read_text().replace(
        "command = [", f'command = ["{slow}"]\n# was: ['))
    results: dict[str, int] = {}
    t = threading.Thread(target=lambda: results.setdefault(
        "update", daemon.cli("update", timeout=60).returncode))
    t.start()
    wait_for(lambda: set(daemon.app_processes()) - old, 30, "the first replacement starting")
    assert daemon.cli("stop", "web").returncode == 0
    t.join(60)
    assert not t.is_alive()
    wait_for(lambda: all(r["state"] == "stopped" for r in daemon.instances("web")), 10,
             "web stopped")
    assert not daemon.app_processes()  # neither the old instances nor a replacement survive


def test_a_failed_rollout_is_not_counted_as_applied(daemon: Daemon) -> None:
    port = _free_port()
    _cluster(daemon, port)
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    daemon.config.write_text(daemon.config.read_text().replace('"notify"]', '"never"]'))
    assert daemon.cli("update", timeout=60).returncode == 1
    st = daemon.status()
    assert st["config"]["applied"] is False and "not ready" in st["config"]["error"]
    assert {r["pid"] for r in st["instances"]} == old
    r = daemon.cli("reread", "--json")  # the change is still to be applied
    assert [a["action"] for a in json.loads(r.stdout)["actions"]] == ["reload"]


def test_a_failed_listen_change_leaves_old_instances_that_can_still_restart(
    daemon: Daemon,
) -> None:
    """The rollout to a new port fails; the old instances keep serving on the old port, and
    one that crashes afterwards comes back on the socket the daemon still holds (not
    `errored` with "address already in use", as when the daemon had closed it)."""
    port, port2 = _free_port(), _free_port()
    _cluster(daemon, port)
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    text = daemon.config.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{port2}")
    daemon.config.write_text(text.replace('"notify"]', '"never"]'))
    assert daemon.cli("update", timeout=60).returncode == 1
    assert {r["pid"] for r in daemon.instances("web")} == old
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    rows = wait_for(lambda: (rs := daemon.instances("web")) and all(
        r["state"] == "running" for r in rs) and victim not in {r["pid"] for r in rs} and rs,
        20, "the crashed old instance running again")
    assert all(r["reason"] is None for r in rows)
    assert _all_answer(port)


def _socket_inodes(pids: set[int]) -> set[str]:
    """The listening socket each instance got at fd 3 ("socket:[inode]")."""
    return {os.readlink(f"/proc/{pid}/fd/3") for pid in pids}


@pytest.mark.parametrize(("before", "after"), [("shared", "reuseport"), ("reuseport", "shared")])
def test_a_balance_change_stops_every_instance_then_binds_anew(
        daemon: Daemon, before: str, after: str) -> None:
    port = _free_port()
    _cluster(daemon, port, extra=f'balance = "{before}"')
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    assert len(_socket_inodes(old)) == (1 if before == "shared" else 2)
    daemon.config.write_text(daemon.config.read_text().replace(
        f'balance = "{before}"', f'balance = "{after}"'))
    r = daemon.cli("reread")
    assert r.stdout == ("restart  web (0, 1): balance changed; every instance stops before any "
                        "starts\n"), r.stdout
    r = daemon.cli("update", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    new = {x["pid"] for x in daemon.wait_states("web", "running", 2)}
    assert not new & old
    assert len(_socket_inodes(new)) == (1 if after == "shared" else 2)
    assert _all_answer(port)


def test_an_instance_that_does_not_use_its_socket_is_reported(daemon: Daemon) -> None:
    """The issue's case: `python3 -m http.server` in cluster mode ignores fd 3 and binds a
    port of its own, so the app's port accepts connections nobody answers. status says so
    (and so does one that closes its socket); a server that uses fd 3 gets no warning."""
    port, own, closer, good = (_free_port() for _ in range(4))
    daemon.write(f"""
        [apps.ignorer]
        command = ["{sys.executable}", "-m", "http.server", "--bind", "127.0.0.1", "{own}"]
        exec_mode = "cluster"
        listen = ["tcp://127.0.0.1:{port}"]
        min_uptime = "100ms"

        [apps.closer]
        command = ["/bin/sh", "-c", "exec 3>&-; exec sleep 1000"]
        exec_mode = "cluster"
        listen = ["tcp://127.0.0.1:{closer}"]
        min_uptime = "100ms"

        [apps.good]
        command = {app_cmd("activated_http")}
        exec_mode = "cluster"
        listen = ["tcp://127.0.0.1:{good}"]
        min_uptime = "100ms"
        """)
    daemon.start()
    for app in ("ignorer", "closer", "good"):
        daemon.wait_states(app, "running", 1)

    def warnings() -> dict[str, str | None] | None:
        got = {i["app"]: i["warning"] for i in daemon.instances()}
        return got if got["ignorer"] and got["closer"] else None

    got = wait_for(warnings, 10, "the warnings")
    tail = ": the server needs socket activation support, see docs/cluster.md"
    assert got["ignorer"] == (
        f"does not use its listening socket fd 3 (it listens on 127.0.0.1:{own} itself){tail}")
    assert got["closer"] == (
        f"does not use its listening socket fd 3 (no process of it holds that socket){tail}")
    assert got["good"] is None
    text = daemon.cli("status").stdout
    assert f"ignorer:0: warning: {got['ignorer']}\n" in text, text
    assert "good:0: warning" not in text
    assert daemon.stop_daemon() == 0
