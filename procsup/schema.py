"""One data row per config key: accepted types, default, check/convert, doc (layer 1).

The rows are the single source for validation (`config.py`), "did you mean" suggestions,
the docs and `dump`. A row's `convert` is pure and context-free: it turns a raw TOML value
into the model's unit (seconds, bytes, signal numbers, enums, tuples) or raises `ValueProblem`.
Everything that needs context (paths relative to a file, CPU count, log_dir, env files) is
resolved in `config.py`. The line syntax of env files (`parse_env_line`) lives here too: it is
part of the config's syntax, and config.py only reads the files.

Imports only layer 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping

from procsup import cron, limits, units
from procsup.model import Condition, ExecMode, RestartPolicy

#: App names: `[apps.NAME]`. "all" is reserved for `procsup start all`. The name is part of
#: file names (the default logs `<app>-error-<i>.log` and their rotated `.N`), and will be of
#: systemd unit names (`<app>@<i>.service`, CONTRACT §3 Export), each at most 255 bytes
#: (NAME_MAX): 100 characters leave room for every suffix. A leading "-" would read as an
#: option on the command line (`procsup stop -h` prints the usage). Match with `fullmatch`.
APP_NAME_MAX = 100
APP_NAME_RE = re.compile(rf"[A-Za-z0-9_.][A-Za-z0-9_.-]{{0,{APP_NAME_MAX - 1}}}")
_APP_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
RESERVED_APP_NAMES = frozenset({"all"})
#: Profile names: `[procsup] env`, `procsupd --env`, the suffix of `env_<profile>`.
PROFILE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Keys of the `env_<profile>` pattern (checked after the fixed keys, so `env_file` is not one).
ENV_PROFILE_KEY_RE = re.compile(r"^env_([A-Za-z0-9_-]+)$")
#: Environment variable names accepted in `env` tables.
ENV_NAME_RE = re.compile(r"^[^=\0]+$")

#: Variable names accepted in env files (stricter than `env` tables: shell-compatible).
ENV_FILE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_HOST_PORT_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]\s]+)):(?P<port>\d+)$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ValueProblem(ValueError):
    """A value is wrong. `subkey` names the offending entry inside a table value (env.FOO)."""

    def __init__(self, message: str, subkey: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.subkey = subkey


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


def app_name_problem(name: str) -> str | None:
    """Why `name` cannot be an app name (the message of a config error), or None if it can."""
    if not _APP_NAME_CHARS.fullmatch(name):
        return f"invalid app name {name!r}: use letters, digits, '_', '.' and '-'"
    if name.startswith("-"):
        return (f"invalid app name {name!r}: app names may not start with '-' (it reads as an "
                "option on the command line)")
    if len(name) > APP_NAME_MAX:
        return (f"app name too long: {len(name)} characters, at most {APP_NAME_MAX} (it is part "
                "of the app's log file names, each limited to 255 bytes)")
    if name in RESERVED_APP_NAMES:
        return f"the app name {name!r} is reserved"
    assert APP_NAME_RE.fullmatch(name)
    return None


def type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


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


def suggest(name: str, known: list[str] | tuple[str, ...] | Mapping[str, object]) -> str | None:
    """The known key closest to `name`, when one is close enough to be a typo."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


# -- converters: raw TOML value (already type-checked) -> model value ------------------------


def _identity(value: object) -> object:
    return value


def _text(value: object) -> str:
    assert isinstance(value, str)
    if not value.strip():
        raise ValueProblem("must not be empty")
    if "\0" in value:
        raise ValueProblem("must not contain a NUL character")
    return value


