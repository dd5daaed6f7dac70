"""Integration harness: a real `procsupd` in a temporary directory, driven by the real CLI."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procsup import cgroups, statefile

from ..inotify import inotify_watched, watch_keys

APPS = Path(__file__).resolve().parent.parent / "apps"
PY = sys.executable


def app_cmd(name: str, *args: str) -> str:
    """A TOML array literal running tests/apps/<name>.py with this interpreter."""
    return json.dumps([PY, str(APPS / f"{name}.py"), *args])


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class LineReader:
    """Lines from a pipe, each awaited with a deadline (a bare readline() can hang CI)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def line(self, timeout: float = 10.0, what: str = "a line") -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"end of output while waiting for {what}: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace")


def wait_watched(pid: int, *paths: Path, timeout: float = 10.0) -> None:
    """Wait until process `pid` has an inotify watch on each of `paths` (watch is armed on a
    worker thread after the app starts)."""
    wanted = watch_keys(*paths)
    wait_for(lambda: wanted <= inotify_watched(pid), timeout,
             f"inotify watches on {', '.join(map(str, paths))}")


def total_size(directory: Path, pattern: str) -> int:
    """Bytes in the files matching `pattern`, tolerating files renamed away meanwhile."""
    total = 0
    for p in directory.glob(pattern):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def nginx_config(prefix: Path, port: int, *, body: str = "ok",
                 error_log: str = "stderr notice") -> Path:
    """`prefix`/nginx.conf for Debian's nginx run by a test: everything under `prefix`, two
    workers, one server on 127.0.0.1:`port` answering `body`. Returns its path."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        pid {prefix}/nginx.pid;
        error_log {error_log};
        worker_processes 2;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            server {{
                listen 127.0.0.1:{port};
                location / {{ return 200 "{body}"; }}
            }}
        }}
        """))
    return conf


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Daemon:
    """One procsupd under test: its directory, config, process and CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir = Path(tempfile.mkdtemp(prefix="ps-", dir="/tmp"))  # short: AF_UNIX limit
        self.socket = str(self.run_dir / "procsup.sock")
        self.pidfile = str(self.run_dir / "procsupd.pid")
        self.log_dir = root / "logs"
        self.state_dir = root / "state"
        self.config = root / "apps.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = root / "procsupd.stderr"
        self.env = dict(os.environ)
        self.env.pop("PROCSUP_SOCKET", None)
        self.env.pop("PROCSUP_CONFIG", None)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env["PROCSUP_TEST_RUN"] = str(root)  # marks every process this test starts

    def header(self, extra: str = "") -> str:
        return textwrap.dedent(f"""\
            [procsup]
            socket = "{self.socket}"
            pidfile = "{self.pidfile}"
            log_dir = "{self.log_dir}"
            state_dir = "{self.state_dir}"
            {extra}
            """)

    def write(self, apps: str, daemon_extra: str = "") -> None:
        self.config.write_text(self.header(daemon_extra) + textwrap.dedent(apps))
        os.chmod(self.config, 0o644)

    def start(self, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start `procsupd -n` and wait until it answers `ping`."""
        if not hasattr(self, "_stderr"):
            self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PY, "-m", "procsup.daemon", "-n", "-c", str(self.config), *args],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            env=self.env,
        )
        if wait:
            wait_for(
                lambda: self.proc is not None and (self.proc.poll() is not None or self.ping()),
                15,
                "procsupd to serve",
            )
            assert self.proc.poll() is None, f"procsupd exited: {self.daemon_log()}"
        return self.proc

    def app_processes(self) -> list[int]:
        """Live app processes started by this test's daemons: they inherit the test's marker
        (PROCSUP_TEST_RUN) and carry PROCSUP_APP."""
        marker = f"PROCSUP_TEST_RUN={self.root}".encode()
        found = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                env = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            if marker in env and b"PROCSUP_APP=" in env and pid_alive(int(name)):
                found.append(int(name))
        return found

    def daemon_log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "procsup.cli", "-s", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def ping(self) -> bool:
        return self.cli("ping", timeout=10).returncode == 0

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def instances(self, app: str | None = None) -> list[dict[str, Any]]:
        return [i for i in self.status()["instances"] if app is None or i["app"] == app]

    def wait_states(
        self, app: str, state: str, count: int | None = None, timeout: float = 10
    ) -> list[dict[str, Any]]:
        def ok() -> list[dict[str, Any]] | None:
            rows = self.instances(app)
            if (
                rows
                and all(r["state"] == state for r in rows)
                and (count is None or len(rows) == count)
            ):
                return rows
            return None

        return wait_for(ok, timeout, f"{app} all {state}")  # type: ignore[no-any-return]

    def stop_daemon(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        """Last resort after a failed test: no process of ours outlives it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        state = self.state_dir / "instances.json"
        if state.exists():
            try:
                records = json.loads(state.read_text()).get("instances", [])
            except ValueError:
                records = []
            for rec in records:
                try:
                    os.killpg(int(rec["pgid"]), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, KeyError, ValueError):
                    pass
        self._clear_cgroups()
        if hasattr(self, "_stderr"):
            self._stderr.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


    def _clear_cgroups(self) -> None:
        """cgroups (issue 13): the daemon's base cgroup and what is left in it (a daemon killed
        by the test leaves its runs' cgroups, which only its next start would clear)."""
        h = cgroups.find()
        if h is None:
            return
        base = os.path.join(h.own, f"procsup-{statefile.daemon_marker(str(self.state_dir))}")
        if os.path.isdir(base):
            tree = cgroups.Tree(h, base, can_enable=False)
            tree.clear(10)
            tree.close()

@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.cleanup()
