"""Executing reloads (layer 4, under `apply`): the three ways `reloading.way` decides.

`rolling` replaces instances one at a time, each replacement ready before its old instance
stops (cluster apps, and what a config apply or a monitor asks of them); `reload` is the
`procsup reload` command: per app and instance it asks `reloading.way` which way to go, given
what the old instance holds (`held`, the seam for `listening.held`), and executes it: rolling,
stop-then-start (announced, since nothing serves meanwhile), or `reload_signal` in place. It
decides nothing itself and acts only through the engine's intents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping

from procsup import reloading, units
from procsup.model import ExecMode, State
from procsup.reloading import How
from procsup.supervisor import Ref, Supervisor, View

__all__ = ["Held", "Reloaded", "reload", "rolling"]

#: held(pgid): the listening addresses an instance's process group holds (None: unreadable).
Held = Callable[[int], "tuple[str, ...] | None"]


@dataclasses.dataclass
class Reloaded:
    """What a `reload` did: per instance the way it went (`"start"` for one that was not
    running and was started), and the lines to tell the user (the ways other than rolling)."""

    ways: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    notices: list[str] = dataclasses.field(default_factory=list)


async def reload(engine: Supervisor, targets: Mapping[str, list[int]], *, held: Held,
                 log: logging.Logger, out: Reloaded) -> str | None:
    """`procsup reload` of these instances, app after app; the failure that stopped it, or
    None. `out` collects what was done, also when it failed."""
    try:
        for app, indexes in targets.items():
            spec = engine.specs()[app]
            if spec.reload_signal is not None:
                failure = await in_place(engine, app, indexes, out=out)
            elif spec.exec_mode is ExecMode.CLUSTER:
                failure = await rolling(engine, app, indexes)
                out.ways.update(((app, i), How.ROLLING.value) for i in indexes)
            else:
                failure = await _fork(engine, app, indexes, held=held, out=out)
            if failure:
                return failure
        return None
    finally:
        for line in out.notices:  # an outage is a warning; an in-place reload is news
            log.log(logging.WARNING if "stop-then-start" in line else logging.INFO,
                    "reload: %s", line)


async def _fork(engine: Supervisor, app: str, indexes: Iterable[int], *, held: Held,
                out: Reloaded) -> str | None:
    """A fork app, one instance at a time, each the way what its old process holds allows."""
    stopped_first: dict[reloading.Way, list[int]] = {}  # one notice per reason
    try:
        for index in indexes:
            old = (engine.current(app) or {}).get(index)
            if old is None or old.retiring:
                continue
            if old.state not in (State.RUNNING, State.STARTING) or old.pid is None:
                await engine.started(engine.restart([old.ref]))  # nothing to keep serving
                out.ways[(app, index)] = "start"
                continue
            # A scan of /proc (the group's members, their fds): off the loop.
            chosen = reloading.way(old.spec, await asyncio.to_thread(held, old.pid))
            out.ways[(app, index)] = chosen.how.value
            if chosen.how is How.ROLLING:
                failure = await rolling(engine, app, [index])
            else:
                stopped_first.setdefault(chosen, []).append(index)
                failure = await _stop_start(engine, old)
            if failure:
                return failure
        return None
    finally:
        for chosen, stopped in stopped_first.items():
            line = reloading.notice(app, stopped, engine.specs()[app], chosen)
            if line:
                out.notices.append(line)


async def _stop_start(engine: Supervisor, old: View) -> str | None:
    """Restart the instance in place (its old process first stops), and wait until it runs."""
    [now] = await engine.started(engine.restart([old.ref], note="reloaded: stop-then-start"))
    if now.state is State.RUNNING:
        return None
    why = now.inst.reason or (f"last run {units.exit_code_text(now.inst.exit_code)}"
                              if now.inst.exit_code is not None else "not ready")
    return (f"reload of {old.id.app} stopped at {old.id}: it was stopped and restarted, and is "
            f"{now.state.value}: {why}")


async def in_place(engine: Supervisor, app: str, indexes: Iterable[int], *,
                   out: Reloaded) -> str | None:
    """reload_signal to the main process of each live instance at once; then each must still
    run the same process `reloading.settle` later (an instance not running is started)."""
    spec = engine.specs()[app]
    sig = spec.reload_signal
    assert sig is not None
    current = engine.current(app) or {}
    views = [current[i] for i in indexes if i in current and not current[i].retiring]
    live = [v for v in views if v.state in (State.RUNNING, State.STARTING) and v.pid is not None]
    rest = [v for v in views if v not in live]
    if rest:
        await engine.started(engine.restart([v.ref for v in rest]))
        out.ways.update(((app, v.id.index), "start") for v in rest)
    reached = {v.ref for v in engine.signal([v.ref for v in live], sig, leader=True)}
    out.ways.update(((app, v.id.index), How.SIGNAL.value) for v in live)
    if live:
        line = reloading.notice(app, [v.id.index for v in live], spec,
                                reloading.Way(How.SIGNAL))
        if line:
            out.notices.append(line)
        await _sleep(engine, reloading.settle(spec))
    name = units.signal_name(sig)
    for v in live:
        now = engine.view(v.ref)
        same = (now is not None and now.generation == v.generation and now.pid == v.pid
                and now.state in (State.RUNNING, State.STARTING))
        if v.ref in reached and same:
            continue
        how = "it was not running when the signal was to be sent"
        if now is not None and now.inst.exit_code is not None and v.ref in reached:
            how = units.exit_code_text(now.inst.exit_code)
        elif now is not None and v.ref in reached:
            how = f"it is {now.state.value}"
        return (f"reload of {app} failed: {v.id} (pid {v.pid}) did not keep running after "
                f"{name} (reload_signal): {how} (see procsup logs {app})")
    return None


async def _sleep(engine: Supervisor, seconds: float) -> None:
    """Wait `seconds` of the engine's clock (a fake one in tests)."""
    done: asyncio.Future[None] = engine.loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    timer = engine.clock.call_at(engine.clock.time() + seconds, wake)
    try:
        await done
    finally:
        timer.cancel()


