"""The daemon's record of its instances in `state_dir`, and how to find them again (layer 2 leaf).

After the daemon dies, even by SIGKILL, its instances keep running in their own sessions. The
next daemon reads this record and stops what is left, so nothing runs twice, and it must never
touch an unrelated process. Two independent means, both exact:

- **The record** (`write`, `read`, `leftovers`): each instance leader by pid *and* start time in
  clock ticks after boot (field 22 of `/proc/<pid>/stat`), a value the kernel fixes at fork and
  that no wall-clock step moves (epoch start times derived from `btime` do move). A pid alone may
  have been reused; pid plus start ticks within one boot cannot be. The file names the boot it
  was written in (`/proc/sys/kernel/random/boot_id`); a record from another boot describes no
  process of this one and reads as empty.
- **The environment marker** (`daemon_marker`, `marked_processes`): the supervisor puts
  `PROCSUP_DAEMON_ID=<marker>` into every instance's environment, children inherit it, and
  `marked_processes` finds them in `/proc/*/environ` even after their leader exited or they
  moved to a group of their own (double-forked daemons). A process holding the exact entry was
  started from a procsupd with this `state_dir`; nothing else is guessed from group numbers.
  What the marker cannot see: a process that replaced its environment (`env -i`, `sudo`) or
  overwrote the memory `/proc/<pid>/environ` shows (some `setproctitle` implementations), and
  processes of other users when the daemon is not root (their environ is unreadable).

**The disabled apps** (`write_disabled`, `read_disabled`): the names `procsup disable` recorded,
in `<state_dir>/disabled.json`. Unlike the instance record this one must outlive the machine
(a disabled app stays disabled after a reboot), so it is fsync'd, and it names no boot.

Linux only. This module reads and writes two files, `<state_dir>/instances.json` and
`<state_dir>/disabled.json`, and reads `/proc` (through `procfs`); it never signals a process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Collection, Iterable
from typing import Any

from procsup import procfs

__all__ = [
    "DISABLED_FILENAME",
    "FILENAME",
    "MARKER_VAR",
    "Marked",
    "Record",
    "daemon_marker",
    "leader_start_ticks",
    "leftovers",
    "marked",
    "marked_processes",
    "members_left",
    "read",
    "read_checked",
    "read_disabled",
    "write",
    "write_disabled",
]

FILENAME = "instances.json"
DISABLED_FILENAME = "disabled.json"
_DISABLED_VERSION = 1
#: Environment variable naming the daemon (by `daemon_marker`) an instance was started from.
MARKER_VAR = "PROCSUP_DAEMON_ID"
# 1: epoch `create_time` floats, no boot id. 2: `start_ticks` and `boot_id`.
_VERSION = 2
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# Set by the supervisor next to the marker (CONTRACT: every instance gets them).
_APP_VAR = b"PROCSUP_APP="
_INSTANCE_VAR = b"PROCSUP_INSTANCE="
_DIGITS = re.compile(rb"[0-9]+")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Record:
    """One running instance: its app and index, leader pid, process group, leader start ticks.

    `start_ticks` is the leader's start in clock ticks after boot, as `leader_start_ticks`
    returns it for the leader right after the spawn.
    """

    app: str
    index: int
    pid: int
    pgid: int
    start_ticks: int


# --- the file -------------------------------------------------------------------------------


def write(state_dir: str, records: Iterable[Record], daemon_pid: int) -> None:
    """Replace `<state_dir>/instances.json` atomically with `records` (mode 0600).

    The file also names the current boot (`boot_id`), so that `read` after a reboot finds
    nothing. Creates `state_dir` with mode 0700 when missing. Write then rename over the old
    file: a reader (the next daemon, after this one was killed) sees the old or the new record,
    whole. No fsync: the record only has to outlive the daemon, not the machine (a machine crash
    takes the instances with it, and the boot id then voids the record anyway), and it is written
    on every spawn and exit.
    Raises OSError when the directory or file cannot be written or the boot id cannot be read.
    """
    payload = {
        "version": _VERSION,
        "boot_id": _boot_id(),
        "daemon_pid": daemon_pid,
        # (by hand: dataclasses.asdict deep-copies, and this runs on every spawn and exit)
        "instances": [{"app": r.app, "index": r.index, "pid": r.pid, "pgid": r.pgid,
                       "start_ticks": r.start_ticks} for r in records],
    }
    _replace(state_dir, FILENAME, payload, durable=False, compact=True)


def _replace(state_dir: str, name: str, payload: object, *, durable: bool,
             compact: bool = False) -> None:
    """Write `payload` as JSON to `<state_dir>/<name>` by temp file and rename (mode 0600),
    creating `state_dir` (0700) when missing. `durable`: fsync the file before the rename and
    the directory after it, so the new content survives a power cut as well. `compact`: one
    line (json's C encoder; an indent takes its pure-Python one, ten times slower)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    indent = None if compact else 1
    data = json.dumps(payload, indent=indent, sort_keys=True).encode() + b"\n"
    # mkstemp creates the file with mode 0600 and O_EXCL, so no other reader sees it half done.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(state_dir, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dirfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def write_disabled(state_dir: str, names: Iterable[str]) -> None:
    """Record `names` (sorted, without duplicates) as the disabled apps in
    `<state_dir>/disabled.json`, replacing the previous record atomically and durably (temp
    file, fsync, rename, fsync of the directory): after a crash or a power cut the next daemon
    reads the old set or the new one, whole. Raises OSError when it cannot be written."""
    _replace(state_dir, DISABLED_FILENAME,
             {"version": _DISABLED_VERSION, "apps": sorted(set(names))}, durable=True)


def read_disabled(state_dir: str) -> frozenset[str]:
    """The apps recorded as disabled in `<state_dir>/disabled.json`; empty when there is no
    such file. The record names no boot: it holds across reboots. Raises ValueError when the
    file is not a valid record (bad JSON, unknown version, `apps` not a list of non-empty
    strings), OSError when it exists but cannot be read: the caller must not guess, since
    guessing wrong starts an app someone disabled."""
    path = os.path.join(state_dir, DISABLED_FILENAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return frozenset()
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(payload, dict) or payload.get("version") != _DISABLED_VERSION:
        raise ValueError(f"{path}: not a version {_DISABLED_VERSION} record of disabled apps")
    apps = payload.get("apps")
    if not isinstance(apps, list) or not all(isinstance(a, str) and a for a in apps):
        raise ValueError(f"{path}: 'apps' is not a list of app names")
    return frozenset(apps)


def read_checked(state_dir: str) -> list[Record]:
    """The records in `<state_dir>/instances.json` that can describe live processes.

    [] when the file does not exist, and [] (logged at info level) when it is a valid record
    that is stale: written by an older procsupd (an older format version) or in another boot.
    Raises ValueError when the file is not a valid record (bad JSON, unknown version, fields
    missing or of the wrong type), OSError when it exists but cannot be read or the current
    boot id cannot be read.
    """
    path = os.path.join(state_dir, FILENAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an instance record")
    version = payload.get("version")
    if type(version) is int and 0 < version < _VERSION:
        _log.info("ignoring instance record %s: format version %d is older than %d",
                  path, version, _VERSION)
        return []
    if version != _VERSION:
        raise ValueError(f"{path}: not a version {_VERSION} instance record")
    boot = payload.get("boot_id")
    if not isinstance(boot, str):
        raise ValueError(f"{path}: 'boot_id' is not a string")
    items = payload.get("instances")
    if not isinstance(items, list):
        raise ValueError(f"{path}: 'instances' is not a list")
    records = [_record(path, item) for item in items]
    if boot != _boot_id():
        _log.info("ignoring instance record %s: written before the last reboot", path)
        return []
    return records


def read(state_dir: str) -> list[Record]:
    """Like `read_checked`, but never raises: a corrupt or unreadable file logs a warning and
    gives []."""
    try:
        return read_checked(state_dir)
    except (ValueError, OSError) as exc:
        _log.warning("ignoring instance record: %s", exc)
        return []


def _record(path: str, item: Any) -> Record:
    if not isinstance(item, dict):
        raise ValueError(f"{path}: an instance entry is not an object")
    try:
        app, index, pid, pgid = item["app"], item["index"], item["pid"], item["pgid"]
        ticks = item["start_ticks"]
    except KeyError as exc:
        raise ValueError(f"{path}: an instance entry lacks {exc}") from None
    # type() rather than isinstance(): JSON true/false load as bool, a subclass of int.
    if not (
        isinstance(app, str)
        and all(type(v) is int for v in (index, pid, pgid, ticks))
        and index >= 0
        and pid > 0
        and pgid > 0
        and ticks >= 0
    ):
        raise ValueError(f"{path}: an instance entry has a field of the wrong type: {item!r}")
    return Record(app=app, index=index, pid=pid, pgid=pgid, start_ticks=ticks)


def _boot_id() -> str:
    with open(_BOOT_ID_PATH, encoding="ascii") as f:
        return f.read().strip()


def leader_start_ticks(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks after boot, or None when there is no such
    process.

    Field 22 (starttime) of /proc/<pid>/stat: fixed at fork, untouched by wall-clock steps;
    psutil's `create_time()` is this divided by `SC_CLK_TCK` plus `btime`. A zombie still has a
    start time.
    """
    stat = procfs.stat(pid)
    return None if stat is None else stat.start_ticks


def leftovers(records: Iterable[Record]) -> list[Record]:
    """The records whose leader is still alive: same pid, same start ticks, not a zombie.

    Exact: a live process with the recorded pid but other start ticks is a reused pid and is not
    left over. A leader that is gone or a zombie is not left over either, even when members of
    its group outlived it; find those with `marked_processes`. Order follows `records`.
    """
    result: list[Record] = []
    for rec in records:
        stat = procfs.stat(rec.pid)
        if stat is not None and stat.start_ticks == rec.start_ticks and not stat.dead:
            result.append(rec)
    return result


# --- the environment marker ----------------------------------------------------------------


def daemon_marker(state_dir: str) -> str:
    """The value of `PROCSUP_DAEMON_ID` for instances of the daemon using `state_dir`.

    The first 16 hex digits of the SHA-256 of `os.path.realpath(state_dir)` (as file system
    bytes): stable across daemon restarts and however the path is spelled, distinct for daemons
    with different state dirs, so one daemon never claims another's processes. Pure apart from
    resolving symlinks; the directory need not exist.
    """
    real = os.fsencode(os.path.realpath(state_dir))
    return hashlib.sha256(real).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Marked:
    """A live process whose environment holds the daemon's marker.

    `app` and `index` come from `PROCSUP_APP` and `PROCSUP_INSTANCE` in the same environment;
    None when absent or unparsable (empty or not UTF-8; not a decimal number).
    """

    pid: int
    pgid: int
    app: str | None
    index: int | None


def marked_processes(marker: str, *, exclude: Collection[int] = ()) -> list[Marked]:
    """Every live process whose environment holds the exact entry `PROCSUP_DAEMON_ID=<marker>`.

    Scans `/proc/*/environ` once, in pid order. Skips the pids in `exclude`, the calling process
    and its ancestors (a daemon started from inside an instance inherits the marker), zombies
    (their environ reads empty), and processes whose environ cannot be read (other users' when
    not root, or gone meanwhile). The environ shown is the one the process was exec'd with,
    unless it overwrote that memory itself.

    A snapshot, not a barrier: a process in the middle of execve shows no environ for an
    instant, and one forked while the scan runs may be missed. A caller that must find them all
    (stopping what a previous daemon left) acts on the result and scans again, until a scan
    finds nothing.
    """
    needle = b"\0" + os.fsencode(f"{MARKER_VAR}={marker}") + b"\0"
    skip = set(exclude) | _self_and_ancestors()
    found: list[Marked] = []
    for pid in procfs.pids():
        if pid not in skip and (m := _marked(pid, needle)) is not None:
            found.append(m)
    return found


def members_left(records: Iterable[Record]) -> list[tuple[Record, procfs.Stat]]:
    """Live processes of the recorded groups and sessions whose leader is gone: a process with
    a recorded pgid as its group or session, started no earlier than that leader (a pgid
    number is not reused while a process of the group lives, and a later group of the same
    number would be led by a later process). Found by what was recorded, whatever their
    environment says (nginx and redis overwrite it). One scan of the process table; skips the
    caller and its ancestors."""
    by_id: dict[int, Record] = {}
    for rec in records:
        by_id.setdefault(rec.pgid, rec)
    if not by_id:
        return []
    skip = _self_and_ancestors()
    found: list[tuple[Record, procfs.Stat]] = []
    for st in procfs.stats():
        if st.dead or st.pid in skip:
            continue
        got = by_id.get(st.pgrp) or by_id.get(st.session)
        if got is not None and st.start_ticks >= got.start_ticks:
            found.append((got, st))
    return found


def marked(pid: int, marker: str) -> Marked | None:
    """`pid` as `marked_processes` would list it, or None (no such entry in its environ, gone,
    a zombie, unreadable)."""
    return _marked(pid, b"\0" + os.fsencode(f"{MARKER_VAR}={marker}") + b"\0")


def _marked(pid: int, needle: bytes) -> Marked | None:
    env = procfs.environ(pid)
    # The leading NUL makes the first entry match like the others; the kernel's environ
    # ends every entry, the last too, with a NUL.
    if env is None or needle not in b"\0" + env:
        return None
    stat = procfs.stat(pid)
    if stat is None or stat.dead:
        return None
    return Marked(pid, stat.pgrp, _app(env), _index(env))


def _self_and_ancestors() -> set[int]:
    result: set[int] = set()
    pid = os.getpid()
    while pid > 0 and pid not in result:
        result.add(pid)
        stat = procfs.stat(pid)
        if stat is None:
            break
        pid = stat.ppid  # 0 above init (or above a pid namespace's init)
    return result


def _entry(env: bytes, prefix: bytes) -> bytes | None:
    # The first definition wins, as for getenv(3).
    for entry in env.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :]
    return None


def _app(env: bytes) -> str | None:
    value = _entry(env, _APP_VAR)
    if not value:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _index(env: bytes) -> int | None:
    value = _entry(env, _INSTANCE_VAR)
    if value is None or not _DIGITS.fullmatch(value):
        return None
    return int(value)
