"""The control wire protocol, version 1 (layer 0: imports nothing from procsup).

Both ends use this module: `control.py` (the daemon's server) and `client.py` (the blocking
client), so framing, limits, request validation and the command table exist exactly once.
docs/protocol.md is the prose version of this file; keep them in step.

Framing: a frame is a 4-byte big-endian unsigned length N followed by N bytes of UTF-8 JSON
holding one object. One request per connection; the reply is one frame, or for a streamed
command any number of frames carrying `"more": true` and then one final frame without it.

This module is imported by `procsup status` on every run, so it stays cheap: no dataclasses,
no typing at run time (annotations are strings under `from __future__ import annotations`).

Layer 0 modules are independent of each other, so this one cannot use `errors`: it raises its
own `ProtocolViolation` carrying the wire error code as a string (the codes are values of
`errors.WireError`; tests hold the two in step), and reports error replies as data.
"""

from __future__ import annotations

import json
import types

TYPE_CHECKING = False  # mypy treats this name as true; at run time `typing` is never imported
if TYPE_CHECKING:
    import _socket  # what the client uses; `socket.socket` is a subclass
    from collections.abc import Mapping
    from typing import Any

#: The protocol version carried in every request and reply as "v".
VERSION = 1
#: Longest request payload the daemon reads (bytes after the length prefix). Requests are tiny
#: (the longest real one names apps: a thousand names fit), and this bounds what one
#: connection makes the daemon buffer and decode: 1 MiB, the old limit, cost about 6.5 MiB at
#: peak per connection (the bytes, their copies, the decoded text, the error quoting it).
MAX_REQUEST = 64 << 10
#: Longest reply payload either end produces or accepts.
MAX_REPLY = 64 << 20

#: Bytes of the length prefix (big-endian, unsigned); `int.to_bytes`, not `struct`, which
#: would be one module more for `procsup` to import.
HEADER_SIZE = 4

# The wire error codes this module itself produces (values of `errors.WireError`).
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_COMMAND = "unknown_command"


class ProtocolViolation(ValueError):
    """A frame or message breaks the protocol. `code` is the wire error code that describes it
    (one of the constants above); `str(exc)` is a message fit for the peer and the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- framing


def encode(obj: Mapping[str, object], limit: int = MAX_REPLY) -> bytes:
    """One frame holding `obj` as compact UTF-8 JSON.

    Raises `TypeError`/`ValueError` when `obj` is not JSON (NaN and infinities are refused:
    they are not JSON), and `ProtocolViolation(TOO_LARGE)` when the payload exceeds `limit`.
    """
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = payload.encode("utf-8")
    if len(data) > limit:
        raise ProtocolViolation(
            TOO_LARGE, f"frame of {len(data)} bytes exceeds the limit of {limit} bytes"
        )
    return len(data).to_bytes(HEADER_SIZE, "big") + data


def decode_header(header: bytes) -> int:
    """The payload length announced by a 4-byte frame header."""
    if len(header) != HEADER_SIZE:
        raise ValueError(f"a frame header is {HEADER_SIZE} bytes, not {len(header)}")
    return int.from_bytes(header, "big")


def _cut(text: str, limit: int = 60) -> str:
    """`text` cut to about `limit` characters: error messages quote what the peer sent, and a
    peer must not be able to make them (and the log lines they become) large."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _quote(value: object) -> str:
    return _cut(repr(value))


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_payload(data: bytes | bytearray) -> dict[str, Any]:
    """The JSON object carried by a frame's payload.

    Raises `ProtocolViolation(BAD_REQUEST)` for invalid UTF-8, invalid JSON (including NaN and
    absurd nesting) or a JSON value that is not an object.
    """
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ProtocolViolation(BAD_REQUEST, f"frame is not valid UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolViolation(BAD_REQUEST, f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolViolation(
            BAD_REQUEST, f"frame must hold a JSON object, not {type(obj).__name__}"
        )
    return obj


