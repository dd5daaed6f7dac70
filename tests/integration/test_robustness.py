"""Regressions for failure paths: shutdown during recovery, a lost record, commands that
race each other, crash loops reported as failures, procsupd as a container's PID 1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from .conftest import PY, Daemon, app_cmd, pid_alive, wait_for
from .test_deps import events, stack


def test_sigterm_during_recovery_leaves_nothing_running(daemon: Daemon, tmp_path: Path) -> None:
    daemon.write(f"""
        [apps.stubborn]
        command = {app_cmd("stubborn", str(tmp_path / "g"))}
        kill_timeout = "2s"
        min_uptime = "100ms"
        [apps.plain]
        command = ["sleep", "1000"]
        """)
    daemon.start()
    daemon.wait_states("stubborn", "running", 1)
    wait_for((tmp_path / "g").exists, 5, "grandchild")
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(5)
    # the new daemon spends kill_timeout stopping the stubborn leftover; stop it meanwhile
    daemon.start(wait=False)
    # Signal once it is recovering (its handlers are installed by then): on a loaded machine
    # a fixed delay may still be in Python's start-up, where SIGTERM just kills it.
    wait_for(lambda: "stopping what a previous procsupd left running" in daemon.daemon_log(),
             20, "recovery under way")
    assert daemon.proc.poll() is None  # still stopping the stubborn leftover (kill_timeout 2s)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    wait_for(lambda: not daemon.app_processes(), 5, "no process of ours left")


def test_lost_record_still_leaves_no_duplicates(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        instances = 3
        min_uptime = "100ms"
        """)
    daemon.start()
    old = [r["pid"] for r in daemon.wait_states("s", "running", 3)]
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(5)
    shutil.rmtree(daemon.state_dir)  # as if the daemon died before writing it
    daemon.start()
    rows = daemon.wait_states("s", "running", 3)
    wait_for(lambda: not any(pid_alive(p) for p in old), 10, "old instances stopped")
    assert sorted(daemon.app_processes()) == sorted(r["pid"] for r in rows)


def test_a_stop_during_a_restart_ends_both_commands(daemon: Daemon, tmp_path: Path) -> None:
    daemon.write(f"""
        [apps.slow]
        command = {app_cmd("stubborn", str(tmp_path / "g"))}
        kill_timeout = "1s"
        min_uptime = "100ms"
        """)
    daemon.start()
    daemon.wait_states("slow", "running", 1)
    results: dict[str, int] = {}

    def run(name: str, *args: str) -> None:
        results[name] = daemon.cli(*args, timeout=20).returncode

    t = threading.Thread(target=run, args=("restart", "restart", "slow"))
    t.start()
    wait_for(lambda: daemon.instances("slow")[0]["state"] == "stopping", 5, "stopping")
    run("stop", "stop", "slow")
    t.join(20)
    assert not t.is_alive(), "restart never returned"
    assert results["stop"] == 0
    assert results["restart"] == 1  # superseded by the stop: it did not end running
    assert daemon.instances("slow")[0]["state"] == "stopped"


def test_a_start_during_a_stop_ends_the_stop(daemon: Daemon, tmp_path: Path) -> None:
    daemon.write(f"""
        [apps.slow]
        command = {app_cmd("stubborn", str(tmp_path / "g"))}
        kill_timeout = "1s"
        min_uptime = "100ms"
        """)
    daemon.start()
    [row] = daemon.wait_states("slow", "running", 1)
    results: dict[str, int] = {}
    t = threading.Thread(target=lambda: results.setdefault(
        "stop", daemon.cli("stop", "slow", timeout=20).returncode))
    t.start()
    wait_for(lambda: daemon.instances("slow")[0]["state"] == "stopping", 5, "stopping")
    assert daemon.cli("start", "slow").returncode == 0
    t.join(20)
    assert not t.is_alive(), "stop never returned"
    assert results["stop"] == 0
    [new] = daemon.instances("slow")
    assert new["state"] == "running" and new["pid"] != row["pid"]
    assert not pid_alive(row["pid"])


