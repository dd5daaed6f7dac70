"""Contract promises (CONTRACT.md) that had no test of their own, each against a real procsupd
with real children, sockets and signals: daemon options and signals, stop signals and
timeouts, identity, config ownership, recovery of cluster apps, notify attribution, the CLI's
`all` and app-less forms, and a reuseport slot's queue surviving its instance's replacement."""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from procsup import __version__

from .conftest import PY, Daemon, app_cmd, pid_alive, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int) -> int:
    """One request; the answering instance's pid."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        return int(resp.read())
    finally:
        conn.close()


def _sleepers(daemon: Daemon, extra: str = "") -> None:
    daemon.write(f"""
        [apps.a]
        command = {app_cmd("sleeper")}
        instances = 2
        min_uptime = "100ms"
        [apps.b]
        command = {app_cmd("sleeper")}
        min_uptime = "100ms"
        """, extra)


def _pids(daemon: Daemon) -> set[int]:
    return {r["pid"] for r in daemon.instances() if r["pid"]}


# -- procsupd: options, signals, daemon mode ---------------------------------------------------


def test_env_option_overrides_the_configured_profile(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.e]
        command = {app_cmd("env_dump")}
        env = {{ WHICH = "base" }}
        env_production = {{ WHICH = "production" }}
        env_staging = {{ WHICH = "staging" }}
        """, 'env = "production"')
    daemon.start("--env", "staging")
    out = daemon.log_dir / "e-out.log"
    wait_for(lambda: out.exists() and "UMASK=" in out.read_text(), 10, "env dump")
    assert "WHICH=staging\n" in out.read_text()
    assert daemon.status()["config"]["profile"] == "staging"


def test_sigint_stops_every_app_and_exits_0(daemon: Daemon) -> None:
    _sleepers(daemon)
    daemon.start()
    daemon.wait_states("a", "running", 2)
    daemon.wait_states("b", "running", 1)
    pids = _pids(daemon)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(30) == 0, daemon.daemon_log()
    assert not any(pid_alive(p) for p in pids)
    assert not os.path.exists(daemon.socket) and not os.path.exists(daemon.pidfile)


def test_daemon_reads_procsup_config_when_no_c_is_given(daemon: Daemon) -> None:
    _sleepers(daemon)
    env = {**daemon.env, "PROCSUP_CONFIG": str(daemon.config)}
    with open(daemon.stderr_path, "ab") as log:
        daemon.proc = subprocess.Popen([PY, "-m", "procsup.daemon", "-n"], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       cwd=daemon.root)
    wait_for(lambda: daemon.proc is not None and (daemon.proc.poll() is not None
                                                  or daemon.ping()), 15, "procsupd to serve")
    assert daemon.proc.poll() is None, daemon.daemon_log()
    daemon.wait_states("a", "running", 2)
    assert daemon.status()["config"]["path"] == str(daemon.config)
    assert daemon.stop_daemon() == 0


