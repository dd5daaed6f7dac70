"""Process engine with a real procsupd: instances, env, states, restart policy, stop."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import PY, Daemon, app_cmd, pid_alive, wait_for


def test_instances_run_with_their_identity_and_status_json(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("sleeper")}
        instances = 2
        min_uptime = "200ms"
        """)
    daemon.start()
    rows = daemon.wait_states("web", "running", 2)
    assert [r["instance"] for r in rows] == [0, 1]
    for r in rows:
        assert set(r) == {
            "app",
            "instance",
            "pid",
            "state",
            "uptime",
            "restarts",
            "cpu",
            "memory",
            "exit_code",
            "reason",
            "status",
            "next_cron_restart",
            "health",
            "disabled",
            "log_errors",
            "warning",
        }
        assert r["health"] is None  # no health check
        assert r["log_errors"] == []
        assert r["warning"] is None
        assert pid_alive(r["pid"])
        assert os.getpgid(r["pid"]) == r["pid"]  # its own process group
        assert os.getsid(r["pid"]) == r["pid"]  # and its own session
        assert r["memory"] > 1_000_000
        assert r["uptime"] >= 0.2
        assert r["restarts"] == 0
    st = daemon.status()
    assert st["config"] == {
        "path": str(daemon.config),
        "applied": True,
        "error": None,
        "profile": None,
        "restart_daemon": [],
    }
    # per-instance log files with the contract's default names
    for i in (0, 1):
        out = daemon.log_dir / f"web-out-{i}.log"
        wait_for(lambda out=out: out.exists() and "started" in out.read_text(), 5, str(out))
        assert f"app=web instance={i} of=2" in out.read_text()
        err = daemon.log_dir / f"web-error-{i}.log"
        wait_for(lambda err=err: err.exists() and "to stderr" in err.read_text(), 5, str(err))
    table = daemon.cli("status")
    assert table.returncode == 0
    assert "web" in table.stdout and "running" in table.stdout


def _cpu_seconds(pid: int) -> float:
    """The CPU time the kernel says the process got (user + system, with reaped children)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def test_status_cpu_is_the_cpu_time_the_instance_really_got(daemon: Daemon) -> None:
    """`cpu` in `status --json` (percent of one core, averaged since the previous status) is
    the CPU time psutil says a busy loop got over that interval, and ~0 for a sleeper. The
    expectation is measured, not assumed: a loaded machine gives the loop less than a core.
    Each `status` call is bracketed by readings before and after it, so the daemon's sample
    lies between them: the bounds below hold whatever the CLI's own start-up costs."""
    daemon.write(f"""
        [apps.busy]
        command = {json.dumps([PY, "-c", "while True: pass"])}
        min_uptime = "100ms"
        [apps.idle]
        command = ["sleep", "1000"]
        min_uptime = "100ms"
        """)
    daemon.start()
    [busy] = daemon.wait_states("busy", "running", 1)
    daemon.wait_states("idle", "running", 1)

    def bracketed() -> tuple[dict[str, dict[str, Any]], tuple[float, float], tuple[float, float]]:
        """status --json rows by app, (cpu, clock) before the call, (cpu, clock) after it."""
        before = (_cpu_seconds(busy["pid"]), time.monotonic())
        r = daemon.cli("status", "--json")
        after = (_cpu_seconds(busy["pid"]), time.monotonic())
        assert r.returncode == 0, r.stderr
        return {row["app"]: row for row in json.loads(r.stdout)["instances"]}, before, after

    _, (c1a, t1a), (c1b, t1b) = bracketed()  # the daemon's first sample: the baseline
    # Let the loop burn 2 s of CPU (a deadline, in case the machine gives it next to none).
    wait_for(lambda: _cpu_seconds(busy["pid"]) - c1b >= 2.0, 30, "2 s of cpu for the loop")
    rows, (c2a, t2a), (c2b, t2b) = bracketed()
    got = rows["busy"]["cpu"]
    # low > 0: the loop got >= 2 s of cpu between the calls, so a status stuck at 0 fails
    low = 100.0 * (c2a - c1b) / (t2b - t1a)  # least cpu over the longest interval
    high = 100.0 * (c2b - c1a) / (t2a - t1b)  # most cpu over the shortest interval
    assert low - 0.1 <= got <= high + 0.1, (got, low, high)  # status rounds to 0.1
    assert rows["idle"]["cpu"] <= 1.0, rows["idle"]