def test_start_of_a_crash_loop_fails_and_no_wait_codes(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.crash]
        command = {app_cmd("crasher", "3")}
        max_restarts = 50
        autorestart = true
        [apps.ok]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        """)
    daemon.start()
    assert daemon.cli("stop", "crash").returncode == 0
    r = daemon.cli("start", "crash")
    assert r.returncode == 1, r.stdout
    assert "exit" in r.stdout or "code 3" in r.stdout
    daemon.wait_states("ok", "running", 1)
    assert daemon.cli("restart", "ok", "--no-wait").returncode == 0
    daemon.wait_states("ok", "running", 1)


def _in_pid_namespace(daemon: Daemon) -> subprocess.Popen[bytes]:
    """`procsupd -n` on the daemon's config as PID 1 of a new pid namespace (unshare)."""
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", PY, "-m", "procsup.daemon", "-n",
         "-c", str(daemon.config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=daemon.env,
    )


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare to run procsupd as PID 1 of a pid namespace")
def test_pid1_reaps_orphaned_grandchildren(daemon: Daemon, tmp_path: Path) -> None:
    """Two orphans (re-parented to procsupd, PID 1 of the namespace) end while procsupd runs:
    none stays a zombie. The orphans wait on a FIFO, so the test knows they exist before it
    lets them end, and sees them die before it checks that no zombie is left."""
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    daemon.write(f"""
        [apps.orph]
        command = "(read x < '{fifo}' &); (read x < '{fifo}' &); exec sleep 600"
        shell = true
        min_uptime = "100ms"
        """)
    with _in_pid_namespace(daemon) as ns:
        # Held open read-write (never blocks): the orphans' opens complete, and they read
        # until it is closed.
        release = os.open(fifo, os.O_RDWR)
        try:
            wait_for(daemon.ping, 15, "procsupd in a pid namespace")
            daemon.wait_states("orph", "running", 1)
            [host_pid] = map(int, Path(
                f"/proc/{ns.pid}/task/{ns.pid}/children").read_text().split())

            def fields(pid: int) -> list[str] | None:  # /proc/PID/stat after the name
                try:
                    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    return None

            def orphans() -> list[int] | None:  # both orphans, children of procsupd, waiting
                found = []
                for name in Path(f"/proc/{host_pid}/task/{host_pid}/children").read_text().split():
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{name}/fd/0") == str(fifo):
                            found.append(int(name))
                return found if len(found) == 2 else None

            def zombies() -> list[int]:  # zombie children of procsupd, seen from outside
                found = []
                for name in filter(str.isdigit, os.listdir("/proc")):
                    f = fields(int(name))
                    if f is not None and f[0] == "Z" and int(f[1]) == host_pid:
                        found.append(int(name))
                return found

            pids = wait_for(orphans, 10, "two orphans of procsupd reading the FIFO")
            os.close(release)  # EOF: the orphans end now
            release = -1
            def dead(pid: int) -> bool:  # a zombie, or already reaped
                f = fields(pid)
                return f is None or f[0] == "Z"

            wait_for(lambda: all(dead(p) for p in pids), 10, "the orphans to die")
            wait_for(lambda: not zombies(), 5, "orphans reaped")
            assert all(fields(p) is None for p in pids)  # reaped: gone from /proc
        finally:
            if release >= 0:
                os.close(release)
            daemon.cli("shutdown")
            ns.wait(20)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare to run procsupd as PID 1 of a pid namespace")
def test_pid1_sigterm_stops_the_stack_in_dependency_order_and_exits_0(daemon: Daemon) -> None:
    """A container's `procsupd -n` as PID 1: SIGTERM (docker stop) stops dependents before
    their dependencies, as the programs themselves record, and procsupd exits 0."""
    log = daemon.root / "stack.log"
    daemon.write(stack(log))
    with _in_pid_namespace(daemon) as ns:
        try:
            wait_for(daemon.ping, 15, "procsupd in a pid namespace")
            daemon.wait_states("worker", "running", 1, timeout=20)
            [host_pid] = map(int, Path(
                f"/proc/{ns.pid}/task/{ns.pid}/children").read_text().split())
            nspid = next(ln for ln in Path(f"/proc/{host_pid}/status").read_text().splitlines()
                         if ln.startswith("NSpid:")).split()
            assert nspid[-1] == "1", nspid  # PID 1 of its namespace
            os.kill(host_pid, signal.SIGTERM)
            assert ns.wait(30) == 0  # unshare returns procsupd's exit status
        finally:
            if ns.poll() is None:
                daemon.cli("shutdown")
                ns.wait(20)
    stops = [e for e in events(log) if e.startswith("stop")]
    assert stops == ["stop worker", "stop web", "stop web", "stop db"]
