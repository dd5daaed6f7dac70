"""procsupd's own sd_notify client (layer 2 leaf).

With `Type=notify`, systemd waits for `READY=1` on the datagram socket named by
`$NOTIFY_SOCKET` before it considers procsupd started. Telling the service manager is a
courtesy that must never take the daemon down, so every function here reports failure as
False instead of raising.

(The other direction, the `$NOTIFY_SOCKET` procsupd offers its instances, is `notify.py`.)

Also the sd-daemon priority prefixes of procsupd's own log when its stderr goes to the journal
(`stderr_to_journal`, `PriorityFormatter`): `<3>` on an error line makes it an error for
`journalctl -p err`, where an unprefixed line would be info.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["ERR", "WARNING", "PriorityFormatter", "notify", "prefixed", "ready", "status",
           "stderr_to_journal", "stopping"]

#: The syslog priorities of the lines procsupd prints before its log exists.
ERR = 3
WARNING = 4

# A service manager that does not read its socket must not stall the daemon's loop for long.
_SEND_TIMEOUT = 1.0


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1", or several "K=V" lines) to `$NOTIFY_SOCKET`.

    `environ` defaults to `os.environ`. The socket is a filesystem path, or an abstract
    address when it starts with "@". Returns True when the datagram was sent; False when
    `NOTIFY_SOCKET` is unset or empty, not an absolute path or "@" name, or sending failed.
    Never raises.
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        return False
    try:
        data = message.encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto(data, address)
    except (OSError, UnicodeError, ValueError):
        return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    """Tell the service manager that procsupd serves: `READY=1`."""
    return notify("READY=1", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Tell the service manager that procsupd is shutting down: `STOPPING=1`."""
    return notify("STOPPING=1", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set the one-line status `systemctl status` shows: `STATUS=<text>`."""
    return notify("STATUS=" + text.replace("\n", " "), environ)


def stderr_to_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when `fd` (stderr) is systemd's journal stream: `$JOURNAL_STREAM` ("DEV:INODE",
    set by systemd for StandardError=journal) names what `fd` is open on; or, without it,
    `$INVOCATION_ID` says that systemd started us (a unit whose stderr is the journal by
    default). A redirected stderr (`procsupd -n 2>file` in a unit) does not match the stream."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if stream:
        dev, _, ino = stream.partition(":")
        try:
            st = os.fstat(fd)
            return (st.st_dev, st.st_ino) == (int(dev), int(ino))
        except (OSError, ValueError):
            return False
    return bool(env.get("INVOCATION_ID"))


def _priority(levelno: int) -> int:
    """The syslog priority of a logging level: err, warning, info, debug."""
    if levelno >= logging.ERROR:
        return ERR
    if levelno >= logging.WARNING:
        return WARNING
    if levelno >= logging.INFO:
        return 6
    return 7


class PriorityFormatter(logging.Formatter):
    """A formatter that puts the sd-daemon prefix `<N>` before every line of a record (a
    traceback's lines too: the journal reads each line as an entry of its own)."""

    def format(self, record: logging.LogRecord) -> str:
        return prefixed(super().format(record), _priority(record.levelno))


def prefixed(text: str, priority: int) -> str:
    """`text` with the sd-daemon prefix `<priority>` on each of its lines."""
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))
