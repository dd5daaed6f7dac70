"""lifecycle.step: tables per (state, event) and replayed event histories with an injected clock."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procsup.lifecycle import (
    BACKOFF_CAP,
    SIGKILL,
    Effect,
    Event,
    Exited,
    Health,
    Instance,
    Kill,
    Policy,
    Ready,
    Recycle,
    Restart,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    Step,
    Stop,
    Tick,
    step,
    uptime,
)
from procsup.model import LIVE_STATES, AppSpec, InstanceId, RestartPolicy, State

IID = InstanceId("web", 0)
TERM = int(signal.SIGTERM)


def policy(**changes: object) -> Policy:
    base = Policy(
        autorestart=RestartPolicy.ALWAYS,
        max_restarts=15,
        min_uptime=1.0,
        restart_delay=0.0,
        exp_backoff_restart_delay=None,
        kill_signal=TERM,
        kill_timeout=5.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def inst(state: State = State.STOPPED, **changes: object) -> Instance:
    return dataclasses.replace(Instance(IID, state=state), **changes)  # type: ignore[arg-type]


# Typical instances of each state, as `step` itself produces them.
AT_100 = 100.0
STOPPED = inst(State.STOPPED, exit_code=0)
EXITED = inst(State.EXITED, exit_code=0, reason="exited with code 0", restarts=2)
ERRORED = inst(State.ERRORED, reason="boom", restarts=3, unstable=16)
BACKOFF = inst(State.BACKOFF, deadline=AT_100 + 1, reason="restarting in 1s (x)", restarts=2)
PENDING = inst(State.STARTING, restarts=2)  # Spawn asked for, no pid yet
STARTING = inst(State.STARTING, pid=42, started_at=99.5, deadline=100.5, restarts=2, unstable=1)
RUNNING = inst(State.RUNNING, pid=42, started_at=50.0, ready=True, restarts=2, unstable=1)
STOPPING = inst(State.STOPPING, pid=42, started_at=50.0, deadline=103.0, restarts=2)
SICK = dataclasses.replace(RUNNING, health="unhealthy", health_failures=2, health_error="refused")


# --- Policy, uptime -----------------------------------------------------------------------


def test_policy_of_spec_copies_lifecycle_fields() -> None:
    spec = AppSpec(
        name="web",
        command=("true",),
        autorestart=RestartPolicy.ON_FAILURE,
        max_restarts=3,
        min_uptime=2.5,
        restart_delay=0.5,
        exp_backoff_restart_delay=0.1,
        kill_signal=2,
        kill_timeout=7.0,
        ready="notify",
        ready_timeout=9.0,
    )
    assert Policy.of(spec) == Policy(
        autorestart=RestartPolicy.ON_FAILURE,
        max_restarts=3,
        min_uptime=2.5,
        restart_delay=0.5,
        exp_backoff_restart_delay=0.1,
        kill_signal=2,
        kill_timeout=7.0,
        ready="notify",
        ready_timeout=9.0,
    )


def test_sigkill_constant_is_the_real_sigkill() -> None:
    assert signal.SIGKILL == SIGKILL


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        (RUNNING, 50.0),
        (STARTING, 0.5),
        (STOPPING, 50.0),
        (PENDING, None),
        (STOPPED, None),
        (BACKOFF, None),
        (inst(State.STARTING, pid=1, started_at=101.0), 0.0),  # clock skew never goes negative
    ],
)
def test_uptime_only_while_a_process_is_live(instance: Instance, expected: float | None) -> None:
    assert uptime(instance, AT_100) == expected


# --- one step per (state, event) -----------------------------------------------------------

NOTHING: tuple[Effect, ...] = ()

# (name, instance, event, expected instance, expected effects); time is AT_100, default policy.
TABLE: list[tuple[str, Instance, Event, Instance, tuple[Effect, ...]]] = [
    # Start
    ("start stopped", STOPPED, Start(), inst(State.STARTING, exit_code=0), (Spawn(),)),
    (
        "start exited keeps restarts",
        EXITED,
        Start(),
        inst(State.STARTING, exit_code=0, restarts=2),
        (Spawn(),),
    ),
    (
        "start errored renews the budget and the count",
        ERRORED,
        Start(),
        inst(State.STARTING, restarts=0, unstable=0),
        (Spawn(),),
    ),
    ("start backoff cuts the wait", BACKOFF, Start(), inst(State.STARTING, restarts=2), (Spawn(),)),
    ("start pending: no-op", PENDING, Start(), PENDING, NOTHING),
    ("start starting: no-op", STARTING, Start(), STARTING, NOTHING),
    ("start running: no-op", RUNNING, Start(), RUNNING, NOTHING),
    (
        "start stopping: start once stopped",
        STOPPING,
        Start(),
        dataclasses.replace(STOPPING, then_start=True),
        NOTHING,
    ),
    # Stop
    (
        "stop running",
        RUNNING,
        Stop(),
        dataclasses.replace(RUNNING, state=State.STOPPING, deadline=105.0),
        (Kill(TERM),),
    ),
    (
        "stop starting",
        STARTING,
        Stop(),
        dataclasses.replace(STARTING, state=State.STOPPING, deadline=105.0),
        (Kill(TERM),),
    ),
    (
        "stop pending: wait for the pid",
        PENDING,
        Stop(),
        dataclasses.replace(PENDING, state=State.STOPPING),
        NOTHING,
    ),
    ("stop backoff cancels", BACKOFF, Stop(), inst(State.STOPPED, restarts=2), NOTHING),
    ("stop stopped", STOPPED, Stop(), STOPPED, NOTHING),
    ("stop exited", EXITED, Stop(), inst(State.STOPPED, exit_code=0, restarts=2), NOTHING),
    ("stop errored", ERRORED, Stop(), inst(State.STOPPED, restarts=3, unstable=16), NOTHING),
    (
        "stop stopping cancels restart",
        dataclasses.replace(STOPPING, then_start=True),
        Stop(),
        STOPPING,
        NOTHING,
    ),
    (
        "stop stopping cancels failed-run restart",
        dataclasses.replace(STOPPING, failed_run=True),
        Stop(),
        STOPPING,
        NOTHING,
    ),
    # Restart
    (
        "restart running",
        RUNNING,
        Restart(),
        dataclasses.replace(
            RUNNING, state=State.STOPPING, deadline=105.0, then_start=True, restarts=0, unstable=0
        ),
        (Kill(TERM),),
    ),
    (
        "restart pending resets counters only",
        PENDING,
        Restart(),
        dataclasses.replace(PENDING, restarts=0),
        NOTHING,
    ),
    (
        "restart stopping",
        dataclasses.replace(STOPPING, failed_run=True, unstable=3),
        Restart(),
        dataclasses.replace(STOPPING, then_start=True, restarts=0),
        NOTHING,
    ),
    ("restart errored", ERRORED, Restart(), inst(State.STARTING), (Spawn(),)),
    ("restart backoff", BACKOFF, Restart(), inst(State.STARTING), (Spawn(),)),
    ("restart stopped", STOPPED, Restart(), inst(State.STARTING, exit_code=0), (Spawn(),)),
    # Recycle
    (
        "recycle running: a restart; the stable run ends the unstable ones",
        RUNNING,
        Recycle("memory limit"),
        dataclasses.replace(
            RUNNING,
            state=State.STOPPING,
            deadline=105.0,
            then_start=True,
            reason="memory limit",
            restarts=3,
            unstable=0,
        ),
        (Kill(TERM),),
    ),
    (
        "recycle starting: a restart; not yet stable, unstable kept",
        STARTING,
        Recycle("cron"),
        dataclasses.replace(
            STARTING, state=State.STOPPING, deadline=105.0, then_start=True, reason="cron",
            restarts=3,
        ),
        (Kill(TERM),),
    ),
    (
        "unstable recycle: a failed run, stopped for the policy",
        RUNNING,
        Recycle("memory 90M over 60M", unstable="over the limit from the start"),
        dataclasses.replace(
            RUNNING, state=State.STOPPING, deadline=105.0, reason="memory 90M over 60M",
            failed_run=True, failed_how="over the limit from the start",
        ),
        (Kill(TERM),),
    ),
    ("unstable recycle pending: no-op", PENDING, Recycle("m", unstable="x"), PENDING, NOTHING),
    ("recycle pending: no-op", PENDING, Recycle("cron"), PENDING, NOTHING),
    ("recycle stopping: no-op", STOPPING, Recycle("cron"), STOPPING, NOTHING),
    ("recycle stopped: no-op", STOPPED, Recycle("cron"), STOPPED, NOTHING),
    ("recycle backoff: no-op", BACKOFF, Recycle("cron"), BACKOFF, NOTHING),
    # Spawned
    (
        "spawned: wait min_uptime",
        PENDING,
        Spawned(7),
        dataclasses.replace(PENDING, pid=7, started_at=100.0, deadline=101.0),
        NOTHING,
    ),
    (
        "spawned while stopping: kill it",
        dataclasses.replace(PENDING, state=State.STOPPING),
        Spawned(7),
        dataclasses.replace(
            PENDING, state=State.STOPPING, pid=7, started_at=100.0, deadline=105.0
        ),
        (Kill(TERM),),
    ),
    ("spawned twice: ignored", STARTING, Spawned(7), STARTING, NOTHING),
    ("spawned running: ignored", RUNNING, Spawned(7), RUNNING, NOTHING),
    ("spawned stopped: ignored", STOPPED, Spawned(7), STOPPED, NOTHING),
    # SpawnFailed
    (
        "spawn failed",
        PENDING,
        SpawnFailed("no such file: x"),
        inst(State.ERRORED, restarts=2, reason="no such file: x"),
        NOTHING,
    ),
    (
        "spawn failed while stopping",
        dataclasses.replace(PENDING, state=State.STOPPING),
        SpawnFailed("x"),
        inst(State.STOPPED, restarts=2),
        NOTHING,
    ),
    (
        "spawn failed while restarting",
        dataclasses.replace(PENDING, state=State.STOPPING, then_start=True),
        SpawnFailed("x"),
        inst(State.ERRORED, restarts=2, reason="x"),
        NOTHING,
    ),
    (
        "spawn failed in backoff (e.g. listen unbindable)",
        BACKOFF,
        SpawnFailed("x"),
        inst(State.ERRORED, restarts=2, reason="x"),
        NOTHING,
    ),
    ("spawn failed with a live pid: ignored", RUNNING, SpawnFailed("x"), RUNNING, NOTHING),
    (
        "transient spawn failure: backoff, the budget untouched",
        dataclasses.replace(PENDING, unstable=3),
        SpawnFailed("fork failed: out of memory", transient=True),
        inst(State.BACKOFF, restarts=2, unstable=3, spawn_failures=1, deadline=AT_100 + 0.5,
             spawn_error="fork failed: out of memory",
             reason="retrying in 0.5s (fork failed: out of memory; 1 failure)"),
        NOTHING,
    ),
    (
        "transient spawn failure while restarting: backoff",
        dataclasses.replace(PENDING, state=State.STOPPING, then_start=True, spawn_failures=2),
        SpawnFailed("x", transient=True),
        inst(State.BACKOFF, restarts=2, spawn_failures=3, deadline=AT_100 + 2.0, spawn_error="x",
             reason="retrying in 2s (x; 3 failures in a row)"),
        NOTHING,
    ),
    (
        "transient spawn failure while stopping: stopped",
        dataclasses.replace(PENDING, state=State.STOPPING),
        SpawnFailed("x", transient=True),
        inst(State.STOPPED, restarts=2),
        NOTHING,
    ),
    # Ready
    (
        "ready starting",
        STARTING,
        Ready(),
        dataclasses.replace(STARTING, state=State.RUNNING, ready=True, deadline=None),
        NOTHING,
    ),
    ("ready pending: ignored", PENDING, Ready(), PENDING, NOTHING),
    ("ready running: ignored", RUNNING, Ready(), RUNNING, NOTHING),
    ("ready stopping: ignored", STOPPING, Ready(), STOPPING, NOTHING),
    ("ready stopped: ignored", STOPPED, Ready(), STOPPED, NOTHING),
    # Exited where it makes no sense
    ("exited stopped: ignored", STOPPED, Exited(0, None), STOPPED, NOTHING),
    ("exited pending: ignored", PENDING, Exited(0, None), PENDING, NOTHING),
    ("exited backoff: ignored", BACKOFF, Exited(1, None), BACKOFF, NOTHING),
    ("exited errored: ignored", ERRORED, Exited(1, None), ERRORED, NOTHING),
    # Exited while stopping
    (
        "exited stopping: stopped",
        STOPPING,
        Exited(None, TERM),
        inst(State.STOPPED, started_at=50.0, restarts=2, exit_code=-TERM),
        NOTHING,
    ),
    (
        "exited stopping for restart: start",
        dataclasses.replace(STOPPING, then_start=True, reason="cron"),
        Exited(0, None),
        inst(State.STARTING, started_at=50.0, restarts=2, exit_code=0),
        (Spawn(),),
    ),
    # Health: counted while running only; a pass ends a failed streak
    ("health ok running", RUNNING, Health(True), dataclasses.replace(RUNNING, health="healthy"),
     NOTHING),
    (
        "health failed running: 1 in a row",
        RUNNING,
        Health(False, "refused"),
        dataclasses.replace(RUNNING, health="unhealthy", health_failures=1,
                            health_error="refused"),
        NOTHING,
    ),
    (
        "health failed again: one more in a row, the latest error",
        SICK,
        Health(False, "HTTP 500"),
        dataclasses.replace(SICK, health_failures=3, health_error="HTTP 500"),
        NOTHING,
    ),
    ("health ok ends the streak", SICK, Health(True),
     dataclasses.replace(RUNNING, health="healthy"), NOTHING),
    ("health failed without words", RUNNING, Health(False),
     dataclasses.replace(RUNNING, health="unhealthy", health_failures=1, health_error="failed"),
     NOTHING),
    ("health starting: not yet judged", STARTING, Health(False, "x"), STARTING, NOTHING),
    ("health pending: ignored", PENDING, Health(True), PENDING, NOTHING),
    ("health stopping: ignored", STOPPING, Health(False, "x"), STOPPING, NOTHING),
    ("health stopped: ignored", STOPPED, Health(True), STOPPED, NOTHING),
    ("health backoff: ignored", BACKOFF, Health(False, "x"), BACKOFF, NOTHING),
    # ... and forgotten with the process: the next run starts with no result
    (
        "exited while unhealthy: the health goes with the process",
        SICK,
        Exited(1, None),
        inst(State.STARTING, started_at=50.0, restarts=3, unstable=0, exit_code=1),
        (Spawn(),),
    ),
    (
        "stopped while unhealthy: no health left",
        dataclasses.replace(SICK, state=State.STOPPING, deadline=103.0),
        Exited(None, TERM),
        inst(State.STOPPED, started_at=50.0, restarts=2, unstable=1, exit_code=-TERM),
        NOTHING,
    ),
    (
        "recycled for its health: still unhealthy while it stops",
        SICK,
        Recycle("health check failed 3 times: refused"),
        dataclasses.replace(SICK, state=State.STOPPING, deadline=105.0, then_start=True,
                            reason="health check failed 3 times: refused", restarts=3,
                            unstable=0),
        (Kill(TERM),),
    ),
    # Tick
    ("tick before deadline: nothing", STARTING, Tick(), STARTING, NOTHING),
    ("tick without deadline: nothing", RUNNING, Tick(), RUNNING, NOTHING),
    ("tick stopped: nothing", STOPPED, Tick(), STOPPED, NOTHING),
    ("tick backoff early: nothing", BACKOFF, Tick(), BACKOFF, NOTHING),
    (
        "tick stopping early: nothing",
        STOPPING,
        Tick(),
        STOPPING,
        NOTHING,
    ),
]


@pytest.mark.parametrize(
    ("instance", "event", "expected", "effects"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_step_table(
    instance: Instance, event: Event, expected: Instance, effects: tuple[Effect, ...]
) -> None:
    assert step(instance, policy(), event, AT_100) == (expected, effects)


# Ticks at (or after) the deadline: (name, instance, policy, now, expected, effects).
DUE: list[tuple[str, Instance, Policy, float, Instance, tuple[Effect, ...]]] = [
    (
        "started: alive min_uptime -> running",
        STARTING,
        policy(),
        100.5,
        dataclasses.replace(STARTING, state=State.RUNNING, ready=True, deadline=None),
        NOTHING,
    ),
    (
        "notify: not ready in time -> stop as failed run",
        STARTING,
        policy(ready="notify", ready_timeout=30.0),
        101.0,
        dataclasses.replace(
            STARTING,
            state=State.STOPPING,
            deadline=106.0,
            failed_run=True,
            reason="not ready within ready_timeout 30s",
        ),
        (Kill(TERM),),
    ),
    (
        "backoff over -> spawn",
        BACKOFF,
        policy(),
        101.0,
        inst(State.STARTING, restarts=2),
        (Spawn(),),
    ),
    (
        "stopping: kill_timeout over -> SIGKILL",
        STOPPING,
        policy(),
        103.0,
        dataclasses.replace(STOPPING, deadline=None),
        (Kill(SIGKILL),),
    ),
]


@pytest.mark.parametrize(
    ("instance", "pol", "now", "expected", "effects"),
    [row[1:] for row in DUE],
    ids=[row[0] for row in DUE],
)
def test_tick_at_deadline(
    instance: Instance, pol: Policy, now: float, expected: Instance, effects: tuple[Effect, ...]
) -> None:
    assert step(instance, pol, Tick(), now) == (expected, effects)


def test_spawned_with_notify_waits_ready_timeout() -> None:
    got, effects = step(PENDING, policy(ready="notify", ready_timeout=30.0), Spawned(7), 100.0)
    assert (got.state, got.pid, got.deadline, effects) == (State.STARTING, 7, 130.0, ())


def test_spawned_with_zero_min_uptime_is_running_at_once() -> None:
    got, effects = step(PENDING, policy(min_uptime=0.0), Spawned(7), 100.0)
    assert (got.state, got.pid, got.ready, got.deadline, effects) == (
        State.RUNNING,
        7,
        True,
        None,
        (),
    )


@pytest.mark.parametrize(
    ("code", "sig", "exit_code", "text"),
    [
        (1, None, 1, "exited with code 1"),
        (0, None, 0, "exited with code 0"),
        (None, 9, -9, "killed by SIGKILL"),
        (None, 15, -15, "killed by SIGTERM"),
        (None, 200, -200, "killed by signal 200"),
        (None, None, None, "exited (status unknown)"),
    ],
)
def test_exit_is_recorded_with_a_human_reason(
    code: int | None, sig: int | None, exit_code: int | None, text: str
) -> None:
    got, effects = step(RUNNING, policy(autorestart=RestartPolicy.NEVER), Exited(code, sig), 100.0)
    assert (got.state, got.exit_code, got.reason, got.pid, effects) == (
        State.EXITED,
        exit_code,
        text,
        None,
        (),
    )


BACKGROUND = ("the command put itself in the background (pid 77): run it in the foreground, "
              "or set pidfile")


@pytest.mark.parametrize(
    ("name", "before", "autorestart", "event", "state", "reason"),
    [
        # exited 0 within min_uptime, leaving a process: errored at once, whatever the policy
        ("starting, always", STARTING, RestartPolicy.ALWAYS, Exited(0, None, background=77),
         State.ERRORED, BACKGROUND),
        ("starting, never", STARTING, RestartPolicy.NEVER, Exited(0, None, background=77),
         State.ERRORED, BACKGROUND),
        # it lived min_uptime: an ordinary exit (the process layer stopped what it left)
        ("running long", RUNNING, RestartPolicy.NEVER, Exited(0, None, background=77),
         State.EXITED, "exited with code 0"),
        ("no background", STARTING, RestartPolicy.NEVER, Exited(0, None), State.EXITED,
         "exited with code 0"),
        # a stop that completes is a stop, even if the stop also ended a stray
        ("stopping", STOPPING, RestartPolicy.ALWAYS, Exited(0, None, background=77),
         State.STOPPED, None),
    ],
)
def test_a_command_that_put_itself_in_the_background(  # noqa: PLR0917 (a table's columns)
    name: str, before: Instance, autorestart: RestartPolicy, event: Exited, state: State,
    reason: str | None,
) -> None:
    got, effects = step(before, policy(autorestart=autorestart), event, AT_100)
    assert (got.state, got.reason, got.pid, effects) == (state, reason, None, ()), name


@pytest.mark.parametrize(
    ("autorestart", "code", "sig", "restarted"),
    [
        (RestartPolicy.ALWAYS, 0, None, True),
        (RestartPolicy.ALWAYS, 1, None, True),
        (RestartPolicy.NEVER, 1, None, False),
        (RestartPolicy.NEVER, None, 9, False),
        (RestartPolicy.ON_FAILURE, 0, None, False),
        (RestartPolicy.ON_FAILURE, 1, None, True),
        (RestartPolicy.ON_FAILURE, None, 15, True),
        (RestartPolicy.ON_FAILURE, None, None, True),  # unknown status counts as a failure
    ],
)
def test_restart_policy(
    autorestart: RestartPolicy, code: int | None, sig: int | None, restarted: bool
) -> None:
    got, effects = step(RUNNING, policy(autorestart=autorestart), Exited(code, sig), 100.0)
    if restarted:
        assert (got.state, got.restarts, effects) == (State.STARTING, 3, (Spawn(),))
    else:
        assert (got.state, got.restarts, effects) == (State.EXITED, 2, ())


# --- replayed histories --------------------------------------------------------------------

Trace = list[tuple[float, State, tuple[Effect, ...]]]


def replay(
    pol: Policy, history: Iterable[tuple[float, Event]], start: Instance | None = None
) -> tuple[Instance, Trace]:
    """Feed (time, event) pairs in order; return the final instance and (time, state, effects)."""
    current = start if start is not None else Instance(IID)
    trace: Trace = []
    for now, event in history:
        current, effects = step(current, pol, event, now)
        trace.append((now, current.state, effects))
    return current, trace


class Sim:
    """A minimal supervisor over a fake clock: answers Spawn with Spawned, ticks at deadlines."""

    def __init__(self, pol: Policy, start: Instance | None = None) -> None:
        self.pol = pol
        self.inst = start if start is not None else Instance(IID)
        self.now = 0.0
        self.next_pid = 100
        self.spawns: list[float] = []  # times of each Spawned
        self.kills: list[tuple[float, int]] = []
        self.states: list[State] = []

    def feed(self, event: Event) -> None:
        self.inst, effects = step(self.inst, self.pol, event, self.now)
        self.states.append(self.inst.state)
        for effect in effects:
            if isinstance(effect, Spawn):
                self.next_pid += 1
                self.spawns.append(self.now)
                self.feed(Spawned(self.next_pid))
            else:
                self.kills.append((self.now, effect.signal))

    def state(self) -> State:
        """The current state (a call, so type checkers do not narrow it across steps)."""
        return self.inst.state

    def advance(self, seconds: float) -> None:
        """Move the clock, ticking at every deadline met on the way."""
        end = self.now + seconds
        while self.inst.deadline is not None and self.inst.deadline <= end:
            self.now = max(self.now, self.inst.deadline)
            self.feed(Tick())
        self.now = end

    def crash(self, code: int = 1, after: float = 0.1) -> None:
        self.advance(after)
        self.feed(Exited(code, None))


@pytest.mark.parametrize("max_restarts", [0, 1, 3, 15])
def test_crash_loop_errors_after_exactly_n_plus_1_runs(max_restarts: int) -> None:
    sim = Sim(policy(max_restarts=max_restarts, min_uptime=1.0))
    sim.feed(Start())
    for _ in range(100):
        if sim.state() is State.ERRORED:
            break
        sim.crash(1, after=0.2)  # each run is shorter than min_uptime
    assert sim.state() is State.ERRORED
    assert len(sim.spawns) == max_restarts + 1
    assert sim.inst.restarts == max_restarts
    noun = "restart" if max_restarts == 1 else "restarts"
    assert sim.inst.reason == (
        f"gave up after {max_restarts} {noun}: each run was shorter than min_uptime 1s "
        "(last: exited with code 1)"
    )
    assert sim.inst.pid is None and sim.inst.deadline is None
    # errored stays errored: further time or stray exits change nothing
    sim.advance(3600)
    sim.feed(Exited(1, None))
    assert sim.state() is State.ERRORED and len(sim.spawns) == max_restarts + 1


def test_crash_loop_explicit_history_max_restarts_1() -> None:
    pol = policy(max_restarts=1, min_uptime=1.0)
    final, trace = replay(
        pol,
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (0.5, Exited(1, None)),  # unstable 1 <= 1: restart
            (0.5, Spawned(11)),
            (0.7, Exited(1, None)),  # unstable 2 > 1: errored
            (9.0, Tick()),
        ],
    )
    assert trace == [
        (0.0, State.STARTING, (Spawn(),)),
        (0.0, State.STARTING, ()),
        (0.5, State.STARTING, (Spawn(),)),
        (0.5, State.STARTING, ()),
        (0.7, State.ERRORED, ()),
        (9.0, State.ERRORED, ()),
    ]
    assert (final.restarts, final.unstable, final.exit_code) == (1, 2, 1)


def test_max_restarts_0_errors_on_first_unstable_crash_but_not_on_a_stable_one() -> None:
    pol = policy(max_restarts=0, min_uptime=1.0)
    _, trace = replay(
        pol,
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (1.0, Tick()),
            (5.0, Exited(1, None)),  # stable run: restarted although max_restarts = 0
            (5.0, Spawned(11)),
            (5.5, Exited(1, None)),  # unstable: errored at once
        ],
    )
    assert [s for _, s, _ in trace] == [
        State.STARTING,
        State.STARTING,
        State.RUNNING,
        State.STARTING,
        State.STARTING,
        State.ERRORED,
    ]


def test_stable_run_resets_the_unstable_count() -> None:
    sim = Sim(policy(max_restarts=2, min_uptime=1.0))
    sim.feed(Start())
    sim.crash(after=0.1)
    sim.crash(after=0.1)
    assert sim.inst.unstable == 2 and sim.state() is State.STARTING
    sim.crash(after=5.0)  # a stable run
    assert sim.inst.unstable == 0
    # the budget is whole again: 2 more unstable restarts, then the 3rd unstable run errors
    sim.crash(after=0.1)
    sim.crash(after=0.1)
    assert sim.state() is State.STARTING
    sim.crash(after=0.1)
    assert sim.state() is State.ERRORED
    assert len(sim.spawns) == 6 and sim.inst.restarts == 5


def test_exp_backoff_doubles_caps_and_resets_after_a_stable_run() -> None:
    sim = Sim(
        policy(exp_backoff_restart_delay=0.1, max_restarts=100, min_uptime=1.0, restart_delay=9.0)
    )
    sim.feed(Start())
    delays: list[float] = []
    for _ in range(12):
        sim.crash(after=0.01)
        assert sim.state() is State.BACKOFF
        assert sim.inst.deadline is not None
        delays.append(round(sim.inst.deadline - sim.now, 6))
        sim.advance(sim.inst.deadline - sim.now)
        assert sim.state() is State.STARTING and sim.inst.pid is not None
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 15.0, 15.0, 15.0, 15.0]
    assert sim.inst.reason is None  # cleared by the spawn
    sim.crash(after=2.0)  # stable: back to the base delay
    assert sim.inst.deadline is not None
    assert round(sim.inst.deadline - sim.now, 6) == 0.1
    assert sim.inst.reason == "restarting in 0.1s (exited with code 1)"


def test_exp_backoff_base_above_the_cap_is_not_shortened() -> None:
    got, _ = step(RUNNING, policy(exp_backoff_restart_delay=20.0), Exited(1, None), 100.0)
    assert got.deadline == 120.0


def test_very_long_crash_loop_does_not_overflow_backoff() -> None:
    start = dataclasses.replace(RUNNING, unstable=10_000, started_at=99.9)  # an unstable run
    got, _ = step(
        start, policy(exp_backoff_restart_delay=0.1, max_restarts=10**9), Exited(1, None), 100.0
    )
    assert (got.state, got.deadline) == (State.BACKOFF, 100.0 + BACKOFF_CAP)


def test_fixed_restart_delay_goes_through_backoff() -> None:
    _, trace = replay(
        policy(restart_delay=2.0),
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (3.0, Exited(1, None)),
            (4.0, Tick()),  # early: nothing
            (5.0, Tick()),
            (5.1, Spawned(11)),
        ],
    )
    assert trace == [
        (0.0, State.STARTING, (Spawn(),)),
        (0.0, State.STARTING, ()),
        (3.0, State.BACKOFF, ()),
        (4.0, State.BACKOFF, ()),
        (5.0, State.STARTING, (Spawn(),)),
        (5.1, State.STARTING, ()),
    ]


def test_on_failure_exit_0_is_exited_and_exit_1_restarts() -> None:
    pol = policy(autorestart=RestartPolicy.ON_FAILURE)
    final, trace = replay(
        pol,
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (2.0, Exited(1, None)),
            (2.0, Spawned(11)),
            (4.0, Exited(0, None)),
        ],
    )
    assert [s for _, s, _ in trace] == [
        State.STARTING,
        State.STARTING,
        State.STARTING,
        State.STARTING,
        State.EXITED,
    ]
    assert (final.exit_code, final.reason, final.restarts, final.pid) == (
        0,
        "exited with code 0",
        1,
        None,
    )


def test_restart_during_backoff_starts_now_with_fresh_counters() -> None:
    final, trace = replay(
        policy(restart_delay=10.0),
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (0.2, Exited(1, None)),
            (1.0, Restart()),
            (1.0, Spawned(11)),
            (10.2, Tick()),  # the cancelled backoff deadline must not spawn again
        ],
    )
    assert trace[2] == (0.2, State.BACKOFF, ())
    assert trace[3] == (1.0, State.STARTING, (Spawn(),))
    assert trace[5][2] == ()
    assert (final.restarts, final.unstable, final.pid) == (0, 0, 11)


def test_stop_during_backoff_cancels_the_restart() -> None:
    final, trace = replay(
        policy(restart_delay=10.0),
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (0.2, Exited(1, None)),
            (1.0, Stop()),
            (10.2, Tick()),
        ],
    )
    assert [s for _, s, _ in trace[2:]] == [State.BACKOFF, State.STOPPED, State.STOPPED]
    assert all(effects == () for _, _, effects in trace[2:])
    assert final.deadline is None and final.exit_code == 1


def test_stop_then_sigkill_after_kill_timeout() -> None:
    final, trace = replay(
        policy(kill_timeout=5.0),
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (1.0, Tick()),
            (20.0, Stop()),
            (24.9, Tick()),  # still within kill_timeout
            (25.0, Tick()),
            (30.0, Tick()),  # no second SIGKILL
            (30.5, Exited(None, SIGKILL)),
        ],
    )
    assert trace[3:] == [
        (20.0, State.STOPPING, (Kill(TERM),)),
        (24.9, State.STOPPING, ()),
        (25.0, State.STOPPING, (Kill(SIGKILL),)),
        (30.0, State.STOPPING, ()),
        (30.5, State.STOPPED, ()),
    ]
    assert (final.pid, final.exit_code, final.reason, final.deadline) == (None, -9, None, None)


def test_stop_during_stopping_cancels_a_restart() -> None:
    final, trace = replay(
        policy(),
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (2.0, Restart()),
            (2.5, Stop()),
            (3.0, Exited(None, TERM)),
        ],
    )
    assert trace[2] == (2.0, State.STOPPING, (Kill(TERM),))
    assert trace[3] == (2.5, State.STOPPING, ())  # no second signal
    assert trace[4] == (3.0, State.STOPPED, ())
    assert final.exit_code == -TERM


def test_start_during_stopping_starts_once_stopped() -> None:
    _, trace = replay(
        policy(),
        [(0.0, Start()), (0.0, Spawned(10)), (2.0, Stop()), (2.1, Start()), (2.5, Exited(0, None))],
    )
    assert trace[-1] == (2.5, State.STARTING, (Spawn(),))


def test_restart_resets_counters_and_comes_back() -> None:
    sim = Sim(policy(max_restarts=5, min_uptime=1.0))
    sim.feed(Start())
    for _ in range(3):
        sim.crash(after=0.1)
    assert (sim.inst.restarts, sim.inst.unstable) == (3, 3)
    sim.advance(2.0)
    assert sim.state() is State.RUNNING
    sim.feed(Restart())
    assert sim.state() is State.STOPPING
    assert (sim.inst.restarts, sim.inst.unstable, sim.inst.then_start) == (0, 0, True)
    assert sim.kills[-1] == (sim.now, TERM)
    old_pid = sim.inst.pid
    sim.advance(0.5)
    sim.feed(Exited(None, TERM))
    assert sim.state() is State.STARTING and sim.inst.pid not in (None, old_pid)
    assert (sim.inst.restarts, sim.inst.exit_code, sim.inst.then_start) == (0, -TERM, False)


def test_recycle_keeps_counters_and_counts_a_restart() -> None:
    sim = Sim(policy())
    sim.feed(Start())
    sim.advance(2.0)
    sim.feed(Recycle("memory 600M > max_memory_restart 512M"))
    assert (sim.inst.state, sim.inst.restarts) == (State.STOPPING, 1)
    assert sim.inst.reason == "memory 600M > max_memory_restart 512M"
    sim.feed(Exited(None, TERM))
    assert (sim.inst.state, sim.inst.restarts, sim.inst.reason) == (State.STARTING, 1, None)
    assert len(sim.spawns) == 2


def test_runs_over_the_memory_limit_from_the_start_back_off_then_error() -> None:
    """Unstable recycles follow the crash-loop policy: backoff between runs, errored after
    max_restarts in a row, with the monitor's words in the reason."""
    sim = Sim(policy(max_restarts=2, exp_backoff_restart_delay=0.5))
    sim.feed(Start())
    delays = []
    for _ in range(3):
        sim.advance(2.0)
        sim.feed(Recycle("memory 90M over max_memory_restart 60M", unstable="each run was "
                         "over max_memory_restart within 2.5s of its start"))
        assert sim.inst.state is State.STOPPING
        sim.feed(Exited(None, TERM))
        if sim.inst.state is State.BACKOFF:
            assert sim.inst.deadline is not None
            delays.append(sim.inst.deadline - sim.now)
            assert "memory 90M" in (sim.inst.reason or "")
            sim.advance(sim.inst.deadline - sim.now)  # ticks at the deadline: spawns
    assert delays == [0.5, 1.0]  # the backoff doubles per unstable run
    assert sim.inst.state is State.ERRORED
    assert sim.inst.reason == (
        "gave up after 2 restarts: each run was over max_memory_restart within 2.5s of its "
        "start (last: memory 90M over max_memory_restart 60M)"
    )
    assert len(sim.spawns) == 3


