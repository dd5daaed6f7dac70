"""`stop` across applies and `disable`/`enable`, through the applier and the engine on the fake
process layer and the fake clock (fakes.py): which processes each apply starts, and the record
of disabled apps in a real (temporary) state_dir."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from procsup import cli, output, statefile
from procsup.apply import Applier
from procsup.model import ExecMode, State

from .fakes import FakeRun, World, desired, spec

LISTEN = ("tcp://127.0.0.1:1",)


def play(tmp_path: Path, scenario: Callable[[World], Awaitable[None]],
         disabled: tuple[str, ...] = ()) -> None:
    """Run `scenario` on a World whose applier records in `tmp_path` and starts with the
    `disabled` apps (as procsupd does, having read them from state_dir)."""
    async def main() -> None:
        w = World(asyncio.get_running_loop())
        w.daemon = dataclasses.replace(w.daemon, state_dir=str(tmp_path))
        w.applier = Applier(w.engine, desired(w.daemon), profile_override=None,
                            disabled=disabled)
        await scenario(w)

    asyncio.run(main())


def spawned(w: World, since: int = 0) -> list[str]:
    return [h[1] for h in w.procs.history[since:] if h[0] == "spawn"]


async def apply(w: World, *specs: Any) -> Any:
    return await w.run(w.applier.apply(desired(w.daemon, *specs), wait=True))


def recorded(tmp_path: Path) -> list[str]:
    return json.loads((tmp_path / statefile.DISABLED_FILENAME).read_text())["apps"]  # type: ignore[no-any-return]


WEB, DB = spec("web", 2), spec("db", 1)


# --- stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "after", "starts_web"), [
    ("another app added", (WEB, DB, spec("new")), False),
    ("another app changed", (WEB, spec("db", 1, cwd="/srv")), False),
    ("another app removed", (WEB,), False),
    ("nothing changed", (WEB, DB), False),
    ("its own live key changed", (spec("web", 2, kill_timeout=9.0), DB), True),
    ("its own command changed", (spec("web", 2, command=("v2",)), DB), True),
    ("its own count changed", (spec("web", 3), DB), True),
])
def test_a_stop_lasts_until_that_apps_own_definition_changes(
        tmp_path: Path, case: str, after: tuple[Any, ...], starts_web: bool) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB, DB)
        refs = [v.ref for v in (w.engine.current("web") or {}).values()]
        w.engine.stop(refs)
        await w.run(w.engine.stopped(refs))
        mark = len(w.procs.history)
        await apply(w, *after)
        started = [n for n in spawned(w, mark) if n.startswith("web:")]
        if starts_web:
            assert {"web:0", "web:1"} <= set(started), case
            await w.until(lambda: set(w.states("web").values()) == {"running"})
        else:
            assert started == [], case
            assert set(w.states("web").values()) == {"stopped"}, case

    play(tmp_path, scenario)


# --- disable --------------------------------------------------------------------------------


def test_disable_records_stops_and_no_apply_starts_it(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB, DB)
        views = await w.run(w.applier.disable(["web", "web"], wait=True))
        assert [(v.id.index, v.state) for v in views] == [(0, State.STOPPED), (1, State.STOPPED)]
        assert recorded(tmp_path) == ["web"]
        assert w.engine.disabled == {"web"}  # the dependency gate's view
        mark = len(w.procs.history)
        # an unrelated change, its own change of a restart key, a live key, more instances
        plan = await apply(w, spec("web", 3, command=("v2",), kill_timeout=1.0), DB, spec("x"))
        assert spawned(w, mark) == ["x:0"]
        assert w.states("web") == {0: "stopped", 1: "stopped", 2: "stopped"}
        assert plan.disabled == ("web",)
        assert w.engine.specs()["web"].command == ("v2",)  # the new definition is taken
        assert (w.engine.current("web") or {})[0].spec.command == ("v2",)
        # fewer instances: the extra slots go; the rest stay stopped
        await apply(w, spec("web", 1, command=("v2",)), DB, spec("x"))
        assert w.states("web") == {0: "stopped"}
        assert spawned(w, mark) == ["x:0"]

    play(tmp_path, scenario)


def test_a_disabled_app_starts_nothing_at_start_up_but_gets_its_slots(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        plan = await apply(w, WEB, DB)
        assert spawned(w) == ["db:0"]
        assert w.states("web") == {0: "stopped", 1: "stopped"}
        assert plan.disabled == ("web",)
        assert [a.to_json()["action"] for a in plan.actions] == ["add", "start"]
        assert [a["action"] for a in plan.to_json()["actions"]] == ["start"]  # type: ignore[index, union-attr]

    play(tmp_path, scenario, disabled=("web", "gone"))


def test_enable_starts_it_and_removes_the_record(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB, DB)
        assert spawned(w) == ["db:0"]
        marks = w.applier.enable(["web", "gone"])
        views = await w.run(w.engine.started(marks))
        assert [(v.id.index, v.state) for v in views] == [(0, State.RUNNING), (1, State.RUNNING)]
        assert recorded(tmp_path) == []
        assert w.applier.disabled == frozenset() == w.engine.disabled
        assert w.applier.enable(["db"]) == {}  # not disabled: nothing starts, nothing changes

    play(tmp_path, scenario, disabled=("web", "gone"))


def test_a_removed_disabled_app_keeps_its_record_and_comes_back_disabled(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB, DB)
        await w.run(w.applier.disable(["web"], wait=True))
        await apply(w, DB)
        assert w.engine.current("web") is None
        assert recorded(tmp_path) == ["web"]
        mark = len(w.procs.history)
        await apply(w, WEB, DB)
        assert spawned(w, mark) == []
        assert w.states("web") == {0: "stopped", 1: "stopped"}

    play(tmp_path, scenario)


def test_scale_of_a_disabled_app_makes_stopped_slots(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB)
        views = await w.run(w.applier.scale("web", 4, wait=True))
        assert [(v.id.index, v.state) for v in views] == [(2, State.STOPPED), (3, State.STOPPED)]
        assert spawned(w) == []

    play(tmp_path, scenario, disabled=("web",))


def test_a_disable_during_an_apply_holds_back_what_it_has_not_started(tmp_path: Path) -> None:
    """The apply starts 40 instances, yielding to the loop every 16; a disable that comes at
    the first yield stops the ones started and the apply starts none after it."""
    async def scenario(w: World) -> None:
        task: list[asyncio.Future[Any]] = []

        def on_spawn(run: FakeRun) -> None:
            if str(run.id) == "web:0":
                task.append(asyncio.ensure_future(w.applier.disable(["web"], wait=False)))

        w.procs.on_spawn = on_spawn
        await apply(w, spec("web", 40))
        await w.until(lambda: bool(task) and task[0].done())
        assert len(spawned(w)) == 16
        await w.until(lambda: set(w.states("web").values()) == {"stopped"})
        assert len(w.states("web")) == 40

    play(tmp_path, scenario)


def test_a_disable_stops_a_rolling_reload_of_that_app(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        web = spec("web", 2, exec_mode=ExecMode.CLUSTER, listen=LISTEN)
        await apply(w, web)
        mark = len(w.procs.history)
        reload = asyncio.ensure_future(w.applier.reload_apps({"web": [0, 1]}))
        await w.until(lambda: len(spawned(w, mark)) == 1)  # the first replacement starts
        await w.run(w.applier.disable(["web"], wait=True))
        failure = await w.run(reload)
        assert failure is not None and "web" in failure
        assert spawned(w, mark) == ["web:0"]  # the second replacement never started
        await w.until(lambda: not w.procs.live())
        assert set(w.states("web").values()) == {"stopped"}

    play(tmp_path, scenario)


def test_a_monitor_neither_recycles_nor_revives_a_disabled_app(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB)
        w.applier.recycle("web", None, "cron_restart", revive=True)
        await w.until(lambda: True)
        assert spawned(w) == []
        assert set(w.states("web").values()) == {"stopped"}

    play(tmp_path, scenario, disabled=("web",))


def test_a_record_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await apply(w, WEB)
        (tmp_path / statefile.DISABLED_FILENAME).mkdir()  # rename over a directory fails
        with pytest.raises(OSError):
            await w.run(w.applier.disable(["web"], wait=True))
        assert w.applier.disabled == frozenset() == w.engine.disabled
        assert set(w.states("web").values()) == {"running"}

    play(tmp_path, scenario)


# --- what procsup prints ----------------------------------------------------------------------


def test_the_cli_parses_disable_and_enable() -> None:
    ns = cli.build_parser().parse_args(["disable", "web", "db", "--no-wait"])
    assert (ns.cmd, ns.apps, ns.no_wait, ns.handler) == ("disable", ["web", "db"], True,
                                                         cli.cmd_toggle)
    ns = cli.build_parser().parse_args(["enable", "web"])
    assert (ns.cmd, ns.apps, ns.no_wait) == ("enable", ["web"], False)
    assert cli.main(["enable"]) == 2  # an app is required


def test_the_status_table_says_how_to_enable() -> None:
    row = {"app": "web", "instance": 0, "pid": None, "state": "stopped", "uptime": None,
           "restarts": 0, "cpu": None, "memory": None, "exit_code": -15, "reason": None,
           "disabled": True}
    text = output.format_status({"config": {"applied": True}, "instances": [
        row, {**row, "app": "db", "disabled": False}]})
    lines = text.splitlines()
    assert lines[1].startswith("web ") and lines[1].endswith(
        "stopped  -       0         -    -    disabled: `procsup enable web` starts it")
    assert lines[2].endswith("SIGTERM")


def test_disable_and_enable_lines() -> None:
    stopped = [{"app": "web", "instance": 0, "state": "stopped", "pid": None, "reason": None}]
    assert output.format_toggled({"apps": [
        {"app": "web", "disabled": True, "changed": True, "configured": True},
        {"app": "db", "disabled": True, "changed": False, "configured": True},
    ], "instances": stopped, "failed": False}) == (
        "web disabled: stays stopped until `procsup enable web`\n"
        "db was disabled already\n"
        "web:0  stopped\n")
    assert output.format_toggled({"apps": [
        {"app": "web", "disabled": False, "changed": True, "configured": True},
        {"app": "gone", "disabled": False, "changed": True, "configured": False},
        {"app": "db", "disabled": False, "changed": False, "configured": True},
    ], "instances": [], "failed": False}) == (
        "web enabled\n"
        "gone enabled (the config has no app gone: only its record went)\n"
        "db is not disabled: nothing changed\n")


def test_reread_says_what_a_disabled_app_holds_back() -> None:
    assert output.format_plan({
        "actions": [{"action": "start", "app": "db", "instances": [0], "reason": "new app"}],
        "restart_daemon": [], "live": [{"app": "api", "keys": ["command"]}],
        "disabled": ["web", "api"],
    }) == (
        "start    db (0): new app\n"
        "update   api: command changed (disabled: nothing starts)\n"
        "disabled web: nothing starts (`procsup enable web` starts it)\n")
