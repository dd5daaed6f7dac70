"""No process escapes (issue 13): procsupd as child subreaper. Real programs that leave
processes outside their process group (tests/apps/daemonizer.py: a fork and setsid, a double
fork, a setsid'ed grandchild, with and without their environment), a real procsupd, the real
CLI; what survives is read from /proc."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path

import pytest

from .conftest import Daemon, app_cmd, nginx_config, pid_alive, wait_for

REASON = re.compile(
    r"the command put itself in the background \(pid (\d+)\): run it in the foreground, "
    r"or set pidfile")


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


@pytest.mark.parametrize("mode", ["fork-exit", "double"])
@pytest.mark.parametrize("clear", [False, True], ids=["env", "no-env"])
def test_a_program_that_puts_itself_in_the_background_is_errored_and_stopped(
        daemon: Daemon, tmp_path: Path, mode: str, clear: bool) -> None:
    """memcached -d, redis --daemonize yes: the command exits 0 leaving its server running.
    Without pidfile that is `errored` with a reason that says so, at once (a restart would do
    the same), and the process it left is stopped, even when it lost its environment."""
    pids = tmp_path / "pids"
    args = ("--clear-env",) if clear else ()
    daemon.write(f"""
        [apps.bg]
        command = {app_cmd("daemonizer", mode, str(pids), *args)}
        min_uptime = "3s"
        """)
    daemon.start()
    rows = daemon.wait_states("bg", "errored", 1, timeout=15)
    m = REASON.fullmatch(rows[0]["reason"] or "")
    assert m, rows[0]
    assert rows[0]["restarts"] == 0, rows[0]
    left = _pids(pids)
    assert left, "the program never left its process"
    assert int(m.group(1)) in left, (m.group(1), left)
    wait_for(lambda: not any(pid_alive(p) for p in left), 5, "the process it left stopped")
    assert "left pid" in daemon.daemon_log()
    assert daemon.stop_daemon() == 0


def test_a_setsid_grandchild_is_stopped_with_its_instance(
        daemon: Daemon, tmp_path: Path) -> None:
    """The program stays in the foreground; a child of it calls setsid (out of the process
    group the stop signals). `stop` ends it too: its parent dies first, the subreaper gets
    it, and the stop's signal follows it."""
    pids = tmp_path / "pids"
    daemon.write(f"""
        [apps.fg]
        command = {app_cmd("daemonizer", "setsid", str(pids), "--clear-env")}
        min_uptime = "100ms"
        kill_timeout = "3s"
        """)
    daemon.start()
    leader = daemon.wait_states("fg", "running", 1)[0]["pid"]
    child = wait_for(lambda: _pids(pids), 10, "the setsid'ed child")[0]
    assert pid_alive(child) and _ppid(child) == leader
    r = daemon.cli("stop", "fg")
    assert r.returncode == 0, r.stderr
    assert not pid_alive(leader)
    wait_for(lambda: not pid_alive(child), 5, "the setsid'ed child stopped")
    assert daemon.instances("fg")[0]["state"] == "stopped"
    assert daemon.stop_daemon() == 0


def test_shutdown_leaves_no_process_behind(daemon: Daemon, tmp_path: Path) -> None:
    """Processes outside every group, owned and not: `procsup shutdown` leaves none of them,
    and the orphans of a crash are reaped (no zombie child of procsupd)."""
    pids = tmp_path / "pids"
    daemon.write(f"""
        [apps.fg]
        command = {app_cmd("daemonizer", "setsid", str(pids))}
        instances = 2
        min_uptime = "100ms"

        [apps.plain]
        command = ["sh", "-c", "sleep 1000 & sleep 1000"]
        min_uptime = "100ms"
        """)
    daemon.start()
    daemon.wait_states("fg", "running", 2)
    daemon.wait_states("plain", "running", 1)
    children = wait_for(lambda: len(_pids(pids)) == 2 and _pids(pids), 10, "both children")
    assert daemon.proc is not None
    me = daemon.proc.pid
    r = daemon.cli("shutdown")
    assert r.returncode == 0, r.stderr
    assert daemon.proc.wait(30) == 0
    wait_for(lambda: not any(pid_alive(p) for p in children), 5, "every child gone")
    assert daemon.app_processes() == []
    assert not any(_ppid(p) == me for p in children)