def test_a_stable_run_ended_by_a_monitor_resets_the_unstable_count() -> None:
    sim = Sim(policy(max_restarts=1, exp_backoff_restart_delay=0.5))
    sim.feed(Start())
    sim.advance(2.0)
    sim.feed(Recycle("memory", unstable="over"))
    sim.feed(Exited(None, TERM))
    assert (sim.inst.state, sim.inst.unstable) == (State.BACKOFF, 1)
    sim.advance(0.5)  # the backoff: spawned again
    sim.advance(2.0)  # alive min_uptime: running, a stable run
    assert sim.state() is State.RUNNING
    sim.feed(Recycle("cron"))
    sim.feed(Exited(None, TERM))
    assert (sim.inst.state, sim.inst.unstable) == (State.STARTING, 0)


@pytest.mark.parametrize("autorestart", list(RestartPolicy))
def test_transient_spawn_failures_retry_until_the_resource_comes_back(
    autorestart: RestartPolicy,
) -> None:
    """EAGAIN/EMFILE at fork is not the program's fault: retried with a doubling delay capped
    at 15 s, as long as it takes (far beyond max_restarts), whatever the restart policy, and
    the first run that starts resets the retry delay and runs as usual."""
    pol = policy(autorestart=autorestart, max_restarts=2)
    current, _ = step(Instance(IID), pol, Start(), 0.0)
    now, delays = 0.0, []
    for _ in range(40):
        current, effects = step(current, pol, SpawnFailed("fork failed", transient=True), now)
        assert (current.state, effects) == (State.BACKOFF, ())
        assert current.deadline is not None
        delays.append(current.deadline - now)
        now = current.deadline
        current, effects = step(current, pol, Tick(), now)
        assert (current.state, effects) == (State.STARTING, (Spawn(),))
    assert delays[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0]
    assert set(delays[6:]) == {15.0}
    assert (current.unstable, current.restarts, current.spawn_failures) == (0, 0, 40)
    current, _ = step(current, pol, Spawned(7), now)
    assert (current.state, current.pid, current.spawn_failures) == (State.STARTING, 7, 0)
    current, _ = step(current, pol, SpawnFailed("not again"), now)  # a live pid: ignored
    assert current.pid == 7


