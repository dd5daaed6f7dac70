"""Default paths and the control socket's discovery (contract §1), for the daemon and the CLI.

Apart from `config` because `procsup status` needs the socket without loading a config: the
socket discovery must work when the config file is broken, even not TOML, and must not pull
in the schema, cron or croniter. Reads at most the config file's `[procsup] socket` line;
imports only `errors` and `units` from procsup.

`procsup` imports this module on every run without `-s`, so what only some runs need is
imported where it is needed: `tomllib` (12 ms of imports, `typing` and `datetime` among them)
only for a config file that can name a socket, `units` only for the lenient scan of a file
that is not TOML.
"""

from __future__ import annotations

import os
import pwd
import re

from procsup.errors import ConfigError

TYPE_CHECKING = False  # mypy treats this name as true; `typing` is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "JOURNAL_SOCKET",
    "ROOT_CONFIG",
    "ROOT_LOG_DIR",
    "ROOT_PIDFILE",
    "ROOT_SOCKET",
    "ROOT_STATE_DIR",
    "default_config_path",
    "default_socket_path",
    "environ_or_own",
    "find_socket",
    "journal_socket",
    "runtime_dir",
    "socket_from_file",
    "state_base",
    "uid_or_own",
]

ROOT_CONFIG = "/etc/procsup/apps.toml"
ROOT_SOCKET = "/run/procsup/procsup.sock"
ROOT_PIDFILE = "/run/procsup/procsupd.pid"
ROOT_LOG_DIR = "/var/log/procsup"
ROOT_STATE_DIR = "/var/lib/procsup"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
"""journald's native protocol socket (log target "journal")."""


def journal_socket(environ: Mapping[str, str]) -> str:
    """The journal's socket: `$PROCSUP_JOURNAL_SOCKET` (meant for tests, which point procsupd
    at a fake journal), else JOURNAL_SOCKET."""
    return environ.get("PROCSUP_JOURNAL_SOCKET") or JOURNAL_SOCKET


def uid_or_own(uid: int | None) -> int:
    """`uid`, else ours."""
    return os.getuid() if uid is None else uid


def environ_or_own(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    """`environ`, else os.environ."""
    return os.environ if environ is None else environ


def _xdg(environ: Mapping[str, str], name: str) -> str | None:
    # The XDG spec says relative values are invalid and must be ignored.
    value = environ.get(name, "")
    return value if os.path.isabs(value) else None


def _home(uid: int, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME", "")
    if os.path.isabs(home):
        return home
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        raise ConfigError(
            f"cannot find the home directory of uid {uid}: set $HOME, or set log_dir and "
            "state_dir in [procsup]"
        ) from None


def runtime_dir(uid: int, environ: Mapping[str, str]) -> str:
    base = _xdg(environ, "XDG_RUNTIME_DIR")
    return os.path.join(base, "procsup") if base else f"/tmp/procsup-{uid}"


def state_base(uid: int, environ: Mapping[str, str]) -> str:
    base = _xdg(environ, "XDG_STATE_HOME") or os.path.join(_home(uid, environ), ".local/state")
    return os.path.join(base, "procsup")


def default_config_path(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """$PROCSUP_CONFIG; else root: /etc/procsup/apps.toml; others:
    $XDG_CONFIG_HOME/procsup/apps.toml (else ~/.config/procsup/apps.toml)."""
    uid, environ = uid_or_own(uid), environ_or_own(environ)
    if environ.get("PROCSUP_CONFIG"):
        return environ["PROCSUP_CONFIG"]
    if uid == 0:
        return ROOT_CONFIG
    base = _xdg(environ, "XDG_CONFIG_HOME") or os.path.join(_home(uid, environ), ".config")
    return os.path.join(base, "procsup", "apps.toml")


def default_socket_path(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Root: /run/procsup/procsup.sock; others: $XDG_RUNTIME_DIR/procsup/procsup.sock, else
    /tmp/procsup-<uid>/procsup.sock."""
    uid, environ = uid_or_own(uid), environ_or_own(environ)
    if uid == 0:
        return ROOT_SOCKET
    return os.path.join(runtime_dir(uid, environ), "procsup.sock")


# -- socket discovery -------------------------------------------------------------------------


# Patterns, not compiled ones: only a file that is not TOML needs them (`re` caches them).
_SECTION = r"^\s*\[\s*procsup\s*\]\s*(?:#.*)?$"
_SOCKET_LINE = (
    r"""^\s*(?:procsup\s*\.\s*)?socket\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(?:#.*)?$"""
)


def socket_from_file(path: str) -> str | None:
    """The `[procsup] socket` of the file at `path`, resolved against its directory.

    Lenient on purpose (the client must reach the daemon exactly when the file is broken):
    the rest of the file may be invalid, even not TOML (then the `[procsup]` section is scanned
    line by line for `socket = "..."`). None when there is no such key or the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    if "socket" not in text and "\\u" not in text and "\\U" not in text:
        # No key of this file can be `socket` (the word, or a quoted key spelling it with
        # escapes): spare `procsup` the TOML parser, the larger part of its start-up.
        return None
    import tomllib

    value: object = None
    try:
        table = tomllib.loads(text).get("procsup")
        if isinstance(table, dict):
            value = table.get("socket")
    except tomllib.TOMLDecodeError:
        value = _scan_socket(text)
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), value))


def _scan_socket(text: str) -> str | None:
    section: str | None = ""  # "" = top level, "procsup", or None = another table
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = "procsup" if re.match(_SECTION, line) else None
            continue
        m = re.match(_SOCKET_LINE, line)
        if m is None:
            continue
        dotted = stripped.startswith("procsup")
        if (section == "procsup" and not dotted) or (section == "" and dotted):
            if m.group(1) is None:
                return m.group(2)
            return re.sub(r"\\(.)", _unescape, m.group(1))
    return None


def _unescape(m: re.Match[str]) -> str:
    from procsup.units import DQ_ESCAPES

    return DQ_ESCAPES.get(m.group(1), m.group(0))


def find_socket(
    *,
    socket: str | None,
    config: str | None,
    environ: Mapping[str, str],
    uid: int,
    system_config: str = ROOT_CONFIG,
) -> str:
    """The control socket per contract §1: `-s`; else `[procsup] socket` of the `-c` file;
    else $PROCSUP_SOCKET; else that of $PROCSUP_CONFIG's file; else that of the default config;
    else the default socket path.

    A config file that names no socket (or cannot be read) means the daemon that loads it uses
    the default socket, so `-c` without a socket key yields the default socket path rather than
    falling through to $PROCSUP_SOCKET.

    One step is added for the system daemon of a distro package: a user other than root who
    has neither a config of their own nor a daemon of their own serving gets the socket of the
    system config (`system_config`, else the root default) when that socket exists, so that the
    members of `socket_group` can type `procsup status` as root does.
    """
    if socket:
        return os.path.abspath(socket)
    if config:
        return socket_from_file(config) or default_socket_path(uid, environ)
    if environ.get("PROCSUP_SOCKET"):
        return os.path.abspath(environ["PROCSUP_SOCKET"])
    try:
        config_path: str | None = default_config_path(uid, environ)
    except ConfigError:  # no home directory: there is no default config to read
        config_path = None
    if config_path is not None and (found := socket_from_file(config_path)):
        return found
    own = default_socket_path(uid, environ)
    has_own = (config_path is not None and os.path.exists(config_path)) or os.path.exists(own)
    if uid != 0 and not has_own:
        system = socket_from_file(system_config) or ROOT_SOCKET
        if os.path.exists(system):
            return system
    return own
