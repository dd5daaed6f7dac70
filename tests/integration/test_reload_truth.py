"""`reload` tells the truth, with a real daemon and real servers: a fork-mode server that binds
its own port (like nginx: it retries bind() for 2.5 s while the port is busy) cannot be replaced
beside its old process, so `reload` restarts it stop-then-start and says so; with
`reload_signal` it reloads in place (same pid, no connection refused); a server that dies of the
signal fails the reload. And the same with Debian's nginx, where it is installed."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, app_cmd, nginx_config, pid_alive, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode()
    finally:
        conn.close()


def _load_during(port: int, action: Callable[[], subprocess.CompletedProcess[str]]
                 ) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """Requests in a loop on another thread while `action` runs: how many were answered,
    refused (nothing listened) or failed otherwise."""
    counts = {"ok": 0, "refused": 0, "other": 0}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                _get(port)
                counts["ok"] += 1
            except ConnectionRefusedError:
                counts["refused"] += 1
                time.sleep(0.001)
            except OSError:
                counts["other"] += 1

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        result = action()
        time.sleep(0.2)  # and a little after: it serves once reload returned
    finally:
        stop.set()
        thread.join(10)
    return result, counts


def _rebinder(daemon: Daemon, hup: str, extra: str = "") -> tuple[int, dict[str, Any]]:
    """Run the nginx-like server as app "web" on a free port; the port and its instance."""
    port = _free_port()
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("rebinder", str(port), hup)}
        min_uptime = "500ms"
        kill_timeout = "3s"
        {extra.format(port=port)}
        """, "watch_config = false")
    daemon.start()
    [old] = daemon.wait_states("web", "running", 1)
    wait_for(lambda: _get(port), 10, "the server to answer")
    return port, old


def test_a_fork_server_on_its_own_port_is_restarted_stop_then_start_and_says_so(
        daemon: Daemon) -> None:
    port, old = _rebinder(daemon, "reload")
    r, counts = _load_during(port, lambda: daemon.cli("reload", "web", timeout=60))
    print(f"stop-then-start reload: {counts}")
    # Not plain success: the outage is announced, in the reply, the output and the log.
    notice = (f"web: restarted stop-then-start, not served meanwhile (its instance holds "
              f"127.0.0.1:{port}, which a replacement cannot bind while it runs; set "
              "reload_signal for an in-place reload, or exec_mode = \"cluster\")")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"procsup: {notice}" in r.stderr, r.stderr
    assert f"reload: {notice}" in daemon.daemon_log()
    [new] = daemon.instances("web")
    assert new["state"] == "running" and new["pid"] != old["pid"]
    assert not pid_alive(old["pid"])
    assert _get(port).split()[0] == str(new["pid"])  # the new process serves when it returns
    assert counts["ok"] > 0


def test_a_fork_server_with_a_tcp_probe_is_restarted_stop_then_start(daemon: Daemon) -> None:
    port, old = _rebinder(daemon, "reload", 'ready = "tcp://127.0.0.1:{port}"')
    r = daemon.cli("reload", "web", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"its readiness probe tcp://127.0.0.1:{port} would be answered by the old "
            "instance") in r.stderr, r.stderr
    [new] = daemon.instances("web")
    assert new["state"] == "running" and new["pid"] != old["pid"]
    assert _get(port).split()[0] == str(new["pid"])


def test_reload_signal_reloads_in_place_without_refusing_anyone(daemon: Daemon) -> None:
    port, old = _rebinder(daemon, "reload", 'reload_signal = "SIGHUP"')
    began = time.monotonic()
    r, counts = _load_during(port, lambda: daemon.cli("reload", "web", timeout=60))
    print(f"in-place reload: {counts}, {time.monotonic() - began:.2f}s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "web: reloaded in place: sent SIGHUP (reload_signal)" in r.stderr
    assert counts["refused"] == 0 and counts["other"] == 0 and counts["ok"] > 0, counts
    [now] = daemon.instances("web")
    assert now["pid"] == old["pid"] and now["state"] == "running"
    assert _get(port) == f"{old['pid']} 1"  # the same process, reloaded once
    wait_for(lambda: "reloaded 1" in (daemon.log_dir / "web-out.log").read_text(), 5,
             "its own word for it")


def test_a_server_that_dies_of_its_reload_signal_fails_the_reload(daemon: Daemon) -> None:
    _port, old = _rebinder(daemon, "die", 'reload_signal = "SIGHUP"')
    r = daemon.cli("reload", "web", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"reload of web failed: web:0 (pid {old['pid']}) did not keep running after SIGHUP "
            "(reload_signal): killed by SIGHUP (see procsup logs web)") in r.stderr, r.stderr


def _nginx() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def test_debian_nginx_reloads_in_place_on_sighup(daemon: Daemon, tmp_path: Path) -> None:
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    port = _free_port()
    prefix = tmp_path / "nginx"
    conf = prefix / "nginx.conf"

    def write_conf(body: str) -> None:
        nginx_config(prefix, port, body=body)

    def app(extra: str) -> None:
        daemon.write(f"""
            [apps.nginx]
            command = ["{nginx}", "-p", "{prefix}", "-c", "{conf}", "-g", "daemon off;"]
            ready = "log:start worker process"
            min_uptime = "500ms"
            kill_timeout = "5s"
            {extra}
            """, "watch_config = false")

    write_conf("one")
    app('reload_signal = "SIGHUP"')
    daemon.start()
    [old] = daemon.wait_states("nginx", "running", 1, timeout=20)
    assert _get(port) == "one"
    write_conf("two")
    r, counts = _load_during(port, lambda: daemon.cli("reload", "nginx", timeout=60))
    print(f"nginx in-place reload: {counts}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert counts["refused"] == 0, counts
    [now] = daemon.instances("nginx")
    assert now["pid"] == old["pid"] and now["state"] == "running"  # the same master
    wait_for(lambda: _get(port) == "two", 10, "the new configuration served")
    # Without reload_signal, reload must not pass off an outage as a rolling reload.
    app("")
    assert daemon.cli("update").returncode == 0
    [before] = daemon.wait_states("nginx", "running", 1, timeout=20)
    r = daemon.cli("reload", "nginx", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"its instance holds 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "restarted stop-then-start" in r.stderr
    [after] = daemon.wait_states("nginx", "running", 1, timeout=20)
    assert after["pid"] != before["pid"]
    wait_for(lambda: _get(port) == "two", 10, "nginx serving again")