def test_a_transient_retry_waits_at_least_the_apps_restart_delay() -> None:
    pol = policy(restart_delay=7.0)
    current, _ = step(Instance(IID), pol, Start(), 0.0)
    current, _ = step(current, pol, SpawnFailed("x", transient=True), 0.0)
    assert current.deadline == 7.0


def test_spawn_failed_goes_straight_to_errored() -> None:
    final, trace = replay(
        policy(restart_delay=0.0),
        [(0.0, Start()), (0.0, SpawnFailed("cwd /nope does not exist")), (60.0, Tick())],
    )
    assert trace == [
        (0.0, State.STARTING, (Spawn(),)),
        (0.0, State.ERRORED, ()),
        (60.0, State.ERRORED, ()),
    ]
    assert (final.reason, final.pid, final.restarts) == ("cwd /nope does not exist", None, 0)


def test_stop_while_spawn_in_flight_kills_the_new_process() -> None:
    final, trace = replay(
        policy(kill_timeout=3.0),
        [
            (0.0, Start()),
            (0.0, Stop()),
            (0.1, Spawned(10)),
            (3.1, Tick()),
            (3.2, Exited(None, SIGKILL)),
        ],
    )
    assert trace == [
        (0.0, State.STARTING, (Spawn(),)),
        (0.0, State.STOPPING, ()),
        (0.1, State.STOPPING, (Kill(TERM),)),
        (3.1, State.STOPPING, (Kill(SIGKILL),)),
        (3.2, State.STOPPED, ()),
    ]
    assert final.pid is None


