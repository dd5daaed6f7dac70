"""One data row per config key: accepted types, default, check/convert, doc (layer 1).

The rows are the single source for validation (`config.py`), "did you mean" suggestions,
the docs and `dump`. A row's `convert` is one of `values`' converters, pure and context-free:
it turns a raw TOML value into the model's unit (seconds, bytes, signal numbers, enums,
tuples) or raises `values.ValueProblem`. Everything that needs context (paths relative to a
file, CPU count, log_dir, env files) is resolved in `config.py`.

Imports only layer 0 and `values` below it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

from procsup import limits, values
from procsup.values import ValueProblem, type_name

#: Keys of the `env_<profile>` pattern (checked after the fixed keys, so `env_file` is not one).
ENV_PROFILE_KEY_RE = re.compile(r"^env_([A-Za-z0-9_-]+)$")


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key.

    `types` are the accepted TOML value types (bool is never accepted as int); `type_doc` says
    them in words for messages and docs. `default` is the value as it would be written in TOML
    (arrays as tuples), None meaning "absent"; `default_doc` replaces it in docs when the
    default depends on context.
    """

    name: str
    types: tuple[type, ...]
    type_doc: str
    default: object
    convert: Callable[[object], object]
    doc: str
    required: bool = False
    default_doc: str | None = None


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def check(key: Key, value: object) -> object:
    """Type-check then convert `value` for `key`; raises `ValueProblem`."""
    if not _has_type(value, key.types):
        raise ValueProblem(f"expected {key.type_doc}, got {type_name(value)}")
    try:
        return key.convert(value)
    except ValueProblem:
        raise
    except ValueError as exc:
        raise ValueProblem(str(exc)) from None


# -- the rows ---------------------------------------------------------------------------------

_S = (str,)
_B = (bool,)
_I = (int,)
_DUR = (str, int)
_DUR_DOC = 'duration: "100ms", "1.5s", "2m", "1h", or integer milliseconds'
_SIZE_DOC = 'size: integer bytes or "512K", "50M", "1G"'
_PATH_DOC = "string (path)"


def _rows(*rows: Key) -> dict[str, Key]:
    return {row.name: row for row in rows}


#: `[procsup]`: daemon settings. Path defaults depend on the uid (see paths.py / docs).
DAEMON_KEYS: Mapping[str, Key] = _rows(
    Key("socket", _S, _PATH_DOC, None, values.text,
        "path of the control socket",
        default_doc="root: /run/procsup/procsup.sock; others: $XDG_RUNTIME_DIR/procsup/"
        "procsup.sock (else /tmp/procsup-<uid>/procsup.sock)"),
    Key("socket_mode", _S, "string (octal)", "0660", values.mode,
        "permission bits of the control socket"),
    Key("socket_group", _S, "string (group name)", None, values.text,
        "group allowed to use the socket, besides root and the daemon's uid"),
    Key("pidfile", _S, _PATH_DOC, None, values.text,
        "pid file of the daemon",
        default_doc="root: /run/procsup/procsupd.pid; others: next to the socket"),
    Key("log_dir", _S, _PATH_DOC, None, values.text,
        "default directory of app logs; the daemon's own log is <log_dir>/procsupd.log",
        default_doc="root: /var/log/procsup; others: $XDG_STATE_HOME/procsup/logs "
        "(else ~/.local/state/procsup/logs)"),
    Key("state_dir", _S, _PATH_DOC, None, values.text,
        "where the daemon records its instances (to survive its own restart)",
        default_doc="root: /var/lib/procsup; others: $XDG_STATE_HOME/procsup/state "
        "(else ~/.local/state/procsup/state)"),
    Key("include", (str, list), "string or array of strings (globs)", (), values.strings,
        "globs of files holding more [apps.*] tables, relative to this file"),
    Key("env", _S, "string (profile name)", None, values.profile,
        "default profile (env_<profile> tables); `procsupd --env` overrides"),
    Key("watch_config", _B, "boolean", True, values.identity,
        "apply the config when this file or an included one is saved (debounced)"),
    Key("shutdown_timeout", _DUR, _DUR_DOC, "30s", values.duration,
        "how long the daemon waits for apps to stop when it exits"),
    Key("cgroups", (str, bool), '"auto", true or false', "auto", values.cgroups_setting,
        'a cgroup v2 group per instance run: "auto" = where procsupd can create them, '
        "false = never, true = required (procsupd does not start without them)"),
)

