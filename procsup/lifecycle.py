"""The per-instance state machine (layer 1: pure, no I/O, no clock; time is an argument).
Its vocabulary (`Policy`, `Instance`, the events and effects) is `instance`'s, re-exported here.

`step(inst, policy, event, now)` returns the next `Instance` and the effects the supervisor must
execute, and does nothing else. The supervisor feeds it every event that concerns one instance
(commands, the spawner's answers, the exit of the process group, readiness, monitors, health
checks, and a `Tick` when `inst.deadline` has passed) and executes the effects in order:

- `Spawn()`: start the process now, then answer with `Spawned(pid)` or `SpawnFailed(reason)`.
- `Kill(sig)`: send `sig` to the instance's whole process group.

Contract of `step`:
- Total: it never raises. An event that makes no sense in the current state (`Exited` with no
  process, `Spawned` when no spawn was asked for, `Ready` after a stop began, a `Tick` before the
  deadline, ...) returns the instance unchanged and no effects, so late or duplicated events from
  the asynchronous world are harmless.
- `pid` is set exactly while a process group is live. `STARTING`/`STOPPING` with `pid is None`
  means a `Spawn` is in flight: a `Stop` then waits for `Spawned` to kill the new process, so no
  process ever escapes supervision.
- Whenever `step` sets a new `deadline`, it is `>= now`; the supervisor must feed a `Tick` once
  `now >= deadline` (an early or spurious `Tick` changes nothing).
- `Exited` means the whole group is gone (the leader's status); it carries no pid, so the
  supervisor must only feed it for the instance's current process.

Restart policy (contract §3): a run is *stable* when it lasted `min_uptime` and reached readiness;
`unstable` counts unstable runs in a row. An unexpected end restarts the instance when the policy
wants it, at most `max_restarts` times in a row after unstable runs (so `max_restarts + 1` runs),
then the instance is `ERRORED`. A stable run resets the count (and the exponential backoff).
A spawn that fails for want of a resource (`SpawnFailed(transient=True)`) is no run at all: it
waits in `BACKOFF` and is tried again, with its own doubling delay, however often it fails; a
command that cannot be executed is `ERRORED` at once.
"""

from __future__ import annotations

import math
from dataclasses import replace

from procsup.instance import (
    READY_STARTED,
    Adopted,
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
    Wait,
)
from procsup.model import RestartPolicy, State
from procsup.units import exit_text

__all__ = [
    "BACKOFF_CAP",
    "READY_STARTED",
    "SIGKILL",
    "SPAWN_RETRY",
    "Adopted",
    "Effect",
    "Event",
    "Exited",
    "Health",
    "Instance",
    "Kill",
    "Policy",
    "Ready",
    "Recycle",
    "Restart",
    "Spawn",
    "SpawnFailed",
    "Spawned",
    "Start",
    "Step",
    "Stop",
    "Tick",
    "Wait",
    "step",
    "uptime",
]

#: SIGKILL is 9 on every platform procsup runs on (POSIX fixes it); hardcoded so the escalation
#: is plain data.
SIGKILL = 9

#: Upper bound of the exponential backoff delay (contract: "doubles per unstable restart, cap
#: 15 s").
BACKOFF_CAP = 15.0

#: First delay before a start that failed for want of a resource (EAGAIN, EMFILE...) is tried
#: again; it doubles per failure in a row up to BACKOFF_CAP.
SPAWN_RETRY = 0.5

# Past this exponent the doubled delay is far above the cap anyway; bounding it keeps `2**n`
# from overflowing a float after a very long crash loop.
_MAX_DOUBLINGS = 64


_LIVE_RUN = frozenset({State.STARTING, State.RUNNING})
_AT_REST = frozenset(
    {State.STOPPED, State.EXITED, State.ERRORED, State.BACKOFF, State.WAITING})


# --- the machine --------------------------------------------------------------------------