@pytest.mark.parametrize(
    ("autorestart", "final_state"),
    [
        (RestartPolicy.ALWAYS, State.BACKOFF),
        (RestartPolicy.ON_FAILURE, State.BACKOFF),  # not ready is a failure even on exit 0
        (RestartPolicy.NEVER, State.EXITED),
    ],
)
def test_notify_ready_timeout_is_a_failed_run(
    autorestart: RestartPolicy, final_state: State
) -> None:
    pol = policy(
        ready="notify", ready_timeout=30.0, kill_timeout=5.0, autorestart=autorestart,
        restart_delay=1.0,
    )
    final, trace = replay(
        pol,
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (29.0, Tick()),  # early
            (30.0, Tick()),
            (31.0, Exited(0, None)),  # it obeyed SIGTERM with exit 0
        ],
    )
    assert trace[:4] == [
        (0.0, State.STARTING, (Spawn(),)),
        (0.0, State.STARTING, ()),
        (29.0, State.STARTING, ()),
        (30.0, State.STOPPING, (Kill(TERM),)),
    ]
    assert trace[4] == (31.0, final_state, ())
    assert final.unstable == 1  # 31 s > min_uptime, but it never got ready
    assert final.exit_code == 0
    if final_state is State.BACKOFF:
        assert final.reason == "restarting in 1s (not ready within ready_timeout 30s)"
        assert final.restarts == 1
    else:
        assert final.reason == "not ready within ready_timeout 30s"


