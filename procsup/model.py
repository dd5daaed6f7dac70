"""The vocabulary of procsup as frozen data (layer 0: imports nothing from procsup).

*app*: one `[apps.NAME]` table, resolved into an `AppSpec`.
*instance*: one process group running an app, named `app:i`.
*desired*: what the config (plus profile and runtime overrides) asks for: `Desired`.
*actual*: what runs; the supervisor owns it and describes it with `InstanceView`.

Durations here are float seconds, sizes int bytes, signals and modes ints: every parsing and
defaulting happened in `config.py`, so nothing below it needs to know the file format.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping


class Condition(str, enum.Enum):
    """What a `depends_on` entry waits for (contract §3 Dependencies)."""

    STARTED = "started"  # every instance of the dependency is alive
    READY = "ready"  # every instance is running
    HEALTHY = "healthy"  # ready, and its latest health check passed
    COMPLETED = "completed"  # every instance exited with code 0


class ExecMode(str, enum.Enum):
    FORK = "fork"
    CLUSTER = "cluster"


class RestartPolicy(str, enum.Enum):
    """`autorestart`: true -> ALWAYS, false -> NEVER, "on-failure" -> ON_FAILURE."""

    ALWAYS = "always"
    NEVER = "never"
    ON_FAILURE = "on-failure"


class State(str, enum.Enum):
    """Instance states (contract §3). Values are what `status --json` prints."""

    WAITING = "waiting"  # not started yet: its depends_on is not met (the reason names what)
    STARTING = "starting"  # alive, not yet ready per `ready`
    RUNNING = "running"
    STOPPING = "stopping"  # kill_signal sent, waiting for the group to be gone
    STOPPED = "stopped"  # stopped on request; stays so until started or the config is applied anew
    BACKOFF = "backoff"  # ended, waiting restart_delay / backoff before the next start
    ERRORED = "errored"  # gave up: max_restarts reached, or the command cannot be executed
    EXITED = "exited"  # ended and not to be restarted by policy


#: States in which the instance has a live process group.
LIVE_STATES = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


@dataclasses.dataclass(frozen=True, order=True)
class InstanceId:
    app: str
    index: int

    def __str__(self) -> str:
        return f"{self.app}:{self.index}"


@dataclasses.dataclass(frozen=True)
class AppSpec:
    """One app, fully resolved: defaults filled, profile applied, env files read, paths absolute.

    Two specs compare equal exactly when the app's effective definition is the same, which is
    what the reconcile planner uses to decide whether an app keeps its processes. `source` and
    `line` say where it was defined and are excluded from that comparison.
    """

    name: str
    command: tuple[str, ...]  # argv; with shell=True: ("/bin/sh", "-c", text)
    shell: bool = False
    cwd: str | None = None  # absolute; None = the daemon's cwd ("/" when daemonized)
    instances: int = 1  # resolved count ("max" and negatives already applied)
    exec_mode: ExecMode = ExecMode.FORK
    env: Mapping[str, str] = dataclasses.field(
        default_factory=dict
    )  # env + env_file + env_<profile>
    inherit_env: bool = True
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    #: (resource, soft, hard) in `limits.RESOURCES` order, -1 (RLIM_INFINITY) = unlimited; only
    #: the resources the app names (the others, and nofile when absent, are as procsupd's own)
    limits: tuple[tuple[str, int, int], ...] = ()
    nice: int | None = None  # None: procsupd's own
    oom_score_adjust: int | None = None  # None: procsupd's own
    autorestart: RestartPolicy = RestartPolicy.ALWAYS
    max_restarts: int = 15
    min_uptime: float = 1.0
    restart_delay: float = 0.0
    exp_backoff_restart_delay: float | None = None
    kill_signal: int = 15
    kill_timeout: float = 5.0
    #: absolute path (before the per-instance suffix), STDIO ("-": procsupd's stdout), JOURNAL
    #: ("journal"), or None = discard
    out_file: str | None = None
    error_file: str | None = None  # as out_file ("-": procsupd's stderr)
    merge_logs: bool = False
    log_date_format: str | None = None
    log_max_size: int | None = None
    log_retain: int = 5
    log_format: str = "text"  # "text" | "json": one JSON object per line
    max_memory_restart: int | None = None
    # cgroup v2 controllers of each run's cgroup (procsup/cgroups.py); None = not set
    memory_max: int | None = None  # bytes: memory.max
    cpu_weight: int | None = None  # 1..10000: cpu.weight
    pids_max: int | None = None  # pids.max
    watch: tuple[str, ...] = ()  # absolute paths; empty = off
    ignore_watch: tuple[str, ...] = ("*.log", ".git", "__pycache__", "node_modules")
    cron_restart: str | None = None
    ready: str = "started"
    ready_timeout: float = 30.0
    heartbeat_timeout: float | None = None
    #: (app, condition) pairs in the order written; validated against the other apps
    depends_on: tuple[tuple[str, Condition], ...] = ()
    #: liveness check: "tcp://host:port", "http://host:port/path", or an argv (exit 0 = healthy)
    health: str | tuple[str, ...] | None = None
    health_interval: float = 10.0
    health_timeout: float = 2.0
    health_failures: int = 3
    reload_signal: int | None = None  # `reload` sends this in place instead of replacing
    #: absolute; the command daemonizes and writes its server's pid here (procsup supervises it)
    pidfile: str | None = None
    listen: tuple[str, ...] = ()
    balance: str = "shared"
    source: str | None = dataclasses.field(default=None, compare=False)
    line: int | None = dataclasses.field(default=None, compare=False)

    def log_paths(self, index: int) -> tuple[str | None, str | None]:
        """(stdout file, stderr file) of instance `index`; None means discard.

        With `instances > 1` and `merge_logs = false` each instance gets its own files, "-<i>"
        inserted before the last suffix: web.out.log -> web.out-0.log, web-out.log -> web-out-0.log.
        The same path for both streams means one file that receives both. STDIO and JOURNAL
        are returned as they are (not files: `log_files` of `procsup logs` skips them).
        """
        per_instance = self.instances > 1 and not self.merge_logs
        return (
            _instance_path(self.out_file, index) if per_instance else self.out_file,
            _instance_path(self.error_file, index) if per_instance else self.error_file,
        )


#: The log targets that are not files: procsupd's own stdout/stderr, and the systemd journal.
STDIO = "-"
JOURNAL = "journal"
LOG_TARGETS = frozenset({STDIO, JOURNAL})


def _instance_path(path: str | None, index: int) -> str | None:
    if path is None or path in LOG_TARGETS:  # one stream shared by every instance
        return path
    head, tail = os.path.split(path)
    stem, dot, suffix = tail.rpartition(".")
    if not dot or not stem:  # no suffix ("web") or a dotfile (".web")
        return os.path.join(head, f"{tail}-{index}")
    return os.path.join(head, f"{stem}-{index}.{suffix}")


@dataclasses.dataclass(frozen=True)
class DaemonSpec:
    """The `[procsup]` table, resolved: absolute paths, seconds, ints."""

    config_path: str
    socket: str
    socket_mode: int = 0o660
    socket_group: str | None = None
    pidfile: str = ""
    log_dir: str = ""
    state_dir: str = ""
    include: tuple[str, ...] = ()
    env: str | None = None  # default profile from the file
    watch_config: bool = True
    shutdown_timeout: float = 30.0
    #: "auto": a cgroup per instance run where procsupd can create them; False: never; True:
    #: required (the daemon does not start without them)
    cgroups: str | bool = "auto"

    @property
    def daemon_log(self) -> str:
        return os.path.join(self.log_dir, "procsupd.log")


@dataclasses.dataclass(frozen=True)
class Desired:
    """The whole desired state from one read of the config."""

    daemon: DaemonSpec
    apps: Mapping[str, AppSpec]  # in file order
    profile: str | None  # the active profile (`--env` over `[procsup] env`)
    files: tuple[str, ...]  # every file read (main + includes), for watching
    warnings: tuple[str, ...] = ()  # "file:line: app 'x', key 'y': ..." for odd but valid values


@dataclasses.dataclass(frozen=True)
class InstanceView:
    """One row of `status`, as the supervisor reports it (contract §1, `status --json`)."""

    app: str
    instance: int
    pid: int | None
    state: State
    uptime: float | None
    restarts: int
    cpu: float | None
    memory: int | None
    exit_code: int | None
    reason: str | None
    status: str | None = None
    next_cron_restart: str | None = None
    health: str | None = None  # None (no check), "unknown", "healthy", "unhealthy"
    disabled: bool = False  # its app is disabled (`procsup disable`)
    #: its log files that refused writes: path, error (None once writing resumed), since,
    #: dropped_lines, dropped_bytes
    log_errors: tuple[dict[str, object], ...] = ()
    #: what its current run does wrong, e.g. a cluster instance that does not use its socket
    warning: str | None = None

    def to_json(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d