def step(inst: Instance, policy: Policy, event: Event, now: float) -> Step:
    """Apply `event` at time `now`; return the new instance and the effects to execute, in order.

    Pure and total: see the module docstring for the contract.
    """
    match event:
        case Start():
            return _on_start(inst)
        case Wait(reason=reason):
            return _on_wait(inst, reason)
        case Stop():
            return _on_stop(inst, policy, now)
        case Restart():
            return _on_restart(inst, policy, now)
        case Spawned(pid=pid):
            return _on_spawned(inst, policy, pid, now)
        case SpawnFailed(reason=reason, transient=transient):
            return _on_spawn_failed(inst, policy, reason, transient, now)
        case Exited(code=code, signal=sig, background=bg, failure=failure):
            return _on_exited(inst, policy, code, sig, now, background=bg, failure=failure)
        case Adopted(pid=pid):
            if inst.pid is None or inst.state not in (*_LIVE_RUN, State.STOPPING):
                return _nothing(inst)  # no run of ours: a stale report
            return replace(inst, pid=pid), ()
        case Ready():
            return _on_ready(inst)
        case Recycle(reason=reason, unstable=how):
            return _on_recycle(inst, policy, reason, how, now)
        case Tick():
            return _on_tick(inst, policy, now)
        case Health(ok=ok, error=error):
            return _on_health(inst, ok, error)
    return inst, ()  # not an event of ours: nothing to do (total, never raises)


def uptime(inst: Instance, now: float) -> float | None:
    """Seconds the current process has been alive, or None when no process is live."""
    if inst.pid is None or inst.started_at is None:
        return None
    return max(0.0, now - inst.started_at)


def _nothing(inst: Instance) -> Step:
    return inst, ()


def _unchecked(inst: Instance) -> Instance:
    """Forget the health checks of the process that was (a run ended, or one begins)."""
    if inst.health is None and not inst.health_failures:
        return inst  # the common case, without a copy (restart latency)
    return replace(inst, health=None, health_failures=0, health_error=None)


def _spawn(inst: Instance, *, restarts: int, unstable: int) -> Step:
    """Ask the supervisor for a new process: STARTING without pid until Spawned/SpawnFailed."""
    return replace(
        _unchecked(inst),
        state=State.STARTING,
        pid=None,
        ready=False,
        deadline=None,
        then_start=False,
        failed_run=False,
        reason=None,
        restarts=restarts,
        unstable=unstable,
    ), (Spawn(),)


def _begin_stop(
    inst: Instance,
    policy: Policy,
    now: float,
    *,
    then_start: bool,
    reason: str | None,
    restarts: int,
    unstable: int,
) -> Step:
    """STARTING/RUNNING -> STOPPING: signal the group and give it kill_timeout to go."""
    stopping = replace(
        inst,
        state=State.STOPPING,
        then_start=then_start,
        failed_run=False,
        reason=reason,
        restarts=restarts,
        unstable=unstable,
    )
    if inst.pid is None:
        # The spawn is still in flight: nothing to signal yet. `_on_spawned` kills the process
        # as soon as it exists, and `_on_spawn_failed` settles the stop if it never does.
        return replace(stopping, deadline=None), ()
    return replace(stopping, deadline=now + policy.kill_timeout), (Kill(policy.kill_signal),)


def _on_start(inst: Instance) -> Step:
    if inst.state in _AT_REST:
        # Not running (and not going to without us; BACKOFF's wait is cut short): start now.
        # A manual start renews the max_restarts budget; after giving up, the restart count
        # starts over with it (so "gave up after N restarts" and RESTARTS agree), otherwise
        # it is kept for status.
        restarts = 0 if inst.state is State.ERRORED else inst.restarts
        return _spawn(replace(inst, spawn_failures=0), restarts=restarts, unstable=0)
    if inst.state is State.STOPPING:
        # Stop in progress: let it finish (the group must be gone first), then start again.
        return replace(inst, then_start=True, unstable=0), ()
    return _nothing(inst)  # STARTING/RUNNING: already what was asked


def _on_wait(inst: Instance, reason: str) -> Step:
    if inst.state in _AT_REST:
        # Nothing runs: wait for the dependencies instead of starting (BACKOFF's pending
        # restart is cancelled; the start, when it comes, renews the budget as `Start` does).
        restarts = 0 if inst.state is State.ERRORED else inst.restarts
        return replace(inst, state=State.WAITING, reason=reason, deadline=None, restarts=restarts,
                       unstable=0, spawn_failures=0), ()
    return _nothing(inst)  # a process is live or stopping: a start would not wait either


def _on_stop(inst: Instance, policy: Policy, now: float) -> Step:
    if inst.state in _LIVE_RUN:
        # A live process: signal the group, SIGKILL at the deadline if it lingers.
        return _begin_stop(
            inst,
            policy,
            now,
            then_start=False,
            reason=None,
            restarts=inst.restarts,
            unstable=inst.unstable,
        )
    if inst.state is State.STOPPING:
        # Already stopping: only cancel a pending restart (and a failed run's policy restart);
        # the signal was sent and the deadline stands.
        return replace(inst, then_start=False, failed_run=False), ()
    if inst.state is State.BACKOFF:
        # No process between runs: cancelling the pending restart (or retry) is the whole stop.
        return replace(inst, state=State.STOPPED, deadline=None, reason=None,
                       spawn_failures=0), ()
    # STOPPED/EXITED/ERRORED/WAITING: nothing runs; STOPPED records that the user wants it so,
    # and the last exit code stays visible.
    return replace(inst, state=State.STOPPED, deadline=None, reason=None), ()


