"""procsup.inherit: what a child forked now inherits."""

from __future__ import annotations

import os
from pathlib import Path

from procsup import inherit, limits


def _fd_table_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("FDSize:"):
            return int(line.split()[1])
    raise AssertionError("no FDSize in /proc/self/status")


def test_room_below_the_fd_table_size_or_the_count_of_open_fds() -> None:
    assert inherit.room_below(_fd_table_size() + limits.FORK_HEADROOM)  # the quick test
    count = len(os.listdir("/proc/self/fd"))
    if count + limits.FORK_HEADROOM + 1 < _fd_table_size() + limits.FORK_HEADROOM:
        assert inherit.room_below(count + limits.FORK_HEADROOM + 1)  # counted
    assert not inherit.room_below(count + limits.FORK_HEADROOM - 2)
    assert not inherit.room_below(10)
