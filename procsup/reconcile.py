"""The reconcile planner (layer 1: pure, no I/O, no clock).

`plan(running, apps, old_daemon, new_daemon, disabled)` compares what runs with what the config
asks for and returns a `Plan`: an ordered tuple of `Action`s plus the `[procsup]` keys that only
a daemon restart applies. `reread` prints it (`Plan.describe()`, `Plan.to_json()`); `update`
hands the same plan to the applier (`apply`), which executes the actions in order and decides
nothing itself: each `Kind` of action is executed one way.

Contract (CONTRACT.md §3 "Reconcile"):
- An app whose effective definition is unchanged (`AppSpec` equality, ignoring `instances`;
  `source`/`line` never compare) and whose slot count equals the configured count gets no action:
  it keeps its processes and pids.
- A new app is started (`start`, ids `0..n-1`, reason "new app"); nothing is emitted for a new app
  with 0 instances, since no process has to start.
- A removed app is stopped (`stop`, all its current ids, reason "removed from config"). It is
  emitted even when the app has no slots (e.g. after `procsup scale app 0`), with an empty id
  tuple, so the executor always learns that the app and any app-level resource (its listening
  sockets) goes away.
- A changed definition restarts the instances that remain, ids `< min(current, new count)`:
  `RELOAD` (rolling) when both the old and the new spec are cluster apps with the same
  `balance`, `REBIND` (every instance stops, then all start) when the balance changes, else
  `RESTART` (each in place). The
  reason names the changed keys in `AppSpec` field order: "cwd, env changed". Nothing is emitted
  when no instance remains (the new instances start from the new spec anyway).
- A count change only starts or stops the difference: `scale` with the ids that are added
  (`SCALE_UP`, going up) or the ids that go (`SCALE_DOWN`; always the highest ones), reason
  "instances 4 -> 2". The current count is `Running.instances`, so a runtime `procsup scale`
  lasts only until the next apply, as the contract says.
- Instances stopped by `procsup stop` (`Running.stopped`) stay stopped unless the apply changes
  that app's own definition. "Its definition changes" means exactly: the plan has something
  for the app, i.e. any field of its effective `AppSpec` differs (live keys included) or its
  instance count differs from the slots it has (which includes the apply that ends a runtime
  `procsup scale`). Then a restart, reload or rebind starts them with the others, and a change
  of only live keys or of the count starts them with `RESUME` (ids that remain). An apply that
  changes other apps only leaves them stopped: no action at all for the app.
- A disabled app (`disabled`, the names `procsup disable` recorded) is never started: a new
  (or re-added) one gets its slots, stopped (`ADD`); more instances for it are `ADD`ed too;
  a changed definition restarts nothing (every key applies at once, reported in `live`, since
  nothing runs), and it never gets `RESUME`. Fewer instances still retire the extra slots
  (`SCALE_DOWN`). `Plan.disabled` names the disabled apps the plan holds back this way.

Order of the whole plan, chosen so resources are freed before anything new needs them and no
process is started only to be restarted or stopped by a later action:
1. `stop` of removed apps, in the order of `running`;
2. every `scale` down, then every `restart`/`reload`, then every `scale` up, then every `start`
   of a new app (and `RESUME`, and `ADD`), each group in the order of `apps` (the new file
   order), except that the `scale` ups and the starts go dependencies first (`deps.layers`:
   an app after every app it `depends_on`), so a dependent is never started before what it
   waits for exists.
So for one app whose definition and count both change: going down, the extra instances stop
first and then fewer restart; going up, the existing instances restart and then the new ones
start (from the new spec, so they never need a restart).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from procsup import deps
from procsup.model import AppSpec, DaemonSpec, ExecMode


class Kind(str, enum.Enum):
    """What an action does; the executor runs each kind one way and chooses nothing itself.

    The value is the planner's name for it; `Action.action` is the name `reread --json` prints
    (contract: "start" | "stop" | "restart" | "reload" | "scale")."""

    STOP = "stop"  # a removed app: retire every instance
    SCALE_DOWN = "scale-down"  # retire the highest ids
    RESTART = "restart"  # stop then start each instance in place
    REBIND = "rebind"  # restart all at once: stop every instance, then start (sockets change kind)
    RELOAD = "reload"  # rolling: each replacement ready before its old instance stops
    SCALE_UP = "scale-up"  # new instances from the new definition
    START = "start"  # a new app
    RESUME = "resume"  # instances stopped by a command, started again: their app changed
    ADD = "add"  # slots of a disabled app, created stopped: nothing starts


#: The contract's names (`reread --json`, `reread`) of the kinds.
WIRE = {
    Kind.STOP: "stop", Kind.SCALE_DOWN: "scale", Kind.RESTART: "restart",
    Kind.REBIND: "restart", Kind.RELOAD: "reload", Kind.SCALE_UP: "scale",
    Kind.START: "start", Kind.RESUME: "start", Kind.ADD: "add",
}

#: `[procsup]` keys that a running daemon cannot apply: it already bound the control socket,
#: locked the pidfile, recorded its instances under `state_dir` and set up (or not) the
#: cgroups of its instances (`cgroups`). Every other key
#: (`log_dir`, `include`, `env`, `watch_config`, `shutdown_timeout`, `config_path`) is live.
RESTART_DAEMON_KEYS = frozenset({"socket", "socket_mode", "socket_group", "pidfile", "state_dir",
                                 "cgroups"})

#: App keys the daemon applies to running instances without restarting them: where and how their
#: output is logged, the restart policy (it only matters when a process ends), and the monitors
#: (they decide when a process is recycled, not what runs). A change of only these keys never
#: restarts an app; a change of any other key restarts it.
LIVE_FIELDS = frozenset({
    "out_file", "error_file", "merge_logs", "log_date_format", "log_max_size", "log_retain",
    "log_format",
    "autorestart", "max_restarts", "min_uptime", "restart_delay", "exp_backoff_restart_delay",
    "kill_signal", "kill_timeout",
    "max_memory_restart", "watch", "ignore_watch", "cron_restart",
    # The order of starts and stops (contract: "a change of depends_on alone restarts
    # nothing"), how running instances are checked, and what `reload` does.
    "depends_on", "health", "health_interval", "health_timeout", "health_failures",
    "reload_signal",
})

# Never part of the "definition changed" comparison: `instances` is handled as a scale, and
# `source`/`line` (compare=False in the model) only say where the app was written.
_NOT_DEFINITION = frozenset({"instances"})


@dataclass(frozen=True)
class Running:
    """An app as it runs now.

    `spec` is the definition its instances were started from (the one last applied);
    `instances` is how many instance slots exist now, ids `0..instances-1`, which may differ from
    `spec.instances` after `procsup scale`. `stopped` are the ids stopped by a `stop` command:
    they stay stopped until started, or until an apply changes this app's own definition
    (contract §1; the module docstring says what counts as a change).
    """

    spec: AppSpec
    instances: int
    stopped: tuple[int, ...] = ()


@dataclass(frozen=True)
class Action:
    """One step of a plan: do `kind` to the instances `instances` (ascending) of `app`.

    For `STOP` and `SCALE_DOWN` the ids are the ones that go; for `START`, `SCALE_UP` and
    `RESUME` the ids that start; for `RESTART`/`REBIND`/`RELOAD` the ids that are replaced; for
    `ADD` the ids whose slots are made, stopped (a disabled app).
    """

    kind: Kind
    app: str
    instances: tuple[int, ...]
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            raise ValueError(f"unknown action {self.kind!r}")
        if list(self.instances) != sorted(set(self.instances)):
            raise ValueError(f"instance ids must be ascending and unique: {self.instances}")

    @property
    def action(self) -> str:
        """The contract's name of the action (`reread --json`)."""
        return WIRE[self.kind]

    def to_json(self) -> dict[str, object]:
        """`{"action", "app", "instances": [...], "reason"}` (CONTRACT.md §1, `reread --json`)."""
        return {
            "action": self.action,
            "app": self.app,
            "instances": list(self.instances),
            "reason": self.reason,
        }

    def describe(self) -> str:
        """`start web:0-3 (new app)`; without ids: `stop old (removed from config)`."""
        target = f"{self.app}:{format_ids(self.instances)}" if self.instances else self.app
        return f"{self.action} {target} ({self.reason})"


