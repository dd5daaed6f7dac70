"""Probes of `ready = "tcp://HOST:PORT"` / `"http://HOST:PORT/PATH"` and of `health` (layer 2 leaf).

One attempt is `tcp_check` or `http_check`: None when it passed, else what went wrong, in words
for `status` ("cannot connect to 127.0.0.1:8000: connection refused", "GET /healthz answered
500 Internal Server Error"); it never raises for anything the network or the server does.
`tcp_ready` and `http_ready` say the same as a bool (readiness wants a 2xx), and `check` is one
health check (an HTTP answer passes with 2xx or 3xx). `wait_ready` repeats attempts until one
succeeds or a deadline passes; the supervisor cancels it when the instance exits first, and
every attempt closes its connection on cancellation.

A caveat the caller must know: in cluster mode procsupd itself holds the listening socket, so
the kernel completes TCP handshakes (into the backlog) before any instance accepts. A tcp probe
of a cluster app's own `listen` address therefore succeeds at once, and an http probe of it may
be answered by any instance of the app, old ones included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import urllib.parse
from collections.abc import Callable

from procsup import units

__all__ = ["check", "http_check", "http_ready", "tcp_check", "tcp_ready", "wait_ready"]

# The most we read of an HTTP answer: the status line is all a probe needs, and a server that
# sends megabytes (or no newline at all) must not make the probe buffer them.
_MAX_STATUS_LINE = 1024
# One attempt waits at most this long (and never past the deadline): a server that accepted
# the connection in a bad moment and never answers is asked again rather than waited for.
_ATTEMPT_TIMEOUT = 5.0

_HOST_PORT_RE = re.compile(r"(?:\[(?P<v6>[^\[\]/]+)\]|(?P<host>[^\[\]/:@\s]+)):(?P<port>\d{1,5})\Z")
_STATUS_RE = re.compile(rb"HTTP/\d\.\d (\d{3})(?:[ \r]|\Z)")
# Of a status line's reason phrase, this much is quoted in an error (printable ASCII only).
_MAX_REASON = 60
# Characters allowed unescaped in the request target; anything else (spaces, control and
# non-ASCII characters) is percent-encoded, so no configured path can break the request line.
_PATH_SAFE = "/:@!$&'()*+,;=?%~-._"


@dataclasses.dataclass(frozen=True)
class _Target:
    scheme: str  # "tcp" | "http"
    host: str  # without brackets
    port: int
    authority: str  # "host:port" as written, brackets kept: the HTTP Host header
    path: str  # request target for http ("/" at least); "" for tcp


def _parse(target: str) -> _Target:
    """Parse "tcp://HOST:PORT" or "http://HOST:PORT[/PATH]"; ValueError when malformed."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme not in ("tcp", "http"):
        raise ValueError(f"readiness target {target!r}: expected tcp://HOST:PORT or "
                         "http://HOST:PORT/PATH")
    authority, _slash, path = rest.partition("/")
    if scheme == "tcp" and path:
        raise ValueError(f"readiness target {target!r}: a tcp target takes no path")
    m = _HOST_PORT_RE.match(authority)
    if m is None or not (authority.isascii() and authority.isprintable()):
        raise ValueError(f"readiness target {target!r}: expected HOST:PORT or [IPV6]:PORT")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"readiness target {target!r}: port must be 1..65535")
    host = m.group("v6") or m.group("host")
    request_path = ""
    if scheme == "http":
        path = path.partition("#")[0]  # a fragment is never sent
        request_path = urllib.parse.quote("/" + path, safe=_PATH_SAFE)
    return _Target(scheme, host, port, authority, request_path)


async def tcp_check(host: str, port: int, *, timeout: float) -> str | None:
    """One attempt: None when a TCP connection to host:port is established within `timeout`
    seconds (it is closed at once, nothing is sent); else why not (refused, unreachable, not
    resolvable, too slow)."""
    writer: asyncio.StreamWriter | None = None
    where = _authority(host, port)
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no connection to {where} within {_secs(timeout)}"
    except OSError as exc:
        return f"cannot connect to {where}: {_os_error(exc)}"
    finally:
        if writer is not None:
            writer.close()
    return None


async def tcp_ready(host: str, port: int, *, timeout: float) -> bool:
    """`tcp_check` as a bool: True when the connection was established in time."""
    return await tcp_check(host, port, timeout=timeout) is None