def test_notify_never_ready_errors_after_max_restarts() -> None:
    sim = Sim(policy(ready="notify", ready_timeout=2.0, kill_timeout=1.0, max_restarts=2))
    sim.feed(Start())
    for _ in range(3):
        sim.advance(2.0)  # ready_timeout: Kill(TERM)
        assert sim.state() is State.STOPPING
        sim.feed(Exited(None, TERM))
    assert sim.state() is State.ERRORED
    assert len(sim.spawns) == 3
    assert sim.inst.reason == (
        "gave up after 2 restarts: each run ended before it was ready or within min_uptime 1s "
        "(last: not ready within ready_timeout 2s)"
    )


def test_notify_ready_in_time_runs_and_a_later_crash_is_stable() -> None:
    pol = policy(ready="notify", ready_timeout=30.0, max_restarts=0)
    final, trace = replay(
        pol,
        [
            (0.0, Start()),
            (0.0, Spawned(10)),
            (3.0, Ready()),
            (30.0, Tick()),  # the ready_timeout deadline is gone
            (40.0, Exited(1, None)),
        ],
    )
    assert [s for _, s, _ in trace] == [
        State.STARTING,
        State.STARTING,
        State.RUNNING,
        State.RUNNING,
        State.STARTING,
    ]
    assert final.unstable == 0


