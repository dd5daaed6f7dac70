"""The control commands: what each request of docs/protocol.md does (layer 4).

`Commands.dispatch` is the interface `control.ControlServer` calls; it resolves names into
instances, asks the engine (`supervisor`: start, stop, restart, signal, snapshot) or the applier
(`apply`: configs, scale, reload, shutdown) to act through their intents, waits when asked to,
and shapes the JSON results. It decides nothing about processes: that is `lifecycle` (per
instance) and `reconcile` (per config).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from procsup import (
    __version__,
    deps,
    dump,
    health,
    lifecycle,
    logs,
    metrics,
    outlets,
    rollout,
    units,
)
from procsup.apply import Applier
from procsup.errors import ConfigError, RemoteError, WireError
from procsup.model import LOG_TARGETS, STDIO, InstanceView, RestartPolicy, State
from procsup.protocol import VERSION
from procsup.supervisor import Ref, Supervisor, View

#: Pushes one streamed reply frame to the client (`control.Send`).
Send = Callable[[object], Awaitable[None]]
#: Queue bound for one `logs -f` follower; a follower that falls this far behind is dropped.
_FOLLOW_QUEUE = 4096
#: Commands still answered while the daemon shuts down.
_WHILE_SHUTTING_DOWN = frozenset({"ping", "version", "status", "logs", "reread", "dump"})

LogFile = tuple[str, "int | None", str, str]  # app, instance (None: shared file), stream, path
#: follow(path, callback): every chunk written to a log file, until the returned unsubscriber.
Follow = Callable[[str, logs.Follower], Callable[[], None]]


class Reexecutor(Protocol):
    """The daemon's re-exec (`reexec.Reexec`): `request` raises RemoteError when it does not
    happen; `info` is what `version` tells of it."""

    async def request(self, trigger: str) -> None: ...
    def info(self) -> dict[str, object]: ...


def _completed(v: View) -> bool:
    """A one-shot task (not restarted when it ends) whose last run exited with code 0, and
    that runs no more: what `depends_on = { x = "completed" }` waits for."""
    return (v.spec.autorestart is not RestartPolicy.ALWAYS
            and deps.completed(v.state, v.inst.exit_code))


class Commands:
    """Implements `control.Commands` on top of the engine and the applier."""

    def __init__(self, engine: Supervisor, applier: Applier, *, follow: Follow,
                 cgroups: bool = False,
                 cgroup_memory: Callable[[Iterable[int]], dict[int, int]] | None = None,
                 ) -> None:
        self.engine = engine
        self.applier = applier
        self.follow = follow
        self.metrics = metrics.Metrics()
        #: whether the process layer runs each instance in a cgroup of its own (`version`),
        #: and the memory of those cgroups by leader pid (`status`)
        self.cgroups = cgroups
        self.cgroup_memory = cgroup_memory
        self.reexec: Reexecutor | None = None  # set by the daemon (it needs the server)

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: object, send: Send) -> object:
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            raise RemoteError(
                WireError.UNKNOWN_COMMAND.value,
                f"this procsupd ({__version__}) does not support {cmd!r}",
            )
        if self.engine.shutting_down and cmd not in _WHILE_SHUTTING_DOWN:
            raise RemoteError(WireError.SHUTTING_DOWN.value, "procsupd is shutting down")
        if cmd not in ("ping", "version"):
            await self.applier.started_up.wait()  # recovery and the first start come first
        result: object = await handler(args, send)
        return result

    # ------------------------------------------------------------------ selection and results

    def select(self, names: Iterable[str]) -> list[View]:
        """Resolve `all`, `app` and `app:i` into instances, or raise unknown_app."""
        # Keyed by the instance itself: during a reload an instance id has two processes (the
        # old one and its replacement), and `all` must reach both.
        chosen: dict[Ref, View] = {}
        specs = self.engine.specs()
        for name in names:
            if name == "all":
                chosen.update((v.ref, v) for v in self.engine.snapshot())
                continue
            app, _, idx = name.partition(":")
            slots = self.engine.current(app)
            if app in specs and not slots:
                raise RemoteError(
                    WireError.UNKNOWN_APP.value,
                    f"{app} has no instances (instances = 0): run some with "
                    f"procsup scale {app} N")
            if app not in specs or slots is None or (
                idx and (not idx.isdigit() or int(idx) not in slots)
            ):
                known = ", ".join(specs) or "none"
                if app in specs and slots is not None:
                    have = ", ".join(f"{app}:{i}" for i in sorted(slots))
                    raise RemoteError(WireError.UNKNOWN_APP.value,
                                      f"unknown instance: {name} ({app} has {have})")
                raise RemoteError(
                    WireError.UNKNOWN_APP.value, f"unknown app or instance: {name} (apps: {known})"
                )
            for i, v in slots.items():
                if not idx or int(idx) == i:
                    chosen[v.ref] = v
        return list(chosen.values())

    @staticmethod
    def outcome(views: Iterable[View], ok: Callable[[View], bool],
                why: Callable[[View], str | None] = lambda v: None,
                more: Callable[[View], dict[str, object]] | None = None) -> dict[str, object]:
        """Per instance: state, pid, reason (for a failure without one, what `why` says of
        it, else the last exit), and the fields `more` gives."""
        views = list(views)
        rows = []
        for v in views:
            reason = v.inst.reason
            if reason is None and not ok(v):
                reason = why(v)
            if reason is None and not ok(v) and v.inst.exit_code is not None:
                reason = f"last run {units.exit_code_text(v.inst.exit_code)}"
            rows.append({
                "app": v.id.app, "instance": v.id.index, "state": v.state.value,
                "pid": v.pid, "reason": reason, "exit_code": v.inst.exit_code,
                **(more(v) if more is not None else {}),
            })
        return {"instances": rows, "failed": not all(ok(v) for v in views)}

    @staticmethod
    def _ok_started(wait: bool) -> Callable[[View], bool]:
        """After waiting, a start succeeded when the instance runs (a crash loop that is
        `starting` again did not), or, a one-shot task, completed; without waiting, only an
        immediate spawn failure fails."""
        if wait:
            return lambda v: v.state is State.RUNNING or _completed(v)
        return lambda v: v.state is not State.ERRORED

    # ------------------------------------------------------------------ simple commands

    async def cmd_ping(self, args: dict[str, Any], send: Send) -> object:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def cmd_version(self, args: dict[str, Any], send: Send) -> object:
        reply: dict[str, object] = {"version": __version__, "protocol": VERSION,
                                    "cgroups": self.cgroups, "pid": os.getpid()}
        if self.reexec is not None:
            reply.update(self.reexec.info())
        return reply

    async def cmd_reexec(self, args: dict[str, Any], send: Send) -> object:
        """Check the config with the code now installed, then re-exec (after this reply): the
        client waits for `version` to show the new image (`reexecs` grown)."""
        if self.reexec is None:
            raise RemoteError(WireError.FAILED.value, "this procsupd cannot re-execute itself")
        before = self.reexec.info()
        await self.reexec.request("procsup daemon-reexec")
        return {**before, "version": __version__, "pid": os.getpid()}

    def _dependencies(self, views: list[View]) -> list[Ref]:
        """The instances a start of `views` brings up first (contract: "start APP also starts
        APP's stopped or errored dependencies first"): of every app they depend on, directly
        or not, the ones at rest that did not complete (a met `completed` is not run again;
        a disabled app stays as it is, and its dependents say so)."""
        specs = self.engine.specs()
        chosen = {v.id.app for v in views}
        found = []
        for app in deps.closure(chosen, specs):
            if app in chosen or app in self.engine.disabled:
                continue
            for v in (self.engine.current(app) or {}).values():
                done = _completed(v)
                if not v.retiring and not done and v.state in (
                        State.STOPPED, State.ERRORED, State.EXITED):
                    found.append(v.ref)
        return found

    def _not_disabled(self, names: Iterable[str], views: list[View]) -> list[View]:
        """What start, restart and reload may reach: a disabled app named is an error (exit
        1, before anything is done); `all` leaves its instances out."""
        off = self.applier.disabled
        for app in (n.partition(":")[0] for n in names if n != "all"):
            if app in off:
                raise RemoteError(WireError.FAILED.value,
                                  f"{app} is disabled: `procsup enable {app}` starts it")
        return [v for v in views if v.id.app not in off]

    def _whole_apps(self, cmd: str, names: list[str], *, configured: bool) -> list[str]:
        """The names for disable and enable: whole apps only; with `configured`, each must be
        an app of the applied config (enable also takes a disabled name the config lost)."""
        specs, off = self.engine.specs(), self.applier.disabled
        for name in names:
            if name == "all" or ":" in name:
                raise RemoteError(WireError.BAD_REQUEST.value,
                                  f"{cmd} takes app names, not {name!r}")
            if name not in specs and (configured or name not in off):
                self.select([name])  # raises unknown_app with the list of apps
        return list(dict.fromkeys(names))

    def _toggled(self, names: list[str], before: frozenset[str]) -> list[dict[str, object]]:
        """Per app: whether it is disabled now, whether this command changed that, and
        whether the applied config has it."""
        specs, now = self.engine.specs(), self.applier.disabled
        return [{"app": n, "disabled": n in now, "changed": (n in now) != (n in before),
                 "configured": n in specs} for n in names]

    def _record_failed(self, exc: OSError) -> RemoteError:
        where = self.applier.desired.daemon.state_dir
        return RemoteError(WireError.FAILED.value,
                           f"cannot record the disabled apps in {where}: "
                           f"{exc.strerror or exc}; nothing was changed")

    async def cmd_disable(self, args: dict[str, Any], send: Send) -> object:
        """Record the apps as disabled (state_dir), then stop them; they stay stopped across
        applies and daemon restarts until `enable`."""
        names = self._whole_apps("disable", args["apps"], configured=True)
        before, wait = self.applier.disabled, bool(args.get("wait", True))
        try:
            views = await self.applier.disable(names, wait=wait)
        except OSError as exc:
            raise self._record_failed(exc) from None
        result = self.outcome(views, lambda v: not wait or not v.live)
        result["apps"] = self._toggled(names, before)
        return result

    async def cmd_enable(self, args: dict[str, Any], send: Send) -> object:
        """Remove the apps from the disabled record and start them."""
        names = self._whole_apps("enable", args["apps"], configured=False)
        before, wait = self.applier.disabled, bool(args.get("wait", True))
        try:
            marks = self.applier.enable(names)
        except OSError as exc:
            raise self._record_failed(exc) from None
        views = await self.engine.started(marks) if wait else self.engine.views(marks)
        result = self.outcome(views, self._ok_started(wait))
        result["apps"] = self._toggled(names, before)
        return result

    async def _start(self, args: dict[str, Any], restart: bool) -> object:
        views = self._not_disabled(args["apps"], self.select(args["apps"]))
        refs = [v.ref for v in views]
        # Only instances of the table start: one retiring, a reload's replacement or an
        # outgoing old instance is on its way out already (and not reported).
        marks = self.engine.start(self._dependencies(views))
        marks.update(self.engine.restart(refs) if restart else self.engine.start(refs))
        wait = bool(args.get("wait", True))
        views = await self.engine.started(marks) if wait else self.engine.views(marks)
        return self.outcome(views, self._ok_started(wait))

    async def cmd_start(self, args: dict[str, Any], send: Send) -> object:
        return await self._start(args, restart=False)

    async def cmd_restart(self, args: dict[str, Any], send: Send) -> object:
        return await self._start(args, restart=True)

    async def cmd_stop(self, args: dict[str, Any], send: Send) -> object:
        views = self.select(args["apps"])
        refs = [v.ref for v in views]
        # Dependents before their dependencies; each group is done when the processes this
        # stop was about are gone. Without waiting, the ordered stop goes on by itself.
        stop = asyncio.ensure_future(self.engine.stop_in_order(refs))
        stop.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not args.get("wait", True):
            await asyncio.sleep(0)  # the first group is told at once
            result = self.outcome(self.engine.views(refs), lambda v: True)
        else:
            result = self.outcome(await asyncio.shield(stop), lambda v: True)
        # "stop APP stops APP only and names its running dependents"
        stopped = {v.id.app for v in views}
        specs = self.engine.specs()
        running = [d for app in stopped for d in deps.dependents(app, specs)
                   if d not in stopped and any(
                       v.live for v in (self.engine.current(d) or {}).values())]
        if running:
            result["dependents"] = sorted(set(running))
        return result

    async def cmd_reload(self, args: dict[str, Any], send: Send) -> object:
        """Each instance the way `reloading.way` says: rolling (the replacement ready before
        the old one stops), stop-then-start (announced in `notices`), or reload_signal in
        place. Each row says its `way`."""
        views = self._not_disabled(args["apps"], self.select(args["apps"]))
        targets: dict[str, list[int]] = {}
        for v in views:
            targets.setdefault(v.id.app, []).append(v.id.index)
        wait = bool(args.get("wait", True))
        done = rollout.Reloaded()
        run = asyncio.ensure_future(self.applier.reload_apps(targets, out=done))
        run.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not wait:
            return self.outcome(views, lambda v: True)
        failure = await asyncio.shield(run)  # a client that goes away does not stop the rollout
        current = [c for v in views
                   if (c := (self.engine.current(v.id.app) or {}).get(v.id.index)) is not None]
        # After a failure, an instance still on its old process was not reloaded: say that,
        # not its last run's exit (an old one's, not the replacement's that failed: `error`).
        # (One reloaded in place by reload_signal keeps its process by design.)
        before = {v.id: v.pid for v in views}
        kept = {c.ref for c in current
                if failure and c.pid is not None and c.pid == before.get(c.id)
                and done.ways.get((c.id.app, c.id.index)) != "signal"}
        result = self.outcome(
            current, lambda v: v.state is State.RUNNING and v.ref not in kept,
            lambda v: "not reloaded: the old process keeps running" if v.ref in kept else None,
            lambda v: {"way": done.ways.get((v.id.app, v.id.index))})
        result["notices"] = done.notices
        if failure:
            result["error"] = failure
            result["failed"] = True
        return result

    async def cmd_signal(self, args: dict[str, Any], send: Send) -> object:
        refs = [v.ref for v in self.select(args["apps"])]
        done = [{"app": v.id.app, "instance": v.id.index, "pid": v.pid}
                for v in self.engine.signal(refs, int(args["signal"]))]
        return {"signalled": done, "failed": not done}

    async def cmd_shutdown(self, args: dict[str, Any], send: Send) -> object:
        count = sum(1 for v in self.engine.snapshot() if v.live)
        self.applier.request_shutdown()
        if args.get("wait", True):
            await self.applier.wait_exit()
        return {"stopped": count}

    # ------------------------------------------------------------------ status

    async def cmd_status(self, args: dict[str, Any], send: Send) -> object:
        views = self.select(args.get("apps") or ["all"])
        now = self.engine.clock.time()
        live = {v.pid: now for v in views if v.pid is not None}
        usage = self.metrics.sample(live, now) if live else {}
        if self.cgroup_memory is not None and live:  # cgroups (issue 13): the cgroup's memory
            for pid, used in self.cgroup_memory(live).items():
                if pid in usage:
                    usage[pid] = (usage[pid][0], used)
        monitors = self.applier.monitors
        rows = []
        for v in views:
            cpu, mem = usage.get(v.pid, (None, None)) if v.pid is not None else (None, None)
            up = lifecycle.uptime(v.inst, now)
            # While unhealthy, what its checks say comes before why it was last restarted.
            unhealthy = health.reason(v.inst, v.spec.health_failures)
            rows.append(
                InstanceView(
                    app=v.id.app, instance=v.id.index, pid=v.pid, state=v.state,
                    uptime=round(up, 3) if up is not None else None, restarts=v.inst.restarts,
                    cpu=round(cpu, 1) if cpu is not None else None, memory=mem,
                    exit_code=v.inst.exit_code, reason=v.inst.reason or unhealthy or v.note,
                    status=v.status, next_cron_restart=monitors.next_cron_restart(v.id.app),
                    health=health.status_of(v.inst, v.spec.health is not None),
                    disabled=v.id.app in self.applier.disabled,
                    log_errors=tuple(h.to_json() for h in v.log_health),
                    warning=v.warning,
                ).to_json()
            )
        a = self.applier
        d = a.desired
        return {
            "config": {
                "path": d.daemon.config_path,
                "applied": a.config_error is None,
                "error": a.config_error,
                "profile": d.profile,
                "restart_daemon": list(a.restart_daemon),
            },
            "instances": rows,
        }

    # ------------------------------------------------------------------ config

    async def _load(self) -> Any:
        try:
            return await self.applier.load()
        except ConfigError as exc:
            self.applier.config_error = str(exc)
            raise RemoteError(WireError.INVALID_CONFIG.value, str(exc), exc.to_dict()) from None

    async def cmd_reread(self, args: dict[str, Any], send: Send) -> object:
        new = await self._load()
        return {**self.applier.plan(new).to_json(), "warnings": list(new.warnings)}

    async def cmd_update(self, args: dict[str, Any], send: Send) -> object:
        try:
            wait = bool(args.get("wait", True))
            failures: list[str] = []
            if not wait:  # the plan now; the apply (maybe a long rollout) goes on by itself
                new = await self._load()
                plan = self.applier.plan(new)
                self.applier.request_reload("update")
                return {**plan.to_json(), "failed": False, "warnings": list(new.warnings)}
            apply = asyncio.ensure_future(
                self.applier.reload("update", wait=wait, failures=failures))
            # The apply goes on even if this client goes away (Ctrl-C only stops the waiting);
            # its outcome is then only logged, so retrieve it to keep asyncio quiet.
            apply.add_done_callback(lambda f: f.cancelled() or f.exception())
            plan = await asyncio.shield(apply)
        except ConfigError as exc:
            raise RemoteError(WireError.INVALID_CONFIG.value, str(exc), exc.to_dict()) from None
        failed = bool(failures) or any(
            v.state is State.ERRORED
            for a in plan.actions
            for v in (self.engine.current(a.app) or {}).values()
        )
        result: dict[str, object] = {**plan.to_json(), "failed": failed,
                                     "warnings": list(self.applier.desired.warnings)}
        if failures:
            result["error"] = "; ".join(failures)
        return result

    async def cmd_scale(self, args: dict[str, Any], send: Send) -> object:
        app = str(args["app"])
        if app not in self.engine.specs():
            self.select([app])  # raises unknown_app with the list of apps
        wait = bool(args.get("wait", True))
        views = await self.applier.scale(app, int(args["instances"]), wait=wait)
        if self.engine.shutting_down and not views:
            raise RemoteError(WireError.SHUTTING_DOWN.value, "procsupd is shutting down")
        ok = self._ok_started(wait)
        held = app in self.applier.disabled  # its new instances are made stopped, by design
        return self.outcome(views, lambda v: v.retiring or ok(v) or held)

    async def cmd_dump(self, args: dict[str, Any], send: Send) -> object:
        return {"toml": dump.dump(self.applier.desired)}

    # ------------------------------------------------------------------ logs

    def log_files(self, app: str | None, stream: str) -> list[LogFile]:
        """(app, instance or None for a shared file, stream, path) of the selected logs that
        are files (not "-" or "journal": `procsup logs` has nothing to read there)."""
        seen: dict[str, LogFile] = {}
        for v in self.select([app] if app else ["all"]):
            out, err = v.spec.log_paths(v.id.index)
            per_instance = v.spec.instances > 1 and not v.spec.merge_logs
            idx = v.id.index if per_instance else None
            for name, path in (("out", out), ("err", err)):
                if path is None or path in LOG_TARGETS or stream not in (name, "both"):
                    continue  # discarded, or not a file: procsupd's stdio, the journal
                seen.setdefault(path, (v.id.app, idx, "both" if out == err else name, path))
        return list(seen.values())

    def log_elsewhere(self, app: str | None, stream: str) -> list[dict[str, object]]:
        """The selected streams that `procsup logs` cannot read, one entry per app and target:
        `target` "-" (procsupd's stdout or stderr, with the `place` it leads to), "journal",
        or None (discarded); `stream` "out", "err", or "both" when both go to one target
        (never for "-": stdout and stderr are two places); `instances`, the app's selected
        instance numbers. So the client can say where those lines are instead of nothing."""
        apps: dict[str, tuple[View, set[int]]] = {}
        for v in self.select([app] if app else ["all"]):
            apps.setdefault(v.id.app, (v, set()))[1].add(v.id.index)
        found: list[dict[str, object]] = []
        for name, (view, indices) in apps.items():
            spec = view.spec
            streams = [(s, t) for s, t in (("out", spec.out_file), ("err", spec.error_file))
                       if stream in (s, "both") and (t is None or t in LOG_TARGETS)]
            if len(streams) == 2 and streams[0][1] == streams[1][1] != STDIO:
                streams = [("both", streams[0][1])]
            for which, target in streams:
                entry: dict[str, object] = {"app": name, "instances": sorted(indices),
                                            "stream": which, "target": target,
                                            "json": spec.log_format == "json"}
                if target == STDIO:
                    entry["place"] = outlets.stdio_place(1 if which == "out" else 2, os.environ)
                found.append(entry)
        return found

    async def cmd_logs(self, args: dict[str, Any], send: Send) -> object:
        stream = args.get("stream", "both")
        files = self.log_files(args.get("app"), stream)
        # Said in the first frame: which streams are not files, and how many files there are
        # (none: nothing to show or follow, and the client fails with the why).
        about = {"files": len(files), "elsewhere": self.log_elsewhere(args.get("app"), stream)}
        n = int(args.get("lines", 20))
        lines: list[dict[str, object]] = []
        for app, idx, stream, path in files if n > 0 else ():
            with contextlib.suppress(FileNotFoundError):
                lines.extend(
                    {"app": app, "instance": idx, "stream": stream,
                     "text": raw.decode("utf-8", "replace")}
                    for raw in logs.tail(path, n)
                )
        if not args.get("follow") or not files:
            return {"lines": lines, **about}
        await send({"lines": lines, **about})
        return await self._follow(files, send)

    async def _follow(self, files: list[LogFile], send: Send) -> object:
        queue: asyncio.Queue[tuple[LogFile, bytes]] = asyncio.Queue(_FOLLOW_QUEUE)
        overflow = False

        def push(meta: LogFile, chunk: bytes) -> None:
            nonlocal overflow
            try:
                queue.put_nowait((meta, chunk))
            except asyncio.QueueFull:
                overflow = True

        unsubscribe = [
            self.follow(meta[3], functools.partial(push, meta)) for meta in files
        ]
        try:
            while not overflow:
                (app, idx, stream, _), chunk = await queue.get()
                text = chunk.decode("utf-8", "replace")
                await send({"lines": [
                    {"app": app, "instance": idx, "stream": stream, "text": line}
                    for line in text.splitlines()
                ]})
            return {"lines": [], "end": "this follower fell too far behind; lines were skipped"}
        finally:
            for unsub in unsubscribe:
                unsub()