def _strings(value: object) -> tuple[str, ...]:
    """A string or an array of strings -> tuple of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    assert isinstance(items, list)
    out: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueProblem(f"item {i} of the array: expected string, got {type_name(item)}")
        out.append(_text(item))
    return tuple(out)


def _duration(value: object) -> float:
    return units.parse_duration(value)


def _positive_duration(value: object) -> float:
    seconds = units.parse_duration(value)
    if seconds <= 0:
        raise ValueProblem(f"must be greater than zero, got {value!r}")
    return seconds


def _positive_size(value: object) -> int:
    size = units.parse_size(value)
    if size <= 0:
        raise ValueProblem(f"must be greater than zero, got {value!r}")
    return size


def _non_negative_int(value: object) -> int:
    assert isinstance(value, int)
    if value < 0:
        raise ValueProblem(f"must be >= 0, got {value}")
    return value


def _positive_int(value: object) -> int:
    assert isinstance(value, int)
    if value < 1:
        raise ValueProblem(f"must be >= 1, got {value}")
    return value


def _cpu_weight(value: object) -> int:
    assert isinstance(value, int)
    if not 1 <= value <= 10000:
        raise ValueProblem(f"must be 1..10000 (cpu.weight; the default is 100), got {value}")
    return value


def _cgroups_setting(value: object) -> str | bool:
    if value is True or value is False or value == "auto":
        assert isinstance(value, str | bool)
        return value
    raise ValueProblem(f'expected "auto", true or false, got {value!r}')


def _mode(value: object) -> int:
    return units.parse_mode(value)


def _signal(value: object) -> int:
    return units.parse_signal(value)


def _limit_value(name: str, value: object) -> int:
    """One limit of resource `name`: an integer >= 0, "unlimited", or for a byte resource a
    size ("512M")."""
    if value == "unlimited":
        return limits.UNLIMITED
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueProblem(f"{name}: must be >= 0 or \"unlimited\", got {value}", subkey=name)
        return value
    if isinstance(value, str) and name in limits.BYTE_RESOURCES:
        try:
            return units.parse_size(value)
        except ValueError as exc:
            raise ValueProblem(f"{name}: {exc}", subkey=name) from None
    what = 'an integer, a size or "unlimited"' if name in limits.BYTE_RESOURCES else (
        'an integer or "unlimited"')
    got = repr(value) if isinstance(value, str) else type_name(value)
    raise ValueProblem(f"{name}: expected {what}, got {got}", subkey=name)


def _limits(value: object) -> tuple[tuple[str, int, int], ...]:
    """`{ nofile = 4096, core = [0, "unlimited"] }`: resource -> one value (soft = hard) or
    [soft, hard]; in `limits.RESOURCES` order."""
    assert isinstance(value, dict)
    pairs: dict[str, tuple[int, int]] = {}
    for name, item in value.items():
        if name not in limits.RESOURCES:
            close = suggest(name, limits.RESOURCES)
            hint = f"; did you mean {close!r}?" if close else (
                f" (known: {', '.join(limits.RESOURCES)})")
            raise ValueProblem(f"unknown resource {name!r}{hint}", subkey=name)
        if isinstance(item, list):
            if len(item) != 2:
                raise ValueProblem(f"{name}: expected [soft, hard], got {len(item)} items",
                                   subkey=name)
            soft, hard = (_limit_value(name, v) for v in item)
            if limits.above(soft, hard):
                raise ValueProblem(f"{name}: soft limit {limits.text(soft)} is above the hard "
                                   f"limit {limits.text(hard)}", subkey=name)
        else:
            soft = hard = _limit_value(name, item)
        pairs[name] = (soft, hard)
    return tuple((n, *pairs[n]) for n in limits.RESOURCES if n in pairs)


def _ranged(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        assert isinstance(value, int)
        if not low <= value <= high:
            raise ValueProblem(f"must be {low}..{high}, got {value}")
        return value
    return convert


def _profile(value: object) -> str:
    assert isinstance(value, str)
    if not PROFILE_RE.match(value):
        raise ValueProblem(f"invalid profile name {value!r}: use letters, digits, '_' and '-'")
    return value


def _env_table(value: object) -> dict[str, str]:
    """Strings stay; integers become their decimal text (PORT = 8000 is common); else error."""
    assert isinstance(value, dict)
    out: dict[str, str] = {}
    for name, item in value.items():
        if not ENV_NAME_RE.match(name):
            raise ValueProblem(f"invalid environment variable name {name!r}", subkey=name)
        if isinstance(item, str):
            if "\0" in item:
                raise ValueProblem("value must not contain a NUL character", subkey=name)
            out[name] = item
        elif isinstance(item, int) and not isinstance(item, bool):
            out[name] = str(item)
        else:
            raise ValueProblem(
                f"variable {name!r}: expected string or integer, got {type_name(item)}",
                subkey=name,
            )
    return out


def _command(value: object) -> str | tuple[str, ...]:
    """A command line (non-empty) or an argv array (non-empty, argv[0] non-empty)."""
    if isinstance(value, str):
        return _text(value)
    assert isinstance(value, list)
    if not value:
        raise ValueProblem("must not be empty")
    argv: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueProblem(f"item {i} of the array: expected string, got {type_name(item)}")
        if "\0" in item:
            raise ValueProblem(f"item {i} of the array must not contain a NUL character")
        argv.append(item)
    if not argv[0].strip():
        raise ValueProblem("the program (first item) must not be empty")
    return tuple(argv)


def _instances(value: object) -> int | str:
    """An int (negatives kept: config.py subtracts them from the CPU count) or "max"."""
    if isinstance(value, str):
        if value != "max":
            raise ValueProblem(f'expected an integer or "max", got {value!r}')
        return value
    assert isinstance(value, int)
    return value


def _exec_mode(value: object) -> ExecMode:
    try:
        return ExecMode(value)
    except ValueError:
        raise ValueProblem(f'expected "fork" or "cluster", got {value!r}') from None


def _autorestart(value: object) -> RestartPolicy:
    if value is True:
        return RestartPolicy.ALWAYS
    if value is False:
        return RestartPolicy.NEVER
    if value == "on-failure":
        return RestartPolicy.ON_FAILURE
    raise ValueProblem(f'expected true, false or "on-failure", got {value!r}')


def _log_file(value: object) -> str | None:
    """A path, "-" (procsupd's stdout/stderr), "journal", or false (discard) -> None. `true`
    has no meaning here. (A file named "-" or "journal" is written "./-", "./journal".)"""
    if value is False:
        return None
    if value is True:
        raise ValueProblem("true is not allowed: give a path, or false to discard the stream")
    return _text(value)


def _log_format(value: object) -> str:
    if value not in ("text", "json"):
        raise ValueProblem(f'expected "text" or "json", got {value!r}')
    assert isinstance(value, str)
    return value


def _watch(value: object) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    return _strings(value)


def _cron(value: object) -> str:
    """Five cron fields that croniter accepts (cron.py), spaces normalized."""
    assert isinstance(value, str)
    try:
        return cron.normalize(value)
    except cron.CronError as exc:
        raise ValueProblem(str(exc)) from None


def check_host_port(text: str, what: str) -> tuple[str, int]:
    """Parse "HOST:PORT" or "[V6]:PORT"; port 1..65535. Raises ValueProblem naming `what`."""
    m = _HOST_PORT_RE.match(text)
    if m is None:
        raise ValueProblem(f"invalid {what} {text!r}: expected HOST:PORT or [IPV6]:PORT")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueProblem(f"invalid {what} {text!r}: port must be 1..65535")
    if m.group("v6") is not None:
        try:
            ipaddress.IPv6Address(m.group("v6"))
        except ValueError:
            raise ValueProblem(f"invalid {what} {text!r}: bad IPv6 address") from None
        return m.group("v6"), port
    host = m.group("host")
    if not _HOSTNAME_RE.match(host):
        raise ValueProblem(f"invalid {what} {text!r}: bad host name")
    return host, port


def check_listen(address: str) -> str:
    """Validate one `listen` address: "tcp://HOST:PORT", "tcp://[::]:PORT" or "unix:/path".

    Returns it unchanged; a relative unix path is made absolute by config.py.
    """
    if address.startswith("tcp://"):
        check_host_port(address[len("tcp://") :], "listen address")
        return address
    if address.startswith("unix:"):
        try:
            units.split_unix_listen(address)  # "unix:/path" or "unix:/path?mode=0600"
        except ValueError as exc:
            raise ValueProblem(str(exc)) from None
        return address
    raise ValueProblem(
        f"invalid listen address {address!r}: expected "
        '"tcp://HOST:PORT", "tcp://[::]:PORT" or "unix:/path/to/sock[?mode=0660]"'
    )


def _listen(value: object) -> tuple[str, ...]:
    return tuple(check_listen(a) for a in _strings(value))


def _balance(value: object) -> str:
    if value not in ("shared", "reuseport"):
        raise ValueProblem(f'expected "shared" or "reuseport", got {value!r}')
    assert isinstance(value, str)
    return value


def _probe(value: str, what: str) -> str | None:
    """`value` checked as a "tcp://HOST:PORT" or "http://HOST:PORT/PATH" probe; None when it
    is neither kind."""
    if value.startswith("tcp://"):
        check_host_port(value[len("tcp://") :], what)
        return value
    if value.startswith("http://"):
        rest = value[len("http://") :]
        hostport, _slash, _path = rest.partition("/")
        check_host_port(hostport, what)
        return value
    return None


def _ready(value: object) -> str:
    assert isinstance(value, str)
    if value in ("started", "notify"):
        return value
    if value.startswith("log:"):
        pattern = value[len("log:") :]
        if not pattern:
            raise ValueProblem('invalid ready "log:": give a regular expression after "log:"')
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueProblem(f"invalid ready {value!r}: bad regular expression: {exc}") from None
        return value
    probe = _probe(value, "ready probe")
    if probe is not None:
        return probe
    raise ValueProblem(
        f'invalid ready {value!r}: expected "started", "notify", "tcp://HOST:PORT", '
        '"http://HOST:PORT/PATH" or "log:REGEX"'
    )


def _health(value: object) -> str | tuple[str, ...]:
    """A probe URL, or a command as an argv array (a string that is not a URL is an error: a
    command must be an array, so that a typo in a URL is not run as a program)."""
    if isinstance(value, list):
        command = _command(value)
        assert isinstance(command, tuple)
        return command
    assert isinstance(value, str)
    probe = _probe(value, "health check")
    if probe is None:
        raise ValueProblem(
            f'invalid health {value!r}: expected "tcp://HOST:PORT", "http://HOST:PORT/PATH" '
            'or a command as an array (["/usr/bin/check", "--quick"])'
        )
    return probe


def _conditions() -> str:
    return ", ".join(f'"{c.value}"' for c in Condition)


def _depends_on(value: object) -> tuple[tuple[str, Condition], ...]:
    """A list of app names (each "ready") or a table app -> condition."""
    if isinstance(value, list):
        pairs = [(n, Condition.READY) for n in _strings(value)]
    else:
        assert isinstance(value, dict)
        pairs = []
        for name, cond in value.items():
            try:
                pairs.append((name, Condition(cond)))
            except ValueError:
                got = repr(cond) if isinstance(cond, str) else type_name(cond)
                raise ValueProblem(f"expected one of {_conditions()}, got {got}",
                                   subkey=name) from None
    seen: set[str] = set()
    for name, _cond in pairs:
        if not APP_NAME_RE.fullmatch(name) or name in RESERVED_APP_NAMES:  # (the rare case)
            problem = (f"{name!r} is not an app" if name in RESERVED_APP_NAMES
                       else app_name_problem(name))
            raise ValueProblem(problem or f"invalid app name {name!r}", subkey=name)
        if name in seen:
            raise ValueProblem(f"{name!r} is listed twice", subkey=name)
        seen.add(name)
    return tuple(pairs)


def parse_env_line(line: str) -> tuple[str, str] | None:
    """One line of an `env_file` -> (key, value), or None for blank and comment lines.

    `export ` is optional; a value in "..." knows \\n \\t \\r \\" \\\\ \\$; '...' is literal;
    an unquoted value ends at " #" (a comment) and is stripped. Raises ValueError.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("export ") or text.startswith("export\t"):
        text = text[len("export") :].lstrip()
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq:
        raise ValueError(f"expected KEY=VALUE, got {line.strip()!r}")
    if not ENV_FILE_NAME_RE.match(key):
        raise ValueError(f"invalid variable name {key!r}")
    value = value.lstrip()
    if value[:1] in ('"', "'"):
        quote, chars, i = value[0], [], 1
        while i < len(value) and value[i] != quote:
            if quote == '"' and value[i] == "\\" and i + 1 < len(value):
                i += 1
                chars.append(units.DQ_ESCAPES.get(value[i], "\\" + value[i]))
            else:
                chars.append(value[i])
            i += 1
        if i >= len(value):
            raise ValueError(f"{key}: missing closing {quote}")
        rest = value[i + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f"{key}: unexpected text after the closing quote: {rest!r}")
        return key, "".join(chars)
    m = re.search(r"\s#", value)
    return key, (value[: m.start()] if m else value).rstrip()


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
    Key("socket", _S, _PATH_DOC, None, _text,
        "path of the control socket",
        default_doc="root: /run/procsup/procsup.sock; others: $XDG_RUNTIME_DIR/procsup/"
        "procsup.sock (else /tmp/procsup-<uid>/procsup.sock)"),
    Key("socket_mode", _S, "string (octal)", "0660", _mode,
        "permission bits of the control socket"),
    Key("socket_group", _S, "string (group name)", None, _text,
        "group allowed to use the socket, besides root and the daemon's uid"),
    Key("pidfile", _S, _PATH_DOC, None, _text,
        "pid file of the daemon",
        default_doc="root: /run/procsup/procsupd.pid; others: next to the socket"),
    Key("log_dir", _S, _PATH_DOC, None, _text,
        "default directory of app logs; the daemon's own log is <log_dir>/procsupd.log",
        default_doc="root: /var/log/procsup; others: $XDG_STATE_HOME/procsup/logs "
        "(else ~/.local/state/procsup/logs)"),
    Key("state_dir", _S, _PATH_DOC, None, _text,
        "where the daemon records its instances (to survive its own restart)",
        default_doc="root: /var/lib/procsup; others: $XDG_STATE_HOME/procsup/state "
        "(else ~/.local/state/procsup/state)"),
    Key("include", (str, list), "string or array of strings (globs)", (), _strings,
        "globs of files holding more [apps.*] tables, relative to this file"),
    Key("env", _S, "string (profile name)", None, _profile,
        "default profile (env_<profile> tables); `procsupd --env` overrides"),
    Key("watch_config", _B, "boolean", True, _identity,
        "apply the config when this file or an included one is saved (debounced)"),
    Key("shutdown_timeout", _DUR, _DUR_DOC, "30s", _duration,
        "how long the daemon waits for apps to stop when it exits"),
    Key("cgroups", (str, bool), '"auto", true or false', "auto", _cgroups_setting,
        'a cgroup v2 group per instance run: "auto" = where procsupd can create them, '
        "false = never, true = required (procsupd does not start without them)"),
)

