"""The daemon's record of its instances in `state_dir` (layer 2 leaf).

After the daemon dies, even by SIGKILL, its instances keep running in their own sessions. The
next daemon reads this record and stops (or adopts) what is left, so nothing runs twice. A
record identifies a process by pid *and* start time, because a pid alone may have been reused
by an unrelated process since it was written.

Linux only: start times and process groups come from `/proc`. This module reads and writes one
file, `<state_dir>/instances.json`; it never signals a process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from typing import Any

__all__ = [
    "FILENAME",
    "Record",
    "leader_create_time",
    "leftovers",
    "read",
    "read_checked",
    "write",
]

FILENAME = "instances.json"
_VERSION = 1
# Start times have clock-tick resolution (usually 10 ms); below this two times are "the same".
_SAME_START = 0.05

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Record:
    """One running instance: its app and index, leader pid, process group, leader start time.

    `create_time` is the leader's start in epoch seconds, computed as psutil's
    `Process.create_time()` does (see `leader_create_time`).
    """

    app: str
    index: int
    pid: int
    pgid: int
    create_time: float


def write(state_dir: str, records: Iterable[Record], daemon_pid: int) -> None:
    """Replace `<state_dir>/instances.json` atomically with `records` (mode 0600).

    Creates `state_dir` with mode 0700 when missing. Write then rename over the old file: a
    reader (the next daemon, after this one was killed) sees the old or the new record, whole.
    No fsync: the record only has to outlive the daemon, not the machine (a machine crash takes
    the instances with it), and it is written on every spawn and exit.
    Raises OSError when the directory or file cannot be written.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    payload = {
        "version": _VERSION,
        "daemon_pid": daemon_pid,
        "instances": [dataclasses.asdict(r) for r in records],
    }
    data = json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n"
    # mkstemp creates the file with mode 0600 and O_EXCL, so no other reader sees it half done.
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(state_dir, FILENAME))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_checked(state_dir: str) -> list[Record]:
    """The records in `<state_dir>/instances.json`; [] when the file does not exist.

    Raises ValueError when the file is not a valid record (bad JSON, wrong version, fields
    missing or of the wrong type), OSError when it exists but cannot be read.
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
    if not isinstance(payload, dict) or payload.get("version") != _VERSION:
        raise ValueError(f"{path}: not a version {_VERSION} instance record")
    items = payload.get("instances")
    if not isinstance(items, list):
        raise ValueError(f"{path}: 'instances' is not a list")
    return [_record(path, item) for item in items]


def read(state_dir: str) -> list[Record]:
    """Like `read_checked`, but never raises: a corrupt or unreadable file logs and gives []."""
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
        create_time = item["create_time"]
    except KeyError as exc:
        raise ValueError(f"{path}: an instance entry lacks {exc}") from None
    ints_ok = all(type(v) is int and v > 0 for v in (pid, pgid))
    if not (
        isinstance(app, str)
        and type(index) is int
        and index >= 0
        and ints_ok
        and isinstance(create_time, int | float)
        and not isinstance(create_time, bool)
    ):
        raise ValueError(f"{path}: an instance entry has a field of the wrong type: {item!r}")
    return Record(app=app, index=index, pid=pid, pgid=pgid, create_time=float(create_time))


# --- /proc ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Stat:
    state: str  # one letter: R S D Z T ...
    pgrp: int
    starttime: int  # clock ticks since boot


def _parse_stat(text: str) -> _Stat:
    # "pid (comm) state ppid pgrp ..." where comm may hold spaces and parentheses: only the
    # last ")" closes it.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5); pgrp is field 5, starttime field 22.
    return _Stat(state=fields[0], pgrp=int(fields[2]), starttime=int(fields[19]))


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return _parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None
    except (ValueError, IndexError):
        return None  # a task torn down mid-read can give a short line


def _boot_time() -> float:
    # Read each time, as psutil does: the kernel derives btime from the wall clock, so it
    # follows clock changes, and psutil's create_time follows it too.
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise OSError("no btime line in /proc/stat")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _epoch(starttime: int, boot_time: float) -> float:
    return starttime / _CLOCK_TICKS + boot_time


def leader_create_time(pid: int) -> float | None:
    """Start time of process `pid` in epoch seconds, or None when there is no such process.

    Same value as `psutil.Process(pid).create_time()` (starttime of /proc/<pid>/stat in clock
    ticks after boot, plus btime of /proc/stat). A zombie still has a start time.
    """
    stat = _read_stat(pid)
    if stat is None:
        return None
    return _epoch(stat.starttime, _boot_time())


def _live_groups() -> dict[int, list[float]]:
    """pgrp -> start times (epoch) of every non-zombie process, from one /proc pass."""
    boot = _boot_time()
    groups: dict[int, list[float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read_stat(int(name))
        if stat is None or stat.state in ("Z", "X"):
            continue
        groups.setdefault(stat.pgrp, []).append(_epoch(stat.starttime, boot))
    return groups


def leftovers(records: Iterable[Record]) -> list[Record]:
    """The records whose process group still has live (non-zombie) processes.

    A record is left over when its leader is alive with the recorded start time (within
    0.05 s), or when the leader is gone but some process still has the recorded pgid and
    started no earlier than the leader did. A live process with the leader's pid but another
    start time is a reused pid: Linux does not hand out a pid that is still in use as a
    process group id, so the recorded group cannot exist any more, and the record is not
    left over. The one case this cannot tell apart: the whole group ended, the pid was reused
    by a process that made its own group, and that process died leaving its children.

    Order follows `records`.
    """
    result: list[Record] = []
    groups: dict[int, list[float]] | None = None
    boot = _boot_time()
    for rec in records:
        stat = _read_stat(rec.pid)
        if stat is not None:
            if abs(_epoch(stat.starttime, boot) - rec.create_time) >= _SAME_START:
                continue  # pid reused by an unrelated process
            if stat.state not in ("Z", "X"):
                result.append(rec)
                continue
        # The leader is gone (or a zombie): look for the rest of its group.
        if groups is None:
            groups = _live_groups()
        starts = groups.get(rec.pgid, ())
        if any(start >= rec.create_time - _SAME_START for start in starts):
            result.append(rec)
    return result
