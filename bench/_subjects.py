"""The supervisors under test: procsupd and supervisord, each configured, run in the
foreground in a benchmark session's directory, and asked for the state of its processes."""

from __future__ import annotations

import signal
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from _common import PROCSUPD, SUPERVISORD, Session
from _proc import wait_for

#: The instance of most benchmarks: a process that only exists.
SLEEP = ["sleep", "100000"]


class Supervisor:
    """A supervisor under test: how to configure it, run it in the foreground and ask it the
    state of its processes. States are reported in procsup's vocabulary (lower case)."""

    name = ""

    def __init__(self, session: Session, tag: str) -> None:
        self.session = session
        self.dir = session.root / tag
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = self.dir / "daemon.stderr"
        #: The environment of the daemon (and of the clients a benchmark runs against it).
        self.env = dict(session.env)
        session.daemons.append(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        raise NotImplementedError

    def launch(self) -> int:
        """Start the daemon in the foreground (own session, so a Ctrl-C reaches only us, and the
        sweep can do the rest). Returns time.monotonic_ns() taken just before the spawn."""
        with open(self.stderr, "ab") as err:
            t0 = time.monotonic_ns()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=self.env,
                start_new_session=True,
                cwd=self.dir,
            )
        return t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.stderr.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def serving(self) -> bool:
        raise NotImplementedError

    def wait_serving(self, timeout: float = 30) -> None:
        def ok() -> bool:
            self._check_alive()
            return self.serving()

        wait_for(ok, timeout, f"{self.name} to serve", 0.01)

    def processes(self) -> list[tuple[str, str, int | None]]:
        """(name, state, pid) of every process it supervises."""
        raise NotImplementedError

    def wait_states(
        self, state: str, count: int, timeout: float = 60, interval: float = 0.01
    ) -> None:
        def ok() -> bool:
            self._check_alive()
            rows = self.processes()
            return len(rows) == count and all(r[1] == state for r in rows)

        wait_for(ok, timeout, f"{self.name}: {count} processes {state}", interval)

    def start_program(self, name: str) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 30) -> float | None:
        """SIGTERM and wait for the daemon to exit (it stops its processes first). Returns the
        seconds it took, None if it was not running; SIGKILL if it takes longer than timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        return time.perf_counter() - t0


class Procsup(Supervisor):
    """procsupd -n with a TOML config in the session's directory."""

    name = "procsup"

    def __init__(
        self,
        session: Session,
        tag: str,
        apps: dict[str, dict[str, Any]],
        log_dir: Path | None = None,
        daemon: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(session, tag)
        self.log_dir = log_dir or self.dir / "logs"
        self.socket = str(self.dir / "procsup.sock")
        self.conf = self.dir / "apps.toml"
        self.conf.write_text(self.config_text(apps, daemon))

    def config_text(
        self, apps: dict[str, dict[str, Any]], daemon: dict[str, Any] | None = None
    ) -> str:
        """The TOML config: `apps`, and `daemon` keys added to [procsup] (socket, pidfile,
        log_dir and state_dir are always this subject's own)."""
        import tomli_w

        doc = {
            "procsup": {
                "socket": self.socket,
                "pidfile": str(self.dir / "procsupd.pid"),
                "log_dir": str(self.log_dir),
                "state_dir": str(self.dir / "state"),
                **(daemon or {}),
            },
            "apps": apps,
        }
        return tomli_w.dumps(doc)

    def argv(self) -> list[str]:
        return [PROCSUPD, "-n", "-c", str(self.conf)]

    def call(self, cmd: str, **args: object) -> Any:
        from procsup.client import Client

        return Client(self.socket, timeout=30).call(cmd, **args)

    def serving(self) -> bool:
        from procsup.client import Unreachable

        try:
            self.call("ping")
        except Unreachable:
            return False
        return True

    def processes(self) -> list[tuple[str, str, int | None]]:
        return [
            (f"{r['app']}:{r['instance']}", r["state"], r["pid"])
            for r in self.call("status")["instances"]
        ]

    def start_program(self, name: str) -> None:
        self.call("start", apps=[name], wait=False)

    def log_path(self, app: str) -> Path:
        return self.log_dir / f"{app}-out.log"


_SUPERVISORD_STATES = {
    "RUNNING": "running",
    "STARTING": "starting",
    "STOPPED": "stopped",
    "STOPPING": "stopping",
    "BACKOFF": "backoff",
    "FATAL": "errored",
    "EXITED": "exited",
    "UNKNOWN": "unknown",
}


class Supervisord(Supervisor):
    """supervisord -n with an ini config in the session's directory (XML-RPC on a Unix socket).

    `programs` maps a program name to its settings (ini keys); `command` is an argv list."""

    name = "supervisord"

    def __init__(self, session: Session, tag: str, programs: dict[str, dict[str, Any]]) -> None:
        super().__init__(session, tag)
        self.socket = str(self.dir / "supervisor.sock")
        (self.dir / "logs").mkdir()
        self.conf = self.dir / "supervisord.conf"
        self.conf.write_text(self.config_text(programs))
        self._rpc: Any = None

    def config_text(self, programs: dict[str, dict[str, Any]]) -> str:
        """The ini config: the daemon's sections, then one [program:NAME] per program."""
        logs = self.dir / "logs"
        lines = [
            "[unix_http_server]",
            f"file={self.socket}",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={self.dir / 'supervisord.log'}",
            f"pidfile={self.dir / 'supervisord.pid'}",
            f"childlogdir={logs}",
            f"minfds={max(4096, 6 * len(programs) + 100)}",  # pipes and log files
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
        ]
        for name, keys in programs.items():
            lines.append(f"[program:{name}]")
            for k, v in keys.items():
                if k == "command" and not isinstance(v, str):
                    text = subprocess.list2cmdline(v)
                elif isinstance(v, bool):
                    text = str(v).lower()
                else:
                    text = str(v)
                lines.append(f"{k}={text}")
        return "\n".join(lines) + "\n"

    def argv(self) -> list[str]:
        return [SUPERVISORD, "-n", "-c", str(self.conf)]

    @property
    def rpc(self) -> Any:
        if self._rpc is None:
            from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

            transport = SupervisorTransport(None, None, f"unix://{self.socket}")
            self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return self._rpc

    def serving(self) -> bool:
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"  # type: ignore[no-any-return]
        except (OSError, xmlrpc.client.Fault):
            self._rpc = None
            return False

    def processes(self) -> list[tuple[str, str, int | None]]:
        return [
            (
                f"{p['group']}:{p['name']}",
                _SUPERVISORD_STATES.get(p["statename"], p["statename"].lower()),
                p["pid"] or None,
            )
            for p in self.rpc.supervisor.getAllProcessInfo()
        ]

    def start_program(self, name: str) -> None:
        self.rpc.supervisor.startProcess(name, False)

    def log_path(self, program: str) -> Path:
        return self.dir / "logs" / f"{program}.out.log"