#: `[apps.NAME]`: one app. Defaults equal the `AppSpec` field defaults (a test checks it).
APP_KEYS: Mapping[str, Key] = _rows(
    Key("command", (str, list), "string or array of strings", None, _command,
        "what to run: a string is split like a shell does (no shell runs), or an argv array",
        required=True),
    Key("shell", _B, "boolean", False, _identity,
        "run `command` through /bin/sh -c"),
    Key("cwd", _S, _PATH_DOC, None, _text,
        "working directory (relative to the config file); must exist at start",
        default_doc="the daemon's cwd (/ when daemonized)"),
    Key("instances", (int, str), 'integer or "max"', 1, _instances,
        'instances to run: N >= 0; "max" = usable CPUs; -N = usable CPUs minus N (min 1)'),
    Key("exec_mode", _S, '"fork" or "cluster"', "fork", _exec_mode,
        "cluster: the daemon binds `listen` and passes the sockets to every instance"),
    Key("env", (dict,), "table of strings", None, _env_table,
        "variables added to the inherited environment"),
    Key("env_file", (str, list), "string or array of strings (paths)", (), _strings,
        "KEY=VALUE files (relative to cwd), applied after env, before env_<profile>"),
    Key("inherit_env", _B, "boolean", True, _identity,
        "false: start from PATH, LANG, HOME, USER, LOGNAME only"),
    Key("user", _S, "string (user name)", None, _text,
        "run as this user (with its supplementary groups)",
        default_doc="the daemon's user"),
    Key("group", _S, "string (group name)", None, _text,
        "run with this group", default_doc="the user's primary group"),
    Key("umask", _S, "string (octal)", None, _mode,
        "umask of the app's processes", default_doc="the daemon's umask"),
    Key("limits", (dict,), 'table of resource = N, "unlimited" or [soft, hard]', None, _limits,
        "rlimits of the app's processes (setrlimit names: nofile, nproc, core, as, ...; one "
        "value sets soft and hard)",
        default_doc="procsupd's limits as it was started (not the open-files limit it raised "
        "for itself)"),
    Key("nice", _I, "integer -20..19", None, _ranged(*limits.NICE_RANGE),
        "scheduling niceness of the app's processes", default_doc="procsupd's own"),
    Key("oom_score_adjust", _I, "integer -1000..1000", None, _ranged(*limits.OOM_RANGE),
        "oom_score_adj of the app's processes (-1000: never killed for memory)",
        default_doc="procsupd's own"),
    Key("autorestart", (bool, str), 'true, false or "on-failure"', True, _autorestart,
        'restart when it ends: always (true), never (false), or "on-failure" only'),
    Key("max_restarts", _I, "integer >= 0", 15, _non_negative_int,
        'restarts in a row after unstable runs before the instance is "errored"'),
    Key("min_uptime", _DUR, _DUR_DOC, "1s", _duration,
        "a run shorter than this is unstable"),
    Key("restart_delay", _DUR, _DUR_DOC, "0s", _duration,
        "wait before restarting"),
    Key("exp_backoff_restart_delay", _DUR, _DUR_DOC, None, _positive_duration,
        "replaces restart_delay: first delay, doubled per unstable restart (cap 15 s)"),
    Key("kill_signal", (str, int), 'signal: "SIGTERM", "TERM" or a number', "SIGTERM", _signal,
        "signal sent to the process group to stop it"),
    Key("kill_timeout", _DUR, _DUR_DOC, "5s", _duration,
        "then SIGKILL to the whole process group"),
    Key("out_file", (str, bool), 'string (path), "-", "journal" or false', None, _log_file,
        'stdout log: relative to log_dir; false = discard; "-" = procsupd\'s stdout (lines '
        'prefixed "<app>:<i> | "); "journal" = the systemd journal',
        default_doc="<log_dir>/<app>-out.log"),
    Key("error_file", (str, bool), 'string (path), "-", "journal" or false', None, _log_file,
        'stderr log: relative to log_dir; false = discard; = out_file: one file; "-" = '
        'procsupd\'s stderr; "journal" = the systemd journal (PRIORITY 3)',
        default_doc="<log_dir>/<app>-error.log"),
    Key("merge_logs", _B, "boolean", False, _identity,
        'false and instances > 1: one file per instance ("-<i>" before the suffix)'),
    Key("log_date_format", _S, "string (strftime)", None, _text,
        'prefix each line with the date in this format and a space; absent = no prefix'),
    Key("log_max_size", (str, int), _SIZE_DOC, None, _positive_size,
        "rotate a log file when it passes this size; absent = never"),
    Key("log_retain", _I, "integer >= 0", 5, _non_negative_int,
        "rotated files kept: <file>.1 (newest) ... <file>.N"),
    Key("log_format", _S, '"text" or "json"', "text", _log_format,
        'json: each line written as one JSON object {"time", "app", "instance", "stream", '
        '"message"} (not to the journal, whose entries have those fields)'),
    Key("max_memory_restart", (str, int), _SIZE_DOC, None, _positive_size,
        "restart an instance whose RSS (with its children) passes this"),
    # cgroup v2 limits (procsup/cgroups.py): where the hierarchy offers the controller
    Key("memory_max", (str, int), _SIZE_DOC, None, _positive_size,
        "memory.max of each instance's cgroup: the kernel reclaims, then OOM-kills within it"),
    Key("cpu_weight", _I, "integer 1..10000", None, _cpu_weight,
        "cpu.weight of each instance's cgroup: its share of CPU time under contention "
        "(100 = the default share)"),
    Key("pids_max", _I, "integer >= 1", None, _positive_int,
        "pids.max of each instance's cgroup: a fork beyond this many processes and threads "
        "fails"),
    Key("watch", (bool, list), "boolean or array of strings (paths)", False, _watch,
        "restart when files change: true = cwd, or a list of paths (relative to cwd)"),
    Key("ignore_watch", (str, list), "string or array of strings (globs)",
        ("*.log", ".git", "__pycache__", "node_modules"), _strings,
        "ignored by watch: a glob without / matches any name in the path, one with / the "
        "path relative to the watched directory"),
    Key("cron_restart", _S, 'string (cron: "min hour dom month dow")', None, _cron,
        "restart at these times"),
    Key("ready", _S,
        '"started", "notify", "tcp://HOST:PORT", "http://HOST:PORT/PATH" or "log:REGEX"',
        "started", _ready,
        "when an instance counts as ready (for reload, depends_on and the starting state); "
        "log:REGEX = a line of its stdout or stderr matches"),
    Key("ready_timeout", _DUR, _DUR_DOC, "30s", _positive_duration,
        "a replacement not ready within this fails the reload"),
    Key("heartbeat_timeout", _DUR, _DUR_DOC, None, _positive_duration,
        'with ready = "notify": restart an instance silent (no WATCHDOG=1) for this long'),
    Key("depends_on", (list, dict), "array of app names, or table of app = condition", (),
        _depends_on,
        'start after these apps: "started", "ready" (a list means ready), "healthy" or '
        '"completed"; stop before them'),
    Key("health", (str, list), '"tcp://HOST:PORT", "http://HOST:PORT/PATH" or an array (command)',
        None, _health,
        "liveness check of every running instance; failing health_failures times restarts it"),
    Key("health_interval", _DUR, _DUR_DOC, "10s", _positive_duration,
        "time between two health checks of an instance"),
    Key("health_timeout", _DUR, _DUR_DOC, "2s", _positive_duration,
        "a check that takes longer has failed"),
    Key("health_failures", _I, "integer >= 1", 3, _positive_int,
        "failed checks in a row that restart the instance"),
    Key("reload_signal", (str, int), 'signal: "SIGHUP", "HUP" or a number', None, _signal,
        "`reload` sends this signal to each instance (in place) instead of replacing it"),
    Key("pidfile", _S, _PATH_DOC, None, _text,
        "the command puts itself in the background and writes its server's pid here "
        "(relative to cwd): procsup waits for it after the command exits 0, then supervises "
        "that process", default_doc="none: the command runs in the foreground"),
    Key("listen", (str, list), "string or array of strings (addresses)", (), _listen,
        'cluster only: "tcp://HOST:PORT", "tcp://[::]:PORT", "unix:/path"'),
    Key("balance", _S, '"shared" or "reuseport"', "shared", _balance,
        "cluster only: one socket for all instances, or one SO_REUSEPORT socket per instance"),
)

#: The `env_<profile>` pattern: a table merged over `env` when <profile> is active.
ENV_PROFILE_KEY = Key(
    "env_<profile>", (dict,), "table of strings", None, _env_table,
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