@dataclass(frozen=True)
class Plan:
    """What applying a config does: `actions` in execution order, and `restart_daemon`, the
    `[procsup]` keys (in `DaemonSpec` field order) that changed but take effect only when the
    daemon restarts. `disabled` names the disabled apps (in file order) that the plan would
    have started or restarted and holds back: nothing starts for them. A plan is truthy when it
    has any action."""

    actions: tuple[Action, ...] = ()
    restart_daemon: tuple[str, ...] = ()
    live: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (app, LIVE_FIELDS changed) w/o restart
    disabled: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """`{"actions": [...], "restart_daemon": [...], "live": [{"app", "keys"}],
        "disabled": [...]}` (CONTRACT.md §1, `reread --json`; `live` and `disabled` are
        procsup's additions: apps whose changed keys apply without a restart, and disabled
        apps the plan starts nothing for). `ADD` actions start no process and are not among
        the contract's `actions`: their apps are in `disabled`, and their slots show in
        `status` as stopped."""
        return {
            "actions": [a.to_json() for a in self.actions if a.kind is not Kind.ADD],
            "restart_daemon": list(self.restart_daemon),
            "live": [{"app": app, "keys": list(keys)} for app, keys in self.live],
            "disabled": list(self.disabled),
        }

    def describe(self) -> list[str]:
        """One human line per action, then one for `restart_daemon` if any; `["no changes"]`
        when there is neither."""
        lines = [a.describe() for a in self.actions]
        lines += [f"update {app} live, no restart ({', '.join(keys)} changed"
                  + ("; disabled: nothing starts)" if app in self.disabled else ")")
                  for app, keys in self.live]
        if self.restart_daemon:
            keys = ", ".join(self.restart_daemon)
            lines.append(f"restart procsupd to apply [procsup] {keys}")
        return lines or ["no changes"]

    def __bool__(self) -> bool:
        return bool(self.actions or self.live)


