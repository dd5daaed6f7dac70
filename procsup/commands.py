"""The control commands: what each request of docs/protocol.md does (layer 4).

`Commands.dispatch` is the interface `control.ControlServer` calls; it resolves names, asks the
supervisor to act, waits when asked to, and shapes the JSON results. It decides nothing about
processes: that is `lifecycle` (per instance) and `reconcile` (per config).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from procsup import __version__, dump, lifecycle, logs
from procsup.errors import ConfigError, RemoteError, WireError
from procsup.model import LIVE_STATES, InstanceView, State
from procsup.protocol import VERSION
from procsup.supervisor import Slot, Supervisor

#: Pushes one streamed reply frame to the client (`control.Send`).
Send = Callable[[object], Awaitable[None]]
#: Queue bound for one `logs -f` follower; a follower that falls this far behind is dropped.
_FOLLOW_QUEUE = 4096
#: Commands still answered while the daemon shuts down.
_WHILE_SHUTTING_DOWN = frozenset({"ping", "version", "status", "logs", "reread", "dump"})

LogFile = tuple[str, "int | None", str, str]  # app, instance (None: shared file), stream, path


class Commands:
    """Implements `control.Commands` on top of a `Supervisor`."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: object, send: Send) -> object:
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            raise RemoteError(
                WireError.UNKNOWN_COMMAND.value,
                f"this procsupd ({__version__}) does not support {cmd!r}",
            )
        if self.sup.shutting_down and cmd not in _WHILE_SHUTTING_DOWN:
            raise RemoteError(WireError.SHUTTING_DOWN.value, "procsupd is shutting down")
        if cmd not in ("ping", "version"):
            await self.sup.started_up.wait()  # recovery and the first start come first
        result: object = await handler(args, send)
        return result

    # ------------------------------------------------------------------ selection and results

    def select(self, names: Iterable[str]) -> list[Slot]:
        """Resolve `all`, `app` and `app:i` into slots, or raise unknown_app."""
        # Keyed by the slot itself: during a reload an instance id has two processes (the old
        # one and its replacement), and `all` must reach both.
        chosen: dict[int, Slot] = {}
        for name in names:
            if name == "all":
                chosen.update((id(s), s) for s in self.sup.all_slots())
                continue
            app, _, idx = name.partition(":")
            slots = self.sup.slots.get(app)
            if app in self.sup.specs and not slots:
                raise RemoteError(
                    WireError.UNKNOWN_APP.value,
                    f"{app} has no instances (instances = 0): run some with "
                    f"procsup scale {app} N")
            if app not in self.sup.specs or slots is None or (
                idx and (not idx.isdigit() or int(idx) not in slots)
            ):
                known = ", ".join(self.sup.specs) or "none"
                if app in self.sup.specs and slots is not None:
                    have = ", ".join(f"{app}:{i}" for i in sorted(slots))
                    raise RemoteError(WireError.UNKNOWN_APP.value,
                                      f"unknown instance: {name} ({app} has {have})")
                raise RemoteError(
                    WireError.UNKNOWN_APP.value, f"unknown app or instance: {name} (apps: {known})"
                )
            for i, slot in sorted(slots.items()):
                if not idx or int(idx) == i:
                    chosen[id(slot)] = slot
        return list(chosen.values())

    @staticmethod
    def outcome(slots: Iterable[Slot], ok: Callable[[Slot], bool]) -> dict[str, object]:
        """Per instance: state, pid, reason (for a failure without one, the last exit)."""
        slots = list(slots)
        rows = []
        for s in slots:
            reason = s.inst.reason
            if reason is None and not ok(s) and s.inst.exit_code is not None:
                code = s.inst.exit_code
                reason = f"last exit: code {code}" if code >= 0 else f"killed by signal {-code}"
            rows.append({
                "app": s.id.app, "instance": s.id.index, "state": s.inst.state.value,
                "pid": s.inst.pid, "reason": reason, "exit_code": s.inst.exit_code,
            })
        return {"instances": rows, "failed": not all(ok(s) for s in slots)}

    @staticmethod
    def _ok_started(wait: bool) -> Callable[[Slot], bool]:
        """After waiting, a start succeeded when the instance runs (a crash loop that is
        `starting` again did not); without waiting, only an immediate spawn failure fails."""
        if wait:
            return lambda s: s.inst.state is State.RUNNING
        return lambda s: s.inst.state is not State.ERRORED

    # ------------------------------------------------------------------ simple commands

    async def cmd_ping(self, args: dict[str, Any], send: Send) -> object:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def cmd_version(self, args: dict[str, Any], send: Send) -> object:
        return {"version": __version__, "protocol": VERSION}

    async def _feed_and_wait(
        self, args: dict[str, Any], event: lifecycle.Event
    ) -> tuple[list[Slot], bool]:
        slots = self.select(args["apps"])
        for slot in slots:
            self.sup.feed(slot, event)
        wait = bool(args.get("wait", True))
        if wait:
            await self.sup.wait(lambda: all(self.sup.started(s) for s in slots))
        return slots, wait

    async def cmd_start(self, args: dict[str, Any], send: Send) -> object:
        slots, wait = await self._feed_and_wait(args, lifecycle.Start())
        return self.outcome(slots, self._ok_started(wait))

    async def cmd_restart(self, args: dict[str, Any], send: Send) -> object:
        slots, wait = await self._feed_and_wait(args, lifecycle.Restart())
        return self.outcome(slots, self._ok_started(wait))

    async def cmd_stop(self, args: dict[str, Any], send: Send) -> object:
        slots = self.select(args["apps"])
        gens = {id(s): s.generation for s in slots}
        for slot in slots:
            self.sup.feed(slot, lifecycle.Stop())
        wait = bool(args.get("wait", True))

        def gone(s: Slot) -> bool:  # the processes this stop was about are gone
            return s.inst.state not in LIVE_STATES or s.generation != gens[id(s)]

        if wait:
            await self.sup.wait(lambda: all(gone(s) for s in slots))
        return self.outcome(slots, lambda s: not wait or gone(s))

    async def cmd_reload(self, args: dict[str, Any], send: Send) -> object:
        """Rolling restart: each instance's replacement is ready before the old one stops."""
        slots = self.select(args["apps"])
        targets: dict[str, list[int]] = {}
        for s in slots:
            targets.setdefault(s.id.app, []).append(s.id.index)
        wait = bool(args.get("wait", True))
        run = asyncio.ensure_future(self.sup.reload_apps(targets))
        run.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not wait:
            return self.outcome(slots, lambda s: True)
        failure = await asyncio.shield(run)  # a client that goes away does not stop the rollout
        current = [self.sup.slots[s.id.app][s.id.index] for s in slots
                   if s.id.index in self.sup.slots.get(s.id.app, {})]
        result = self.outcome(current, lambda s: failure is None and self._up(s))
        if failure:
            result["error"] = failure
        return result

    @staticmethod
    def _up(slot: Slot) -> bool:
        return slot.inst.state is State.RUNNING

    async def cmd_signal(self, args: dict[str, Any], send: Send) -> object:
        from procsup import spawn

        slots = self.select(args["apps"])
        sig = int(args["signal"])
        done = []
        for slot in slots:
            if slot.pgid is not None and slot.inst.state in LIVE_STATES:
                spawn.kill_group(slot.pgid, sig)
                done.append({"app": slot.id.app, "instance": slot.id.index, "pid": slot.pgid})
        return {"signalled": done, "failed": not done}

    async def cmd_shutdown(self, args: dict[str, Any], send: Send) -> object:
        count = sum(1 for s in self.sup.all_slots() if s.inst.state in LIVE_STATES)
        self.sup.request_shutdown()
        if args.get("wait", True):
            await self.sup.wait_exit()
        return {"stopped": count}

    # ------------------------------------------------------------------ status

    async def cmd_status(self, args: dict[str, Any], send: Send) -> object:
        sup = self.sup
        slots = self.select(args.get("apps") or ["all"])
        now = sup.loop.time()
        live = {s.pgid: now for s in slots if s.pgid is not None}
        usage = sup.metrics.sample(live, now) if live else {}
        rows = []
        for s in slots:
            cpu, mem = usage.get(s.pgid, (None, None)) if s.pgid is not None else (None, None)
            up = lifecycle.uptime(s.inst, now)
            rows.append(
                InstanceView(
                    app=s.id.app, instance=s.id.index, pid=s.inst.pid, state=s.inst.state,
                    uptime=round(up, 3) if up is not None else None, restarts=s.inst.restarts,
                    cpu=round(cpu, 1) if cpu is not None else None, memory=mem,
                    exit_code=s.inst.exit_code, reason=s.inst.reason or s.note, status=s.status,
                    next_cron_restart=sup.monitors.next_cron_restart(s.id.app),
                ).to_json()
            )
        d = sup.desired
        return {
            "config": {
                "path": d.daemon.config_path,
                "applied": sup.config_error is None,
                "error": sup.config_error,
                "profile": d.profile,
                "restart_daemon": list(sup.restart_daemon),
            },
            "instances": rows,
        }

    # ------------------------------------------------------------------ config

    def _load(self) -> Any:
        try:
            return self.sup.load()
        except ConfigError as exc:
            self.sup.config_error = str(exc)
            raise RemoteError(WireError.INVALID_CONFIG.value, str(exc), exc.to_dict()) from None

    async def cmd_reread(self, args: dict[str, Any], send: Send) -> object:
        new = self._load()
        return {**self.sup.plan(new).to_json(), "warnings": list(new.warnings)}

    async def cmd_update(self, args: dict[str, Any], send: Send) -> object:
        try:
            wait = bool(args.get("wait", True))
            failures: list[str] = []
            if not wait:  # the plan now; the apply (maybe a long rollout) goes on by itself
                new = self._load()
                plan = self.sup.plan(new)
                self.sup.request_reload("update")
                return {**plan.to_json(), "failed": False, "warnings": list(new.warnings)}
            apply = asyncio.ensure_future(self.sup.reload("update", wait=wait, failures=failures))
            # The apply goes on even if this client goes away (Ctrl-C only stops the waiting);
            # its outcome is then only logged, so retrieve it to keep asyncio quiet.
            apply.add_done_callback(lambda f: f.cancelled() or f.exception())
            plan = await asyncio.shield(apply)
        except ConfigError as exc:
            raise RemoteError(WireError.INVALID_CONFIG.value, str(exc), exc.to_dict()) from None
        failed = bool(failures) or any(
            s.inst.state is State.ERRORED
            for a in plan.actions
            for s in self.sup.slots.get(a.app, {}).values()
        )
        result: dict[str, object] = {**plan.to_json(), "failed": failed,
                                     "warnings": list(self.sup.desired.warnings)}
        if failures:
            result["error"] = "; ".join(failures)
        return result

    async def cmd_scale(self, args: dict[str, Any], send: Send) -> object:
        app = str(args["app"])
        if app not in self.sup.specs:
            self.select([app])  # raises unknown_app with the list of apps
        wait = bool(args.get("wait", True))
        slots = await self.sup.scale(app, int(args["instances"]), wait=wait)
        ok = self._ok_started(wait)
        return self.outcome(slots, lambda s: s.retiring or ok(s))

    async def cmd_dump(self, args: dict[str, Any], send: Send) -> object:
        return {"toml": dump.dump(self.sup.desired)}

    # ------------------------------------------------------------------ logs

    def log_files(self, app: str | None, stream: str) -> list[LogFile]:
        """(app, instance or None for a shared file, stream, path) of the selected logs."""
        seen: dict[str, LogFile] = {}
        for s in self.select([app] if app else ["all"]):
            out, err = s.spec.log_paths(s.id.index)
            per_instance = s.spec.instances > 1 and not s.spec.merge_logs
            idx = s.id.index if per_instance else None
            for name, path in (("out", out), ("err", err)):
                if path is None or stream not in (name, "both"):
                    continue
                seen.setdefault(path, (s.id.app, idx, "both" if out == err else name, path))
        return list(seen.values())

    async def cmd_logs(self, args: dict[str, Any], send: Send) -> object:
        files = self.log_files(args.get("app"), args.get("stream", "both"))
        n = int(args.get("lines", 20))
        lines: list[dict[str, object]] = []
        for app, idx, stream, path in files if n > 0 else ():
            with contextlib.suppress(FileNotFoundError):
                lines.extend(
                    {"app": app, "instance": idx, "stream": stream,
                     "text": raw.decode("utf-8", "replace")}
                    for raw in logs.tail(path, n)
                )
        if not args.get("follow"):
            return {"lines": lines}
        await send({"lines": lines})
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
            self.sup.sinks.follow(meta[3], functools.partial(push, meta)) for meta in files
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