def _recv_exactly(sock: _socket.socket, size: int) -> bytes:
    """`size` bytes from a blocking socket; `EOFError` if the peer closes before that."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError(got)
        got += n
    return bytes(buf)


def read_frame(sock: _socket.socket, limit: int = MAX_REPLY) -> dict[str, Any]:
    """Read one frame from a blocking socket and decode it.

    Raises `EOFError` when the peer closes the connection (at a frame boundary or inside a
    frame), `ProtocolViolation(TOO_LARGE)` when the announced length exceeds `limit` (nothing more
    is read), `ProtocolViolation(BAD_REQUEST)` when the payload is not a JSON object. Socket
    errors and timeouts (`OSError`, `TimeoutError`) propagate.
    """
    try:
        length = decode_header(_recv_exactly(sock, HEADER_SIZE))
    except EOFError as exc:
        got = exc.args[0] if exc.args else 0
        message = "connection closed" if got == 0 else "connection closed inside a frame"
        raise EOFError(message) from None
    if length > limit:
        raise ProtocolViolation(
            TOO_LARGE, f"frame of {length} bytes exceeds the limit of {limit} bytes"
        )
    try:
        payload = _recv_exactly(sock, length)
    except EOFError:
        raise EOFError("connection closed inside a frame") from None
    return decode_payload(payload)


# --------------------------------------------------------------------------- command table


class Arg:
    """One argument of a command: its JSON type, whether it is required, its default, bounds.

    `kind` is one of "str", "str?" (string or null), "int", "bool", "apps" (list of non-empty
    strings). `choices` restricts a "str"; `minimum`/`maximum` bound an "int"; `non_empty`
    requires at least one element of an "apps" list. Instances are not to be mutated.
    """

    __slots__ = ("choices", "default", "doc", "kind", "maximum", "minimum", "name", "non_empty",
                 "required")

    def __init__(
        self,
        name: str,
        kind: str,
        doc: str,
        *,
        default: object = None,
        required: bool = False,
        choices: tuple[str, ...] = (),
        minimum: int | None = None,
        maximum: int | None = None,
        non_empty: bool = False,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"unknown argument kind {kind!r}")
        self.name = name
        self.kind = kind
        self.doc = doc
        self.default = default
        self.required = required
        self.choices = choices
        self.minimum = minimum
        self.maximum = maximum
        self.non_empty = non_empty

    def __repr__(self) -> str:
        return f"Arg({self.name!r}, {self.kind!r})"

    def type_text(self) -> str:
        """The argument's type as docs and error messages show it."""
        if self.choices:
            return " | ".join(json.dumps(c) for c in self.choices)
        text = _KINDS[self.kind]
        if self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else str(self.minimum)
            hi = "" if self.maximum is None else str(self.maximum)
            text += f" ({lo}..{hi})"
        if self.non_empty:
            text += " (non-empty)"
        return text

    def default_value(self) -> object:
        """The default, copied so that callers may mutate lists freely."""
        return list(self.default) if isinstance(self.default, list) else self.default

    def check(self, cmd: str, value: object) -> object:
        """`value` if it has this argument's type and bounds, else raise
        `ProtocolViolation(BAD_REQUEST)`."""
        ok = False
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "int":
            # bool is an int subclass in Python; JSON `true` is not the number 1.
            ok = isinstance(value, int) and not isinstance(value, bool)
            if ok:
                assert isinstance(value, int)
                ok = (self.minimum is None or value >= self.minimum) and (
                    self.maximum is None or value <= self.maximum
                )
        elif self.kind == "str":
            ok = isinstance(value, str) and (not self.choices or value in self.choices)
        elif self.kind == "str?":
            ok = value is None or isinstance(value, str)
        elif self.kind == "apps":
            ok = (
                isinstance(value, list)
                and all(isinstance(v, str) and v for v in value)
                and (bool(value) or not self.non_empty)
            )
        if not ok:
            raise ProtocolViolation(
                BAD_REQUEST,
                f"{cmd}: argument {self.name!r} must be {self.type_text()}, got {_quote(value)}",
            )
        return list(value) if isinstance(value, list) else value


_KINDS = types.MappingProxyType(
    {
        "str": "string",
        "str?": "string | null",
        "int": "integer",
        "bool": "boolean",
        "apps": "list of app names",
    }
)