def test_notify_crash_before_ready_is_unstable_even_after_min_uptime() -> None:
    pol = policy(ready="notify", max_restarts=0, min_uptime=1.0)
    final, _ = replay(pol, [(0.0, Start()), (0.0, Spawned(10)), (5.0, Exited(1, None))])
    assert final.state is State.ERRORED


def test_started_crash_after_min_uptime_before_its_tick_is_stable() -> None:
    # The Tick for min_uptime may come late; the run's length is what counts.
    pol = policy(max_restarts=0, min_uptime=1.0)
    final, _ = replay(pol, [(0.0, Start()), (0.0, Spawned(10)), (1.5, Exited(1, None))])
    assert (final.state, final.unstable) == (State.STARTING, 0)


# --- properties ----------------------------------------------------------------------------

events = st.one_of(
    st.builds(Start),
    st.builds(Stop),
    st.builds(Restart),
    st.builds(Spawned, st.integers(min_value=1, max_value=10**6)),
    st.builds(SpawnFailed, st.text(max_size=5), st.booleans()),
    st.builds(
        Exited,
        st.none() | st.integers(min_value=0, max_value=255),
        st.none() | st.integers(min_value=1, max_value=64),
    ),
    st.builds(Ready),
    st.builds(Recycle, st.text(max_size=5), st.none() | st.text(max_size=5)),
    st.builds(Tick),
    st.builds(Health, st.booleans(), st.none() | st.text(max_size=5)),
)
policies = st.builds(
    Policy,
    autorestart=st.sampled_from(RestartPolicy),
    max_restarts=st.integers(min_value=0, max_value=4),
    min_uptime=st.sampled_from([0.0, 0.5, 1.0]),
    restart_delay=st.sampled_from([0.0, 0.3]),
    exp_backoff_restart_delay=st.sampled_from([None, 0.1]),
    kill_signal=st.just(TERM),
    kill_timeout=st.sampled_from([0.0, 2.0]),
    ready=st.sampled_from(["started", "notify", "tcp://127.0.0.1:8000"]),
    ready_timeout=st.sampled_from([0.0, 3.0]),
)
histories = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), events), max_size=40
)