def format_ids(ids: Iterable[int]) -> str:
    """Ascending ids as runs: (0, 1, 2, 3) -> "0-3", (0, 2, 3) -> "0,2-3", () -> ""."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def changed_fields(old: AppSpec, new: AppSpec) -> tuple[str, ...]:
    """Names of the `AppSpec` fields that differ, in field order, leaving out `instances` and the
    fields the model excludes from equality (`source`, `line`). Empty exactly when the two specs
    define the same app apart from its instance count."""
    if old == new:  # the common case on an apply, in one generated comparison
        return ()
    return tuple(
        f.name
        for f in dataclasses.fields(AppSpec)
        if f.compare
        and f.name not in _NOT_DEFINITION
        and getattr(old, f.name) != getattr(new, f.name)
    )


def _after(action: Action, spec: AppSpec) -> Action:
    """A start of an app with `depends_on` says what it waits for: "new app; after db
    (ready), migrate (completed)". (An ADD starts nothing.)"""
    if not spec.depends_on or action.kind is Kind.ADD:
        return action
    after = ", ".join(f"{d} ({c.value})" for d, c in spec.depends_on)
    return dataclasses.replace(action, reason=f"{action.reason}; after {after}")


def daemon_restart_keys(old: DaemonSpec | None, new: DaemonSpec | None) -> tuple[str, ...]:
    """The `RESTART_DAEMON_KEYS` whose value differs, in `DaemonSpec` field order; empty when
    either side is unknown."""
    if old is None or new is None:
        return ()
    return tuple(
        f.name
        for f in dataclasses.fields(DaemonSpec)
        if f.name in RESTART_DAEMON_KEYS and getattr(old, f.name) != getattr(new, f.name)
    )


