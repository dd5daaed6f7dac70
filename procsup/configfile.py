"""Reading one config file, or env file, for `config` (layer 1; with `config`, the only
module that reads config files): a regular file only (a FIFO, device or socket is refused
before it is opened), at most MAX_FILE_SIZE bytes, owned by root and writable by nobody else
when a root daemon asks (`require_root_owned`), UTF-8, and TOML whose syntax errors carry
their line. `read` gives a `Source`: the parsed data, the line locator for located errors,
paths resolved against the file's directory, and the file's identity (whichever link or
glob reached it).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable
from typing import Any

from procsup import tomlpos
from procsup.errors import ConfigError

_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)\s*$")


class Source:
    """One config file, read and parsed."""

    def __init__(self, path: str, text: str, data: dict[str, Any], identity: Identity) -> None:
        self.path = path
        self.dir = os.path.dirname(path)
        self.data = data
        self.locator = tomlpos.Locator(text)
        self.identity = identity

    def error(
        self, message: str, *path: str, app: str | None = None, key: str | None = None
    ) -> ConfigError:
        return ConfigError(
            message, file=self.path, line=self.locator.line(*path) if path else None, app=app,
            key=key,
        )

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.dir, path))


#: (st_dev, st_ino): a file's identity, whichever link or glob reached it.
Identity = tuple[int, int]
#: A config, included or env file is read whole; a larger one is refused.
MAX_FILE_SIZE = 16 * 1024 * 1024
_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class Unreadable(Exception):
    """Why a file is not read, for the caller to put in its located error."""


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"it is {kind}, not a regular file"


def read_bytes(path: str, require_root_owned: bool = False) -> tuple[bytes, Identity]:
    """The content and identity of the regular file `path`; raises Unreadable (or ConfigError
    for an owner a root daemon refuses).

    The type is checked before the file is opened: opening a FIFO blocks until a writer comes
    (and every write to it would wake the config watch), a device or a socket is no config.
    O_NONBLOCK (an open that cannot wait), O_NOCTTY and the fstat after it close the race with
    a file swapped in between the stat and the open."""
    try:
        reason = _not_regular(os.stat(path).st_mode)
        if reason is not None:
            raise Unreadable(reason)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb") as f:
            st = os.fstat(f.fileno())
            reason = _not_regular(st.st_mode)
            if reason is not None:
                raise Unreadable(reason)
            if require_root_owned:
                _check_owner(path, st)
            # Read one byte more than allowed: the file may grow after the fstat.
            data = f.read(MAX_FILE_SIZE + 1) if st.st_size <= MAX_FILE_SIZE else b""
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    if st.st_size > MAX_FILE_SIZE or len(data) > MAX_FILE_SIZE:
        raise Unreadable(f"it holds more than {MAX_FILE_SIZE >> 20} MiB, the most a config "
                          "file may hold")
    return data, (st.st_dev, st.st_ino)


def _read_text(path: str, require_root_owned: bool) -> tuple[str, Identity]:
    try:
        data, identity = read_bytes(path, require_root_owned)
    except Unreadable as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=path) from None
    try:
        return data.decode("utf-8"), identity
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", file=path, line=line) from None


def _check_owner(path: str, st: os.stat_result) -> None:
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            "refusing a config file writable by anyone but root "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
            file=path,
        )


def read(path: str, require_root_owned: bool) -> Source:
    text, identity = _read_text(path, require_root_owned)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line: int | None = None
        m = _TOML_POS_RE.search(message)
        if m is not None:
            line = int(m.group(1))
            message = message[: m.start()]
        elif (m := _TOML_END_RE.search(message)) is not None:
            line = max(1, len(text.splitlines()))
            message = message[: m.start()]
        raise ConfigError(f"TOML syntax error: {message}", file=path, line=line) from None
    return Source(path, text, data, identity)
