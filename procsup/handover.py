"""What one procsupd image hands the next across a re-exec (layer 2: the format and the file).

`procsup daemon-reexec` (or SIGUSR2) replaces the daemon's program with the code now installed,
in the same process: its children stay its children, and the file descriptors it clears
close-on-exec on survive. What the old image knew and the new one cannot read from the OS is
written here, as JSON, into a memfd whose number the new image finds in `$PROCSUP_REEXEC_FD`:
the applied config (as `dump` text, which the new code reads as any config), every instance's
lifecycle state and counters, and for each run the fds it keeps (pidfd, pipe read ends with the
partial line read so far, ...), its strays and its cgroup. The fds themselves are numbers in the
same fd table.

Plain data in, plain data out: `running` and `supervisor` fill and read the records, the
re-exec (`reexec`) writes and reads the file. `VERSION` changes when a field changes meaning; a
newer image reads what an older one wrote (fields added later have defaults).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

#: The environment variable that names the memfd holding the image (the number of an fd).
ENV = "PROCSUP_REEXEC_FD"
VERSION = 1
#: An image larger than this is refused when read (10,000 instances take about 10 MiB).
MAX_SIZE = 256 * 1024 * 1024


class HandoverError(Exception):
    """The image cannot be read: the new image cannot take over (it says why)."""


@dataclasses.dataclass(frozen=True)
class Stream:
    """One captured output stream of a run: the read end of its pipe, what was read of the
    line it is in the middle of, and whether it still looks for `ready = "log:..."`."""

    stream: str  # "out" | "err"
    fd: int
    partial: bytes = b""
    watching: bool = False


@dataclasses.dataclass(frozen=True)
class Stray:
    """A process a run left outside its process group (re-parented to procsupd)."""

    pid: int
    pgid: int
    start_ticks: int


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The OS side of one run, as `running.Run` holds it."""

    pid: int
    started: float  # the loop's clock (CLOCK_MONOTONIC: the same across the exec)
    start_ticks: int | None = None  # the leader's start time, as recorded
    pidfd: int | None = None
    status: str | None = None
    exit_status: tuple[int | None, int | None] | None = None
    beaten: bool = False
    stopping: bool = False
    signalled: int | None = None
    background: int | None = None
    main: int | None = None
    main_fd: int | None = None
    failure: str | None = None
    warning: str | None = None
    cgroup: str | None = None
    probing: bool = False  # a tcp/http readiness probe was under way
    awaiting_pidfile: bool = False
    streams: tuple[Stream, ...] = ()
    strays: tuple[Stray, ...] = ()
    groups: tuple[int, ...] = ()  # process groups its strays lead


@dataclasses.dataclass(frozen=True)
class SlotRecord:
    """One instance of the table, as the engine holds it: its lifecycle `Instance` (as a dict
    of its fields), counters and note, and its run if it has one."""

    app: str
    index: int
    inst: dict[str, Any]
    generation: int
    note: str | None = None
    run: RunRecord | None = None


@dataclasses.dataclass(frozen=True)
class Listener:
    app: str
    index: int | None
    address: str
    balance: str
    fd: int


@dataclasses.dataclass(frozen=True)
class Image:
    """Everything the new image takes over."""

    foreground: bool
    applied: str  # `dump` of the applied config
    engine_apps: str | None  # `dump` of the engine's definitions, when they differ from it
    config_error: str | None
    control_fd: int
    notify_fd: int | None
    pidfile_fd: int | None
    slots: tuple[SlotRecord, ...]
    listeners: tuple[Listener, ...]
    old_version: str
    began: float  # when the old image began the re-exec (the loop's clock)
    # What `dump` leaves out of the applied config: the files it was read from, its
    # includes, and where each app was defined (file, line).
    files: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    sources: dict[str, tuple[str | None, int | None]] = dataclasses.field(default_factory=dict)
    # The cgroup tree the runs' groups are in (procsupd has moved itself since it made it).
    cgroup_base: str | None = None
    cgroup_home: str | None = None
    cgroup_can_enable: bool = False
    reexecs: int = 0  # re-execs of this daemon, this one included
    # How the daemon was started: the config it reads, its `--env`, where its state is, the
    # keys of the config that wait for a daemon restart, and RLIMIT_NOFILE before procsupd
    # raised it (what instances get by default).
    config_path: str = ""
    profile: str | None = None
    state_dir: str = ""
    restart_daemon: tuple[str, ...] = ()
    nofile: tuple[int, int] | None = None
    started: float = 0.0  # when the daemon first started (time.time()), across re-execs
    version: int = VERSION


def _encode(obj: object) -> object:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, bytes):
        return {"b64": base64.b64encode(obj).decode()}
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    return obj


def dumps(image: Image) -> bytes:
    return json.dumps(_encode(image), separators=(",", ":")).encode()


def _fields(cls: type, data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HandoverError(f"{where}: not an object")
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in known}  # (a field of a newer image: ignored)


def _bytes(v: object) -> bytes:
    if isinstance(v, dict) and isinstance(v.get("b64"), str):
        return base64.b64decode(v["b64"])
    raise HandoverError("a byte string is not {'b64': ...}")


def _run(data: object) -> RunRecord:
    d = _fields(RunRecord, data, "run")
    d["streams"] = tuple(
        Stream(**{**_fields(Stream, s, "stream"), "partial": _bytes(s.get("partial"))})
        for s in d.get("streams", ()))
    d["strays"] = tuple(Stray(**_fields(Stray, s, "stray")) for s in d.get("strays", ()))
    d["groups"] = tuple(d.get("groups", ()))
    if d.get("exit_status") is not None:
        code, sig = d["exit_status"]
        d["exit_status"] = (code, sig)
    return RunRecord(**d)


def loads(raw: bytes) -> Image:
    """The image in `raw`; HandoverError if it is not one this code can take over."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoverError(f"not JSON: {exc}") from None
    d = _fields(Image, data, "image")
    if d.get("version") != VERSION:
        raise HandoverError(f"image version {d.get('version')!r}, this code reads {VERSION}")
    try:
        d["slots"] = tuple(
            SlotRecord(**{**_fields(SlotRecord, s, "slot"),
                          "run": None if s.get("run") is None else _run(s["run"])})
            for s in d.get("slots", ()))
        d["listeners"] = tuple(Listener(**_fields(Listener, x, "listener"))
                               for x in d.get("listeners", ()))
        d["files"] = tuple(d.get("files", ()))
        d["include"] = tuple(d.get("include", ()))
        d["restart_daemon"] = tuple(d.get("restart_daemon", ()))
        if d.get("nofile") is not None:
            soft, hard = d["nofile"]
            d["nofile"] = (soft, hard)
        d["sources"] = {k: (v[0], v[1]) for k, v in d.get("sources", {}).items()}
        return Image(**d)
    except (TypeError, ValueError, AttributeError) as exc:
        raise HandoverError(f"malformed: {exc}") from None


def write(image: Image) -> int:
    """A memfd holding `image`, inheritable across exec, at offset 0: its fd number."""
    fd = os.memfd_create("procsup-reexec", 0)  # (no MFD_CLOEXEC: the new image reads it)
    try:
        data = dumps(image)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read(fd: int) -> Image:
    """The image in the memfd `fd`, which is closed."""
    try:
        size = os.fstat(fd).st_size
        if size > MAX_SIZE:
            raise HandoverError(f"{size} bytes, more than {MAX_SIZE}")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise HandoverError(f"cannot read fd {fd}: {exc}") from None
    finally:
        os.close(fd)
    return loads(b"".join(chunks))
