"""What one config value means (layer 1, pure): the rules for app and profile names, and the
converters of `schema`'s rows, each turning a raw TOML value (already type-checked) into the
model's unit (seconds, bytes, signal numbers, enums, tuples: `listen` addresses, `ready` and
`health` probes, `depends_on`, `limits`) or raising `ValueProblem`; and the line syntax of env
files (`parse_env_line`), which is part of the config's syntax (config.py only reads the
files). Context-free: paths relative to a file, the CPU count, log_dir are `config`'s.

`schema` says which keys there are and which converter each one takes; this module knows
nothing of keys. Imports only layer 0 and the pure helpers beside it (`cron`, `limits`).
"""

from __future__ import annotations

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


def suggest(name: str, known: list[str] | tuple[str, ...] | Mapping[str, object]) -> str | None:
    """The known key closest to `name`, when one is close enough to be a typo."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def identity(value: object) -> object:
    return value


def text(value: object) -> str:
    assert isinstance(value, str)
    if not value.strip():
        raise ValueProblem("must not be empty")
    if "\0" in value:
        raise ValueProblem("must not contain a NUL character")
    return value


def strings(value: object) -> tuple[str, ...]:
    """A string or an array of strings -> tuple of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    assert isinstance(items, list)
    out: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueProblem(f"item {i} of the array: expected string, got {type_name(item)}")
        out.append(text(item))
    return tuple(out)


def duration(value: object) -> float:
    return units.parse_duration(value)


def positive_duration(value: object) -> float:
    seconds = units.parse_duration(value)
    if seconds <= 0:
        raise ValueProblem(f"must be greater than zero, got {value!r}")
    return seconds


def positive_size(value: object) -> int:
    size = units.parse_size(value)
    if size <= 0:
        raise ValueProblem(f"must be greater than zero, got {value!r}")
    return size


def non_negative_int(value: object) -> int:
    assert isinstance(value, int)
    if value < 0:
        raise ValueProblem(f"must be >= 0, got {value}")
    return value


def positive_int(value: object) -> int:
    assert isinstance(value, int)
    if value < 1:
        raise ValueProblem(f"must be >= 1, got {value}")
    return value


def cpu_weight(value: object) -> int:
    assert isinstance(value, int)
    if not 1 <= value <= 10000:
        raise ValueProblem(f"must be 1..10000 (cpu.weight; the default is 100), got {value}")
    return value


def cgroups_setting(value: object) -> str | bool:
    if value is True or value is False or value == "auto":
        assert isinstance(value, str | bool)
        return value
    raise ValueProblem(f'expected "auto", true or false, got {value!r}')


def mode(value: object) -> int:
    return units.parse_mode(value)


def signal(value: object) -> int:
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


def rlimits(value: object) -> tuple[tuple[str, int, int], ...]:
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


def ranged(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        assert isinstance(value, int)
        if not low <= value <= high:
            raise ValueProblem(f"must be {low}..{high}, got {value}")
        return value
    return convert


def profile(value: object) -> str:
    assert isinstance(value, str)
    if not PROFILE_RE.match(value):
        raise ValueProblem(f"invalid profile name {value!r}: use letters, digits, '_' and '-'")
    return value


def env_table(value: object) -> dict[str, str]:
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


def command(value: object) -> str | tuple[str, ...]:
    """A command line (non-empty) or an argv array (non-empty, argv[0] non-empty)."""
    if isinstance(value, str):
        return text(value)
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


def instances(value: object) -> int | str:
    """An int (negatives kept: config.py subtracts them from the CPU count) or "max"."""
    if isinstance(value, str):
        if value != "max":
            raise ValueProblem(f'expected an integer or "max", got {value!r}')
        return value
    assert isinstance(value, int)
    return value


def exec_mode(value: object) -> ExecMode:
    try:
        return ExecMode(value)
    except ValueError:
        raise ValueProblem(f'expected "fork" or "cluster", got {value!r}') from None


def autorestart(value: object) -> RestartPolicy:
    if value is True:
        return RestartPolicy.ALWAYS
    if value is False:
        return RestartPolicy.NEVER
    if value == "on-failure":
        return RestartPolicy.ON_FAILURE
    raise ValueProblem(f'expected true, false or "on-failure", got {value!r}')


def log_file(value: object) -> str | None:
    """A path, "-" (procsupd's stdout/stderr), "journal", or false (discard) -> None. `true`
    has no meaning here. (A file named "-" or "journal" is written "./-", "./journal".)"""
    if value is False:
        return None
    if value is True:
        raise ValueProblem("true is not allowed: give a path, or false to discard the stream")
    return text(value)


def log_format(value: object) -> str:
    if value not in ("text", "json"):
        raise ValueProblem(f'expected "text" or "json", got {value!r}')
    assert isinstance(value, str)
    return value


def watch(value: object) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    return strings(value)


def cron_line(value: object) -> str:
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


def listen(value: object) -> tuple[str, ...]:
    return tuple(check_listen(a) for a in strings(value))


def balance(value: object) -> str:
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


def ready(value: object) -> str:
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


def health(value: object) -> str | tuple[str, ...]:
    """A probe URL, or a command as an argv array (a string that is not a URL is an error: a
    command must be an array, so that a typo in a URL is not run as a program)."""
    if isinstance(value, list):
        argv = command(value)
        assert isinstance(argv, tuple)
        return argv
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


def depends_on(value: object) -> tuple[tuple[str, Condition], ...]:
    """A list of app names (each "ready") or a table app -> condition."""
    if isinstance(value, list):
        pairs = [(n, Condition.READY) for n in strings(value)]
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