def test_a_crashed_leader_s_orphans_are_killed_and_reaped(daemon: Daemon, tmp_path: Path) -> None:
    """The leader is SIGKILLed; the setsid'ed child it leaves is re-parented to procsupd,
    killed as the rest of a crashed run, and reaped: no zombie; the instance restarts."""
    pids = tmp_path / "pids"
    daemon.write(f"""
        [apps.fg]
        command = {app_cmd("daemonizer", "setsid", str(pids))}
        min_uptime = "100ms"
        restart_delay = "0s"
        """)
    daemon.start()
    leader = daemon.wait_states("fg", "running", 1)[0]["pid"]
    child = wait_for(lambda: _pids(pids), 10, "the child")[0]
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: not pid_alive(child), 5, "the orphan killed")
    wait_for(lambda: _ppid(child) is None, 5, "the orphan reaped")
    wait_for(lambda: [r["pid"] for r in daemon.instances("fg")
                      if r["state"] == "running" and r["pid"] != leader], 10, "a restart")
    again = wait_for(lambda: _pids(pids)[1:], 10, "the new run's child")
    assert daemon.stop_daemon() == 0  # SIGTERM: the new run's child goes with it
    assert not any(pid_alive(p) for p in again)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return path


@pytest.mark.parametrize("program", ["memcached", "redis-server"])
def test_a_real_daemonizing_server_is_errored_with_the_reason_and_stopped(
        daemon: Daemon, tmp_path: Path, program: str) -> None:
    """The issue's case with Debian's programs: `memcached -d` and `redis-server --daemonize
    yes` exit 0 and their server lives on; it used to keep serving after `shutdown`, and the
    instance ended "errored: each run was shorter than min_uptime". Now the reason says what
    happened and the server is stopped (redis rewrites its environment: the marker is gone)."""
    exe = _program(program)
    port = _free_port()
    if program == "memcached":
        argv = [exe, "-d", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root"]
    else:
        argv = [exe, "--daemonize", "yes", "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(tmp_path),
                "--pidfile", str(tmp_path / "redis.pid"), "--logfile", ""]
    daemon.write(f"""
        [apps.srv]
        command = {json.dumps(argv)}
        min_uptime = "3s"
        """)
    daemon.start()
    rows = daemon.wait_states("srv", "errored", 1, timeout=15)
    m = REASON.fullmatch(rows[0]["reason"] or "")
    assert m, rows[0]
    server = int(m.group(1))
    wait_for(lambda: not pid_alive(server), 5, f"{program} stopped")

    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))  # nothing serves
    assert daemon.stop_daemon() == 0


# --- pidfile -------------------------------------------------------------------------------


def test_pidfile_supervises_the_process_the_command_left(daemon: Daemon, tmp_path: Path) -> None:
    """With pidfile, the command's exit 0 is the start of the server it left: status shows
    that process, its death is the instance's (restarted by policy), stop stops it."""
    pids = tmp_path / "pids"
    pid_path = tmp_path / "srv.pid"
    daemon.write(f"""
        [apps.bg]
        command = {app_cmd("daemonizer", "fork-exit", str(pids), "--pidfile", str(pid_path))}
        pidfile = "{pid_path}"
        min_uptime = "200ms"
        restart_delay = "0s"
        """)
    daemon.start()
    row = daemon.wait_states("bg", "running", 1)[0]
    server = _pids(pids)[0]
    wait_for(lambda: daemon.instances("bg")[0]["pid"] == server, 5, "the server's pid shown")
    assert pid_alive(server)
    assert "supervising pid" in daemon.daemon_log()
    # its death is the instance's: restarted
    os.kill(server, signal.SIGKILL)
    again = wait_for(lambda: len(_pids(pids)) == 2 and _pids(pids)[1], 10, "a new server")
    wait_for(lambda: daemon.instances("bg")[0]["pid"] == again
             and daemon.instances("bg")[0]["state"] == "running", 10, "the new server shown")
    assert daemon.instances("bg")[0]["restarts"] == row["restarts"] + 1
    assert _ppid(server) is None  # reaped
    r = daemon.cli("stop", "bg")
    assert r.returncode == 0, r.stderr
    assert not pid_alive(again)
    assert daemon.instances("bg")[0]["state"] == "stopped"
    assert daemon.stop_daemon() == 0


