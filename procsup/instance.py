"""One instance as the state machine sees it, and what can happen to it (layer 1, values):
`Policy` (the part of an `AppSpec` that drives an instance's lifecycle), `Instance` (what the
supervisor knows about one instance; replaced, never mutated), the events `lifecycle.step`
takes and the effects it returns. Frozen dataclasses, no behaviour: what each event does in
each state is `lifecycle`'s, which re-exports these names (callers import them from there).
"""

from __future__ import annotations

from dataclasses import dataclass

from procsup.model import AppSpec, InstanceId, RestartPolicy, State

#: `ready` value meaning "alive for min_uptime"; every other value waits for a `Ready` event.
READY_STARTED = "started"


@dataclass(frozen=True)
class Policy:
    """The part of an `AppSpec` that drives one instance's lifecycle (seconds, signal numbers)."""

    autorestart: RestartPolicy
    max_restarts: int
    min_uptime: float
    restart_delay: float
    exp_backoff_restart_delay: float | None
    kill_signal: int
    kill_timeout: float
    ready: str = READY_STARTED  # "started" | "notify" | "tcp://..." | "http://..."
    ready_timeout: float = 30.0

    @classmethod
    def of(cls, spec: AppSpec) -> Policy:
        return cls(
            autorestart=spec.autorestart,
            max_restarts=spec.max_restarts,
            min_uptime=spec.min_uptime,
            restart_delay=spec.restart_delay,
            exp_backoff_restart_delay=spec.exp_backoff_restart_delay,
            kill_signal=spec.kill_signal,
            kill_timeout=spec.kill_timeout,
            ready=spec.ready,
            ready_timeout=spec.ready_timeout,
        )


@dataclass(frozen=True)
class Instance:
    """What the supervisor knows about one instance. Replaced, never mutated."""

    id: InstanceId
    state: State = State.STOPPED
    pid: int | None = None
    started_at: float | None = None  # `now` when the current/last process was spawned
    restarts: int = 0  # automatic restarts (policy, monitors) since `restart`, or errored
    unstable: int = 0  # unstable runs in a row (shorter than min_uptime, or never ready)
    exit_code: int | None = None  # last exit: the code, or -N when killed by signal N
    reason: str | None = None  # why errored/exited/backoff/stopping, shown in status
    deadline: float | None = None  # when the supervisor must feed a Tick
    then_start: bool = False  # the stop in progress is part of a restart: start once stopped
    ready: bool = False  # readiness reached for the current process
    failed_run: bool = False  # the stop in progress ends a failed run (not ready in time)
    failed_how: str | None = None  # with failed_run: how each failed run failed, if not by time
    spawn_failures: int = 0  # transient spawn failures in a row (fork: EAGAIN, EMFILE, ...)
    spawn_error: str | None = None  # with spawn_failures: the last one's own words
    # The current process's health checks (contract §3 Health checks); all cleared when its
    # run ends or a new one begins, so they never speak of another process:
    health: str | None = None  # None: no result yet; "healthy" | "unhealthy": the latest one
    health_failures: int = 0  # failed checks in a row
    health_error: str | None = None  # while unhealthy: what the latest check said


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The user or the plan wants the instance running."""


@dataclass(frozen=True)
class Wait:
    """The user or the plan wants the instance running, but its `depends_on` is not met: it
    waits, not started, with `reason` ("waiting for db (ready)"), until the supervisor sees
    the dependencies met and feeds `Start` (deps.unmet decides). A new reason replaces the
    old one."""

    reason: str


@dataclass(frozen=True)
class Stop:
    """The user or the plan wants the instance stopped."""


@dataclass(frozen=True)
class Restart:
    """Stop (if live) then start; resets `restarts` and `unstable`."""


@dataclass(frozen=True)
class Spawned:
    """The supervisor started the process asked for by a `Spawn` effect."""

    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    """No process could be started. `transient`: for want of a resource that comes back (a
    process or open-files limit, memory); otherwise the command cannot be executed (missing
    executable, cwd, user, unbindable listen)."""

    reason: str
    transient: bool = False


@dataclass(frozen=True)
class Exited:
    """The instance's process group is gone. `code` is the leader's exit code, `signal` the
    signal that killed it; both None when the status is unknown (an adopted process).
    `background`: the leader exited 0 leaving this process running outside its group (it put
    itself in the background); the process layer has stopped it."""

    code: int | None
    signal: int | None
    background: int | None = None
    #: the run failed for this reason, whatever its exit code (a `pidfile` that never named
    #: a process of the instance)
    failure: str | None = None


@dataclass(frozen=True)
class Adopted:
    """The command put itself in the background and its `pidfile` named `pid`, a process of
    the instance: from now on that process is the instance's (its exit is the instance's)."""

    pid: int


@dataclass(frozen=True)
class Ready:
    """Readiness was signalled (READY=1 on the notify socket, or a tcp/http probe passed)."""


@dataclass(frozen=True)
class Recycle:
    """A monitor asks for a restart (memory limit, cron, file watch, heartbeat): like
    `Restart`, but the counters are kept and `reason` is recorded.

    With `unstable` (how the run failed, e.g. "each run was over max_memory_restart at its
    first check") the run is a failed one instead: the restart policy decides what follows,
    as after a crash (restart_delay or backoff, `errored` after max_restarts in a row), so an
    instance that is over its limit from the start is not restarted every few seconds forever.
    """

    reason: str
    unstable: str | None = None


@dataclass(frozen=True)
class Tick:
    """Time passed: act on `inst.deadline` if `now >= deadline`."""


@dataclass(frozen=True)
class Health:
    """A health check of the current process passed (`ok`) or failed with `error`; counted
    only while running (what a failed streak calls for is `health.restart_reason`'s)."""

    ok: bool
    error: str | None = None


Event = (Start | Wait | Stop | Restart | Spawned | SpawnFailed | Exited | Adopted | Ready | Recycle
         | Tick
         | Health)


# --- effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start the process now; answer with `Spawned` or `SpawnFailed`."""


@dataclass(frozen=True)
class Kill:
    """Send `signal` to the instance's whole process group."""

    signal: int


Effect = Spawn | Kill

Step = tuple[Instance, tuple[Effect, ...]]