def test_daemonized_procsupd_runs_in_root_dir_with_umask_022(daemon: Daemon) -> None:
    _sleepers(daemon)
    # Started from elsewhere, with another umask: the daemon sets both itself.
    r = subprocess.run(["/bin/sh", "-c", 'umask 077; exec "$@"', "sh", PY, "-m",
                        "procsup.daemon", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=30, env=daemon.env,
                       cwd=daemon.root)
    assert r.returncode == 0, r.stderr
    pid = int(Path(daemon.pidfile).read_text())
    try:
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        umask = re.search(r"^Umask:\s*(\d+)$", Path(f"/proc/{pid}/status").read_text(), re.M)
        assert umask is not None and umask.group(1) == "0022"
        assert daemon.cli("shutdown").returncode == 0
        wait_for(lambda: not pid_alive(pid), 10, "daemon gone")
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_check_exits_1_on_an_invalid_config_and_starts_nothing(daemon: Daemon) -> None:
    daemon.write("""
        [apps.a]
        command = ["sleep", "1000"]
        [apps.bad]
        comand = "sleep 1"
        """)
    line = daemon.config.read_text().splitlines().index('comand = "sleep 1"') + 1
    r = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=30, env=daemon.env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"apps.toml:{line}" in r.stderr and "comand" in r.stderr, r.stderr
    assert r.stdout == ""
    assert not os.path.exists(daemon.socket) and not os.path.exists(daemon.pidfile)


# -- stopping: kill_signal, shutdown_timeout ----------------------------------------------------


def test_kill_signal_other_than_term_is_what_the_app_receives(daemon: Daemon,
                                                              tmp_path: Path) -> None:
    got = tmp_path / "signals"
    daemon.write(f"""
        [apps.s]
        command = {app_cmd("signal_log", str(got))}
        kill_signal = "SIGUSR1"
        kill_timeout = "20s"
        min_uptime = "100ms"
        """)
    daemon.start()
    out = daemon.log_dir / "s-out.log"
    daemon.wait_states("s", "running", 1)
    wait_for(lambda: out.exists() and "ready" in out.read_text(), 10, "handlers installed")
    t0 = time.monotonic()
    assert daemon.cli("stop", "s").returncode == 0
    assert got.read_text() == "SIGUSR1\n"
    assert time.monotonic() - t0 < 15  # it went on USR1, not on the SIGKILL after kill_timeout


def test_shutdown_timeout_bounds_shutdown_and_kills_what_is_left(daemon: Daemon) -> None:
    daemon.write("""
        [apps.deaf]
        command = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"]
        kill_timeout = "120s"
        min_uptime = "100ms"
        """, 'shutdown_timeout = "2s"')
    daemon.start()
    [row] = daemon.wait_states("deaf", "running", 1)
    t0 = time.monotonic()
    code = daemon.stop_daemon(timeout=60)
    elapsed = time.monotonic() - t0
    assert 1.8 <= elapsed < 20, f"shutdown took {elapsed:.1f}s with shutdown_timeout 2s"
    assert code == 0
    wait_for(lambda: not pid_alive(row["pid"]), 5, "the deaf app killed")
    assert "shutdown_timeout" in daemon.daemon_log()


# -- identity and config ownership (root) -------------------------------------------------------


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="switching user and group needs root")
def test_an_explicit_group_is_the_apps_group(daemon: Daemon) -> None:
    nobody = pwd.getpwnam("nobody")
    other = next((g for g in grp.getgrall() if g.gr_gid not in (0, nobody.pw_gid)), None)
    if other is None:
        pytest.skip("no group other than root's and nobody's")
    daemon.write(f"""
        [apps.g]
        command = ["/bin/sh", "-c", "echo ID $(id -u) $(id -g); exec sleep 100"]
        cwd = "/"
        user = "nobody"
        group = "{other.gr_name}"
        """)
    daemon.start()
    out = daemon.log_dir / "g-out.log"
    wait_for(lambda: out.exists() and "ID " in out.read_text(), 10, "id output")
    assert out.read_text().split()[1:3] == [str(nobody.pw_uid), str(other.gr_gid)]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies to a root daemon")
def test_root_daemon_refuses_an_included_file_others_can_write(daemon: Daemon) -> None:
    (daemon.root / "apps.d").mkdir()
    inc = daemon.root / "apps.d" / "extra.toml"
    inc.write_text('[apps.extra]\ncommand = ["sleep", "1000"]\nmin_uptime = "100ms"\n')
    daemon.write("""
        [apps.main]
        command = ["sleep", "1001"]
        min_uptime = "100ms"
        """, 'include = ["apps.d/*.toml"]\nwatch_config = false')
    os.chmod(inc, 0o646)  # world-writable
    refused = daemon.start(wait=False)
    wait_for(lambda: refused.poll() is not None or daemon.ping(), 15, "procsupd to decide")
    assert refused.poll() == 78, daemon.daemon_log()  # EX_CONFIG: a config error
    said = daemon.daemon_log()
    assert "writable" in said and str(inc) in said, said
    os.chmod(inc, 0o644)
    daemon.start()
    [extra] = daemon.wait_states("extra", "running", 1)
    os.chmod(inc, 0o666)
    r = daemon.cli("update")
    assert r.returncode == 1 and "writable" in r.stderr and str(inc) in r.stderr, r.stderr
    assert daemon.instances("extra")[0]["pid"] == extra["pid"]  # nothing applied


# -- daemon restart after SIGKILL, cluster app --------------------------------------------------


