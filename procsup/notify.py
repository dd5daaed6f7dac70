"""The `$NOTIFY_SOCKET` procsupd offers its instances: sd_notify datagrams (layer 2 leaf).

An instance (or any process of its group) sends datagrams of "KEY=VALUE" lines, as with
systemd: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`. This module receives them on
the supervisor's loop and hands each one, parsed, to a callback together with the sender's
credentials. It decides nothing: attributing a message to an instance and acting on it is the
supervisor's job (see `sender_group`).

Why the socket is world-writable (mode 0o666). Instances may run as other users (`user =
"www-data"`), and Linux requires write permission on a socket file to send to it, so the socket
must accept datagrams from any local user. That is safe because no message is trusted for what
it says about its sender: `SO_PASSCRED` makes the kernel attach the sender's pid, uid and gid
(SCM_CREDENTIALS) to every datagram, and an unprivileged process cannot claim a pid other than
its own. The supervisor maps that kernel-verified pid to an instance through its process group
and ignores every pid that belongs to no instance, so a stranger's datagram is dropped and one
instance cannot speak for another. (A process with CAP_SYS_ADMIN can forge the pid, but such a
process can signal or ptrace any instance anyway, so nothing is lost.) The directory holding the
socket must let those users reach it (search permission), which is the caller's choice of path.

(The other direction, procsupd telling systemd it is ready, is `systemd.py`.)
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Callable

__all__ = ["Message", "NotifyServer", "parse_fields", "sender_group"]

_log = logging.getLogger(__name__)

# systemd caps a notify datagram at the pipe buffer size; longer ones are cut, and are dropped.
_MAX_DATAGRAM = 4096
# Datagrams handled per readable event: a flooding sender cannot starve the rest of the loop.
_BATCH = 64
# struct ucred: pid_t pid (signed), uid_t uid and gid_t gid (unsigned), native layout.
_UCRED = struct.Struct("=iII")
_ANCILLARY_SPACE = socket.CMSG_SPACE(struct.calcsize("3i"))
# sd_notify keys are upper-case by convention; accept any identifier-like key, nothing else.
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclasses.dataclass(frozen=True)
class Message:
    """One notify datagram: the kernel-verified sender and its parsed fields.

    `fields` maps each well-formed "KEY=VALUE" line to its value (the last one wins when a key
    repeats); malformed lines are left out.
    """

    pid: int
    uid: int
    gid: int
    fields: dict[str, str]


def parse_fields(data: bytes) -> dict[str, str]:
    """Parse a datagram's "KEY=VALUE\\n..." lines; malformed lines are ignored.

    A line is malformed when it has no "=", its key is not an identifier (letters, digits,
    underscores, not starting with a digit) or it contains a NUL byte. Bytes that are not
    UTF-8 are replaced (U+FFFD) rather than dropping the line. A value may be empty.
    """
    fields: dict[str, str] = {}
    for raw in data.split(b"\n"):
        if b"\0" in raw:
            continue
        key, eq, value = raw.decode("utf-8", "replace").partition("=")
        if eq and _KEY_RE.match(key):
            fields[key] = value
    return fields


def sender_group(pid: int) -> int | None:
    """The process group of `pid`, or None when that process is gone.

    Every instance is its own process group, so this maps a message from the instance or any
    of its children to the instance. A zombie not yet reaped still has its group. A sender that
    exited (and was reaped) before its message was handled cannot be attributed: the same race
    systemd has with `NotifyAccess=all`.
    """
    try:
        return os.getpgid(pid)
    except OSError:  # ESRCH: gone
        return None


class NotifyServer:
    """A datagram socket at `path` whose messages reach `on_message` on `loop`.

    `start()` binds and registers it; `close()` undoes both and removes the file. The callback
    runs in the loop's thread, once per datagram, in arrival order; it should only record what
    arrived (level-triggered decisions happen elsewhere). An exception from it is logged and
    does not stop the server. Datagrams without credentials, truncated ones (longer than 4096
    bytes) and ones with no well-formed line are dropped. File descriptors a sender attaches
    (SCM_RIGHTS, e.g. `FDSTORE=1`) are closed, never kept.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        path: str,
        on_message: Callable[[Message], None],
    ) -> None:
        self._loop = loop
        self._path = path
        self._on_message = on_message
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we bound

    @property
    def path(self) -> str:
        """The socket's filesystem path: what instances get as `$NOTIFY_SOCKET`."""
        return self._path

    def start(self) -> None:
        """Bind the socket at `path` (mode 0o666, see the module docstring) and start reading.

        A file already at `path` (a stale socket from a previous daemon) is removed first; the
        parent directory must exist. Raises OSError when the socket cannot be created or bound
        (path too long, directory missing, ...), leaving nothing behind; RuntimeError when
        already started.
        """
        if self._sock is not None:
            raise RuntimeError("notify server already started")
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        bound = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            _remove_stale(self._path)
            sock.bind(self._path)
            bound = True
            st = os.lstat(self._path)
            # After bind, not via umask: changing the umask is process-wide (watchdog threads).
            # World-writable on purpose: senders are identified by kernel credentials, not
            # by who may write (module docstring).
            os.chmod(self._path, 0o666)  # noqa: S103
            self._loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
            raise
        self._sock = sock
        self._identity = (st.st_dev, st.st_ino)

    def adopt(self, fd: int) -> None:
        """Serve the socket bound by the previous image of procsupd (a re-exec handed over
        `fd`, its path included) instead of binding one."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self._path = sock.getsockname()
        st = os.stat(self._path)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._sock = sock
        self._identity = (st.st_dev, st.st_ino)

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def close(self) -> None:
        """Stop reading, close the socket and remove its file if it is still the one we bound.

        Idempotent; never raises OSError. A file another process put at `path` since is left.
        """
        sock, self._sock = self._sock, None
        identity, self._identity = self._identity, None
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())  # a no-op once the loop is closed
        sock.close()
        try:
            st = os.lstat(self._path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == identity:
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    def _on_readable(self) -> None:
        """Drain up to _BATCH datagrams; never raises (an error here would kill the reader)."""
        sock = self._sock
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                data, ancdata, flags, _addr = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.warning("notify socket %s: receive failed: %s", self._path, exc)
                return
            try:
                message = _decode(data, ancdata, flags)
            except Exception:  # a datagram we failed to understand must not stop the rest
                _log.exception("notify socket %s: bad datagram dropped", self._path)
                continue
            if message is None:
                continue
            try:
                self._on_message(message)
            except Exception:
                _log.exception("notify socket %s: handler failed for pid %d", self._path,
                               message.pid)


def _remove_stale(path: str) -> None:
    """Unlink whatever non-directory sits at `path` (without following a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"notify socket path is a directory: {path}")
    os.unlink(path)


def _decode(
    data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int
) -> Message | None:
    """A received datagram -> Message, or None when it is to be dropped."""
    creds: tuple[int, int, int] | None = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            creds = _UCRED.unpack_from(payload)
        elif kind == socket.SCM_RIGHTS:
            _close_passed_fds(payload)
    if creds is None:
        _log.debug("notify datagram without credentials dropped")
        return None
    pid, uid, gid = creds
    if flags & socket.MSG_TRUNC:
        _log.warning("notify datagram from pid %d longer than %d bytes dropped", pid,
                     _MAX_DATAGRAM)
        return None
    fields = parse_fields(data)
    if not fields:
        return None
    return Message(pid=pid, uid=uid, gid=gid, fields=fields)


def _close_passed_fds(payload: bytes) -> None:
    """Close descriptors a sender attached: we keep no fd store, and must not leak them."""
    fds = array.array("i")
    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
