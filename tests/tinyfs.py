"""A real small filesystem for the full-disk tests: a tmpfs of a few pages, mounted (root only)
in the test's directory, filled to the last block by a filler file and freed by deleting it."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: For `@pytest.mark.skipif`: mounting needs root (CAP_SYS_ADMIN).
NOT_ROOT = os.geteuid() != 0
WHY = "mounting a small tmpfs to fill needs root"


@contextmanager
def tiny_tmpfs(where: Path, size: str = "256k", inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of `size` (and at most `inodes` files and directories, its root included)
    mounted at `where` (created), unmounted afterwards. The unmount is lazy: a daemon under
    test may still hold files there when the test ends."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write `directory/name` until the filesystem refuses more (ENOSPC); its path."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"\0" * 4096
    try:
        for _ in range(1 << 20):  # a bound, far above any size these tests mount
            try:
                if os.write(fd, block) < len(block):
                    continue  # the last pages: the next write gets ENOSPC
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return path
        raise AssertionError(f"{directory} never filled up")
    finally:
        os.close(fd)
