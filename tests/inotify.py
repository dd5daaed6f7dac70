"""What inotify watches a process holds, as the kernel shows them: a test waits for a watch
to be armed instead of sleeping while a worker thread adds it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


def inotify_watched(pid: int) -> set[tuple[int, int]]:
    """(device, inode) of every file that process `pid` watches with inotify, as the kernel
    shows it in /proc/PID/fdinfo (the device as the kernel encodes it, see `kernel_dev`)."""
    watched = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("inotify "):
                fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f)
                watched.add((int(fields["sdev"], 16), int(fields["ino"], 16)))
    return watched


def kernel_dev(st_dev: int) -> int:
    """`st_dev` as the kernel prints it in fdinfo (major << 20 | minor)."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


def watch_keys(*paths: Path) -> set[tuple[int, int]]:
    """The (device, inode) keys of `paths`, comparable with `inotify_watched`."""
    keys = set()
    for path in paths:
        st = path.stat()
        keys.add((kernel_dev(st.st_dev), st.st_ino))
    return keys


async def watched(*paths: Path, timeout: float = 10.0) -> None:
    """In an event loop: wait until this process has an inotify watch on each of `paths`."""
    wanted = watch_keys(*paths)
    deadline = time.monotonic() + timeout
    while not wanted <= inotify_watched(os.getpid()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for inotify watches on "
                                 + ", ".join(map(str, paths)))
        await asyncio.sleep(0.01)
