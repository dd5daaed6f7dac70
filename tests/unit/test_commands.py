"""procsup.commands on the fake process layer and clock: what a command's reply says."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from procsup.commands import Commands
from procsup.model import ExecMode

from .fakes import World, desired, spec


def play(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(World(asyncio.get_running_loop()))

    asyncio.run(main())


async def _send(_: object) -> None: ...


def test_a_failed_reload_says_which_instances_were_not_reloaded() -> None:
    """The replacement of web:1 crashes: web:0 was reloaded; web:1 and web:2 still run their
    old processes, which the reply says, rather than an old run's exit code."""

    async def scenario(w: World) -> None:
        web = spec("web", 3, exec_mode=ExecMode.CLUSTER, listen=("tcp://127.0.0.1:1",))
        w.applier.started_up.set()
        await w.run(w.applier.apply(desired(w.daemon, web), wait=True))
        old = {i: v.pid for i, v in (w.engine.current("web") or {}).items()}
        w.procs.on_spawn = lambda run: run.id.index == 1 and w.clock.call_at(
            w.clock.now + 0.1, lambda: w.procs.exit(run, 1))
        cmds = Commands(w.engine, w.applier, follow=lambda p, c: (lambda: None))
        result: dict[str, Any] = await w.run(
            cmds.dispatch("reload", {"apps": ["web"], "wait": True}, None, _send))
        assert result["failed"] is True
        assert "reload of web stopped at web:1" in result["error"], result
        rows = {r["instance"]: r for r in result["instances"]}
        assert rows[0]["pid"] != old[0] and rows[0]["reason"] is None
        for i in (1, 2):
            assert rows[i]["pid"] == old[i] and rows[i]["state"] == "running"
            assert rows[i]["reason"] == "not reloaded: the old process keeps running"

    play(scenario)


def test_a_reload_that_succeeds_has_no_reasons() -> None:
    async def scenario(w: World) -> None:
        web = spec("web", 2, exec_mode=ExecMode.CLUSTER, listen=("tcp://127.0.0.1:1",))
        w.applier.started_up.set()
        await w.run(w.applier.apply(desired(w.daemon, web), wait=True))
        cmds = Commands(w.engine, w.applier, follow=lambda p, c: (lambda: None))
        result: dict[str, Any] = await w.run(
            cmds.dispatch("reload", {"apps": ["web"], "wait": True}, None, _send))
        assert result["failed"] is False and "error" not in result
        assert [r["reason"] for r in result["instances"]] == [None, None]

    play(scenario)