#: `[apps.NAME]`: one app. Defaults equal the `AppSpec` field defaults (a test checks it).
APP_KEYS: Mapping[str, Key] = _rows(
    Key("command", (str, list), "string or array of strings", None, values.command,
        "what to run: a string is split like a shell does (no shell runs), or an argv array",
        required=True),
    Key("shell", _B, "boolean", False, values.identity,
        "run `command` through /bin/sh -c"),
    Key("cwd", _S, _PATH_DOC, None, values.text,
        "working directory (relative to the config file); must exist at start",
        default_doc="the daemon's cwd (/ when daemonized)"),
    Key("instances", (int, str), 'integer or "max"', 1, values.instances,
        'instances to run: N >= 0; "max" = usable CPUs; -N = usable CPUs minus N (min 1)'),
    Key("exec_mode", _S, '"fork" or "cluster"', "fork", values.exec_mode,
        "cluster: the daemon binds `listen` and passes the sockets to every instance"),
    Key("env", (dict,), "table of strings", None, values.env_table,
        "variables added to the inherited environment"),
    Key("env_file", (str, list), "string or array of strings (paths)", (), values.strings,
        "KEY=VALUE files (relative to cwd), applied after env, before env_<profile>"),
    Key("inherit_env", _B, "boolean", True, values.identity,
        "false: start from PATH, LANG, HOME, USER, LOGNAME only"),
    Key("user", _S, "string (user name)", None, values.text,
        "run as this user (with its supplementary groups)",
        default_doc="the daemon's user"),
    Key("group", _S, "string (group name)", None, values.text,
        "run with this group", default_doc="the user's primary group"),
    Key("umask", _S, "string (octal)", None, values.mode,
        "umask of the app's processes", default_doc="the daemon's umask"),
    Key("limits", (dict,), 'table of resource = N, "unlimited" or [soft, hard]', None,
        values.rlimits,
        "rlimits of the app's processes (setrlimit names: nofile, nproc, core, as, ...; one "
        "value sets soft and hard)",
        default_doc="procsupd's limits as it was started (not the open-files limit it raised "
        "for itself)"),
    Key("nice", _I, "integer -20..19", None, values.ranged(*limits.NICE_RANGE),
        "scheduling niceness of the app's processes", default_doc="procsupd's own"),
    Key("oom_score_adjust", _I, "integer -1000..1000", None, values.ranged(*limits.OOM_RANGE),
        "oom_score_adj of the app's processes (-1000: never killed for memory)",
        default_doc="procsupd's own"),
    Key("autorestart", (bool, str), 'true, false or "on-failure"', True, values.autorestart,
        'restart when it ends: always (true), never (false), or "on-failure" only'),
    Key("max_restarts", _I, "integer >= 0", 15, values.non_negative_int,
        'restarts in a row after unstable runs before the instance is "errored"'),
    Key("min_uptime", _DUR, _DUR_DOC, "1s", values.duration,
        "a run shorter than this is unstable"),
    Key("restart_delay", _DUR, _DUR_DOC, "0s", values.duration,
        "wait before restarting"),
    Key("exp_backoff_restart_delay", _DUR, _DUR_DOC, None, values.positive_duration,
        "replaces restart_delay: first delay, doubled per unstable restart (cap 15 s)"),
    Key("kill_signal", (str, int), 'signal: "SIGTERM", "TERM" or a number', "SIGTERM",
        values.signal,
        "signal sent to the process group to stop it"),
    Key("kill_timeout", _DUR, _DUR_DOC, "5s", values.duration,
        "then SIGKILL to the whole process group"),
    Key("out_file", (str, bool), 'string (path), "-", "journal" or false', None, values.log_file,
        'stdout log: relative to log_dir; false = discard; "-" = procsupd\'s stdout (lines '
        'prefixed "<app>:<i> | "); "journal" = the systemd journal',
        default_doc="<log_dir>/<app>-out.log"),
    Key("error_file", (str, bool), 'string (path), "-", "journal" or false', None, values.log_file,
        'stderr log: relative to log_dir; false = discard; = out_file: one file; "-" = '
        'procsupd\'s stderr; "journal" = the systemd journal (PRIORITY 3)',
        default_doc="<log_dir>/<app>-error.log"),
    Key("merge_logs", _B, "boolean", False, values.identity,
        'false and instances > 1: one file per instance ("-<i>" before the suffix)'),
    Key("log_date_format", _S, "string (strftime)", None, values.text,
        'prefix each line with the date in this format and a space; absent = no prefix'),
    Key("log_max_size", (str, int), _SIZE_DOC, None, values.positive_size,
        "rotate a log file when it passes this size; absent = never"),
    Key("log_retain", _I, "integer >= 0", 5, values.non_negative_int,
        "rotated files kept: <file>.1 (newest) ... <file>.N"),
    Key("log_format", _S, '"text" or "json"', "text", values.log_format,
        'json: each line written as one JSON object {"time", "app", "instance", "stream", '
        '"message"} (not to the journal, whose entries have those fields)'),
    Key("max_memory_restart", (str, int), _SIZE_DOC, None, values.positive_size,
        "restart an instance whose RSS (with its children) passes this"),
    # cgroup v2 limits (procsup/cgroups.py): where the hierarchy offers the controller
    Key("memory_max", (str, int), _SIZE_DOC, None, values.positive_size,
        "memory.max of each instance's cgroup: the kernel reclaims, then OOM-kills within it"),
    Key("cpu_weight", _I, "integer 1..10000", None, values.cpu_weight,
        "cpu.weight of each instance's cgroup: its share of CPU time under contention "
        "(100 = the default share)"),
    Key("pids_max", _I, "integer >= 1", None, values.positive_int,
        "pids.max of each instance's cgroup: a fork beyond this many processes and threads "
        "fails"),
    Key("watch", (bool, list), "boolean or array of strings (paths)", False, values.watch,
        "restart when files change: true = cwd, or a list of paths (relative to cwd)"),
    Key("ignore_watch", (str, list), "string or array of strings (globs)",
        ("*.log", ".git", "__pycache__", "node_modules"), values.strings,
        "ignored by watch: a glob without / matches any name in the path, one with / the "
        "path relative to the watched directory"),
    Key("cron_restart", _S, 'string (cron: "min hour dom month dow")', None, values.cron_line,
        "restart at these times"),
    Key("ready", _S,
        '"started", "notify", "tcp://HOST:PORT", "http://HOST:PORT/PATH" or "log:REGEX"',
        "started", values.ready,
        "when an instance counts as ready (for reload, depends_on and the starting state); "
        "log:REGEX = a line of its stdout or stderr matches"),
    Key("ready_timeout", _DUR, _DUR_DOC, "30s", values.positive_duration,
        "a replacement not ready within this fails the reload"),
    Key("heartbeat_timeout", _DUR, _DUR_DOC, None, values.positive_duration,
        'with ready = "notify": restart an instance silent (no WATCHDOG=1) for this long'),
    Key("depends_on", (list, dict), "array of app names, or table of app = condition", (),
        values.depends_on,
        'start after these apps: "started", "ready" (a list means ready), "healthy" or '
        '"completed"; stop before them'),
    Key("health", (str, list), '"tcp://HOST:PORT", "http://HOST:PORT/PATH" or an array (command)',
        None, values.health,
        "liveness check of every running instance; failing health_failures times restarts it"),
    Key("health_interval", _DUR, _DUR_DOC, "10s", values.positive_duration,
        "time between two health checks of an instance"),
    Key("health_timeout", _DUR, _DUR_DOC, "2s", values.positive_duration,
        "a check that takes longer has failed"),
    Key("health_failures", _I, "integer >= 1", 3, values.positive_int,
        "failed checks in a row that restart the instance"),
    Key("reload_signal", (str, int), 'signal: "SIGHUP", "HUP" or a number', None, values.signal,
        "`reload` sends this signal to each instance (in place) instead of replacing it"),
    Key("pidfile", _S, _PATH_DOC, None, values.text,
        "the command puts itself in the background and writes its server's pid here "
        "(relative to cwd): procsup waits for it after the command exits 0, then supervises "
        "that process", default_doc="none: the command runs in the foreground"),
    Key("listen", (str, list), "string or array of strings (addresses)", (), values.listen,
        'cluster only: "tcp://HOST:PORT", "tcp://[::]:PORT", "unix:/path"'),
    Key("balance", _S, '"shared" or "reuseport"', "shared", values.balance,
        "cluster only: one socket for all instances, or one SO_REUSEPORT socket per instance"),
)

#: The `env_<profile>` pattern: a table merged over `env` when <profile> is active.
ENV_PROFILE_KEY = Key(
    "env_<profile>", (dict,), "table of strings", None, values.env_table,
    "merged over env (and env_file) when <profile> is the active profile",
)


def duration_hint(row: Key | None, value: object) -> str | None:
    """A warning for a duration written as a small integer: milliseconds, as in PM2, which a
    supervisord user (`stopwaitsecs=5`) may take for seconds. None when nothing is odd."""
    if row is None or row.types != _DUR or isinstance(value, bool) or not isinstance(value, int):
        return None
    if not 0 < value < 1000:
        return None
    return (f"{value} means {value} milliseconds (an integer duration counts milliseconds, as "
            f'in PM2); write "{value}s" for seconds, or "{value}ms" to say so')


def app_key(name: str) -> tuple[Key, str | None] | None:
    """The row for an app key and, for `env_<profile>`, the profile; None if unknown."""
    row = APP_KEYS.get(name)
    if row is not None:
        return row, None
    m = ENV_PROFILE_KEY_RE.match(name)
    if m is not None:
        return ENV_PROFILE_KEY, m.group(1)
    return None