def check_invariants(before: Instance, event: Event, after: Step, now: float) -> None:
    got, effects = after
    assert got.id == before.id
    if got.state not in LIVE_STATES:
        assert got.pid is None  # no process outside the live states
        assert not got.then_start and not got.failed_run
    if got.state is State.RUNNING:
        assert got.pid is not None and got.ready
    if got.state is not State.STOPPING:
        assert not got.then_start and not got.failed_run
    if got.state in (State.STOPPED, State.EXITED, State.ERRORED):
        assert got.deadline is None
    if got.state is State.BACKOFF:
        assert got.deadline is not None
    if got.deadline is not None and got.deadline != before.deadline:
        assert got.deadline >= now  # a newly set deadline is never in the past
    if got.pid is not None and got.started_at is not None:
        assert got.started_at <= now
    assert got.restarts >= 0 and got.unstable >= 0
    # health speaks of the current process only, and says what its streak is
    if got.pid is None:
        assert (got.health, got.health_failures, got.health_error) == (None, 0, None)
    assert (got.health == "unhealthy") == (got.health_failures > 0)
    assert (got.health_error is not None) == (got.health == "unhealthy")
    for effect in effects:
        if isinstance(effect, Spawn):
            assert (got.state, got.pid, effects) == (State.STARTING, None, (Spawn(),))
            # never two processes for one instance: a spawn follows no process or its exit
            assert before.pid is None or isinstance(event, Exited)
        else:
            # only our own group: the current one, or the one whose Spawned arrived mid-stop
            assert got.pid is not None and before.pid in (None, got.pid)
            assert before.pid is not None or isinstance(event, Spawned)