async def http_check(url: str, *, timeout: float, accept: str = "2") -> str | None:
    """One attempt: GET `url` ("http://HOST:PORT/PATH"); None when the status's first digit
    is in `accept` ("2": a 2xx, what readiness wants; "23": 2xx or 3xx, a health check), else
    why not, in words.

    The request is HTTP/1.1 with `Host` and `Connection: close`; only the status line is read
    (at most 1024 bytes), then the connection is closed. Refused, timed out (the whole
    exchange must finish within `timeout` seconds), closed early, or a malformed or unwanted
    answer: an error. Raises ValueError only when `url` itself is malformed (the config
    checks it).
    """
    target = _parse(url)
    if target.scheme != "http":
        raise ValueError(f"not an http:// URL: {url!r}")
    request = (
        f"GET {target.path} HTTP/1.1\r\n"
        f"Host: {target.authority}\r\n"
        "User-Agent: procsup-probe\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            writer.write(request)
            await writer.drain()
            line = await _read_status_line(reader)
    except TimeoutError:
        return f"no answer from {target.authority} within {_secs(timeout)}"
    except OSError as exc:
        connected = writer is not None
        return (f"{'connection to' if connected else 'cannot connect to'} {target.authority}"
                f"{' failed' if connected else ''}: {_os_error(exc)}")
    finally:
        if writer is not None:
            writer.close()
    m = _STATUS_RE.match(line)
    if not line:
        return f"{target.authority} closed the connection without an answer"
    if m is None:
        return f"{target.authority} answered no HTTP status line"
    if m.group(1)[:1].decode() in accept:
        return None
    reason = line[m.end():].strip().decode("ascii", "replace")[:_MAX_REASON]
    reason = "".join(c if c.isprintable() and c.isascii() else "?" for c in reason)
    return f"GET {target.path} answered {m.group(1).decode()}{' ' + reason if reason else ''}"


async def http_ready(url: str, *, timeout: float) -> bool:
    """`http_check` for readiness, as a bool: True for a 2xx answer in time. Raises ValueError
    only when `url` itself is malformed."""
    return await http_check(url, timeout=timeout) is None


async def check(target: str, *, timeout: float) -> str | None:
    """One health check (`health = "tcp://HOST:PORT"` or `"http://HOST:PORT/PATH"`) within
    `timeout` seconds: a tcp target passes when it accepts a connection, an http one when it
    answers 2xx or 3xx. None when it passed, else what went wrong. Raises ValueError for a
    malformed target (the config has validated it)."""
    parsed = _parse(target)
    if parsed.scheme == "tcp":
        return await tcp_check(parsed.host, parsed.port, timeout=timeout)
    return await http_check(target, timeout=timeout, accept="23")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_error(exc: OSError) -> str:
    """The system's words for a failed connect, without asyncio's "Connect call failed"."""
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror  # "Name or service not known"
    if exc.errno is not None and exc.errno > 0:
        text = os.strerror(exc.errno)
        return text[:1].lower() + text[1:]  # "connection refused"
    return str(exc) or type(exc).__name__


def _secs(seconds: float) -> str:
    try:
        return units.format_duration(seconds)
    except ValueError:
        return f"{seconds}s"


async def _read_status_line(reader: asyncio.StreamReader) -> bytes:
    """The first line of the answer, without its end; bounded by _MAX_STATUS_LINE bytes."""
    buf = b""
    while b"\n" not in buf and len(buf) < _MAX_STATUS_LINE:
        chunk = await reader.read(_MAX_STATUS_LINE - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf.partition(b"\n")[0]


async def wait_ready(
    target: str,
    *,
    deadline: float,
    interval: float = 0.1,
    clock: Callable[[], float] | None = None,
) -> bool:
    """Probe `target` ("tcp://HOST:PORT" or "http://HOST:PORT/PATH") until it is ready.

    Returns True at the first successful attempt, False once `deadline` has passed without
    one. `deadline` is a time of `clock`, which defaults to the running loop's `time()` (the
    clock `loop.call_later` uses). Attempts start at most every `interval` seconds; each one
    is bounded by the time left and by 5 s. Cancelling the task cancels the attempt in flight,
    which closes its connection. Raises ValueError at once for a malformed target or a
    non-positive interval (the config has validated `ready`, so that is a caller's bug).
    """
    parsed = _parse(target)
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    now = clock if clock is not None else asyncio.get_running_loop().time
    while True:
        started = now()
        remaining = deadline - started
        if remaining <= 0:
            return False
        timeout = min(remaining, _ATTEMPT_TIMEOUT)
        if parsed.scheme == "tcp":
            ok = await tcp_ready(parsed.host, parsed.port, timeout=timeout)
        else:
            ok = await http_ready(target, timeout=timeout)
        if ok:
            return True
        pause = min(started + interval, deadline) - now()
        if pause > 0:
            await asyncio.sleep(pause)
