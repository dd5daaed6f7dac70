"""`procsup reload` on a fake process layer and a fake clock: which way each instance goes
(rolling, stop-then-start, reload_signal in place), in what order the process layer is asked,
and what the reload says."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from procsup.model import ExecMode
from procsup.rollout import Reloaded
from procsup.supervisor import RunHandle

from .fakes import FakeRun, World, desired, spec

HUP = int(signal.SIGHUP)


def play(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(World(asyncio.get_running_loop()))

    asyncio.run(main())


def steps(w: World, since: int) -> list[str]:
    return [f"{h[0]} {h[1]}" for h in w.procs.history[since:]
            if h[0] in ("spawn", "kill", "signal", "signal-leader")]


async def up(w: World, *specs: Any) -> dict[int, int]:
    await w.run(w.applier.apply(desired(w.daemon, *specs), wait=True))
    return {i: v.pid for i, v in (w.engine.current(specs[0].name) or {}).items()
            if v.pid is not None}


async def reload(w: World, targets: dict[str, list[int]]) -> tuple[str | None, Reloaded]:
    out = Reloaded()
    failure = await w.run(w.applier.reload_apps(targets, out=out))
    return failure, out


def test_a_fork_app_holding_its_port_is_stopped_first_and_says_so() -> None:
    async def scenario(w: World) -> None:
        pids = await up(w, spec("web"))
        w.holds[pids[0]] = ("127.0.0.1:8081",)
        mark = len(w.procs.history)
        failure, out = await reload(w, {"web": [0]})
        assert failure is None
        assert steps(w, mark) == ["kill web:0", "spawn web:0"]  # stop, then start
        assert out.ways == {("web", 0): "stop-start"}
        assert out.notices == [
            "web: restarted stop-then-start, not served meanwhile (its instance holds "
            "127.0.0.1:8081, which a replacement cannot bind while it runs; set reload_signal "
            "for an in-place reload, or exec_mode = \"cluster\")"]
        assert w.states("web") == {0: "running"}

    play(scenario)


def test_a_fork_worker_holding_nothing_still_rolls_replacement_first() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("web", 2))
        mark = len(w.procs.history)
        failure, out = await reload(w, {"web": [0, 1]})
        assert failure is None and out.notices == []
        assert steps(w, mark) == ["spawn web:0", "kill web:0", "spawn web:1", "kill web:1"]
        assert out.ways == {("web", 0): "rolling", ("web", 1): "rolling"}

    play(scenario)


def test_each_fork_instance_goes_its_own_way_one_at_a_time() -> None:
    async def scenario(w: World) -> None:
        pids = await up(w, spec("web", 4))
        w.holds[pids[1]] = ("0.0.0.0:8001",)
        w.holds[pids[3]] = ("0.0.0.0:8003",)
        mark = len(w.procs.history)
        failure, out = await reload(w, {"web": [0, 1, 2, 3]})
        assert failure is None
        assert steps(w, mark) == ["spawn web:0", "kill web:0", "kill web:1", "spawn web:1",
                                  "spawn web:2", "kill web:2", "kill web:3", "spawn web:3"]
        assert out.ways == {("web", 0): "rolling", ("web", 1): "stop-start",
                            ("web", 2): "rolling", ("web", 3): "stop-start"}
        assert [n.split(", which")[0] for n in out.notices] == [  # each with its own reason
            "web:1: restarted stop-then-start, not served meanwhile (its instance holds "
            "0.0.0.0:8001",
            "web:3: restarted stop-then-start, not served meanwhile (its instance holds "
            "0.0.0.0:8003"]

    play(scenario)


def test_a_tcp_probe_of_a_fork_app_means_stop_first_without_looking_at_sockets() -> None:
    async def scenario(w: World) -> None:
        app = spec("web", ready="tcp://127.0.0.1:8081")

        def ready_soon(run: FakeRun) -> None:
            w.clock.call_at(w.clock.time() + 0.3, lambda: w.procs.ready(run))

        w.procs.on_spawn = ready_soon
        await up(w, app)
        mark = len(w.procs.history)
        failure, out = await reload(w, {"web": [0]})
        assert failure is None
        assert steps(w, mark) == ["kill web:0", "spawn web:0"]
        assert "its readiness probe tcp://127.0.0.1:8081 would be answered by the old " \
               "instance" in out.notices[0]

    play(scenario)


def test_a_stop_then_start_that_does_not_come_back_fails_the_reload() -> None:
    async def scenario(w: World) -> None:
        pids = await up(w, spec("web", max_restarts=0))
        w.holds[pids[0]] = ("127.0.0.1:8081",)
        w.procs.fail["web"] = "executable not found: server"
        failure, out = await reload(w, {"web": [0]})
        assert failure == ("reload of web stopped at web:0: it was stopped and restarted, and "
                           "is errored: executable not found: server")
        assert out.notices and "stop-then-start" in out.notices[0]  # the outage is said anyway

    play(scenario)


def test_reload_signal_goes_to_each_main_process_in_place_and_waits_to_settle() -> None:
    async def scenario(w: World) -> None:
        pids = await up(w, spec("web", 2, reload_signal=HUP, min_uptime=0.5))
        mark = len(w.procs.history)
        began = w.clock.now
        failure, out = await reload(w, {"web": [0, 1]})
        assert failure is None
        assert steps(w, mark) == ["signal-leader web:0", "signal-leader web:1"]  # no spawn
        assert [h[3] for h in w.procs.history[mark:] if h[0] == "signal-leader"] == [HUP, HUP]
        assert {i: v.pid for i, v in (w.engine.current("web") or {}).items()} == pids
        assert w.clock.now - began >= 1.0  # still running 1 s later (min_uptime is shorter)
        assert out.ways == {("web", 0): "signal", ("web", 1): "signal"}
        assert out.notices == ["web:0, web:1: reloaded in place: sent SIGHUP (reload_signal)"]

    play(scenario)


def test_reload_signal_wins_over_cluster_mode_too() -> None:
    async def scenario(w: World) -> None:
        await up(w, spec("web", 1, exec_mode=ExecMode.CLUSTER, listen=("tcp://127.0.0.1:1",),
                         reload_signal=HUP))
        mark = len(w.procs.history)
        failure, _ = await reload(w, {"web": [0]})
        assert failure is None and steps(w, mark) == ["signal-leader web:0"]

    play(scenario)


def test_an_instance_that_dies_of_its_reload_signal_fails_the_reload() -> None:
    async def scenario(w: World) -> None:
        pids = await up(w, spec("web", 2, reload_signal=HUP))
        signal_fake = w.procs.signal

        def dies(handle: RunHandle, sig: int, *, leader: bool = False) -> bool:
            sent = signal_fake(handle, sig, leader=leader)
            assert isinstance(handle, FakeRun)
            if handle.id.index == 1:  # its default action: terminate
                w.clock.call_at(w.clock.time() + 0.05, lambda: w.procs.exit(handle, None, sig))
            return sent

        w.procs.signal = dies  # type: ignore[method-assign]
        failure, _ = await reload(w, {"web": [0, 1]})
        assert failure == (f"reload of web failed: web:1 (pid {pids[1]}) did not keep running "
                           "after SIGHUP (reload_signal): killed by SIGHUP (see procsup logs web)")

    play(scenario)


def test_an_instance_not_running_is_started_by_reload_whatever_its_way() -> None:
    async def scenario(w: World) -> None:
        for app in (spec("a", reload_signal=HUP), spec("b")):
            await up(w, app)
            w.engine.stop([v.ref for v in (w.engine.current(app.name) or {}).values()])
            await w.until(lambda n=app.name: w.states(n) == {0: "stopped"})
            failure, out = await reload(w, {app.name: [0]})
            assert failure is None and out.ways == {(app.name, 0): "start"}
            assert w.states(app.name) == {0: "running"}

    play(scenario)