def makes_sense(event: Event, current: Instance, now: float) -> bool:
    """Whether `event` can mean anything in `current`; the machine must ignore it otherwise."""
    pending = current.pid is None and current.state in (State.STARTING, State.STOPPING)
    match event:
        case Exited():
            return current.pid is not None
        case Spawned():
            return pending
        case SpawnFailed():
            return current.pid is None
        case Ready():
            return current.state is State.STARTING and current.pid is not None
        case Tick():
            return current.deadline is not None and now >= current.deadline
        case Health():
            return current.state is State.RUNNING and current.pid is not None
    return True


@settings(max_examples=300, deadline=None)
@given(pol=policies, history=histories)
def test_any_history_never_raises_and_keeps_invariants(
    pol: Policy, history: Sequence[tuple[float, Event]]
) -> None:
    current = Instance(IID)
    now = 0.0
    for dt, event in history:
        now += dt  # the clock never goes back
        after = step(current, pol, event, now)
        check_invariants(current, event, after, now)
        current = after[0]


@settings(max_examples=200, deadline=None)
@given(pol=policies, history=histories)
def test_nonsense_events_leave_the_instance_unchanged(
    pol: Policy, history: Sequence[tuple[float, Event]]
) -> None:
    current = Instance(IID)
    now = 0.0
    for dt, event in history:
        now += dt
        if not makes_sense(event, current, now):
            assert step(current, pol, event, now) == (current, ())
        current = step(current, pol, event, now)[0]


# -- the restarts column and "gave up after N restarts" agree -------------------------------


def _play(sim: Sim, history: str) -> None:
    """Replay `history`, one letter per event: S start, R restart command, X stop (and its
    exit), c a run shorter than min_uptime that crashes, C a stable run that crashes, m a
    monitor's restart of a stable run, u a monitor's restart of a run not yet stable."""
    for letter in history:
        if letter == "S":
            sim.feed(Start())
        elif letter == "R":
            sim.feed(Restart())
            if sim.state() is State.STOPPING:
                sim.feed(Exited(None, TERM))
        elif letter == "X":
            sim.feed(Stop())
            if sim.state() is State.STOPPING:
                sim.feed(Exited(None, TERM))
        elif letter in "cC":
            sim.crash(1, after=0.1 if letter == "c" else 5.0)
        elif letter in "mu":
            sim.advance(0.1 if letter == "u" else 5.0)
            sim.feed(Recycle("over max_memory_restart"))
            sim.feed(Exited(None, TERM))


def _crash_until_errored(sim: Sim) -> None:
    for _ in range(100):
        if sim.state() is State.ERRORED:
            return
        sim.crash(1, after=0.1)
    raise AssertionError("never gave up")


# (history before the crash loop, max_restarts, restarts shown, how the reason counts them).
# The first row is the history of the issue: RESTARTS 6 next to "gave up after 3 restarts".
GAVE_UP = [
    ("SCCC", 3, 6, "3 restarts in a row (6 in all)"),
    ("S", 3, 3, "3 restarts"),
    ("S", 1, 1, "1 restart"),
    ("SC", 1, 2, "1 restart in a row (2 in all)"),
    ("S", 0, 0, "0 restarts"),
    ("SCC", 0, 2, "0 restarts in a row (2 in all)"),
    ("Scc", 2, 2, "2 restarts"),  # the crash loop just goes on
    ("SccXS", 2, 4, "2 restarts in a row (4 in all)"),  # a start keeps the count, not the loop
    ("SccR", 2, 2, "2 restarts"),  # a restart command resets both
    ("Smm", 2, 4, "2 restarts in a row (4 in all)"),  # monitors' restarts are restarts too
    ("Scu", 2, 3, "2 restarts in a row (3 in all)"),  # even within the crash loop
]


@pytest.mark.parametrize(("history", "max_restarts", "shown", "counted"), GAVE_UP,
                         ids=[f"{h}-max{m}" for h, m, _, _ in GAVE_UP])
def test_gave_up_counts_the_restarts_the_column_shows(
        history: str, max_restarts: int, shown: int, counted: str) -> None:
    sim = Sim(policy(max_restarts=max_restarts, min_uptime=1.0))
    _play(sim, history)
    _crash_until_errored(sim)
    assert sim.inst.restarts == shown
    assert sim.inst.reason == (f"gave up after {counted}: each run was shorter than "
                               "min_uptime 1s (last: exited with code 1)")
    # A start after giving up starts the count over: the next give-up needs no "in all".
    sim.feed(Start())
    assert (sim.inst.restarts, sim.inst.unstable) == (0, 0)
    _crash_until_errored(sim)
    noun = "restart" if max_restarts == 1 else "restarts"
    assert sim.inst.restarts == max_restarts
    assert sim.inst.reason is not None
    assert sim.inst.reason.startswith(f"gave up after {max_restarts} {noun}: ")


def test_health_history_a_new_run_starts_unchecked_and_a_stale_result_is_moot() -> None:
    """A failed streak, the restart it led to, a late result of the old run while the new one
    starts, then the new run's own checks."""
    pol = policy(min_uptime=0.5)
    final, _ = replay(pol, [
        (0.0, Start()), (0.0, Spawned(10)), (0.5, Tick()),
        (1.0, Health(True)), (2.0, Health(False, "refused")), (3.0, Health(False, "refused")),
        (3.0, Recycle("health check failed 2 times: refused")),
        (3.1, Exited(None, TERM)),  # the restart's second half: a spawn
    ])
    assert (final.state, final.health, final.health_failures) == (State.STARTING, None, 0)
    final, _ = replay(pol, [
        (3.1, Spawned(11)),
        (3.2, Health(False, "late news of pid 10")),  # starting: not counted
        (3.6, Tick()), (4.0, Health(False, "timed out")),
    ], start=final)
    assert (final.state, final.pid, final.restarts) == (State.RUNNING, 11, 1)
    assert (final.health, final.health_failures, final.health_error) == (
        "unhealthy", 1, "timed out")


def test_a_passing_check_of_a_healthy_instance_is_no_news() -> None:
    healthy = dataclasses.replace(RUNNING, health="healthy")
    assert step(healthy, policy(), Health(True), AT_100)[0] is healthy  # the same object
