"""reconcile: the pure planner, driven by tables and a simulated executor (no processes)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procsup.model import AppSpec, DaemonSpec, ExecMode, RestartPolicy
from procsup.reconcile import (
    Action,
    Kind,
    Plan,
    Running,
    changed_fields,
    format_ids,
    plan,
)

# --- builders -------------------------------------------------------------------------------


def app(name: str = "web", n: int = 1, **kw: Any) -> AppSpec:
    """A small AppSpec; `n` is the instance count."""
    kw.setdefault("command", ("python3", f"{name}.py"))
    return AppSpec(name=name, instances=n, **kw)


def cluster(name: str = "web", n: int = 2, **kw: Any) -> AppSpec:
    return app(name, n, exec_mode=ExecMode.CLUSTER, listen=("tcp://127.0.0.1:8000",), **kw)


def running(*specs: AppSpec, slots: Mapping[str, int] | None = None) -> dict[str, Running]:
    """name -> Running from the specs; `slots` overrides the live count (after `procsup scale`)."""
    slots = slots or {}
    return {s.name: Running(s, slots.get(s.name, s.instances)) for s in specs}


def desired(*specs: AppSpec) -> dict[str, AppSpec]:
    return {s.name: s for s in specs}


def rows(p: Plan) -> list[tuple[str, str, tuple[int, ...], str]]:
    return [(a.action, a.app, a.instances, a.reason) for a in p.actions]


# --- the table ------------------------------------------------------------------------------

CASES: list[tuple[str, dict[str, Running], dict[str, AppSpec], list[Any]]] = [
    ("nothing at all", {}, {}, []),
    ("unchanged", running(app("web", 2), app("db")), desired(app("web", 2), app("db")), []),
    (
        "unchanged apart from source and line",
        running(app("web", source="/a.toml", line=3)),
        desired(app("web", source="/b.toml", line=9)),
        [],
    ),
    ("unchanged cluster", running(cluster("web")), desired(cluster("web")), []),
    ("new app", {}, desired(app("web", 4)), [("start", "web", (0, 1, 2, 3), "new app")]),
    ("new app with 0 instances", {}, desired(app("web", 0)), []),
    (
        "removed app",
        running(app("old"), app("web")),
        desired(app("web")),
        [("stop", "old", (0,), "removed from config")],
    ),
    (
        "removed app scaled to 0 at runtime still goes",
        running(app("old", 2), slots={"old": 0}),
        {},
        [("stop", "old", (), "removed from config")],
    ),
    (
        "command changed",
        running(app("web", 2)),
        desired(app("web", 2, command=("python3", "v2.py"))),
        [("restart", "web", (0, 1), "command changed")],
    ),
    (
        "several keys changed, named in field order",
        running(app("web")),
        desired(app("web", cwd="/srv", env={"A": "1"})),
        [("restart", "web", (0,), "cwd, env changed")],
    ),
    (
        "cluster app changed: rolling reload",
        running(cluster("web", 3)),
        desired(cluster("web", 3, env={"A": "1"})),
        [("reload", "web", (0, 1, 2), "env changed")],
    ),
    (
        "fork -> cluster: plain restart",
        running(app("web", 2)),
        desired(cluster("web", 2)),
        [("restart", "web", (0, 1), "exec_mode, listen changed")],
    ),
    (
        "cluster -> fork: plain restart",
        running(cluster("web", 2)),
        desired(app("web", 2)),
        [("restart", "web", (0, 1), "exec_mode, listen changed")],
    ),
    (
        "instances up",
        running(app("web", 2)),
        desired(app("web", 4)),
        [("scale", "web", (2, 3), "instances 2 -> 4")],
    ),
    (
        "instances down: the highest ids go",
        running(app("web", 4)),
        desired(app("web", 2)),
        [("scale", "web", (2, 3), "instances 4 -> 2")],
    ),
    (
        "instances down to 0",
        running(app("web", 3)),
        desired(app("web", 0)),
        [("scale", "web", (0, 1, 2), "instances 3 -> 0")],
    ),
    (
        "runtime scale is undone by the next apply",
        running(app("web", 2), slots={"web": 5}),
        desired(app("web", 2)),
        [("scale", "web", (2, 3, 4), "instances 5 -> 2")],
    ),
    (
        "runtime scale counts, not the old spec's count",
        running(app("web", 2), slots={"web": 1}),
        desired(app("web", 3)),
        [("scale", "web", (1, 2), "instances 1 -> 3")],
    ),
    (
        "definition and count change, going down: scale first, then restart fewer",
        running(app("web", 4)),
        desired(app("web", 2, command=("v2",))),
        [
            ("scale", "web", (2, 3), "instances 4 -> 2"),
            ("restart", "web", (0, 1), "command changed"),
        ],
    ),
    (
        "definition and count change, going up: restart existing, then scale up",
        running(app("web", 2)),
        desired(app("web", 4, command=("v2",))),
        [
            ("restart", "web", (0, 1), "command changed"),
            ("scale", "web", (2, 3), "instances 2 -> 4"),
        ],
    ),
    (
        "definition changed, no instance left to restart",
        running(app("web", 2), slots={"web": 0}),
        desired(app("web", 2, command=("v2",))),
        [("scale", "web", (0, 1), "instances 0 -> 2")],
    ),
    (
        "cluster definition and count change, going up: reload then scale",
        running(cluster("web", 1)),
        desired(cluster("web", 2, ready_timeout=9.0)),
        [
            ("reload", "web", (0,), "ready_timeout changed"),
            ("scale", "web", (1,), "instances 1 -> 2"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("running_", "apps", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_table(
    running_: dict[str, Running], apps: dict[str, AppSpec], expected: list[Any]
) -> None:
    p = plan(running_, apps)
    assert rows(p) == expected
    assert bool(p) is bool(expected)
    assert p.restart_daemon == ()


def test_whole_plan_order() -> None:
    """Removed apps stop first (running order), then per group in new file order: scale-downs,
    restarts/reloads, scale-ups, starts."""
    run = running(
        app("gone1"),
        app("up", 1),
        app("down", 3),
        cluster("cl", 2),
        app("same", 2),
        app("gone2", 2),
        app("chg", 1),
    )
    apps = desired(
        app("new1", 2),
        app("chg", 1, command=("v2",)),
        app("up", 3),
        app("same", 2),
        cluster("cl", 1, env={"X": "y"}),
        app("down", 1),
        app("new2", 1),
    )
    assert rows(plan(run, apps)) == [
        ("stop", "gone1", (0,), "removed from config"),
        ("stop", "gone2", (0, 1), "removed from config"),
        ("scale", "cl", (1,), "instances 2 -> 1"),
        ("scale", "down", (1, 2), "instances 3 -> 1"),
        ("restart", "chg", (0,), "command changed"),
        ("reload", "cl", (0,), "env changed"),
        ("scale", "up", (1, 2), "instances 1 -> 3"),
        ("start", "new1", (0, 1), "new app"),
        ("start", "new2", (0,), "new app"),
    ]


def test_file_order_decides_order_within_a_group() -> None:
    run = running(app("a", 1), app("b", 1))
    fwd = desired(app("a", 2), app("b", 2))
    back = desired(app("b", 2), app("a", 2))
    assert [a.app for a in plan(run, fwd).actions] == ["a", "b"]
    assert [a.app for a in plan(run, back).actions] == ["b", "a"]
    assert plan(run, fwd) == plan(run, fwd)  # deterministic


def test_profile_switch_restarts_only_apps_whose_env_changed() -> None:
    """config.py merges env_<profile> into AppSpec.env; switching profile changes only the apps
    that have an env_<profile> table, and only those restart."""
    base = {"APP_COLOR": "blue"}
    run = running(
        app("web", 2, env={**base, "LOG_LEVEL": "debug"}),  # env_development applied
        app("worker", 1, env=dict(base)),  # no env_<profile> tables
        cluster("api", 2, env={"A": "1"}),
    )
    apps = desired(
        app("web", 2, env={**base, "LOG_LEVEL": "warn"}),  # env_production applied
        app("worker", 1, env=dict(base)),
        cluster("api", 2, env={"A": "1"}),
    )
    assert rows(plan(run, apps)) == [("restart", "web", (0, 1), "env changed")]


# --- changed_fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, ()),
        ({"instances": 7}, ()),
        ({"source": "/other.toml", "line": 99}, ()),
        ({"command": ("other",)}, ("command",)),
        ({"shell": True, "command": ("/bin/sh", "-c", "x")}, ("command", "shell")),
        ({"env": {"K": "v"}, "cwd": "/srv"}, ("cwd", "env")),
        ({"user": "nobody", "umask": 0o22}, ("user", "umask")),
        ({"watch": ("/srv",), "ready": "notify"}, ("watch", "ready")),
        ({"listen": ("tcp://[::]:80",), "balance": "reuseport"}, ("listen", "balance")),
    ],
)
def test_changed_fields(change: dict[str, Any], expected: tuple[str, ...]) -> None:
    old = app("web", 2)
    assert changed_fields(old, dataclasses.replace(old, **change)) == expected


def test_changed_fields_compares_env_by_content() -> None:
    assert changed_fields(app(env={"A": "1", "B": "2"}), app(env={"B": "2", "A": "1"})) == ()


# --- daemon keys ------------------------------------------------------------------------------

DAEMON = DaemonSpec(
    config_path="/etc/procsup/apps.toml",
    socket="/run/procsup/procsup.sock",
    pidfile="/run/procsup/procsupd.pid",
    log_dir="/var/log/procsup",
    state_dir="/var/lib/procsup",
)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"socket": "/tmp/x.sock"}, ["socket"]),
        ({"socket_mode": 0o600}, ["socket_mode"]),
        ({"socket_group": "procsup"}, ["socket_group"]),
        ({"pidfile": "/tmp/p.pid"}, ["pidfile"]),
        ({"state_dir": "/tmp/state"}, ["state_dir"]),
        ({"log_dir": "/tmp/logs"}, []),
        ({"include": ("apps.d/*.toml",)}, []),
        ({"env": "production"}, []),
        ({"watch_config": False}, []),
        ({"shutdown_timeout": 3.0}, []),
        ({"config_path": "/tmp/apps.toml"}, []),
        (
            {"state_dir": "/s", "socket": "/x.sock", "log_dir": "/l", "pidfile": "/p"},
            ["socket", "pidfile", "state_dir"],
        ),
    ],
)
def test_restart_daemon_keys(change: dict[str, Any], expected: list[str]) -> None:
    p = plan({}, {}, DAEMON, dataclasses.replace(DAEMON, **change))
    assert list(p.restart_daemon) == expected
    assert not p  # daemon keys alone are no action
    assert p.to_json()["restart_daemon"] == expected


@pytest.mark.parametrize(("old", "new"), [(None, DAEMON), (DAEMON, None), (None, None)])
def test_restart_daemon_empty_when_a_side_is_unknown(
    old: DaemonSpec | None, new: DaemonSpec | None
) -> None:
    assert plan({}, {}, old, new).restart_daemon == ()


# --- output -----------------------------------------------------------------------------------


def test_to_json_shape_is_the_contract() -> None:
    run = running(app("old", 1), app("web", 2))
    apps = desired(app("web", 2, command=("v2",)), app("new", 2))
    p = plan(run, apps, DAEMON, dataclasses.replace(DAEMON, socket="/tmp/s.sock"))
    doc = p.to_json()
    assert doc == {
        "actions": [
            {"action": "stop", "app": "old", "instances": [0], "reason": "removed from config"},
            {"action": "restart", "app": "web", "instances": [0, 1], "reason": "command changed"},
            {"action": "start", "app": "new", "instances": [0, 1], "reason": "new app"},
        ],
        "restart_daemon": ["socket"],
        "live": [],
        "disabled": [],
    }
    assert json.loads(json.dumps(doc)) == doc  # plain JSON types only (lists, not tuples)
    assert list(doc) == ["actions", "restart_daemon", "live", "disabled"]
    actions = doc["actions"]
    assert isinstance(actions, list)
    assert all(list(a) == ["action", "app", "instances", "reason"] for a in actions)


def test_to_json_of_empty_plan() -> None:
    assert plan({}, {}).to_json() == {"actions": [], "restart_daemon": [], "live": [],
                                      "disabled": []}


def test_describe() -> None:
    run = running(app("old", 1), app("gone", 0), app("web", 4), app("db", 2))
    apps = desired(app("web", 2, env={"A": "1"}), app("db", 3), app("new", 4))
    p = plan(run, apps, DAEMON, dataclasses.replace(DAEMON, pidfile="/p", state_dir="/s"))
    assert p.describe() == [
        "stop old:0 (removed from config)",
        "stop gone (removed from config)",
        "scale web:2-3 (instances 4 -> 2)",
        "restart web:0-1 (env changed)",
        "scale db:2 (instances 2 -> 3)",
        "start new:0-3 (new app)",
        "restart procsupd to apply [procsup] pidfile, state_dir",
    ]


def test_describe_no_changes() -> None:
    assert plan({}, {}).describe() == ["no changes"]
    assert plan(running(app()), desired(app()), DAEMON, DAEMON).describe() == ["no changes"]


def test_describe_only_daemon_keys() -> None:
    p = plan({}, {}, DAEMON, dataclasses.replace(DAEMON, socket="/x"))
    assert p.describe() == ["restart procsupd to apply [procsup] socket"]


@pytest.mark.parametrize(
    ("ids", "text"),
    [((), ""), ((0,), "0"), ((0, 1), "0-1"), ((0, 1, 2, 3), "0-3"), ((0, 2, 3, 7), "0,2-3,7")],
)
def test_format_ids(ids: tuple[int, ...], text: str) -> None:
    assert format_ids(ids) == text


def test_action_rejects_bad_data() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        Action("explode", "web", (0,), "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ascending"):
        Action(Kind.STOP, "web", (1, 0), "x")
    with pytest.raises(ValueError, match="ascending"):
        Action(Kind.STOP, "web", (0, 0), "x")


@pytest.mark.parametrize(("kind", "wire"), [
    (Kind.STOP, "stop"), (Kind.SCALE_DOWN, "scale"), (Kind.RESTART, "restart"),
    (Kind.REBIND, "restart"), (Kind.RELOAD, "reload"), (Kind.SCALE_UP, "scale"),
    (Kind.START, "start"), (Kind.RESUME, "start"), (Kind.ADD, "add"),
])
def test_every_kind_has_its_contract_name(kind: Kind, wire: str) -> None:
    a = Action(kind, "web", (0,), "x")
    assert a.action == wire
    assert a.to_json()["action"] == wire
    assert a.describe().startswith(f"{wire} web:0 (x")


def test_scale_direction_is_the_plans_kind() -> None:
    old = app("web", 4)
    assert plan({"web": Running(old, 4)}, {"web": app("web", 2)}).actions[0].kind is (
        Kind.SCALE_DOWN)
    assert plan({"web": Running(old, 2)}, {"web": app("web", 4)}).actions[0].kind is (
        Kind.SCALE_UP)


def test_a_balance_change_is_a_rebind_and_says_so() -> None:
    old = app("web", 2, exec_mode=ExecMode.CLUSTER, listen=("tcp://127.0.0.1:8000",))
    new = dataclasses.replace(old, balance="reuseport")
    (a,) = plan({"web": Running(old, 2)}, {"web": new}).actions
    assert a.kind is Kind.REBIND
    assert a.to_json() == {"action": "restart", "app": "web", "instances": [0, 1],
                           "reason": "balance changed; every instance stops before any starts"}
    assert a.describe() == (
        "restart web:0-1 (balance changed; every instance stops before any starts)")


# --- property: executing the plan reaches the desired state ------------------------------------

NAMES = ("a", "b", "c", "d")


@st.composite
def specs(draw: st.DrawFn, name: str) -> AppSpec:
    is_cluster = draw(st.booleans())
    return AppSpec(
        name=name,
        command=(draw(st.sampled_from(["v1", "v2"])),),
        instances=draw(st.integers(0, 4)),
        env={"P": draw(st.sampled_from(["dev", "prod"]))},
        exec_mode=ExecMode.CLUSTER if is_cluster else ExecMode.FORK,
        listen=("tcp://127.0.0.1:8000",) if is_cluster else (),
        line=draw(st.integers(1, 3)),  # never part of the definition
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, Running], dict[str, AppSpec]]:
    old_names = draw(st.lists(st.sampled_from(NAMES), unique=True))
    new_names = draw(st.lists(st.sampled_from(NAMES), unique=True))
    run = {}
    for n in old_names:
        spec = draw(specs(n))
        # slots usually follow the spec, sometimes a runtime `scale` changed them
        slots = draw(st.one_of(st.just(spec.instances), st.integers(0, 4)))
        run[n] = Running(spec, slots)
    return run, {n: draw(specs(n)) for n in new_names}


Slot = tuple[str, int]


def execute(run: Mapping[str, Running], p: Plan, apps: Mapping[str, AppSpec]) -> dict[Slot, Any]:
    """A strict executor: every action must make sense in the state it runs in. Returns
    slot -> (spec it was started from, how it got there)."""
    state: dict[Slot, Any] = {
        (name, i): (r.spec, "kept") for name, r in run.items() for i in range(r.instances)
    }
    gone: set[str] = set()
    for a in p.actions:
        slots = [(a.app, i) for i in a.instances]
        current = sum(1 for s in state if s[0] == a.app)
        assert a.app not in gone, f"{a} after the app was stopped for good"
        if a.action == "stop":
            assert a.app not in apps
            assert set(slots) == {s for s in state if s[0] == a.app}, "stop must take all ids"
            for s in slots:
                del state[s]
            gone.add(a.app)
        elif a.action == "start":
            assert current == 0 and a.app not in run
            state.update({s: (apps[a.app], "started") for s in slots})
        elif a.action == "add":  # a disabled app's slots: made, stopped
            assert a.instances[0] == current, "new ids follow the existing ones"
            state.update({s: (apps[a.app], "added") for s in slots})
        elif a.action in ("restart", "reload"):
            assert all(s in state for s in slots)
            if a.action == "reload":
                assert run[a.app].spec.exec_mode == apps[a.app].exec_mode == ExecMode.CLUSTER
            state.update({s: (apps[a.app], a.action) for s in slots})
        else:
            assert a.action == "scale"
            if a.kind is Kind.SCALE_DOWN:
                assert all(s in state for s in slots)
                assert a.instances[-1] == current - 1, "the highest ids go"
                for s in slots:
                    del state[s]
            else:
                assert a.instances[0] == current, "new ids follow the existing ones"
                state.update({s: (apps[a.app], "scaled") for s in slots})
    return state


def definition(spec: AppSpec) -> AppSpec:
    return dataclasses.replace(spec, instances=0)


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_executing_the_plan_reaches_the_desired_state(
    world: tuple[dict[str, Running], dict[str, AppSpec]],
) -> None:
    run, apps = world
    p = plan(run, apps)
    state = execute(run, p, apps)

    # exactly the desired apps with the desired counts...
    assert set(state) == {(n, i) for n, s in apps.items() for i in range(s.instances)}
    # ...every instance running the desired definition...
    for (name, _), (spec, _how) in state.items():
        assert definition(spec) == definition(apps[name])
    # ...and an app that did not change keeps its processes untouched.
    for name, spec in apps.items():
        r = run.get(name)
        if r is not None and r.instances == spec.instances and not changed_fields(r.spec, spec):
            assert all(a.app != name for a in p.actions)
            assert all(how == "kept" for (n, _), (_, how) in state.items() if n == name)
    # no wasted work: each slot is touched by at most one action (nothing is started only to be
    # restarted, or restarted only to be stopped), and no action is empty but a removed app's stop
    touched = [(a.app, i) for a in p.actions for i in a.instances]
    assert len(touched) == len(set(touched))
    assert all(a.instances or a.action == "stop" for a in p.actions)
    assert p == plan(run, apps)  # deterministic


@settings(max_examples=300, deadline=None)
@given(worlds(), st.sets(st.sampled_from(NAMES)))
def test_a_disabled_app_gets_its_slots_and_never_a_process(
    world: tuple[dict[str, Running], dict[str, AppSpec]], off: set[str],
) -> None:
    run, apps = world
    p = plan(run, apps, disabled=off)
    state = execute(run, p, apps)
    assert set(state) == {(n, i) for n, s in apps.items() for i in range(s.instances)}
    for (name, _), (_spec, how) in state.items():
        if name in off:
            assert how in ("kept", "added")
    # the other apps get exactly the plan they would get anyway
    others = [a for a in plan(run, apps).actions if a.app not in off]
    assert [a for a in p.actions if a.app not in off] == others


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("out_file", "/var/log/other.log"),
        ("error_file", "/var/log/other.err"),
        ("merge_logs", True),
        ("log_date_format", "%H:%M"),
        ("log_max_size", 1024),
        ("log_retain", 2),
        ("autorestart", RestartPolicy.NEVER),
        ("max_restarts", 3),
        ("min_uptime", 5.0),
        ("restart_delay", 2.0),
        ("exp_backoff_restart_delay", 0.1),
        ("kill_signal", 2),
        ("kill_timeout", 9.0),
        ("max_memory_restart", 1 << 30),
        ("watch", ("/srv/web",)),
        ("ignore_watch", ("*.tmp",)),
        ("cron_restart", "0 4 * * *"),
    ],
)
def test_live_keys_never_restart(key: str, value: Any) -> None:
    p = plan(running(app("web", 2)), desired(app("web", 2, **{key: value})))
    assert rows(p) == []
    assert p.live == (("web", (key,)),)
    assert bool(p)
    assert p.describe() == [f"update web live, no restart ({key} changed)"]


def test_a_live_key_beside_a_restart_key_restarts() -> None:
    p = plan(running(app("web", 1)), desired(app("web", 1, kill_timeout=9.0, cwd="/srv")))
    assert rows(p) == [("restart", "web", (0,), "cwd changed")]
    assert p.live == ()


def test_instances_stopped_by_command_start_when_their_app_changes() -> None:
    run = {"web": Running(app("web", 3), 3, stopped=(1, 2)), "db": Running(app("db", 2), 2, (0,))}
    apps = desired(app("web", 2), app("db", 2, command=("v2",)))
    assert rows(plan(run, apps)) == [
        ("scale", "web", (2,), "instances 3 -> 2"),
        ("restart", "db", (0, 1), "command changed"),  # a restart starts the stopped one too
        ("start", "web", (1,), "stopped by command; its definition changed"),
    ]


WEB, DB = app("web", 2), app("db", 1)

# (case, running, desired apps, disabled, expected rows (action, app, ids), held, live)
STOPPED_AND_DISABLED: list[tuple[str, dict[str, Running], dict[str, AppSpec], frozenset[str],
                                 list[tuple[str, str, tuple[int, ...]]], tuple[str, ...],
                                 tuple[tuple[str, tuple[str, ...]], ...]]] = [
    ("stopped, unchanged, another app added: stays stopped",
     {"web": Running(WEB, 2, (0, 1))}, desired(WEB, DB), frozenset(),
     [("start", "db", (0,))], (), ()),
    ("stopped, unchanged, another app changed: stays stopped",
     {"web": Running(WEB, 2, (1,)), "db": Running(DB, 1)},
     desired(WEB, app("db", 1, cwd="/srv")), frozenset(),
     [("restart", "db", (0,))], (), ()),
    ("stopped, another app removed: stays stopped",
     {"web": Running(WEB, 2, (0,)), "db": Running(DB, 1)}, desired(WEB), frozenset(),
     [("stop", "db", (0,))], (), ()),
    ("stopped, only a live key of its own changed: starts",
     {"web": Running(WEB, 2, (0, 1))}, desired(app("web", 2, kill_timeout=9.0)), frozenset(),
     [("start", "web", (0, 1))], (), (("web", ("kill_timeout",)),)),
    ("stopped, its count went up: the new one and the stopped one start",
     {"web": Running(WEB, 2, (0,))}, desired(app("web", 3)), frozenset(),
     [("scale", "web", (2,)), ("start", "web", (0,))], (), ()),
    ("stopped, a runtime scale ends: counts as a change",
     {"web": Running(app("web", 4), 4, (1,))}, desired(WEB), frozenset(),
     [("scale", "web", (2, 3)), ("start", "web", (1,))], (), ()),
    ("stopped, a restart key changed: the restart starts it",
     {"web": Running(WEB, 2, (1,))}, desired(app("web", 2, cwd="/srv")), frozenset(),
     [("restart", "web", (0, 1))], (), ()),
    ("disabled, new app: slots, stopped",
     {}, desired(WEB, DB), frozenset({"web"}),
     [("add", "web", (0, 1)), ("start", "db", (0,))], ("web",), ()),
    ("disabled, new app without instances: nothing",
     {}, desired(app("web", 0)), frozenset({"web"}), [], (), ()),
    ("disabled, unchanged: nothing",
     {"web": Running(WEB, 2, (0, 1))}, desired(WEB, DB), frozenset({"web"}),
     [("start", "db", (0,))], (), ()),
    ("disabled, a restart key changed: applies at once, nothing starts",
     {"web": Running(WEB, 2, (0, 1))}, desired(app("web", 2, command=("v2",))),
     frozenset({"web"}), [], ("web",), (("web", ("command",)),)),
    ("disabled cluster app changed: no reload",
     {"web": Running(cluster(), 2, (0, 1))}, desired(cluster(cwd="/srv")),
     frozenset({"web"}), [], ("web",), (("web", ("cwd",)),)),
    ("disabled, more instances: their slots, stopped",
     {"web": Running(WEB, 2, (0, 1))}, desired(app("web", 4)), frozenset({"web"}),
     [("add", "web", (2, 3))], ("web",), ()),
    ("disabled, fewer instances: the extra slots go",
     {"web": Running(WEB, 2, (0, 1))}, desired(app("web", 1)), frozenset({"web"}),
     [("scale", "web", (1,))], (), ()),
    ("disabled and removed: stopped like any removed app",
     {"web": Running(WEB, 2, (0, 1))}, desired(DB), frozenset({"web"}),
     [("stop", "web", (0, 1)), ("start", "db", (0,))], (), ()),
    ("a disabled name the config lacks changes nothing",
     {}, desired(DB), frozenset({"gone"}), [("start", "db", (0,))], (), ()),
]


@pytest.mark.parametrize("case", STOPPED_AND_DISABLED, ids=[c[0] for c in STOPPED_AND_DISABLED])
def test_stopped_and_disabled(case: Any) -> None:
    _, running_, apps, off, expected, held, live = case
    p = plan(running_, apps, disabled=off)
    assert [(a.action, a.app, a.instances) for a in p.actions] == expected
    assert p.disabled == held
    assert p.live == live
    # A disabled app never starts: no start, resume, scale-up, restart or reload for it.
    assert not [a for a in p.actions if a.app in off
                and a.kind not in (Kind.ADD, Kind.STOP, Kind.SCALE_DOWN)]


def test_a_disabled_app_in_the_plan_json_and_text() -> None:
    p = plan({"web": Running(WEB, 2, (0, 1))}, desired(app("web", 3, command=("v2",)), DB),
             disabled={"web"})
    assert p.to_json() == {
        "actions": [{"action": "start", "app": "db", "instances": [0], "reason": "new app"}],
        "restart_daemon": [],
        "live": [{"app": "web", "keys": ["command"]}],
        "disabled": ["web"],
    }  # the slot added stopped is no process action of the contract's
    assert p.describe() == [
        "add web:2 (instances 2 -> 3; disabled, stays stopped)",
        "start db:0 (new app)",
        "update web live, no restart (command changed; disabled: nothing starts)",
    ]


def test_starts_go_dependencies_first_and_say_what_they_wait_for() -> None:
    from procsup.model import Condition

    apps = {
        "web": AppSpec(name="web", command=("x",), depends_on=(("db", Condition.READY),
                                                               ("m", Condition.COMPLETED))),
        "m": AppSpec(name="m", command=("x",), depends_on=(("db", Condition.READY),)),
        "db": AppSpec(name="db", command=("x",)),
    }
    p = plan({}, apps)
    assert [a.describe() for a in p.actions] == [
        "start db:0 (new app)",
        "start m:0 (new app; after db (ready))",
        "start web:0 (new app; after db (ready), m (completed))",
    ]
