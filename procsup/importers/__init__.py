"""`procsup import`: translate PM2 ecosystems and supervisord configs into procsup TOML (layer 1).

The importers are pure: they read files only through the `Files` object they are given (the
CLI passes one backed by the OS; tests may pass their own), they take the environment as an
argument, and they return a `Result`: the TOML text and the `Note`s. A note is a setting that
has no procsup equivalent, or one that is imported with a different meaning; each names the
source file (and line where known), the app and the source key. Every note appears twice: in a
comment block at the top of the TOML and in `Result.notes` (the CLI prints those on stderr),
so nothing is ever dropped silently. A source that cannot be read or makes no sense raises
`ConfigError` with file:line where known.

Modules: `pm2` (ecosystem .json/.yaml/.yml/.js/.cjs), `jsobject` (the JS object-literal reader
pm2 uses instead of running Node), `supervisord` (.conf with includes).

Imports only layer 0, `schema` and `values`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Protocol

import tomli_w

from procsup import schema, values
from procsup.errors import ConfigError


class Files(Protocol):
    """The only way an importer reaches the file system."""

    def read_text(self, path: str) -> str:
        """The file's text (UTF-8); raises OSError."""

    def glob(self, pattern: str) -> list[str]:
        """Paths matching an absolute glob pattern, sorted; [] when none."""

    def is_file(self, path: str) -> bool:
        """Whether `path` names an existing regular file."""


@dataclasses.dataclass(frozen=True)
class Note:
    """One setting that was not imported, or imported with a different meaning.

    `where` is "file" or "file:line"; `app` the procsup app name (None for daemon-level
    settings); `key` the source key as written there ("wait_ready", "stopasgroup",
    "[inet_http_server]").
    """

    where: str
    app: str | None
    key: str
    message: str

    def __str__(self) -> str:
        subject = f"app {self.app!r}, key {self.key!r}" if self.app else f"key {self.key!r}"
        return f"{self.where}: {subject}: {self.message}"


class AppTable:
    """One app's procsup keys (`out`) as an importer builds them from a source's options.
    Subclasses say how to point at a source key in an error (`fail`)."""

    out: dict[str, object]

    def fail(self, key: str, message: str) -> ConfigError:
        raise NotImplementedError

    def checked(self, key: str, procsup_key: str, value: object) -> None:
        """Set `procsup_key` to `value` if the schema accepts it; else ConfigError at the
        source option `key`."""
        try:
            schema.check(schema.APP_KEYS[procsup_key], value)
        except values.ValueProblem as exc:
            raise self.fail(key, exc.message) from None
        self.out[procsup_key] = value


@dataclasses.dataclass(frozen=True)
class Result:
    """What an importer returns: the procsup config as TOML text, and its notes."""

    toml: str
    notes: tuple[Note, ...]


def render(
    tool: str,
    source: str,
    daemon: Mapping[str, object],
    apps: Mapping[str, Mapping[str, object]],
    notes: list[Note],
) -> Result:
    """The TOML document: a comment header (what it came from, then every note), an optional
    `[procsup]` table and one `[apps.NAME]` table per app, in the order given.

    Every table is checked against `schema` first, so a value the importer got wrong is an
    AssertionError here rather than a config that `procsupd --check` rejects later.
    """
    for name, table in apps.items():
        if values.app_name_problem(name) is not None:
            raise AssertionError(f"importer produced an invalid app name {name!r}")
        for key, value in table.items():
            found = schema.app_key(key)
            assert found is not None, f"importer produced an unknown key {key!r}"
            try:
                schema.check(found[0], value)
            except values.ValueProblem as exc:
                raise AssertionError(f"importer produced app {name!r} {key} = {value!r}: "
                                     f"{exc.message}") from None
    for key, value in daemon.items():
        try:
            schema.check(schema.DAEMON_KEYS[key], value)
        except values.ValueProblem as exc:
            raise AssertionError(f"importer produced [procsup] {key} = {value!r}: "
                                 f"{exc.message}") from None
    lines = [
        f"# Converted by `procsup import {tool}` from {_one_line(source)}",
        "# Check it with `procsupd --check -c FILE`; see docs/migrating.md for the differences.",
    ]
    if notes:
        lines += [
            "#",
            f"# {len(notes)} setting(s) below were not imported, or mean something different",
            "# in procsup (also printed on stderr by `procsup import`):",
        ]
        lines += [f"#   - {_one_line(str(n))}" for n in notes]
    else:
        lines.append("# Every setting had a procsup equivalent.")
    document: dict[str, object] = {}
    if daemon:
        document["procsup"] = dict(daemon)
    document["apps"] = {name: _schema_order(table) for name, table in apps.items()}
    return Result("\n".join(lines) + "\n\n" + tomli_w.dumps(document), tuple(notes))


def _schema_order(table: Mapping[str, object]) -> dict[str, object]:
    """The keys in the order of the schema rows (env_<profile> right after env), as `dump`
    writes them, so imported files read like hand-written ones."""
    order = {key: float(i) for i, key in enumerate(schema.APP_KEYS)}
    env_at = order["env"] + 0.5
    return dict(sorted(table.items(), key=lambda kv: order.get(kv[0], env_at)))


def is_device(path: object) -> bool:
    """A log path that is a device (/dev/stdout in a container), which must not get a
    per-instance "-<i>" suffix: instances share it (merge_logs = true)."""
    return isinstance(path, str) and path.startswith("/dev/")


def _one_line(text: str) -> str:
    """Keep a comment on one line: control characters (a newline in a path) are escaped."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
#: Why an imported app was renamed, for the note.
NAME_RULES = (f"procsup app names use letters, digits, '_', '.' and '-', do not start with '-', "
              f"have at most {values.APP_NAME_MAX} characters, and are unique")


def app_name(wanted: str, taken: set[str]) -> str:
    """A procsup app name for a source name: invalid characters become "-", leading ones are
    dropped, a name longer than `values.APP_NAME_MAX` is cut to it, "all" and names already
    taken get a "-2", "-3"... suffix (cutting the name further to make room). The caller notes
    a change of name (`NAME_RULES` says why)."""
    name = _BAD_NAME_CHARS.sub("-", wanted).strip("-")[: values.APP_NAME_MAX] or "app"
    if name in values.RESERVED_APP_NAMES:
        name = f"{name}-app"
    base, n = name, 2
    while name in taken:
        suffix = f"-{n}"
        name, n = base[: values.APP_NAME_MAX - len(suffix)] + suffix, n + 1
    taken.add(name)
    return name


def read(files: Files, path: str, *, where: str | None = None, line: int | None = None) -> str:
    """The text of `path`, or ConfigError: at `where`:`line` (the include that named it) when
    given, else at `path` itself."""
    what = f"cannot read {path}" if where else "cannot read"
    try:
        return files.read_text(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: not UTF-8 text ({exc.reason})", file=where or path,
                          line=line) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{what}: {reason}", file=where or path, line=line) from None