def _on_restart(inst: Instance, policy: Policy, now: float) -> Step:
    if inst.state in _LIVE_RUN and inst.pid is None:
        # The spawn is in flight: that new process is the restart; only the counters reset.
        return replace(inst, restarts=0, unstable=0), ()
    if inst.state in _LIVE_RUN:
        # Stop the current process, start again once its group is gone; a restart command
        # resets the counters (contract: "resets the restart counter").
        return _begin_stop(
            inst, policy, now, then_start=True, reason=None, restarts=0, unstable=0
        )
    if inst.state is State.STOPPING:
        # The stop is under way: turn it into a restart (also of a failed run, which the user
        # now restarts explicitly).
        return replace(inst, then_start=True, failed_run=False, restarts=0, unstable=0), ()
    # STOPPED/EXITED/ERRORED/BACKOFF/WAITING: nothing to stop, so a restart is a start with
    # fresh counters (the supervisor gates it on depends_on as it gates a start).
    return _spawn(replace(inst, spawn_failures=0), restarts=0, unstable=0)


def _on_recycle(
    inst: Instance, policy: Policy, reason: str, unstable: str | None, now: float
) -> Step:
    if inst.state in _LIVE_RUN and inst.pid is not None and unstable is not None:
        # A failed run: stop it; its exit goes to the restart policy like a crash's.
        stopping, effects = _begin_stop(
            inst,
            policy,
            now,
            then_start=False,
            reason=reason,
            restarts=inst.restarts,
            unstable=inst.unstable,
        )
        return replace(stopping, failed_run=True, failed_how=unstable), effects
    if inst.state in _LIVE_RUN and inst.pid is not None:
        # A monitor wants a fresh process: stop and start again, counting it as an automatic
        # restart and keeping the reason visible while it happens. A run that was stable (ready,
        # alive min_uptime) ends the unstable runs in a row, as a stable run that ends does.
        stable = inst.ready and now - (inst.started_at or now) >= policy.min_uptime
        return _begin_stop(
            inst,
            policy,
            now,
            then_start=True,
            reason=reason,
            restarts=inst.restarts + 1,
            unstable=0 if stable else inst.unstable,
        )
    # No process (or a spawn in flight, which is already fresh), or already stopping: the
    # monitor's concern is moot.
    return _nothing(inst)


def _on_spawned(inst: Instance, policy: Policy, pid: int, now: float) -> Step:
    if inst.pid is not None or inst.state not in (State.STARTING, State.STOPPING):
        return _nothing(inst)  # no spawn was asked for: a stray answer
    spawned = replace(_unchecked(inst), pid=pid, started_at=now, ready=False, spawn_failures=0)
    if inst.state is State.STOPPING:
        # A stop arrived while the spawn was in flight: kill the new process right away.
        return replace(spawned, deadline=now + policy.kill_timeout), (Kill(policy.kill_signal),)
    if policy.ready == READY_STARTED and policy.min_uptime <= 0:
        # "Alive for min_uptime" with min_uptime 0 holds at once; skip the round trip via Tick.
        return replace(spawned, state=State.RUNNING, ready=True, reason=None, deadline=None), ()
    # Wait for readiness: min_uptime for "started", ready_timeout for notify/tcp/http.
    wait = policy.min_uptime if policy.ready == READY_STARTED else policy.ready_timeout
    return replace(spawned, reason=None, deadline=now + max(wait, 0.0)), ()