def test_crash_loop_ends_errored_after_max_restarts(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.bad]
        command = {app_cmd("crasher", "3")}
        max_restarts = 2
        min_uptime = "5s"
        """)
    daemon.start()
    [row] = daemon.wait_states("bad", "errored", 1)
    assert row["exit_code"] == 3
    assert row["restarts"] == 2
    assert "min_uptime" in row["reason"]
    assert row["pid"] is None
    out = (daemon.log_dir / "bad-out.log").read_text()
    assert out.count("crashing with 3") == 3  # N + 1 runs


@pytest.mark.parametrize(
    ("command", "extra", "reason"),
    [
        ('["/nonexistent/bin/thing"]', "", "executable not found: /nonexistent/bin/thing"),
        ('["no-such-program-procsup"]', "", "executable not found: no-such-program-procsup"),
        ('["sleep", "100"]', 'cwd = "/nonexistent/dir"', "cwd not found: /nonexistent/dir"),
        ('["sleep", "100"]', 'user = "no-such-user-procsup"', "unknown user: no-such-user-procsup"),
    ],
)
def test_unexecutable_command_is_errored_at_once(
    daemon: Daemon, command: str, extra: str, reason: str
) -> None:
    daemon.write(f"""
        [apps.x]
        command = {command}
        {extra}
        """)
    daemon.start()
    [row] = daemon.wait_states("x", "errored", 1, timeout=5)
    assert row["reason"] == reason
    assert row["restarts"] == 0  # no crash loop
    r = daemon.cli("start", "x")
    assert r.returncode == 1
    assert reason in r.stdout + r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="running an app as another user needs root")
def test_a_missing_program_is_not_found_although_path_has_a_closed_directory(
    daemon: Daemon, tmp_path: Path
) -> None:
    """execvp says EACCES when it could not search a PATH directory, even if the program is in
    none: the user must hear "not found", not "permission denied"."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)  # root's: nobody cannot search it
    daemon.write(f"""
        [apps.x]
        command = ["no-such-program-procsup"]
        user = "nobody"
        cwd = "/"
        env = {{ PATH = "{closed}:/usr/bin:/bin" }}
        """)
    daemon.start()
    [row] = daemon.wait_states("x", "errored", 1, timeout=5)
    assert row["reason"] == ("executable not found: no-such-program-procsup (and some "
                             "directories of PATH could not be searched)")


