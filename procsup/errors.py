"""Exception tree, CLI exit codes and wire error codes (layer 0: imports nothing from procsup)."""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    """Exit codes of `procsup` and `procsupd` (contract §1)."""

    OK = 0
    FAILED = 1  # the request failed: unknown app, invalid config, daemon refused
    USAGE = 2  # usage error
    UNREACHABLE = 3  # cannot reach the daemon
    #: procsupd does not start because its config is invalid or unreadable (sysexits'
    #: EX_CONFIG): what the unit's RestartPreventExitStatus= names, since retrying a config
    #: error cannot help. (`--check` says the same with 1.)
    CONFIG = 78


class WireError(str, enum.Enum):
    """Stable error codes carried in control-protocol replies (docs/protocol.md)."""

    BAD_REQUEST = "bad_request"  # not a JSON object, missing/ill-typed fields
    TOO_LARGE = "too_large"  # frame longer than the limit
    TIMEOUT = "timeout"  # request not received completely in time
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_APP = "unknown_app"
    INVALID_CONFIG = "invalid_config"
    FORBIDDEN = "forbidden"  # peer not allowed by SO_PEERCRED check
    TOO_MANY_CONNECTIONS = "too_many_connections"  # the daemon serves its limit of connections
    FAILED = "failed"  # the command ran but did not achieve what was asked
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class ProcsupError(Exception):
    """Base of every error procsup raises on purpose."""


class ConfigError(ProcsupError):
    """A config file is invalid. Carries where: file, line, app and key, each when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        app: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.app = app
        self.key = key
        # What the invalid config read and includes, when `config.load` got that far: a
        # watcher of the config watches these too, so that fixing a new include applies it.
        self.files: tuple[str, ...] = ()
        self.include: tuple[str, ...] = ()

    def location(self) -> str:
        """`file:line: app 'x', key 'y'` with the parts that are known."""
        parts: list[str] = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else self.file)
        where: list[str] = []
        if self.app is not None:
            where.append(f"app {self.app!r}")
        if self.key is not None:
            where.append(f"key {self.key!r}")
        if where:
            parts.append(", ".join(where))
        return ": ".join(parts)

    def __str__(self) -> str:
        loc = self.location()
        return f"{loc}: {self.message}" if loc else self.message

    def to_dict(self) -> dict[str, object]:
        return {
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "app": self.app,
            "key": self.key,
            "text": str(self),
        }


class ConfigErrors(ConfigError):
    """Several problems found by one `load()`: a ConfigError, so every `except ConfigError`
    handles it.

    `errors` holds the first `limit` problems in the order found (files in load order); `omitted`
    counts the rest. The file, line, app and key attributes are those of the first problem.
    `message` and `str()` list every kept problem on its own line with its own location
    (`file:line: app 'x', key 'y': message`), then "... and N more" when some were omitted.
    `load()` raises this only for two or more problems; one problem is a plain ConfigError.
    """

    def __init__(self, errors: Sequence[ConfigError], *, limit: int = 20) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        kept = tuple(errors[: max(1, limit)])
        omitted = len(errors) - len(kept)
        lines = [str(e) for e in kept]
        if omitted:
            lines.append(f"... and {omitted} more")
        first = kept[0]
        super().__init__(
            "\n".join(lines), file=first.file, line=first.line, app=first.app, key=first.key
        )
        self.errors = kept
        self.omitted = omitted

    def __str__(self) -> str:
        return self.message  # each line carries its own location

    def to_dict(self) -> dict[str, object]:
        return {
            **super().to_dict(),
            "errors": [e.to_dict() for e in self.errors],
            "omitted": self.omitted,
        }


class ProtocolError(ProcsupError):
    """A control-protocol frame or message is malformed."""

    def __init__(self, code: WireError, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(ProcsupError):
    """The daemon answered a request with an error."""

    def __init__(self, code: str, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