class Command:
    """One command of the protocol: its arguments and how its reply behaves.

    `streams`: the reply may be preceded by `"more": true` frames (only `logs` with follow).
    `linger`: with `wait` true, the daemon keeps the connection open after the final reply
    until its process exits, so the client's EOF means "the daemon is gone" (`shutdown`).
    """

    __slots__ = ("args", "doc", "linger", "name", "streams")

    def __init__(
        self,
        name: str,
        doc: str,
        args: tuple[Arg, ...] = (),
        *,
        streams: bool = False,
        linger: bool = False,
    ) -> None:
        self.name = name
        self.doc = doc
        self.args = args
        self.streams = streams
        self.linger = linger

    def __repr__(self) -> str:
        return f"Command({self.name!r})"

    def arg(self, name: str) -> Arg | None:
        for a in self.args:
            if a.name == name:
                return a
        return None


def _apps(doc: str) -> Arg:
    return Arg("apps", "apps", doc, required=True, non_empty=True)


def _wait(doc: str) -> Arg:
    return Arg("wait", "bool", doc, default=True)


_APPS_DOC = 'app names, "app:i" for one instance, or "all"'

#: Every command of protocol v1, in the order docs/protocol.md lists them.
COMMANDS: Mapping[str, Command] = types.MappingProxyType(
    {
        c.name: c
        for c in (
            Command("ping", "liveness check"),
            Command("version", "daemon and protocol version"),
            Command(
                "status",
                "one row per instance, plus the state of the config",
                (Arg("apps", "apps", "restrict to these apps (empty: all)", default=[]),),
            ),
            Command(
                "start",
                "start stopped or errored instances",
                (_apps(_APPS_DOC), _wait("reply once the instances run or errored")),
            ),
            Command(
                "stop",
                "stop instances; they stay stopped until started or an applied config changes "
                "their app",
                (_apps(_APPS_DOC), _wait("reply once the processes are gone")),
            ),
            Command(
                "restart",
                "stop then start; resets the restart counter",
                (_apps(_APPS_DOC), _wait("reply once the instances run again or errored")),
            ),
            Command(
                "signal",
                "send a signal to the process group of every selected instance",
                (
                    Arg("signal", "int", "signal number", required=True, minimum=1, maximum=64),
                    _apps(_APPS_DOC),
                ),
            ),
            Command(
                "logs",
                "the last lines of the logs; with follow, then every new line",
                (
                    Arg("app", "str?", "app name or null for every app", default=None),
                    Arg("lines", "int", "lines per file", default=20, minimum=0, maximum=100000),
                    Arg("stream", "str", "which stream", default="both",
                        choices=("out", "err", "both")),
                    Arg("follow", "bool", "keep streaming new lines", default=False),
                ),
                streams=True,
            ),
            Command(
                "shutdown",
                "stop every app, then the daemon",
                (_wait("reply once every app stopped; EOF follows when the daemon exited"),),
                linger=True,
            ),
            # Reserved: part of v1 so that clients can be built against them; a daemon that
            # does not implement one answers `unknown_command`.
            Command("reread", "read the config and return the plan; changes nothing"),
            Command(
                "update",
                "read the config and apply the plan (same as SIGHUP)",
                (_wait("reply once the plan was executed"),),
            ),
            Command(
                "reload",
                "rolling restart; in place with reload_signal; stop-then-start, said so",
                (_apps(_APPS_DOC), _wait("reply once the rollout finished or stopped")),
            ),
            Command(
                "scale",
                "run N instances of an app now (until the next config apply)",
                (
                    Arg("app", "str", "app name", required=True),
                    Arg("instances", "int", "instance count", required=True, minimum=0),
                    _wait("reply once the instances were started or stopped"),
                ),
            ),
            Command("dump", "the effective config as TOML"),
            Command(
                "disable",
                "stop apps and keep them stopped across applies and daemon restarts (recorded "
                "in state_dir) until enable",
                (_apps("app names"), _wait("reply once the processes are gone")),
            ),
            Command(
                "enable",
                "remove apps from the disabled record and start them",
                (_apps("app names (also a disabled name the config no longer has)"),
                 _wait("reply once the instances run or errored")),
            ),
            Command(
                "reexec",
                "check the config with the code now installed, then re-execute the daemon in "
                "place (same pid, every app kept); the reply comes before the exec",
            ),
        )
    }
)


# --------------------------------------------------------------------------- messages