def test_autorestart_policies(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.once]
        command = {app_cmd("crasher", "0")}
        autorestart = false
        [apps.ok]
        command = {app_cmd("crasher", "0", "0.3")}
        autorestart = "on-failure"
        [apps.fail]
        command = {app_cmd("crasher", "4", "0.3")}
        autorestart = "on-failure"
        min_uptime = "100ms"
        restart_delay = "50ms"
        """)
    daemon.start()
    [once] = daemon.wait_states("once", "exited", 1)
    assert once["exit_code"] == 0 and once["restarts"] == 0
    [ok] = daemon.wait_states("ok", "exited", 1)
    assert ok["exit_code"] == 0 and ok["restarts"] == 0
    wait_for(lambda: daemon.instances("fail")[0]["restarts"] >= 2, 10, "on-failure restarts")


def test_stop_kills_a_grandchild_that_ignores_sigterm(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    daemon.write(f"""
        [apps.stubborn]
        command = {app_cmd("stubborn", str(marker))}
        kill_timeout = "300ms"
        min_uptime = "100ms"
        """)
    daemon.start()
    [row] = daemon.wait_states("stubborn", "running", 1)
    wait_for(marker.exists, 5, "grandchild pid file")
    grandchild = int(marker.read_text())
    assert os.getpgid(grandchild) == row["pid"]
    t0 = time.monotonic()
    r = daemon.cli("stop", "stubborn")
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 5
    assert not pid_alive(row["pid"])
    assert not pid_alive(grandchild)
    [row] = daemon.instances("stubborn")
    assert row["state"] == "stopped" and row["pid"] is None
    # stays stopped
    time.sleep(0.3)
    assert daemon.instances("stubborn")[0]["state"] == "stopped"


def test_start_restart_signal_commands(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.web]
        command = {app_cmd("sleeper")}
        instances = 2
        min_uptime = "100ms"
        """)
    daemon.start()
    rows = daemon.wait_states("web", "running", 2)
    old = {r["pid"] for r in rows}
    # a crash counts as a restart; `restart` resets the counter
    os.kill(rows[0]["pid"], signal.SIGKILL)
    wait_for(lambda: daemon.instances("web")[0]["restarts"] == 1, 5, "automatic restart")
    r = daemon.cli("restart", "web")
    assert r.returncode == 0, r.stderr
    rows = daemon.instances("web")
    assert all(x["state"] == "running" and x["restarts"] == 0 for x in rows)
    assert not old & {x["pid"] for x in rows}
    # stop one instance by app:i, start it again
    assert daemon.cli("stop", "web:1").returncode == 0
    assert [x["state"] for x in daemon.instances("web")] == ["running", "stopped"]
    assert daemon.cli("start", "all").returncode == 0
    assert [x["state"] for x in daemon.instances("web")] == ["running", "running"]
    # signal reaches the process group: SIGTERM makes the sleeper exit 0, then it is restarted
    pids = [x["pid"] for x in daemon.instances("web")]
    r = daemon.cli("signal", "TERM", "web")
    assert r.returncode == 0, r.stderr
    wait_for(
        lambda: all(
            x["pid"] not in pids and x["state"] == "running" for x in daemon.instances("web")
        ),
        10,
        "restart after SIGTERM",
    )
    # unknown app: exit 1, named
    r = daemon.cli("stop", "nope")
    assert r.returncode == 1 and "nope" in r.stderr + r.stdout
    r = daemon.cli("stop", "web:7")
    assert r.returncode == 1
    assert "unknown instance: web:7 (web has web:0, web:1)" in r.stderr


