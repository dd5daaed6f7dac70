"""`reloading.way`: which way `reload` renews an instance, from its definition and what its old
process holds; and the words `reload` says about it."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from procsup import reloading
from procsup.model import AppSpec, ExecMode
from procsup.reloading import How

HOLDS = ("127.0.0.1:8081",)


def _spec(**kw: Any) -> AppSpec:
    kw.setdefault("command", ("server",))
    return AppSpec(name="web", **kw)


CLUSTER = {"exec_mode": ExecMode.CLUSTER, "listen": ("tcp://127.0.0.1:8000",)}
HUP = {"reload_signal": int(signal.SIGHUP)}


@pytest.mark.parametrize(("kw", "holds", "how", "why"), [
    # reload_signal wins in every mode, whatever the old process holds
    (HUP, HOLDS, How.SIGNAL, None),
    (HUP, None, How.SIGNAL, None),
    ({**HUP, **CLUSTER}, (), How.SIGNAL, None),
    # cluster apps roll: procsupd holds their sockets, the old instance's fds do not matter
    (CLUSTER, HOLDS, How.ROLLING, None),
    ({**CLUSTER, "ready": "tcp://127.0.0.1:8000"}, (), How.ROLLING, None),
    # fork apps: a worker that listens on nothing rolls
    ({}, (), How.ROLLING, None),
    ({"ready": "notify"}, (), How.ROLLING, None),
    ({"ready": "log:Ready"}, (), How.ROLLING, None),
    # ... one that holds a port, or cannot be looked at, stops first
    ({}, HOLDS, How.STOP_START, "its instance holds 127.0.0.1:8081, which a replacement "
                                "cannot bind while it runs"),
    ({}, ("[::]:80", "unix:/run/app.sock"), How.STOP_START,
     "its instance holds [::]:80, unix:/run/app.sock, which a replacement cannot bind while "
     "it runs"),
    ({}, None, How.STOP_START, "procsupd cannot read which ports its instance holds, and a "
                               "replacement could not bind them while it runs"),
    # ... and one whose tcp/http probe the old instance would answer, whatever it holds
    ({"ready": "tcp://127.0.0.1:8081"}, (), How.STOP_START,
     "its readiness probe tcp://127.0.0.1:8081 would be answered by the old instance"),
    ({"ready": "http://127.0.0.1:8081/up"}, HOLDS, How.STOP_START,
     "its readiness probe http://127.0.0.1:8081/up would be answered by the old instance"),
])
def test_way(kw: dict[str, Any], holds: tuple[str, ...] | None, how: How,
             why: str | None) -> None:
    assert reloading.way(_spec(**kw), holds) == reloading.Way(how, why)


def test_notices() -> None:
    one = _spec()
    stop = reloading.way(one, HOLDS)
    assert reloading.notice("web", [0], one, stop) == (
        "web: restarted stop-then-start, not served meanwhile (its instance holds "
        "127.0.0.1:8081, which a replacement cannot bind while it runs; set reload_signal for "
        "an in-place reload, or exec_mode = \"cluster\")")
    three = _spec(instances=3, **HUP)
    assert reloading.notice("web", [0, 2], three, reloading.way(three, ())) == (
        "web:0, web:2: reloaded in place: sent SIGHUP (reload_signal)")
    assert reloading.notice("web", [0], one, reloading.way(one, ())) is None


@pytest.mark.parametrize(("min_uptime", "settle"), [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0),
                                                    (3.0, 3.0)])
def test_settle_is_min_uptime_at_least_one_second(min_uptime: float, settle: float) -> None:
    assert reloading.settle(_spec(min_uptime=min_uptime)) == settle