def test_cluster_app_serves_again_after_the_daemon_is_sigkilled(daemon: Daemon) -> None:
    port = _free_port()
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("activated_http", "notify")}
        exec_mode = "cluster"
        instances = 2
        listen = ["tcp://127.0.0.1:{port}"]
        ready = "notify"
        kill_timeout = "2s"
        min_uptime = "100ms"
        """, "watch_config = false")
    daemon.start()
    old = {r["pid"] for r in daemon.wait_states("web", "running", 2)}
    assert _get(port) in old
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    try:
        daemon.start()
        now = {r["pid"] for r in daemon.wait_states("web", "running", 2, timeout=20)}
        # stopped or adopted, never duplicated: exactly the two instances it reports are alive
        wait_for(lambda: set(daemon.app_processes()) == now, 10, "only the reported instances")
        assert {_get(port) for _ in range(20)} <= now
    finally:  # if the new daemon lost the old instances, its record does not name them either
        try:
            kept = {r["pid"] for r in daemon.instances("web")}
        except (AssertionError, ValueError, subprocess.SubprocessError):
            kept = set()
        for pid in old - kept:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- notify socket: attribution, STOPPING=1 -----------------------------------------------------


def test_one_instance_cannot_speak_for_another(daemon: Daemon, tmp_path: Path) -> None:
    target, gate = tmp_path / "target-pid", tmp_path / "gate"
    daemon.write(f"""
        [apps.quiet]
        command = {app_cmd("notify_when", str(gate))}
        ready = "notify"
        ready_timeout = "60s"
        [apps.talker]
        command = {app_cmd("notify_for", str(target))}
        min_uptime = "100ms"
        kill_timeout = "2s"
        """, "watch_config = false")
    daemon.start()
    [quiet] = daemon.wait_states("quiet", "starting", 1)
    tmp = tmp_path / "target-pid.tmp"
    tmp.write_text(str(quiet["pid"]))
    tmp.rename(target)
    [talker] = wait_for(lambda: [r for r in daemon.instances("talker") if r["status"] == "done"],
                        15, "the talker's last message handled")
    assert talker["state"] == "running"  # STOPPING=1 is accepted, changes nothing
    assert "talker:0: says it is stopping" in daemon.daemon_log()
    [row] = daemon.instances("quiet")
    assert (row["state"], row["status"], row["pid"]) == ("starting", None, quiet["pid"])
    gate.touch()  # its own READY=1 does count
    [row] = daemon.wait_states("quiet", "running", 1)
    assert row["status"] == "own"


# -- the CLI against a real daemon --------------------------------------------------------------


def test_version_status_app_and_logs_of_every_app(daemon: Daemon) -> None:
    _sleepers(daemon)
    daemon.start()
    daemon.wait_states("a", "running", 2)
    daemon.wait_states("b", "running", 1)
    r = daemon.cli("version")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"procsup {re.escape(__version__)} \(protocol \d+\)\n"
                        rf"procsupd {re.escape(__version__)} \(protocol \d+\)\n", r.stdout)
    r = daemon.cli("status", "a")
    assert r.returncode == 0, r.stderr
    first_words = [line.split()[0] for line in r.stdout.splitlines() if line.split()]
    assert [w for w in first_words if w in ("a", "b")] == ["a", "a"], r.stdout
    r = daemon.cli("status", "b", "--json")
    assert r.returncode == 0, r.stderr
    assert [(i["app"], i["instance"]) for i in json.loads(r.stdout)["instances"]] == [("b", 0)]
    out = {0: daemon.log_dir / "a-out-0.log", 1: daemon.log_dir / "a-out-1.log",
           2: daemon.log_dir / "b-out.log"}
    wait_for(lambda: all(p.exists() and "started" in p.read_text() for p in out.values()),
             10, "every instance's first line")
    r = daemon.cli("logs", "-n", "5")
    assert r.returncode == 0, r.stderr
    for app, i in (("a", 0), ("a", 1), ("b", 0)):
        assert f"started app={app} instance={i}" in r.stdout, r.stdout
    assert "to stderr" in r.stdout


def test_version_json_has_the_protocol_and_cgroups(daemon: Daemon) -> None:
    _sleepers(daemon)
    daemon.start()
    r = daemon.cli("version", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert __version__ in json.dumps(doc) and "protocol" in json.dumps(doc)
    assert doc["daemon"]["cgroups"] in (True, False)
    assert doc["client"] == {"version": __version__, "protocol": 1}


def test_stop_start_restart_reload_all(daemon: Daemon) -> None:
    _sleepers(daemon)
    daemon.start()
    daemon.wait_states("a", "running", 2)
    daemon.wait_states("b", "running", 1)
    first = _pids(daemon)
    r = daemon.cli("stop", "all")
    assert r.returncode == 0, r.stderr
    assert {i["state"] for i in daemon.instances()} == {"stopped"}  # done when it returns
    assert not any(pid_alive(p) for p in first)
    assert daemon.cli("start", "all").returncode == 0
    assert {i["state"] for i in daemon.instances()} == {"running"}
    started = _pids(daemon)
    assert len(started) == 3 and not started & first
    os.kill(next(iter(started)), signal.SIGKILL)  # one restart to reset
    wait_for(lambda: sum(i["restarts"] for i in daemon.instances()) == 1
             and {i["state"] for i in daemon.instances()} == {"running"}, 10, "a crash restart")
    before = _pids(daemon)
    r = daemon.cli("restart", "all")
    assert r.returncode == 0, r.stderr
    rows = daemon.instances()
    assert len(rows) == 3 and all(i["state"] == "running" and i["restarts"] == 0 for i in rows)
    restarted = _pids(daemon)
    assert not restarted & before
    r = daemon.cli("reload", "all", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = daemon.instances()
    assert len(rows) == 3 and all(i["state"] == "running" for i in rows)
    assert not _pids(daemon) & restarted
    wait_for(lambda: not any(pid_alive(p) for p in restarted), 10, "the old instances gone")


# -- reload errors go to the daemon log ---------------------------------------------------------


def test_a_reload_with_a_config_error_says_so_in_the_daemon_log(daemon: Daemon) -> None:
    _sleepers(daemon, "watch_config = false")
    daemon.start()
    daemon.wait_states("a", "running", 2)
    before = _pids(daemon)
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace("[apps.b]\n", '[apps.b]\ncomand = "x"\n', 1))
    line = good.splitlines().index("[apps.b]") + 2
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    logged = wait_for(lambda: [x for x in daemon.daemon_log().splitlines()
                               if "ERROR" in x and "comand" in x], 10, "the error logged")
    assert f"apps.toml:{line}" in logged[0] and "did you mean 'command'" in logged[0], logged
    assert _pids(daemon) == before
    assert daemon.status()["config"]["applied"] is False


# -- reuseport: a slot's socket outlives its instance -------------------------------------------


def _listen_queue(inode: int) -> int:
    """Connections waiting in the accept queue of the listening TCP socket `inode`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[9]) == inode and f[3] == "0A":  # LISTEN; rx_queue is the accept queue
            return int(f[4].split(":")[1], 16)
    raise AssertionError(f"no listening socket with inode {inode}")