def validate_args(cmd: str, args: object) -> dict[str, Any]:
    """`args` checked against the command table, with defaults filled in.

    Raises `ProtocolViolation(UNKNOWN_COMMAND)` for a command not in the table and
    `ProtocolViolation(BAD_REQUEST)` for a non-object, an unknown, missing or ill-typed argument.
    """
    command = COMMANDS.get(cmd)
    if command is None:
        raise ProtocolViolation(UNKNOWN_COMMAND, f"unknown command {_quote(cmd)}")
    if not isinstance(args, dict):
        raise ProtocolViolation(BAD_REQUEST, f"{cmd}: 'args' must be an object")
    known = {a.name for a in command.args}
    unknown = sorted(str(k) for k in args if k not in known)
    if unknown:
        raise ProtocolViolation(
            BAD_REQUEST, f"{_cut(cmd)}: unknown argument(s): {_cut(', '.join(unknown))}"
        )
    out: dict[str, Any] = {}
    for a in command.args:
        if a.name in args:
            out[a.name] = a.check(cmd, args[a.name])
        elif a.required:
            raise ProtocolViolation(BAD_REQUEST, f"{cmd}: missing argument {a.name!r}")
        else:
            out[a.name] = a.default_value()
    return out


def make_request(cmd: str, args: Mapping[str, object] | None = None) -> dict[str, Any]:
    """A request object for `cmd`, validated (same errors as `validate_args`)."""
    return {"v": VERSION, "cmd": cmd, "args": validate_args(cmd, dict(args or {}))}


def parse_request(obj: Mapping[str, object]) -> tuple[str, dict[str, Any]]:
    """(cmd, validated args) of a decoded request.

    The version is checked first, since another version may shape the rest differently.
    Raises `ProtocolViolation` with BAD_REQUEST, UNSUPPORTED_VERSION or UNKNOWN_COMMAND. A missing
    "args" means no arguments; other unknown top-level keys are ignored.
    """
    v = obj.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolViolation(BAD_REQUEST, "request needs an integer 'v'")
    if v != VERSION:
        raise ProtocolViolation(
            UNSUPPORTED_VERSION,
            f"protocol version {_quote(v)} is not supported (this daemon speaks {VERSION})",
        )
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolViolation(BAD_REQUEST, "request needs a string 'cmd'")
    return cmd, validate_args(cmd, obj.get("args", {}))


def ok_reply(result: object, *, more: bool = False) -> dict[str, object]:
    """A success reply; `more=True` marks a streamed frame that is not the last one."""
    reply: dict[str, object] = {"v": VERSION, "ok": True, "result": result}
    if more:
        reply["more"] = True
    return reply


def error_reply(code: str, message: str, detail: object = None) -> dict[str, object]:
    """An error reply. `code` is an `errors.WireError` value (a `str` enum member is fine);
    clients must accept codes they do not know. `detail` is any JSON value or None."""
    return {
        "v": VERSION,
        "ok": False,
        "error": {"code": str(getattr(code, "value", code)), "message": message, "detail": detail},
    }


def parse_reply(obj: Mapping[str, object]) -> tuple[object, bool, tuple[str, str, object] | None]:
    """(result, more, error) of a decoded reply frame.

    For an error reply `error` is (code, message, detail) and `result` is None; the client
    turns it into `errors.RemoteError`. Raises `ProtocolViolation` for a frame that is not a
    v1 reply (UNSUPPORTED_VERSION for another "v", BAD_REQUEST for a malformed one).
    """
    v = obj.get("v")
    if v != VERSION or isinstance(v, bool):
        raise ProtocolViolation(UNSUPPORTED_VERSION, f"reply has protocol version {v!r}")
    ok = obj.get("ok")
    if ok is True:
        if "result" not in obj:
            raise ProtocolViolation(BAD_REQUEST, "reply has no 'result'")
        return obj["result"], obj.get("more") is True, None
    if ok is False:
        err = obj.get("error")
        if not isinstance(err, dict):
            raise ProtocolViolation(BAD_REQUEST, "error reply has no 'error' object")
        code = err.get("code")
        message = err.get("message")
        return None, False, (
            code if isinstance(code, str) else "internal",
            message if isinstance(message, str) else "(no message)",
            err.get("detail"),
        )
    raise ProtocolViolation(BAD_REQUEST, "reply needs a boolean 'ok'")