def test_exp_backoff_doubles_the_delay_per_unstable_restart(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Each run notes when it started (CLOCK_MONOTONIC, one clock for all processes) and
    exits 1 at once. The gaps between runs are the delays (0.4, 0.8, 1.6 s) plus a spawn's
    overhead: they must double, which a constant or linear delay does not. Ratios, not
    absolute times, so a loaded machine's overhead (up to ~0.25 s per spawn) still passes."""
    stamps = tmp_path / "starts"
    script = tmp_path / "stamp_and_fail.py"
    script.write_text(
        "import sys, time\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(f'{time.monotonic()}\\n')\n"
        "sys.exit(1)\n"
    )
    daemon.write(f"""
        [apps.bad]
        command = {json.dumps([PY, "-I", "-S", str(script), str(stamps)])}
        exp_backoff_restart_delay = "400ms"
        max_restarts = 3
        min_uptime = "5s"
        """)
    daemon.start()
    [row] = daemon.wait_states("bad", "errored", 1, timeout=20)
    assert "3 restarts" in (row["reason"] or ""), row
    starts = [float(x) for x in stamps.read_text().split()]
    assert len(starts) == 4, starts  # max_restarts = 3: 4 runs
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.4, gaps  # the first delay is the value itself
    for earlier, later in itertools.pairwise(gaps):
        assert 1.6 <= later / earlier <= 2.5, f"delays do not double: gaps {gaps}"


def test_env_profile_and_user_environment(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / ".env").write_text("FROM_FILE=1\nSHARED=file\n")
    daemon.env["DAEMON_ONLY"] = "inherited"
    daemon.write(
        f"""
        [apps.e]
        command = {app_cmd("env_dump")}
        cwd = "{tmp_path / "work"}"
        env = {{ SHARED = "env", COLOR = "blue" }}
        env_file = [".env"]
        env_production = {{ SHARED = "prod" }}
        umask = "027"
        [apps.bare]
        command = {app_cmd("env_dump")}
        inherit_env = false
        """,
        daemon_extra='env = "production"',
    )
    daemon.start()
    out = daemon.log_dir / "e-out.log"
    wait_for(lambda: out.exists() and "UMASK=" in out.read_text(), 5, "env dump")
    text = out.read_text()
    assert "SHARED=prod\n" in text and "FROM_FILE=1\n" in text and "COLOR=blue\n" in text
    assert "DAEMON_ONLY=inherited\n" in text
    assert "PROCSUP_APP=e\n" in text and "PROCSUP_INSTANCE=0\n" in text
    assert "UMASK=027" in text and f"CWD={tmp_path / 'work'}" in text
    bare = daemon.log_dir / "bare-out.log"
    wait_for(lambda: bare.exists() and "UMASK=" in bare.read_text(), 5, "bare env dump")
    names = {
        line.split("=", 1)[0]
        for line in bare.read_text().splitlines()
        if "=" in line and not line.startswith("UMASK")
    }
    assert "DAEMON_ONLY" not in names
    assert names <= {
        "PATH",
        "LANG",
        "HOME",
        "USER",
        "LOGNAME",
        "PROCSUP_DAEMON_ID",
        "NOTIFY_SOCKET",
        "PROCSUP_APP",
        "PROCSUP_INSTANCE",
        "PROCSUP_INSTANCES",
        "LC_CTYPE",
    }
    assert daemon.status()["config"]["profile"] == "production"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_user_and_supplementary_groups(daemon: Daemon) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    daemon.write("""
        [apps.u]
        command = ["/bin/sh", "-c",
                   "echo ID $(id -u) $(id -g) $(id -G) $USER $HOME; exec sleep 100"]
        cwd = "/"
        user = "nobody"
        umask = "077"
        """)
    daemon.start()
    out = daemon.log_dir / "u-out.log"
    wait_for(lambda: out.exists() and "ID " in out.read_text(), 5, "id output")
    groups = " ".join(map(str, sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))))
    line = out.read_text().splitlines()[0].split()
    assert line[1:3] == [str(nobody.pw_uid), str(nobody.pw_gid)]
    assert " ".join(sorted(line[3:-2], key=int)) == groups
    assert line[-2:] == ["nobody", nobody.pw_dir]


def test_restart_latency_path_and_no_zombies(daemon: Daemon) -> None:
    daemon.write("""
        [apps.s]
        command = ["sleep", "1000"]
        instances = 3
        min_uptime = "50ms"
        """)
    daemon.start()
    rows = daemon.wait_states("s", "running", 3)
    for r in rows:  # only stdin, stdout, stderr: no descriptor of the daemon leaks
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{r['pid']}/fd")) == [0, 1, 2]
    for r in rows:
        os.kill(r["pid"], signal.SIGKILL)
    new = wait_for(
        lambda: (
            [
                x
                for x in daemon.instances("s")
                if x["pid"] and x["pid"] not in {r["pid"] for r in rows}
            ]
            if len(
                [
                    x
                    for x in daemon.instances("s")
                    if x["pid"] not in {r["pid"] for r in rows} and x["pid"]
                ]
            )
            == 3
            else None
        ),
        5,
        "replacements",
    )
    assert len(new) == 3
    assert daemon.proc is not None
    children = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()
    for pid in children:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "Z", f"zombie child {pid}"
    assert sorted(int(p) for p in children) == sorted(x["pid"] for x in new)


def test_sleep_command_as_string_is_split_without_shell(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.sh]
        command = "echo 'a  b' $HOME"
        autorestart = false
        [apps.realsh]
        command = "echo x$((1+2))"
        shell = true
        autorestart = false
        [apps.py]
        command = "{PY} -c 'print(42)'"
        autorestart = false
        """)
    daemon.start()
    for app, text in (("sh", "a  b $HOME\n"), ("realsh", "x3\n"), ("py", "42\n")):
        daemon.wait_states(app, "exited", 1)
        assert (daemon.log_dir / f"{app}-out.log").read_text() == text
