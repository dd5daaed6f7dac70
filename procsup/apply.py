"""Applying the desired state (layer 4, over the engine): configs, `scale`, rolling
reloads, the fresh processes the monitors ask for, start-up and shutdown.

`Applier.apply` makes a config the desired state and executes the plan `reconcile.plan` made for
it, one apply at a time, stops finished before anything starts. `scale` and `reload_apps` change
instances between configs; `rolling` (in `rollout`) replaces instances one at a time, each
replacement ready before its old instance stops; `recycle` is how a monitor gets fresh
processes. The config reload
triggers (`update`, SIGHUP, a saved watched file) end here too, and `ConfigLoader` reads the
config for them on a worker thread, one read at a time, within a deadline. Executing a plan
makes no decision the planner did not make: each kind of action is executed one way, through
the engine's intents (`supervisor.Supervisor`); this module never touches an instance itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from procsup import (
    config,
    dump,
    handover,
    health,
    listening,
    monitors,
    reconcile,
    rollout,
    statefile,
    units,
    watch,
)
from procsup.errors import ConfigError
from procsup.model import LIVE_STATES, Desired, ExecMode, State
from procsup.reconcile import Kind
from procsup.supervisor import Marks, Ref, Supervisor, View

#: During a large start, yield to the loop this often so the instance record is written and
#: the control socket answers.
_YIELD_EVERY = 16
#: A save of a watched file is applied this long after the last event of a burst.
_DEBOUNCE = 0.2
#: A watched file that reads as invalid is read again this long after, before it is reported
#: (an editor may still be writing it).
_RECHECK = 0.5
#: A config load (on its worker thread) that takes longer fails: nothing changes.
LOAD_DEADLINE = 10.0
#: The kinds of action that only take instances away (run before anything starts).
_RETIRES = (Kind.STOP, Kind.SCALE_DOWN)


class ConfigLoader:
    """Runs `read` (a `config.load`) on a worker thread, so that no config can hold the loop:
    control requests are answered while it reads, however slow the file system.

    One load at a time. The loads asked for while one runs share one load that starts when it
    ends (it reads what was saved meanwhile): a burst of SIGHUPs, saves and `update`s reads the
    config at most twice. A load that takes longer than `deadline` fails for everyone waiting
    on it with a ConfigError that says so. Its thread cannot be stopped: until it ends, a load
    asked for fails at once, so that one stuck read never becomes a pile of threads. The thread
    is a daemon thread, so a stuck read does not keep procsupd from exiting either."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read: Callable[[], Desired], *,
                 path: str, log: logging.Logger, deadline: float = LOAD_DEADLINE) -> None:
        self._loop = loop
        self._read = read
        self._path = path
        self._log = log
        self.deadline = deadline
        self.started = 0  # loads begun (for tests and the log)
        self._busy_since: float | None = None  # a worker thread runs, since then
        self._overdue = False  # ... and is past its deadline
        self._next: asyncio.Future[Desired] | None = None

    async def load(self) -> Desired:
        """A fresh read of the config: read after this call. Raises ConfigError."""
        if self._busy_since is None:
            result = self._start(self._future())
        elif self._overdue:
            raise self._stuck()
        else:
            if self._next is None:
                self._next = self._future()
            result = self._next
        # The load goes on for the others waiting if this caller goes away (a client's Ctrl-C).
        return await asyncio.shield(result)

    def _future(self) -> asyncio.Future[Desired]:
        future: asyncio.Future[Desired] = self._loop.create_future()
        # Retrieved even when every waiter went away, so asyncio logs no unretrieved error.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    def _start(self, result: asyncio.Future[Desired]) -> asyncio.Future[Desired]:
        timer = self._loop.call_later(self.deadline, self._expire, result)
        thread = threading.Thread(target=self._work, args=(result, timer), daemon=True,
                                  name="procsup-config-load")
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had (RLIMIT_NPROC, a pids cgroup)
            timer.cancel()
            result.set_exception(ConfigError(
                f"cannot start a thread to read the config: {exc}; nothing was changed",
                file=self._path))
            return result
        self.started += 1
        self._busy_since, self._overdue = self._loop.time(), False
        return result

    def _work(self, result: asyncio.Future[Desired], timer: asyncio.TimerHandle) -> None:
        """On the worker thread: read, then hand the outcome to the loop (and only that)."""
        value: Desired | None = None
        error: BaseException | None = None
        try:
            value = self._read()
        except Exception as exc:  # ConfigError, or a bug: the waiters get it either way
            error = exc
        finally:
            try:
                self._loop.call_soon_threadsafe(self._done, result, timer, value, error)
            except RuntimeError:  # the loop is closed: procsupd has exited
                pass

    def _done(self, result: asyncio.Future[Desired], timer: asyncio.TimerHandle,
              value: Desired | None, error: BaseException | None) -> None:
        timer.cancel()
        assert self._busy_since is not None
        if self._overdue:
            self._log.warning("config: the load that took too long ended after %.1f s",
                              self._loop.time() - self._busy_since)
        self._busy_since = None
        if not result.done():
            if value is not None:
                result.set_result(value)
            else:
                result.set_exception(error or RuntimeError("the config load ended without result"))
        if self._next is not None:
            pending, self._next = self._next, None
            self._start(pending)

    def _expire(self, result: asyncio.Future[Desired]) -> None:
        self._overdue = True
        if not result.done():
            result.set_exception(ConfigError(
                f"loading the config took longer than {self.deadline:g} s; nothing was changed "
                "(a config file on a slow or hung file system?)", file=self._path))
        if self._next is not None:
            pending, self._next = self._next, None
            pending.set_exception(self._stuck())

    def _stuck(self) -> ConfigError:
        assert self._busy_since is not None
        return ConfigError(
            f"the previous load of the config has not ended after "
            f"{self._loop.time() - self._busy_since:.0f} s (more than {self.deadline:g} s); "
            "nothing was changed, and the config is not read again until it ends (a config "
            "file on a slow or hung file system?)", file=self._path)