def plan(
    running: Mapping[str, Running],
    apps: Mapping[str, AppSpec],
    old_daemon: DaemonSpec | None = None,
    new_daemon: DaemonSpec | None = None,
    disabled: Collection[str] = frozenset(),
) -> Plan:
    """The plan that takes `running` to `apps` (name -> spec, in file order), starting nothing
    of the apps in `disabled` (names that are not in `apps` do not matter); see the module
    docstring for the rules and the order. Pure: same inputs, same plan."""
    stops = [
        Action(Kind.STOP, name, tuple(range(run.instances)), "removed from config")
        for name, run in running.items()
        if name not in apps
    ]
    downs: list[Action] = []
    replaces: list[Action] = []
    ups: list[Action] = []
    starts: list[Action] = []
    live: list[tuple[str, tuple[str, ...]]] = []
    held: list[str] = []
    for name, spec in apps.items():
        run = running.get(name)
        off = name in disabled
        if run is None:
            if spec.instances > 0:
                ids = tuple(range(spec.instances))
                starts.append(Action(Kind.ADD, name, ids, "new app; disabled, stays stopped")
                              if off else Action(Kind.START, name, ids, "new app"))
                if off:
                    held.append(name)
            continue
        current, wanted = run.instances, spec.instances
        changed = changed_fields(run.spec, spec)
        remaining = min(current, wanted)
        if off:
            # Nothing runs (disable stopped it): every key applies at once, nothing starts.
            if changed:
                live.append((name, changed))
            if wanted < current:
                downs.append(Action(Kind.SCALE_DOWN, name, tuple(range(wanted, current)),
                                    f"instances {current} -> {wanted}"))
            elif wanted > current:
                starts.append(Action(Kind.ADD, name, tuple(range(current, wanted)),
                                     f"instances {current} -> {wanted}; disabled, stays stopped"))
            if changed or wanted > current:
                held.append(name)
            continue
        keys = tuple(k for k in changed if k not in LIVE_FIELDS)
        if not keys and changed:
            live.append((name, changed))
        if not keys and (changed or wanted != current):
            # Its own definition changed (live keys or the count): what `stop` stopped starts.
            stopped = tuple(i for i in run.stopped if i < remaining)
            if stopped:
                starts.append(Action(Kind.RESUME, name, stopped,
                                      "stopped by command; its definition changed"))
        if keys and remaining > 0:
            # Rolling only between cluster definitions with the same kind of sockets: a
            # balance change cannot keep the old sockets while the new ones are bound.
            # A cluster app whose sockets change kind cannot bind the new ones while old
            # instances hold the old ones: every instance stops before any starts.
            both = run.spec.exec_mode == ExecMode.CLUSTER == spec.exec_mode
            kind = (Kind.RELOAD if both and run.spec.balance == spec.balance
                    else Kind.REBIND if both else Kind.RESTART)
            replaces.append(
                Action(
                    kind,
                    name,
                    tuple(range(remaining)),
                    f"{', '.join(keys)} changed"
                    + ("; every instance stops before any starts" if kind is Kind.REBIND
                       else ""),
                )
            )
        if wanted != current:
            reason = f"instances {current} -> {wanted}"
            if wanted < current:
                downs.append(Action(Kind.SCALE_DOWN, name, tuple(range(wanted, current)), reason))
            else:
                ups.append(Action(Kind.SCALE_UP, name, tuple(range(current, wanted)), reason))
    # Dependencies first (the executor starts in plan order, and the engine holds back a
    # dependent until its dependencies are met): each group in deps.layers order, stably.
    if any(spec.depends_on for spec in apps.values()):
        rank = {n: i for i, group in enumerate(deps.layers(apps)) for n in group}
        ups.sort(key=lambda a: rank[a.app])
        starts.sort(key=lambda a: rank[a.app])
        ups, starts = ([_after(a, apps[a.app]) for a in group] for group in (ups, starts))
    return Plan(
        actions=(*stops, *downs, *replaces, *ups, *starts),
        restart_daemon=daemon_restart_keys(old_daemon, new_daemon),
        live=tuple(live),
        disabled=tuple(held),
    )