def test_a_pidfile_that_never_names_a_process_of_the_instance_fails_the_run(
        daemon: Daemon, tmp_path: Path) -> None:
    """A pidfile that stays missing, or names another process: the run fails at
    ready_timeout with the reason, and what the command left is stopped."""
    pids = tmp_path / "pids"
    other = tmp_path / "other.pid"
    other.write_text(f"{os.getpid()}\n")  # the test itself: alive, not the instance's
    daemon.write(f"""
        [apps.missing]
        command = {app_cmd("daemonizer", "fork-exit", str(pids))}
        pidfile = "{tmp_path / 'never.pid'}"
        ready_timeout = "1s"
        autorestart = false

        [apps.foreign]
        command = {app_cmd("daemonizer", "fork-exit", str(tmp_path / "pids2"))}
        pidfile = "{other}"
        ready_timeout = "1s"
        autorestart = false
        """)
    daemon.start()
    rows = daemon.wait_states("missing", "exited", 1, timeout=15)
    assert rows[0]["reason"] == (
        f"the command exited with code 0 and its pidfile {tmp_path / 'never.pid'} did not "
        "appear within ready_timeout 1s"), rows[0]
    rows = daemon.wait_states("foreign", "exited", 1, timeout=15)
    assert rows[0]["reason"] == (
        f"pidfile {other} names pid {os.getpid()}, which is not a process of this instance"
    ), rows[0]
    left = _pids(pids) + _pids(tmp_path / "pids2")
    assert len(left) == 2
    wait_for(lambda: not any(pid_alive(p) for p in left), 5, "the processes they left stopped")
    assert daemon.stop_daemon() == 0


def test_memcached_with_its_pidfile_is_supervised(daemon: Daemon, tmp_path: Path) -> None:
    """Debian's memcached -d -P: supervised through its pidfile, serving, stopped by stop."""
    exe = _program("memcached")
    port = _free_port()
    pid_path = tmp_path / "memcached.pid"
    argv = [exe, "-d", "-P", str(pid_path), "-l", "127.0.0.1", "-p", str(port), "-U", "0",
            "-u", "root"]
    daemon.write(f"""
        [apps.cache]
        command = {json.dumps(argv)}
        pidfile = "{pid_path}"
        ready = "tcp://127.0.0.1:{port}"
        """)
    daemon.start()
    daemon.wait_states("cache", "running", 1, timeout=15)
    server = wait_for(lambda: pid_path.exists() and int(pid_path.read_text().split()[0]), 5,
                      "memcached's pidfile")
    wait_for(lambda: daemon.instances("cache")[0]["pid"] == server, 5, "memcached's pid")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION")
    assert daemon.cli("stop", "cache").returncode == 0
    assert not pid_alive(server)
    assert daemon.stop_daemon() == 0


# --- recovery ------------------------------------------------------------------------------