def _on_spawn_failed(
    inst: Instance, policy: Policy, reason: str, transient: bool, now: float
) -> Step:
    if inst.pid is not None:
        return _nothing(inst)  # a process is live, so it evidently could be executed
    if inst.state is State.STOPPING and not inst.then_start:
        # The user stopped it while the spawn was in flight: it is stopped, as asked.
        return replace(inst, state=State.STOPPED, deadline=None, then_start=False), ()
    if transient:
        # A resource ran out (a process or open-files limit, memory): the command is fine and
        # the resource comes back, so try again after a growing delay, for as long as it takes.
        # No run happened, so this is no crash loop: max_restarts is not spent, `unstable` and
        # `restarts` stay, and any restart policy retries (the start itself has not happened).
        tries = inst.spawn_failures + 1
        delay = _retry_delay(policy, tries)
        again = "1 failure" if tries == 1 else f"{tries} failures in a row"
        return replace(
            inst,
            state=State.BACKOFF,
            pid=None,
            ready=False,
            reason=f"retrying in {_secs(delay)} ({reason}; {again})",
            deadline=now + delay,
            then_start=False,
            failed_run=False,
            spawn_failures=tries,
            spawn_error=reason,
        ), ()
    # The command cannot be executed: retrying cannot help, so errored at once (supervisord's
    # FATAL), with the reason shown in status.
    return replace(
        inst,
        state=State.ERRORED,
        pid=None,
        ready=False,
        reason=reason,
        deadline=None,
        then_start=False,
        failed_run=False,
    ), ()


def _on_ready(inst: Instance) -> Step:
    if inst.state is State.STARTING and inst.pid is not None:
        # Readiness reached (for "started", an early READY=1 is accepted too).
        return replace(inst, state=State.RUNNING, ready=True, deadline=None), ()
    return _nothing(inst)  # already running, stopping, or no process: late news


def _on_health(inst: Instance, ok: bool, error: str | None) -> Step:
    if inst.state is not State.RUNNING or inst.pid is None:
        # Starting (not yet to be judged), stopping, or no process: the result is moot.
        return _nothing(inst)
    if ok and inst.health == "healthy":
        return _nothing(inst)  # healthy still: no news (the engine records nothing)
    if ok:
        # Passed: healthy, and a failed streak is over.
        return replace(inst, health="healthy", health_failures=0, health_error=None), ()
    # Failed: one more in a row; the error stays visible while it is unhealthy.
    return replace(inst, health="unhealthy", health_failures=inst.health_failures + 1,
                   health_error=error or "failed"), ()


def _on_tick(inst: Instance, policy: Policy, now: float) -> Step:
    if inst.deadline is None or now < inst.deadline:
        return _nothing(inst)  # nothing due yet
    if inst.state is State.STARTING and inst.pid is not None:
        if policy.ready == READY_STARTED:
            # Alive for min_uptime: that is what "started" readiness means.
            return replace(inst, state=State.RUNNING, ready=True, deadline=None), ()
        # Not ready within ready_timeout: stop it; its exit is a failed run for the policy.
        stopping, effects = _begin_stop(
            inst,
            policy,
            now,
            then_start=False,
            reason=f"not ready within ready_timeout {_secs(policy.ready_timeout)}",
            restarts=inst.restarts,
            unstable=inst.unstable,
        )
        return replace(stopping, failed_run=True, failed_how=None), effects
    if inst.state is State.BACKOFF:
        # The backoff delay is over: try again.
        return _spawn(inst, restarts=inst.restarts, unstable=inst.unstable)
    if inst.state is State.STOPPING and inst.pid is not None:
        # kill_timeout is over and the group lingers: SIGKILL cannot be ignored, so no new
        # deadline; the supervisor waits for the group to be reaped.
        return replace(inst, deadline=None), (Kill(SIGKILL),)
    return replace(inst, deadline=None), ()  # a deadline with no meaning here: drop it


def _on_exited(
    inst: Instance, policy: Policy, code: int | None, sig: int | None, now: float, *,
    background: int | None = None, failure: str | None = None,
) -> Step:
    if inst.pid is None:
        return _nothing(inst)  # no process of ours is live: a stale report
    exit_code = -sig if sig is not None else code
    if inst.state is State.STOPPING:
        if inst.then_start:
            # The stop was the first half of a restart: start the second half.
            return _spawn(
                replace(inst, exit_code=exit_code),
                restarts=inst.restarts,
                unstable=inst.unstable,
            )
        if inst.failed_run:
            # We stopped a failed run (not ready in time): the policy decides what follows.
            return _ended(inst, policy, exit_code, inst.reason or "failed", now, failed=True)
        # A requested stop completed: stopped, no reason needed.
        return replace(
            _unchecked(inst),
            state=State.STOPPED,
            pid=None,
            ready=False,
            exit_code=exit_code,
            reason=None,
            deadline=None,
        ), ()
    # STARTING/RUNNING: it ended on its own.
    if failure is not None:
        return _ended(inst, policy, exit_code, failure, now, failed=True)
    run = now - inst.started_at if inst.started_at is not None else 0.0
    if background is not None and run < policy.min_uptime:
        # It put itself in the background: every restart would do the same (and the copy it
        # left was stopped by the process layer, not supervised). Say so, do not loop.
        return replace(
            _unchecked(inst), state=State.ERRORED, pid=None, ready=False, exit_code=exit_code,
            deadline=None, then_start=False, failed_run=False,
            reason=f"the command put itself in the background (pid {background}): run it in "
                   "the foreground, or set pidfile",
        ), ()
    return _ended(inst, policy, exit_code, exit_text(code, sig), now, failed=False)


