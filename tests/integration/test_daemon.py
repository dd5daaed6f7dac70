"""The daemon itself: start-up, readiness, pidfile, shutdown, recovery, control socket abuse."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from procsup import protocol

from .conftest import PY, Daemon, app_cmd, pid_alive, total_size, wait_for


def _two_apps(daemon: Daemon, extra: str = "") -> None:
    daemon.write(
        f"""
        [apps.a]
        command = {app_cmd("sleeper")}
        instances = 2
        min_uptime = "100ms"
        [apps.b]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        """,
        extra,
    )


def test_sigterm_stops_every_app_and_cleans_up(daemon: Daemon) -> None:
    _two_apps(daemon)
    daemon.start()
    pids = [r["pid"] for r in daemon.wait_states("a", "running", 2)]
    pids += [r["pid"] for r in daemon.wait_states("b", "running", 1)]
    assert Path(daemon.pidfile).read_text().strip() == str(daemon.proc.pid)  # type: ignore[union-attr]
    assert daemon.stop_daemon() == 0
    assert not any(pid_alive(p) for p in pids)
    assert not os.path.exists(daemon.socket)
    assert not os.path.exists(daemon.pidfile)


def test_sigkill_of_daemon_then_restart_leaves_no_duplicates(daemon: Daemon) -> None:
    _two_apps(daemon)
    daemon.start()
    old = [r["pid"] for r in daemon.wait_states("a", "running", 2)]
    old += [r["pid"] for r in daemon.wait_states("b", "running", 1)]
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(5)
    assert all(pid_alive(p) for p in old)  # orphans survive the daemon's death
    daemon.start()  # stale socket and unlocked pidfile must not block this
    rows = daemon.wait_states("a", "running", 2) + daemon.wait_states("b", "running", 1)
    wait_for(lambda: not any(pid_alive(p) for p in old), 10, "old instances gone")
    assert not {r["pid"] for r in rows} & set(old)

    # exactly the configured instances run
    assert sorted(daemon.app_processes()) == sorted(r["pid"] for r in rows)


def test_second_daemon_on_same_config_refuses(daemon: Daemon) -> None:
    _two_apps(daemon)
    daemon.start()
    r = subprocess.run(
        [PY, "-m", "procsup.daemon", "-n", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=20,
        env=daemon.env,
    )
    assert r.returncode == 1
    assert "already running" in r.stderr and str(daemon.proc.pid) in r.stderr  # type: ignore[union-attr]
    assert daemon.ping()
    assert len(daemon.instances("a")) == 2


def test_daemon_mode_returns_once_serving_and_shutdown_waits(daemon: Daemon) -> None:
    _two_apps(daemon)
    r = subprocess.run(
        [PY, "-m", "procsup.daemon", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon.env,
    )
    assert r.returncode == 0, r.stderr
    # no sleep loop needed: it serves now
    assert daemon.cli("ping").returncode == 0
    pid = int(Path(daemon.pidfile).read_text())
    assert pid_alive(pid)
    assert os.getsid(pid) != os.getsid(0)  # detached from our session
    rows = daemon.wait_states("a", "running", 2)
    assert (daemon.log_dir / "procsupd.log").exists()
    r = daemon.cli("shutdown")
    assert r.returncode == 0, r.stderr
    # `shutdown` waits until the daemon exited: gone the moment the command returns (not our
    # child, so once it has exited init reaps it; a zombie does not count as alive)
    assert not pid_alive(pid), "procsup shutdown returned while the daemon still runs"
    assert not any(pid_alive(x["pid"]) for x in rows)
    assert not os.path.exists(daemon.socket) and not os.path.exists(daemon.pidfile)


def test_daemon_mode_reports_failure_on_stderr(daemon: Daemon) -> None:
    daemon.write("""
        [apps.a]
        comand = "sleep 1"
        """)
    r = subprocess.run(
        [PY, "-m", "procsup.daemon", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon.env,
    )
    assert r.returncode == 78  # EX_CONFIG: a config error
    assert "comand" in r.stderr and "did you mean" in r.stderr and "apps.toml:" in r.stderr
    # a socket held by a live foreign server is refused with the reason
    _two_apps(daemon)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(daemon.socket)
    srv.listen()
    try:
        r = subprocess.run(
            [PY, "-m", "procsup.daemon", "-c", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=30,
            env=daemon.env,
        )
        assert r.returncode == 1
        assert daemon.socket in r.stderr
    finally:
        srv.close()


def test_a_duration_in_milliseconds_by_mistake_is_warned_about(daemon: Daemon) -> None:
    """`kill_timeout = 5` (supervisord's stopwaitsecs=5) is 5 ms: valid, so it runs, but
    --check, the daemon log, reread and update all say so, with where."""
    daemon.write("""
        [apps.a]
        command = ["sleep", "1000"]
        kill_timeout = 5
        """)
    line = daemon.config.read_text().splitlines().index("kill_timeout = 5") + 1
    warning = f"{daemon.config}:{line}: app 'a', key 'kill_timeout': 5 means 5 milliseconds"
    r = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=30, env=daemon.env)
    assert r.returncode == 0
    assert f"procsupd: warning: {warning}" in r.stderr, r.stderr
    daemon.start()
    daemon.wait_states("a", "running", 1)
    assert warning in daemon.daemon_log()
    for command in ("reread", "update"):
        r = daemon.cli(command)
        assert r.returncode == 0
        assert f"procsup: warning: {warning}" in r.stderr, (command, r.stderr)
    assert "warning" not in daemon.cli("reread", "--json").stderr


def _start_refused(daemon: Daemon) -> str:
    r = subprocess.run([PY, "-m", "procsup.daemon", "-n", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=30, env=daemon.env)
    assert r.returncode == 1, r.stdout + r.stderr
    return r.stderr


def test_a_socket_directory_others_can_write_is_refused(daemon: Daemon) -> None:
    """Anyone who can write the socket's directory could replace the socket (or the pidfile):
    refused, unless the directory is sticky as /tmp is."""
    shared = daemon.run_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    daemon.socket = str(shared / "procsup.sock")
    _two_apps(daemon)
    said = _start_refused(daemon)
    assert f"[procsup] socket: {shared} is writable by others (mode 0777)" in said, said
    assert not os.path.exists(daemon.socket)
    shared.chmod(0o1777)  # sticky: others cannot remove or rename what is ours
    daemon.start()
    assert daemon.ping()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_a_socket_directory_of_another_user_is_refused(daemon: Daemon) -> None:
    """The per-user fallback /tmp/procsup-<uid> made first by someone else, say."""
    theirs = daemon.run_dir / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    daemon.pidfile = str(theirs / "procsupd.pid")
    _two_apps(daemon)
    said = _start_refused(daemon)
    assert f"[procsup] pidfile: {theirs} belongs to uid 65534, not to you (uid 0)" in said, said
    assert not os.path.exists(daemon.pidfile)


def test_check_validates_without_starting(daemon: Daemon) -> None:
    _two_apps(daemon)
    r = subprocess.run(
        [PY, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=20,
        env=daemon.env,
    )
    assert r.returncode == 0, r.stderr
    sleeper = " ".join(json.loads(app_cmd("sleeper")))
    # Split as is: one newline ends the last line, and no blank line follows it.
    assert r.stdout.split("\n") == [
        f"config: {daemon.config}",
        "profile: (none)",
        f"socket: {daemon.socket}",
        "apps: 2",
        f"  a  2 instances  fork     {sleeper}",
        "  b  1 instance   fork     sleep 1000",
        "",
    ], r.stdout
    assert not os.path.exists(daemon.socket)


def test_ready_is_sent_to_notify_socket(daemon: Daemon) -> None:
    _two_apps(daemon)
    path = str(daemon.run_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    daemon.env["NOTIFY_SOCKET"] = path
    try:
        daemon.start(wait=False)
        msg = sock.recv(4096)
        assert b"READY=1" in msg
        assert daemon.ping()  # serving when READY=1 arrived
    finally:
        sock.close()


def test_control_socket_mode_and_garbage(daemon: Daemon) -> None:
    _two_apps(daemon, 'socket_mode = "0600"')
    daemon.start()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    # a 10 MB garbage line is refused and the daemon still answers. Its first 4 bytes read as
    # a length prefix of 0x78787878 bytes: answered `too_large` at once, without the daemon
    # reading the body. So send what fits in the socket buffer, read the answer (which must
    # come), then the rest, which the daemon may refuse to take.
    garbage = b"x" * (10 * 1024 * 1024) + b"\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.settimeout(10)
        s.sendall(garbage[:4096])
        reply = protocol.read_frame(s)
        try:
            s.sendall(garbage[4096:])
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "too_large", reply
    assert str(0x78787878) in reply["error"]["message"], reply
    assert daemon.ping()
    # a half-sent request does not block other clients
    with socket.socket(socket.AF_UNIX) as half:
        half.connect(daemon.socket)
        half.sendall(struct.pack(">I", 100) + b'{"v": 1')
        t0 = time.monotonic()
        assert daemon.ping()
        assert time.monotonic() - t0 < 5
    assert len(daemon.instances()) == 3


def test_flooding_child_does_not_block_status(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.flood]
        command = {app_cmd("flood")}
        min_uptime = "100ms"
        log_date_format = "%Y-%m-%d %H:%M:%S"
        log_max_size = "20M"
        log_retain = 1
        """)
    daemon.start()
    daemon.wait_states("flood", "running", 1)
    wait_for(
        lambda: total_size(daemon.log_dir, "flood-out.log*") > 1_000_000,
        10,
        "flood to fill the log",
    )
    # Compared with the CLI's own start-up (an interpreter and imports, which a loaded machine
    # slows as much): what status takes beyond it is the daemon's answer.
    extra = []
    for _ in range(5):
        t0 = time.monotonic()
        assert daemon.cli("--help").returncode == 0
        t1 = time.monotonic()
        r = daemon.cli("status", "--json")
        t2 = time.monotonic()
        assert r.returncode == 0
        extra.append((t2 - t1) - (t1 - t0))
    extra.sort()
    assert extra[2] < 0.5 and extra[-1] < 3.0, f"status took longer by {extra} under a flood"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_peer_of_another_user_is_refused(daemon: Daemon) -> None:
    _two_apps(daemon, 'socket_mode = "0666"')
    daemon.start()
    code = (
        "import os, socket, struct, json\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"s = socket.socket(socket.AF_UNIX); s.connect({daemon.socket!r})\n"
        "b = json.dumps({'v': 1, 'cmd': 'ping', 'args': {}}).encode()\n"
        "try:\n    s.sendall(struct.pack('>I', len(b)) + b)\n"
        "except BrokenPipeError:\n    pass\n"
        "d = s.recv(65536); print(d[4:].decode())\n"
    )
    os.chmod(daemon.run_dir, 0o755)
    r = subprocess.run(
        ["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=20, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    assert daemon.ping()


def test_cli_cannot_reach_daemon_exit_3(daemon: Daemon) -> None:
    r = daemon.cli("status")
    assert r.returncode == 3
    assert daemon.socket in r.stderr


def test_shutdown_stops_in_parallel_within_kill_timeout(daemon: Daemon, tmp_path: Path) -> None:
    daemon.write(f"""
        [apps.s1]
        command = {app_cmd("stubborn", str(tmp_path / "g1"))}
        kill_timeout = "3s"
        min_uptime = "100ms"
        [apps.s2]
        command = {app_cmd("stubborn", str(tmp_path / "g2"))}
        kill_timeout = "3s"
        min_uptime = "100ms"
        """)
    daemon.start()
    daemon.wait_states("s1", "running", 1)
    daemon.wait_states("s2", "running", 1)
    wait_for(lambda: (tmp_path / "g1").exists() and (tmp_path / "g2").exists(), 5, "grandkids")
    grandkids = [int((tmp_path / g).read_text()) for g in ("g1", "g2")]
    t0 = time.monotonic()
    assert daemon.stop_daemon() == 0
    elapsed = time.monotonic() - t0
    # Both ignore SIGTERM: one after the other takes 2 x 3 s; in parallel 3 s, and 2 s to spare
    # for a loaded machine.
    assert 3.0 <= elapsed < 5.0, f"stops ran one after the other ({elapsed:.2f}s)"
    assert not any(pid_alive(p) for p in grandkids)


def test_sigusr1_reopens_logs(daemon: Daemon) -> None:
    daemon.write("""
        [apps.tick]
        command = ["/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"]
        min_uptime = "100ms"
        """)
    daemon.start()
    log = daemon.log_dir / "tick-out.log"
    wait_for(lambda: log.exists() and log.stat().st_size > 0, 5, "first ticks")
    os.rename(log, str(log) + ".old")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists() and "tick" in log.read_text(), 5, "reopened log")
    assert Path(str(log) + ".old").read_text().count("tick") >= 1