async def rolling(engine: Supervisor, app: str, indexes: Iterable[int], *,
                  only_running: bool = False) -> str | None:
    """Replace instances one at a time: start a replacement, wait until it is ready, only
    then stop the old one (gracefully), so a cluster app never stops serving. A
    replacement that is not ready within ready_timeout ends the rollout: it is stopped,
    the old instances keep running, and the reason is returned. An old instance's graceful
    stop overlaps the next replacement's start-up (it was replaced already); the rollout
    returns once every old instance is gone. `only_running` (a monitor's replacement)
    skips an instance that is not running when its turn comes, where `reload` starts it."""
    outgoing: list[Ref] = []
    try:
        for index in indexes:
            if engine.shutting_down:
                return f"reload of {app} stopped: procsupd is shutting down"
            if app in engine.disabled:
                return f"reload of {app} stopped: {app} was disabled"
            old = (engine.current(app) or {}).get(index)
            if old is None or old.retiring:
                continue
            if old.state not in (State.RUNNING, State.STARTING):  # nothing to keep serving
                if not only_running:
                    await engine.started(engine.restart([old.ref]))
                continue
            done = await engine.replace(old.ref)
            if done.old is not None:
                outgoing.append(done.old)
            elif done.superseded:
                return (f"reload of {app} stopped at {done.new.id}: the instance was "
                        "stopped or procsupd is shutting down")
            else:
                reason = _not_ready(done.new, done.waited)
                return (f"reload of {app} stopped at {done.new.id}: {reason}; "
                        "the old instances keep running")
        return None
    finally:
        await engine.stopped(outgoing)


def _not_ready(new: View, waited: float) -> str:
    """Why a reload's replacement did not take over, for the user: its own exit, said as
    such (with a hint for a fork app, the usual cause being its own port), or the wait."""
    code, spec = new.inst.exit_code, new.spec
    if new.inst.spawn_failures:  # a resource ran out; not retried here
        return f"the replacement could not be started: {new.inst.spawn_error}"
    if code is None and new.generation <= 1:  # it never ran: the command cannot execute
        return new.inst.reason or f"the replacement is {new.state.value}"
    if waited >= spec.ready_timeout or code is None:
        return (f"the replacement was not ready within ready_timeout "
                f"{units.format_duration(spec.ready_timeout)}")
    how = units.exit_code_text(code)
    reason = (f"the replacement {how if code >= 0 else 'was ' + how} before it was ready "
              f"(see procsup logs {new.id.app})")
    if spec.exec_mode is ExecMode.FORK:
        reason += ("; a fork app that binds its own port cannot run beside its old "
                   "instance: use restart, set reload_signal, or exec_mode = \"cluster\"")
    return reason