def _ended(
    inst: Instance, policy: Policy, exit_code: int | None, why: str, now: float, *, failed: bool
) -> Step:
    """Apply the restart policy to a run that ended without being asked to (or failed)."""
    run = now - inst.started_at if inst.started_at is not None else 0.0
    # Stable = lived min_uptime and reached readiness ("started" readiness is min_uptime
    # itself, even if its Tick has not arrived yet). A run that never got ready is a crash
    # loop too, or a never-ready app would restart forever every ready_timeout.
    reached = inst.ready or policy.ready == READY_STARTED
    stable = not failed and reached and run >= policy.min_uptime
    unstable = 0 if stable else inst.unstable + 1
    ended = replace(
        _unchecked(inst),
        pid=None,
        ready=False,
        exit_code=exit_code,
        deadline=None,
        then_start=False,
        failed_run=False,
        unstable=unstable,
    )
    failure = failed or exit_code != 0  # a signal (negative) or an unknown status is a failure
    wanted = policy.autorestart is RestartPolicy.ALWAYS or (
        policy.autorestart is RestartPolicy.ON_FAILURE and failure
    )
    if not wanted:
        # The policy does not restart this kind of end: exited, with why.
        return replace(ended, state=State.EXITED, reason=why), ()
    if unstable > policy.max_restarts:
        # max_restarts restarts in a row after unstable runs were not enough: give up.
        gave_up = _gave_up(policy, unstable, inst.restarts, why,
                           inst.failed_how if failed else None)
        return replace(ended, state=State.ERRORED, reason=gave_up), ()
    restarts = inst.restarts + 1
    delay = _delay(policy, unstable)
    if delay <= 0:
        # No delay: spawn in this very step (restart latency matters).
        return _spawn(ended, restarts=restarts, unstable=unstable)
    # Wait before the next run; BACKOFF's deadline brings the Tick that spawns it.
    return replace(
        ended,
        state=State.BACKOFF,
        restarts=restarts,
        deadline=now + delay,
        reason=f"restarting in {_secs(delay)} ({why})",
    ), ()


def _delay(policy: Policy, unstable: int) -> float:
    """Seconds to wait before the next restart after `unstable` unstable runs in a row.

    With exp_backoff_restart_delay the first delay is the base, doubling per further unstable
    run, capped at 15 s (or at the base when that is larger); after a stable run (unstable 0)
    it is the base again.
    """
    base = policy.exp_backoff_restart_delay
    if base is None:
        return policy.restart_delay
    doublings = min(max(unstable - 1, 0), _MAX_DOUBLINGS)
    return min(math.ldexp(base, doublings), max(BACKOFF_CAP, base))  # base * 2**doublings


def _retry_delay(policy: Policy, tries: int) -> float:
    """Seconds to wait before the next start after `tries` transient spawn failures in a row:
    from SPAWN_RETRY doubling to BACKOFF_CAP, or the app's own restart delay when longer."""
    doublings = min(tries - 1, _MAX_DOUBLINGS)
    return max(min(math.ldexp(SPAWN_RETRY, doublings), BACKOFF_CAP), _delay(policy, 1))


def _gave_up(policy: Policy, unstable: int, total: int, why: str, how: str | None) -> str:
    """The reason of ERRORED. It counts the restarts in a row between the unstable runs; when
    the `restarts` column (`total`: stable runs that ended and monitors' restarts count there
    too) shows another number, it says both, so the two never seem to disagree."""
    restarts = unstable - 1  # the restarts in a row between those unstable runs
    noun = "restart" if restarts == 1 else "restarts"
    if total != restarts:
        noun += f" in a row ({total} in all)"
    if how is not None:
        short = how
    elif policy.ready == READY_STARTED:
        short = f"each run was shorter than min_uptime {_secs(policy.min_uptime)}"
    else:
        short = (
            f"each run ended before it was ready or within min_uptime {_secs(policy.min_uptime)}"
        )
    return f"gave up after {restarts} {noun}: {short} (last: {why})"


def _secs(seconds: float) -> str:
    # `g` drops float noise (0.30000000000000004 -> "0.3") and trailing zeros ("1s", "0.4s").
    return f"{seconds:g}s"
