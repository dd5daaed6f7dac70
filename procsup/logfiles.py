"""Log files on disk, one at a time (layer 2, below `logs`): opening one for appending, safely
(`open_log`: its directory made, mode 0640, O_NOCTTY, and O_NOFOLLOW in a directory others
can write: `parent_is_shared`), removing a rotated one without freeing its blocks on the loop
(`discard`: a worker thread does the last close), and reading the last lines of one (`tail`,
backwards, bounded). With `logs`, the only module that opens log files; it keeps no state
but the discard thread.
"""

from __future__ import annotations

import concurrent.futures
import errno
import functools
import os
import stat

__all__ = ["discard", "open_log", "parent_is_shared", "tail"]

_TAIL_BLOCK = 64 * 1024
_TAIL_MAX_BYTES = 16 * 1024 * 1024
_NL = b"\n"
# O_NOCTTY: a log path that is a terminal must not become the controlling terminal of
# procsupd (a session leader without one), whose hangup would then send it SIGHUP.
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
_FILE_MODE = 0o640
_DIR_MODE = 0o755


def parent_is_shared(path: str) -> bool:
    """True when someone other than the parent directory's owner may create entries in it, or
    the owner is neither root nor us: then a symlink at `path` may have been planted."""
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError:
        return True  # cannot tell: be safe; the open will report the real problem
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    return st.st_uid not in (0, os.geteuid())


def open_log(path: str, *, truncate: bool = False) -> int:
    """Open `path` for appending (creating it and its parent directory), safely. Raises OSError
    with the path in the message."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=_DIR_MODE, exist_ok=True)
    flags = _OPEN_FLAGS | (os.O_TRUNC if truncate else 0)
    nofollow = parent_is_shared(path)
    if nofollow:
        flags |= os.O_NOFOLLOW
    try:
        return os.open(path, flags, _FILE_MODE)
    except OSError as exc:
        if nofollow and exc.errno == errno.ELOOP:
            raise OSError(
                exc.errno,
                "refusing to follow a symlink in a directory others can write",
                path,
            ) from exc
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise


@functools.cache
def _discarder() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="procsup-log-discard")


def discard(path: str) -> None:
    """Remove the file at `path`, if any, without freeing its blocks on the loop: the unlink
    of a last link (or a rename over it) frees them there and then, 25 - 40 ms for 64 MiB on
    ext4. The file is held open, unlinked (then cheap; and a rename to `path` finds nothing to
    replace, so ext4 does not flush the renamed file), and a worker thread does the last close.
    A file that cannot be opened is unlinked plainly. Raises OSError as `os.unlink`, except
    for a missing file."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd: int | None = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError:  # a symlink (O_NOFOLLOW), not readable...
        fd = None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        if fd is not None:
            try:
                _discarder().submit(os.close, fd)
            except RuntimeError:  # the interpreter is exiting: no new work for threads
                os.close(fd)


def tail(path: str, n: int, *, max_bytes: int = _TAIL_MAX_BYTES) -> list[bytes]:
    """The last `n` lines of the file at `path`, without their newlines, oldest first.

    Reads backwards in 64 KiB blocks and stops as soon as it has `n` lines, so a large file is
    not read whole; it also stops after `max_bytes`, in which case the first line returned may
    be the end of a longer line. A missing file gives []. Returns bytes: log lines are whatever
    the app wrote, decode with errors="replace". Opens the file like a sink does (no symlink
    following in a directory others can write) and reads only this file, not `<path>.1`.
    """
    if n <= 0:
        return []
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # non-blocking: never hang on a fifo
    if parent_is_shared(path):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        pos = st.st_size
        blocks: list[bytes] = []
        newlines = 0
        total = 0
        trailing: bool | None = None
        while pos > 0 and total < max_bytes:
            size = min(_TAIL_BLOCK, pos, max_bytes - total)
            pos -= size
            block = os.pread(fd, size, pos)
            if not block:  # the file shrank under us
                break
            if trailing is None:
                trailing = block.endswith(_NL)
            blocks.append(block)
            total += len(block)
            newlines += block.count(_NL)
            # n full lines are certain once n newlines precede the last line's end.
            if newlines - (1 if trailing else 0) >= n:
                break
    finally:
        os.close(fd)
    data = b"".join(reversed(blocks))
    if data.endswith(_NL):
        data = data[:-1]
    elif not data:
        return []
    return data.split(_NL)[-n:]
