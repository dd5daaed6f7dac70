"""Stopping what a previous procsupd left running (layer 3, under `running`, which alone
calls it, before any app starts).

Processes recorded by a previous daemon that are still alive cannot be adopted (their stdout
and stderr pipes died with that daemon), so they are stopped: the app's kill_signal to the
group, then SIGKILL after its kill_timeout. They are found by what was recorded (`statefile`:
a leader's pid and start ticks, what runs left outside their groups, the members of a recorded
group or session whose leader is gone) and by the daemon's marker in their environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping

from procsup import spawn, statefile
from procsup.model import AppSpec

#: Poll interval while waiting for a stopped leftover to be gone.
_POLL = 0.02


async def recover(
    state_dir: str, marker: str, apps: Mapping[str, AppSpec], log: logging.Logger
) -> None:
    """Stop every leftover, then record that nothing runs. A process forked (or exec'ing)
    during a scan can be missed by it, so scan again until a scan finds nothing (a few rounds
    at most)."""
    recorded = statefile.read(state_dir)
    records = statefile.leftovers(recorded)
    for _ in range(3):
        if not await _recover_once(records, recorded, marker, apps, log):
            break
        records = []
    statefile.write(state_dir, (), os.getpid())


async def _recover_once(
    records: list[statefile.Record], recorded: list[statefile.Record], marker: str,
    apps: Mapping[str, AppSpec], log: logging.Logger,
) -> bool:
    """One round of `recover` (`records`: the recorded leaders still alive, `recorded`: all
    the records); whether it found anything to stop."""
    groups: dict[int, str] = {}  # pgid -> app
    for rec in records:
        groups[rec.pgid] = rec.app
    # What is left of a recorded group or session whose leader is gone (a child that made
    # a group of its own, in the leader's session), found by the record alone.
    for rec, st in statefile.members_left(recorded):
        groups.setdefault(st.pgrp, rec.app)
    # Every instance carries the marker in its environment, and so do its children: that
    # also finds what the record missed (a daemon killed before it wrote it) and the
    # children of a leader that is gone, without ever matching an unrelated process.
    strays: list[int] = []
    for m in statefile.marked_processes(marker):
        if m.pgid == m.pid or m.pgid in groups:
            groups.setdefault(m.pgid, m.app or "?")
        else:
            strays.append(m.pid)
    if not groups and not strays:
        return False
    log.warning(
        "stopping what a previous procsupd left running: %s",
        ", ".join(f"{app} (process group {g})" for g, app in groups.items())
        + (f", {len(strays)} more process(es)" if strays else ""),
    )
    await asyncio.gather(
        *(_stop_group(pgid, apps.get(app)) for pgid, app in groups.items()),
        _stop_pids(strays),
    )
    return True


async def _stop_group(pgid: int, spec: AppSpec | None) -> None:
    loop = asyncio.get_running_loop()
    sig = spec.kill_signal if spec else signal.SIGTERM
    timeout = spec.kill_timeout if spec else 5.0
    spawn.kill_group(pgid, sig)
    deadline = loop.time() + timeout
    while spawn.live_members(pgid):
        if loop.time() >= deadline:
            spawn.kill_group(pgid, signal.SIGKILL)
            deadline = float("inf")
        await asyncio.sleep(_POLL)


async def _stop_pids(pids: list[int]) -> None:
    """Marked processes outside any recorded group (they called setsid): SIGTERM, then
    SIGKILL after 5 s."""
    loop = asyncio.get_running_loop()
    spawn.signal_pids(pids, signal.SIGTERM)
    deadline = loop.time() + 5.0
    while pids := [p for p in pids if spawn.pid_alive(p)]:
        if loop.time() >= deadline:
            spawn.signal_pids(pids, signal.SIGKILL)
            deadline = float("inf")
        await asyncio.sleep(_POLL)
