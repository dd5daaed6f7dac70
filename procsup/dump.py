"""`Desired` -> TOML text: the effective config that `procsup dump` prints (layer 1).

The text describes the same apps as the files it came from, with everything resolved: includes
merged into one file (no `include`), the active profile written as `env` and already applied
(no `env_<profile>`), env files already read (no `env_file`), `instances` as a number, paths
absolute, log files absolute or false. Keys are written in the order of the schema rows; keys
whose value is "absent" (no user, no log_max_size, ...) are left out, since TOML has no null.

Contract (tests/unit/test_dump.py): for a `Desired` that `config.load` returned,
`config.load(<file holding dump(desired)>)` returns apps that compare equal (`AppSpec ==`) and a
`DaemonSpec` equal except `config_path` and `include`. It does not depend on where that file is
written: nothing in the text is relative. What cannot survive is what `AppSpec` does not keep:
the env tables of inactive profiles, and which variables came from an env file.

Imports only layer 0 and `schema` (for the key order). No I/O: returns a string.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import tomli_w

from procsup import limits, schema, units
from procsup.model import AppSpec, DaemonSpec, Desired, ExecMode, RestartPolicy

#: Keys that `dump` never writes: their effect is already merged into other keys.
MERGED_DAEMON_KEYS = frozenset({"include"})
MERGED_APP_KEYS = frozenset({"env_file"})

_SHELL = ("/bin/sh", "-c")

_Spec = TypeVar("_Spec", AppSpec, DaemonSpec)
_T = TypeVar("_T")


def dump(desired: Desired) -> str:
    """The effective config as TOML text (a comment header, `[procsup]`, one `[apps.NAME]` per
    app in order). Raises ValueError for a spec that no config file can express (a `shell` app
    whose argv is not `/bin/sh -c TEXT`), which `config.load` never produces.
    """
    daemon = _table(schema.DAEMON_KEYS, MERGED_DAEMON_KEYS, _DAEMON_WRITERS, desired.daemon)
    if desired.profile is not None:
        daemon["env"] = desired.profile  # `--env` wins over the file: write what is in effect
        daemon = {key: daemon[key] for key in schema.DAEMON_KEYS if key in daemon}  # row order
    document: dict[str, object] = {"procsup": daemon}
    if desired.apps:
        document["apps"] = {
            name: _table(schema.APP_KEYS, MERGED_APP_KEYS, _APP_WRITERS, app)
            for name, app in desired.apps.items()
        }
    # repr() keeps a path with a newline or other control character on one comment line.
    header = (
        "# procsup dump: the effective configuration (includes merged, profile applied)\n"
        f"# read from {desired.daemon.config_path!r}"
        + ("".join(f", {f!r}" for f in desired.files[1:]))
        + "\n\n"
    )
    return header + tomli_w.dumps(document)


def _table(
    rows: Mapping[str, schema.Key],
    merged: frozenset[str],
    writers: Mapping[str, Callable[[_Spec], object]],
    spec: _Spec,
) -> dict[str, object]:
    """One TOML table in schema order; a writer returning None leaves its key out.

    A schema row without a writer is a KeyError: a new config key must be taught to `dump`.
    """
    out: dict[str, object] = {}
    for name in rows:
        if name in merged:
            continue
        value = writers[name](spec)
        if value is not None:
            out[name] = value
    return out


# -- value writers: model value -> TOML value (None = leave the key out) ---------------------


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else units.format_duration(seconds)


def _size(n: int | None) -> str | int | None:
    """"50M" when that reads back exactly; else the integer byte count."""
    if n is None:
        return None
    text = units.format_size(n)
    return text if units.parse_size(text) == n else n


def _mode(mode: int | None) -> str | None:
    return None if mode is None else units.format_mode(mode)


def _log_file(path: str | None) -> str | bool:
    return False if path is None else path


def _command(app: AppSpec) -> str | list[str]:
    if not app.shell:
        return list(app.command)
    if len(app.command) != 3 or app.command[:2] != _SHELL:
        raise ValueError(
            f"app {app.name!r}: shell = true needs the command /bin/sh -c TEXT, "
            f"got {app.command!r}"
        )
    return app.command[2]


def _limits(app: AppSpec) -> dict[str, object] | None:
    def value(n: int) -> int | str:
        return "unlimited" if n == limits.UNLIMITED else n

    return {name: value(soft) if soft == hard else [value(soft), value(hard)]
            for name, soft, hard in app.limits} or None


def _autorestart(policy: RestartPolicy) -> bool | str:
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.NEVER:
        return False
    return str(policy.value)


def _cluster_only(app: AppSpec, value: _T) -> _T | None:
    # `listen` and `balance` are rejected in a fork app's table, even with empty values.
    return value if app.exec_mode is ExecMode.CLUSTER else None


def _health_only(app: AppSpec, value: _T) -> _T | None:
    # The health_* keys are rejected in an app without `health`.
    return value if app.health is not None else None


_DAEMON_WRITERS: Mapping[str, Callable[[DaemonSpec], object]] = {
    "socket": lambda d: d.socket,
    "socket_mode": lambda d: _mode(d.socket_mode),
    "socket_group": lambda d: d.socket_group,
    "pidfile": lambda d: d.pidfile,
    "log_dir": lambda d: d.log_dir,
    "state_dir": lambda d: d.state_dir,
    "env": lambda d: None,  # the active profile, which dump() takes from `Desired`
    "watch_config": lambda d: d.watch_config,
    "shutdown_timeout": lambda d: _duration(d.shutdown_timeout),
    "cgroups": lambda d: d.cgroups,
}

_APP_WRITERS: Mapping[str, Callable[[AppSpec], object]] = {
    "command": _command,
    "shell": lambda a: a.shell,
    "cwd": lambda a: a.cwd,
    "instances": lambda a: a.instances,
    "exec_mode": lambda a: a.exec_mode.value,
    "env": lambda a: dict(a.env) or None,  # an empty table adds nothing but a bare header
    "inherit_env": lambda a: a.inherit_env,
    "user": lambda a: a.user,
    "group": lambda a: a.group,
    "umask": lambda a: _mode(a.umask),
    "limits": _limits,
    "nice": lambda a: a.nice,
    "oom_score_adjust": lambda a: a.oom_score_adjust,
    "autorestart": lambda a: _autorestart(a.autorestart),
    "max_restarts": lambda a: a.max_restarts,
    "min_uptime": lambda a: _duration(a.min_uptime),
    "restart_delay": lambda a: _duration(a.restart_delay),
    "exp_backoff_restart_delay": lambda a: _duration(a.exp_backoff_restart_delay),
    "kill_signal": lambda a: units.signal_name(a.kill_signal),
    "kill_timeout": lambda a: _duration(a.kill_timeout),
    "out_file": lambda a: _log_file(a.out_file),
    "error_file": lambda a: _log_file(a.error_file),
    "merge_logs": lambda a: a.merge_logs,
    "log_date_format": lambda a: a.log_date_format,
    "log_max_size": lambda a: _size(a.log_max_size),
    "log_retain": lambda a: a.log_retain,
    "log_format": lambda a: a.log_format,
    "max_memory_restart": lambda a: _size(a.max_memory_restart),
    "memory_max": lambda a: _size(a.memory_max),
    "cpu_weight": lambda a: a.cpu_weight,
    "pids_max": lambda a: a.pids_max,
    # Absolute paths, so `true` (= cwd) is written as the list it resolved to.
    "watch": lambda a: list(a.watch) if a.watch else False,
    "ignore_watch": lambda a: list(a.ignore_watch),
    "cron_restart": lambda a: a.cron_restart,
    "ready": lambda a: a.ready,
    "ready_timeout": lambda a: _duration(a.ready_timeout),
    "heartbeat_timeout": lambda a: _duration(a.heartbeat_timeout),
    "depends_on": lambda a: {n: c.value for n, c in a.depends_on} or None,
    "health": lambda a: list(a.health) if isinstance(a.health, tuple) else a.health,
    "health_interval": lambda a: _health_only(a, _duration(a.health_interval)),
    "health_timeout": lambda a: _health_only(a, _duration(a.health_timeout)),
    "health_failures": lambda a: _health_only(a, a.health_failures),
    "reload_signal": lambda a: (None if a.reload_signal is None
                                else units.signal_name(a.reload_signal)),
    "pidfile": lambda a: a.pidfile,  # absolute already
    "listen": lambda a: _cluster_only(a, list(a.listen)),
    "balance": lambda a: _cluster_only(a, a.balance),
}