def _socket_inode(pid: int, fd: int = 3) -> int:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    match = re.fullmatch(r"socket:\[(\d+)\]", link)
    assert match, link
    return int(match.group(1))


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize("how", ["restart", "reload"])
def test_reuseport_replacement_serves_the_connections_queued_on_its_slot(
    daemon: Daemon, tmp_path: Path, how: str
) -> None:
    port, gate = _free_port(), tmp_path / "gate"
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("gated_http", str(gate))}
        exec_mode = "cluster"
        instances = 2
        listen = ["tcp://127.0.0.1:{port}"]
        balance = "reuseport"
        ready = "notify"
        kill_timeout = "5s"
        min_uptime = "100ms"
        """, "watch_config = false")
    daemon.start()
    rows = {r["instance"]: r for r in daemon.wait_states("web", "running", 2)}
    inodes = {i: _socket_inode(r["pid"]) for i, r in rows.items()}
    clients = []
    try:
        for _ in range(24):  # nobody accepts yet: they wait in the slots' accept queues
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            clients.append(c)
        queued = wait_for(lambda: (q := {i: _listen_queue(n) for i, n in inodes.items()})
                          and sum(q.values()) == 24 and q, 10, "24 queued connections")
        assert queued[0] > 0, queued  # (1 in 2**23 that the kernel put none on slot 0)
        r = daemon.cli(how, "web:0", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        new = next(x for x in daemon.instances("web") if x["instance"] == 0)
        assert new["state"] == "running" and new["pid"] != rows[0]["pid"]
        assert not pid_alive(rows[0]["pid"])
        assert _socket_inode(new["pid"]) == inodes[0]  # the slot's own socket
        assert _listen_queue(inodes[0]) == queued[0]  # nothing dropped in the hand-over
        gate.touch()
        answers = [_read_reply(c) for c in clients]  # a reset raises here
    finally:
        for c in clients:
            c.close()
    assert all(a.startswith(b"HTTP/1.0 200") for a in answers), answers
    by = [int(a.rsplit(b"\r\n\r\n", 1)[1]) for a in answers]
    assert by.count(new["pid"]) == queued[0] and by.count(rows[1]["pid"]) == queued[1]