def test_recovery_finds_a_group_left_in_a_recorded_session_without_its_marker(
        daemon: Daemon, tmp_path: Path) -> None:
    """procsupd is SIGKILLed; the leader dies too; its child, in a group of its own in the
    leader's session and without its environment (no marker), lives on under init. The next
    procsupd finds it by the recorded session and stops it before starting the app again."""
    pids = tmp_path / "pids"
    daemon.write(f"""
        [apps.fg]
        command = {app_cmd("daemonizer", "setpgid", str(pids), "--clear-env")}
        min_uptime = "100ms"
        """)
    daemon.start()
    leader = daemon.wait_states("fg", "running", 1)[0]["pid"]
    child = wait_for(lambda: _pids(pids), 10, "the child")[0]
    wait_for(lambda: (daemon.state_dir / "instances.json").exists()
             and str(leader) in (daemon.state_dir / "instances.json").read_text(), 5,
             "the leader recorded")
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: not pid_alive(leader), 5, "the leader gone")
    assert pid_alive(child)
    try:
        daemon.start()
        wait_for(lambda: not pid_alive(child), 10, "the child stopped by the new procsupd")
        daemon.wait_states("fg", "running", 1)
        assert "stopping what a previous procsupd left running" in daemon.daemon_log()
        assert daemon.stop_daemon() == 0
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_recovery_finds_a_recorded_leader_without_its_marker(daemon: Daemon) -> None:
    """A leader that lost its environment (env -i, as a program that rewrites it) is found by
    the record alone after procsupd is SIGKILLed: the new procsupd reads the record before it
    writes its own (it used to overwrite it with an empty one first, leaving the marker as the
    only way to find leftovers)."""
    daemon.write("""
        [apps.bare]
        command = ["env", "-i", "sleep", "1000"]
        min_uptime = "100ms"
        """)
    daemon.start()
    old = daemon.wait_states("bare", "running", 1)[0]["pid"]
    wait_for(lambda: str(old) in (daemon.state_dir / "instances.json").read_text(), 5,
             "the leader recorded")
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    try:
        daemon.start()
        wait_for(lambda: not pid_alive(old), 10, "the old leader stopped")
        new = daemon.wait_states("bare", "running", 1)[0]["pid"]
        assert new != old
        assert daemon.stop_daemon() == 0
    finally:
        if pid_alive(old):
            os.kill(old, signal.SIGKILL)


@pytest.mark.parametrize("with_pidfile", [False, True], ids=["no-pidfile", "pidfile"])
def test_debian_nginx_without_daemon_off(
        daemon: Daemon, tmp_path: Path, with_pidfile: bool) -> None:
    """nginx without `daemon off;` forks its master and exits 0. It used to restart every
    2.5 s forever (the failing copy retried bind() longer than min_uptime) and the first
    master survived shutdown. Without pidfile: errored with the reason, the master and its
    workers stopped. With pidfile: the master is supervised, serves, and stop ends it all."""
    nginx = _program("nginx")
    port = _free_port()
    prefix = tmp_path / "nginx"
    conf = nginx_config(prefix, port, error_log=f"{prefix}/error.log notice")
    extra = f'pidfile = "{prefix}/nginx.pid"' if with_pidfile else ""
    daemon.write(f"""
        [apps.nginx]
        command = ["{nginx}", "-p", "{prefix}", "-c", "{conf}"]
        min_uptime = "1s"
        {extra}
        """)
    daemon.start()
    if not with_pidfile:
        rows = daemon.wait_states("nginx", "errored", 1, timeout=15)
        m = REASON.fullmatch(rows[0]["reason"] or "")
        assert m, rows[0]
        master = int(m.group(1))
        wait_for(lambda: not pid_alive(master), 5, "nginx's master stopped")
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
        assert daemon.stop_daemon() == 0
        return
    daemon.wait_states("nginx", "running", 1, timeout=15)
    master = int((prefix / "nginx.pid").read_text().split()[0])
    wait_for(lambda: daemon.instances("nginx")[0]["pid"] == master, 5, "the master's pid")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert b"200 OK" in s.recv(200)
    workers = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    assert len(workers) == 2
    assert daemon.stop_daemon() == 0  # SIGTERM: shutdown stops the master and its workers
    assert not any(pid_alive(p) for p in [master, *workers])