class Applier:
    """Drives the instances of every app towards the desired state, one change at a time, and
    holds that state: the applied config, whether the file on disk is applied, the keys that
    wait for a daemon restart."""

    def __init__(self, engine: Supervisor, desired: Desired, *,
                 profile_override: str | None, disabled: Iterable[str] = (),
                 check_command: health.Command | None = None,
                 held: rollout.Held = listening.held) -> None:
        self.engine = engine
        self.held = held  # what an instance's process group listens on (seam for tests)
        self.desired = desired
        # The apps `procsup disable` recorded in state_dir (names not in the config too: a
        # re-added app stays disabled). Part of the desired state: no plan starts them.
        self.disabled: frozenset[str] = frozenset(disabled)
        engine.set_disabled(self.disabled)
        self.loop = engine.loop
        self.log = engine.log
        self.profile_override = profile_override
        self.config_error: str | None = None
        self.restart_daemon: tuple[str, ...] = ()
        # One apply, scale, reload or monitor replacement at a time; shutdown waits for it too.
        self.lock = asyncio.Lock()
        self.started_up = asyncio.Event()  # set once recovery and the first apply are done
        self._exit = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: watch.ConfigWatch | None = None
        self._debounce: asyncio.TimerHandle | None = None
        self.loader = ConfigLoader(self.loop, self._read, path=desired.daemon.config_path,
                                   log=self.log)
        self.monitors = monitors.Monitors(self.loop, self.log, self.recycle, self.leaders)
        self._check_command = check_command
        self.health = health.HealthChecks(engine, self.recycle, command=check_command)

    @property
    def shutting_down(self) -> bool:
        return self.engine.shutting_down

    def close(self) -> None:
        """Stop watching the config files and the apps."""
        self.monitors.close()
        self.health.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ start-up and shutdown

    async def start(self, prepare: Callable[[], Awaitable[None]]) -> None:
        """`prepare` (stop what a previous daemon left behind), then start every configured
        instance. A shutdown asked for meanwhile waits for this to end, then stops what was
        started."""
        try:
            await prepare()
            if not self.shutting_down:
                await self.apply(self.desired, wait=False)
                self.update_watch()
        finally:
            self.started_up.set()

    # ------------------------------------------------------------------ re-exec (issue 14)

    def hand_over(self) -> tuple[str, str | None]:
        """The applied config and, when they differ from it (a `scale`, a rollout that had
        to stop), the engine's definitions, as `dump` text for the next image."""
        applied = dump.dump(self.desired)
        specs = self.engine.specs()
        if specs == self.desired.apps:
            return applied, None
        return applied, dump.dump(dataclasses.replace(self.desired, apps=specs))

    def pause_checks(self) -> None:
        """A re-exec is near: no health check may run into it (one in flight is killed; its
        instance keeps the health it has)."""
        self.health.close()

    def resume_checks(self) -> None:
        """The re-exec did not happen: the health checks go on."""
        self.health = health.HealthChecks(self.engine, self.recycle,
                                          command=self._check_command)
        self.health.configure(self.engine.specs())

    def take_over(self, engine_apps: Mapping[str, Any] | None,
                  slots: Iterable[handover.SlotRecord]) -> None:
        """Start-up after a re-exec: the instances the previous image ran go on (no recovery,
        no apply: the desired state is the one it had applied), with the engine's definitions
        it had (`engine_apps`, else the applied ones)."""
        engine = self.engine
        engine.set_specs(engine_apps if engine_apps is not None else self.desired.apps)
        engine.take_over(slots)
        self.monitors.configure(engine.specs(), self.desired.daemon)
        self.health.configure(engine.specs())
        self.update_watch()
        self.started_up.set()

    def request_shutdown(self) -> None:
        """SIGTERM/SIGINT/`procsup shutdown`: stop everything, then let the daemon exit."""
        if not self.shutting_down:
            self.engine.begin_shutdown()
            self.monitors.close()  # no restart may begin while everything stops
            self.health.close()
            self.log.info("shutting down: stopping every app")
            self.spawn_task(self._shutdown())

    async def _shutdown(self) -> None:
        timeout = self.desired.daemon.shutdown_timeout
        try:
            await self.started_up.wait()  # recovery first: its slots must exist to be stopped
            await asyncio.wait_for(self._stop_everything(), timeout)
        except TimeoutError:
            self.log.error("shutdown_timeout (%.1fs) passed: killing what is left", timeout)
            self.engine.signal([v.ref for v in self.engine.snapshot()], signal.SIGKILL)
        finally:
            self._exit.set()

    async def _stop_everything(self) -> None:
        # After a running apply's step (it starts nothing more once shutting down, and a
        # rollout gives up), so that no instance is started behind stop_all's back; waiting
        # for the lock counts against shutdown_timeout too.
        async with self.lock:
            await self.engine.stop_all()

    async def wait_exit(self) -> None:
        await self._exit.wait()

    # ------------------------------------------------------------------ desired state

    def running(self) -> dict[str, reconcile.Running]:
        """What runs, as the planner sees it."""
        out = {}
        for name, spec in self.engine.specs().items():
            views = [v for v in (self.engine.current(name) or {}).values() if not v.retiring]
            stopped = tuple(v.id.index for v in views if v.state is State.STOPPED)
            out[name] = reconcile.Running(spec, len(views), stopped)
        return out

    async def load(self) -> Desired:
        """Read the config file again (includes, profile), off the loop, within the loader's
        deadline; raises ConfigError."""
        return await self.loader.load()

    def _read(self) -> Desired:
        """The load itself, on the loader's worker thread: touches no state of the loop."""
        path = self.desired.daemon.config_path  # never changes: the file procsupd was given
        try:
            return config.load(
                path, profile=self.profile_override, require_root_owned=os.geteuid() == 0)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", file=path) from None

    def plan(self, new: Desired) -> reconcile.Plan:
        return reconcile.plan(self.running(), new.apps, self.desired.daemon, new.daemon,
                              self.disabled)

    def _refs(self, app: str, indexes: Iterable[int]) -> list[Ref]:
        current = self.engine.current(app) or {}
        return [current[i].ref for i in indexes if i in current]

    async def apply(
        self, new: Desired, *, wait: bool, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Make `new` the desired state and execute the plan that gets there. One apply at a
        time; stops run (and finish) before anything starts, so freed resources are free. A
        rollout that had to stop is appended to `failures`; its app keeps the definition its
        instances still run, and the config counts as not applied."""
        if failures is None:
            failures = []
        engine = self.engine
        starting: Marks = {}
        async with self.lock:
            if self.shutting_down:
                return reconcile.Plan()
            plan = self.plan(new)
            self.restart_daemon = plan.restart_daemon
            old_daemon = self.desired.daemon
            # Keep the settings a running daemon cannot change; take every live one.
            self.desired = dataclasses.replace(
                new, daemon=dataclasses.replace(
                    new.daemon, **{k: getattr(old_daemon, k) for k in reconcile.RESTART_DAEMON_KEYS}
                ),
            )
            retired: list[View] = []
            for action in plan.actions:
                if action.kind in _RETIRES:
                    retired += engine.retire(self._refs(action.app, action.instances))
            await engine.stopped([v.ref for v in retired if v.live])
            previous = engine.specs()
            engine.set_specs(new.apps)
            failed_before = len(failures)
            for action in plan.actions:
                refs = self._refs(action.app, action.instances)
                if action.kind is Kind.ADD or (
                        action.app in self.disabled and action.kind not in _RETIRES):
                    # (Also what a `disable` that came while this apply ran holds back.)
                    for i in action.instances:
                        engine.add(action.app, i)
                elif action.kind is Kind.RELOAD:
                    failure = await self.rolling(action.app, action.instances)
                    if failure:
                        self.log.error("apply: %s", failure)
                        failures.append(failure)
                        engine.set_spec(action.app, previous[action.app])  # what still runs
                elif action.kind is Kind.REBIND:
                    engine.stop(refs)
                    await engine.stopped(refs)
                    starting.update(engine.start(refs))
                elif action.kind is Kind.RESTART:
                    starting.update(engine.restart(refs))
                elif action.kind in (Kind.START, Kind.SCALE_UP, Kind.RESUME):
                    for i in action.instances:
                        if self.shutting_down:
                            break  # SIGTERM meanwhile: start nothing more
                        ref = engine.add(action.app, i)
                        if action.app in self.disabled:  # disabled meanwhile: slots only
                            continue
                        starting.update(engine.start([ref]))
                        if len(starting) % _YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # record what runs so far; answer clients
            self.config_error = "; ".join(failures[failed_before:]) or None
            for line in plan.describe():
                self.log.info("apply: %s", line)
            for warning in new.warnings:
                self.log.warning("config: %s", warning)
            self.monitors.configure(engine.specs(), self.desired.daemon)
            self.health.configure(engine.specs())
        if wait and starting:
            # What this apply started and did not get running (a crash loop, a command that
            # cannot run) is a failure of the update, though the config is applied.
            failures += [_not_started(v) for v in await engine.started(starting)
                         if v.state not in (State.RUNNING, State.STOPPED)]
        return plan

    async def scale(self, app: str, count: int, *, wait: bool) -> list[View]:
        """`procsup scale`: run `count` instances of `app` until the next config apply; the
        instances that went and the ones added, as they ended up (after waiting)."""
        engine = self.engine
        async with self.lock:
            if self.shutting_down:
                return []  # everything stops; nothing is scaled
            current = {i: v for i, v in (engine.current(app) or {}).items() if not v.retiring}
            retired = engine.retire([v.ref for i, v in current.items() if i >= count])
            # PROCSUP_INSTANCES of the next runs; per-instance log names when crossing 1
            engine.set_spec(app, dataclasses.replace(engine.specs()[app], instances=count))
            added = [engine.add(app, i) for i in range(len(current), count)]
            marks = {} if app in self.disabled else engine.start(added)  # disabled: stopped
            self.monitors.configure(engine.specs(), self.desired.daemon)
            self.health.configure(engine.specs())
        gone = {v.ref: v for v in retired}
        if wait:
            gone.update((v.ref, v) for v in await engine.stopped(list(gone)))
            return [*gone.values(), *await engine.started(marks), *engine.views(
                [r for r in added if r not in marks])]
        return [*gone.values(), *engine.views(added)]

    # ------------------------------------------------------------------ disable and enable

    async def disable(self, names: Iterable[str], *, wait: bool) -> list[View]:
        """`procsup disable`: record `names` as disabled in state_dir, durably and before
        anything stops (OSError when it cannot be written: then nothing changed), keep every
        plan from starting them from now on, and stop their instances; how those ended up."""
        names = list(dict.fromkeys(names))
        self._set_disabled(self.disabled | set(names))
        refs = [v.ref for n in names for v in (self.engine.current(n) or {}).values()]
        self.engine.stop(refs)
        return await self.engine.stopped(refs) if wait else self.engine.views(refs)

    def enable(self, names: Iterable[str]) -> Marks:
        """`procsup enable`: remove `names` from the record (a name the config does not have
        too: that is how its record goes), then start the instances of those that were
        disabled (an app that was not is left as it is); the marks for `started`. OSError when
        the record cannot be written (then nothing changed)."""
        lifted = [n for n in dict.fromkeys(names) if n in self.disabled]
        self._set_disabled(self.disabled - set(lifted))
        return self.engine.start(
            [v.ref for n in lifted for v in (self.engine.current(n) or {}).values()])

    def _set_disabled(self, names: frozenset[str]) -> None:
        if names != self.disabled:
            statefile.write_disabled(self.desired.daemon.state_dir, names)
        self.disabled = names
        self.engine.set_disabled(names)

    async def reload_apps(self, targets: Mapping[str, list[int]], *,
                          out: rollout.Reloaded | None = None) -> str | None:
        """`procsup reload`: each instance the way `reloading.way` says (rolling, one at a
        time; stop-then-start; or reload_signal in place); the failure that stopped it, or
        None. `out` collects the way of each instance and the lines to tell the user."""
        async with self.lock:
            return await rollout.reload(self.engine, targets, held=self.held, log=self.log,
                                        out=rollout.Reloaded() if out is None else out)

    async def rolling(
        self, app: str, indexes: Iterable[int], *, only_running: bool = False
    ) -> str | None:
        """`rollout.rolling`: replacement first, one instance at a time."""
        return await rollout.rolling(self.engine, app, indexes, only_running=only_running)

    # ------------------------------------------------------------------ monitors (monitors.py)

    def leaders(self) -> dict[tuple[str, int], monitors.Leader]:
        """The leader pid of every live instance of the applied apps. While a reload replaces
        an instance, its replacement (later in the snapshot) stands for it: a leaking
        replacement is a leaking instance too, and the old one is on its way out."""
        out: dict[tuple[str, int], monitors.Leader] = {}
        for v in self.engine.snapshot():
            if v.pid is not None and not v.retiring and v.state in LIVE_STATES:
                started = v.inst.started_at
                out[(v.id.app, v.id.index)] = monitors.Leader(
                    v.pid, self.loop.time() if started is None else started)
        return out

    def recycle(self, app: str, index: int | None, reason: str, *, revive: bool = False,
                unstable: str | None = None, pid: int | None = None) -> None:
        """A monitor (or a health check) wants fresh processes for `app` (every instance when
        `index` is None; for one instance, `pid` is its process that was found wanting: a
        replacement queued behind another change leaves alone an instance it no longer runs).
        A cluster app runs side by side with its replacements (the daemon holds its sockets):
        replace them one at a time, as `reload` does, so no request is lost. Any other app is
        restarted in place: a fork app may bind its own port, which a replacement could not.
        With `revive`, instances at rest that no command stopped (exited, errored, in backoff)
        are started as well, with fresh restart counters, as a `restart` command would.
        With `unstable` (how the run of process `pid` failed) the run is a failed one: stopped
        in place and left to the restart policy, cluster app or not, since a replacement would
        fail the same way. (A reload's replacement that is not yet the instance is recycled as
        usual instead: the reload is under way.)"""
        specs = self.engine.specs()
        if self.shutting_down or app not in specs or app in self.disabled:
            return  # (a disabled app runs nothing a monitor could recycle or revive)
        current = self.engine.current(app) or {}
        if unstable is not None and not (
                index is not None and index in current and current[index].pid == pid):
            unstable = None
        chosen = [(i, v) for i, v in current.items()
                  if not v.retiring and (index is None or i == index)]
        # A running instance gets a fresh process; one stopped by a command stays stopped.
        indexes = [i for i, v in chosen if v.state in (State.RUNNING, State.STARTING)]
        if revive:
            for i, v in chosen:
                if v.state in (State.EXITED, State.ERRORED, State.BACKOFF):
                    self.log.info("%s:%d: starting it again: %s", app, i, reason)
                    self.engine.restart([v.ref], note=f"restarted: {reason}")
        if not indexes:
            return
        if specs[app].exec_mode is ExecMode.CLUSTER and unstable is None:
            self.spawn_task(self._replace(app, indexes, reason, pid if index is not None else None))
            return
        self.log.info("%s: restarting %s: %s", app,
                      "every instance" if index is None else f"instance {index}", reason)
        for i in indexes:
            self.engine.recycle(current[i].ref, reason, unstable=unstable,
                                note=f"restarted: {reason}")

    async def _replace(self, app: str, indexes: list[int], reason: str, pid: int | None) -> None:
        self.log.info("%s: replacing %s one at a time: %s", app,
                      ", ".join(f"{app}:{i}" for i in indexes), reason)
        async with self.lock:
            # What changed while this waited for an apply, a scale or a reload: only the
            # instances still running are replaced (a stopped one stays stopped), and only
            # the process `pid` that was asked about (not one that replaced it meanwhile).
            current = self.engine.current(app) or {}
            indexes = [i for i in indexes if i in current and not current[i].retiring
                       and current[i].state in (State.RUNNING, State.STARTING)
                       and pid in (None, current[i].pid)]
            if self.shutting_down or not indexes:
                return
            failure = await self.rolling(app, indexes, only_running=True)
            after = self.engine.current(app) or {}
            for i in indexes:
                v = after.get(i)
                if v is not None and v.ref != current[i].ref:
                    self.engine.annotate(v.ref, f"replaced: {reason}")
                elif v is not None and failure:
                    self.engine.annotate(v.ref, f"{reason}; {failure}")
        if failure:
            self.log.error("%s: %s", app, failure)

    # ------------------------------------------------------------------ config reload triggers

    async def reload(
        self, trigger: str, *, wait: bool = False, failures: list[str] | None = None
    ) -> reconcile.Plan:
        """Read the config and apply it (`update`, SIGHUP, a saved file). An invalid config
        changes nothing: the error is logged, kept for `status`, and raised."""
        try:
            new = await self.load()
        except ConfigError as exc:
            self.config_error = str(exc)
            self.log.error("%s: config not applied: %s", trigger, exc)
            self.update_watch(exc)
            raise
        plan = await self.apply(new, wait=wait, failures=failures)
        self.update_watch()
        return plan

    def request_reload(self, trigger: str = "SIGHUP") -> None:
        """SIGHUP: apply the config in the background."""
        self.spawn_task(self._reload_quietly(trigger))

    async def _reload_quietly(self, trigger: str) -> None:
        try:
            await self.reload(trigger)
        except ConfigError:
            pass  # logged and shown in status by reload()

    def update_watch(self, failed: ConfigError | None = None) -> None:
        """(Re)watch the config files, or stop watching, per `watch_config`. After a `failed`
        load, the files and include globs that config named are watched as well, so that a
        fix of a file it newly includes is applied on save too."""
        d = self.desired
        if not d.daemon.watch_config:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            return
        if self._watch is None:
            self._watch = watch.ConfigWatch(self.loop, self._on_config_event)
        files, include = d.files, d.daemon.include
        if failed is not None:
            files = tuple(dict.fromkeys((*files, *failed.files)))
            include = tuple(dict.fromkeys((*include, *failed.include)))
        self._watch.watch(files, include)

    def _on_config_event(self, path: str) -> None:
        """A watched file changed: apply once the burst of events is over (debounced)."""
        if self._debounce is not None:
            self._debounce.cancel()
        self._debounce = self.loop.call_later(_DEBOUNCE, self._saved, False)

    def _saved(self, recheck: bool) -> None:
        self._debounce = None
        if not self.shutting_down:
            self.spawn_task(self._apply_saved(recheck))

    async def _apply_saved(self, recheck: bool) -> None:
        try:
            new = await self.load()
        except ConfigError as exc:
            if self._debounce is not None or self.shutting_down:
                return  # saved again meanwhile: that save is read in its turn
            if not recheck:  # maybe half-written: read again before calling it broken
                self._debounce = self.loop.call_later(_RECHECK, self._saved, True)
                return
            self.config_error = str(exc)
            self.log.error("saved config not applied: %s", exc)
            self.update_watch(exc)
            return
        await self.apply(new, wait=False)
        self.update_watch()


def _not_started(v: View) -> str:
    why = v.inst.reason or (f"last run {units.exit_code_text(v.inst.exit_code)}"
                            if v.inst.exit_code is not None else "not ready")
    return f"{v.id} is {v.state.value}: {why}"
