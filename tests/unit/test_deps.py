"""deps.py: validation, order and the gate, as tables (no processes)."""

from __future__ import annotations

import pytest

from procsup import deps
from procsup.deps import Member, Wait
from procsup.model import AppSpec, Condition, RestartPolicy, State

R, S, H, C = Condition.READY, Condition.STARTED, Condition.HEALTHY, Condition.COMPLETED


def app(name: str, *needs: tuple[str, Condition], health: str | None = None,
        autorestart: RestartPolicy = RestartPolicy.ALWAYS) -> AppSpec:
    return AppSpec(name=name, command=("x",), depends_on=tuple(needs), health=health,
                   autorestart=autorestart)


def apps(*specs: AppSpec) -> dict[str, AppSpec]:
    return {s.name: s for s in specs}


STACK = apps(
    app("worker", ("web", R)),
    app("web", ("db", H), ("migrate", C)),
    app("migrate", ("db", R), autorestart=RestartPolicy.NEVER),
    app("db", health="tcp://127.0.0.1:5432"),
    app("cache"),
)


@pytest.mark.parametrize(("specs", "expected"), [
    (STACK, []),
    (apps(app("web", ("dbb", R)), app("db")),
     [("web", "unknown app 'dbb' (did you mean 'db'?)", "dbb")]),
    (apps(app("web", ("zzz", R))), [("web", "unknown app 'zzz'", "zzz")]),
    (apps(app("web", ("web", R))), [("web", "'web' cannot depend on itself", "web")]),
    (apps(app("web", ("db", H)), app("db")),
     [("web", "'db' has no health check: \"healthy\" needs `health` in [apps.db] "
       "(or use \"ready\")", "db")]),
    (apps(app("web", ("m", C)), app("m")),
     [("web", "'m' is restarted whenever it ends (autorestart = true), so it never completes: "
       "set autorestart = false or \"on-failure\" in [apps.m], or use \"ready\"", "m")]),
    (apps(app("web", ("m", C)), app("m", autorestart=RestartPolicy.ON_FAILURE)), []),
    (apps(app("web", ("api", R)), app("api", ("web", R))),
     [("web", "depends_on cycle: web -> api -> web", "api")]),
    (apps(app("a", ("b", R)), app("b", ("c", S)), app("c", ("b", R))),
     [("b", "depends_on cycle: b -> c -> b", "c")]),
])
def test_problems(specs: dict[str, AppSpec], expected: list[tuple[str, str, str]]) -> None:
    assert [(p.app, p.message, p.dependency) for p in deps.problems(specs)] == expected


def test_a_long_chain_has_no_recursion_limit() -> None:
    chain = apps(*(app(f"a{i}", *((f"a{i - 1}", R),) if i else ()) for i in range(5000)))
    assert deps.cycle(chain) is None
    assert len(deps.layers(chain)) == 5000
    looped = dict(chain, a0=app("a0", ("a4999", R)))
    loop = deps.cycle(looped)
    assert loop is not None and loop[0] == loop[-1] and len(loop) == 5001


def test_layers_stop_layers_closure_dependents() -> None:
    assert deps.layers(STACK) == [["db", "cache"], ["migrate"], ["web"], ["worker"]]
    assert deps.stop_layers(["db", "web", "worker", "cache", "gone"], STACK) == [
        ["gone"], ["worker"], ["web"], ["db", "cache"]]
    assert deps.closure(["worker"], STACK) == ["db", "migrate", "web", "worker"]
    assert deps.closure(["migrate", "cache"], STACK) == ["db", "cache", "migrate"]
    assert deps.dependents("db", STACK) == ["web", "migrate"]


RUN = Member(State.RUNNING)


@pytest.mark.parametrize(("needs", "members", "expected"), [
    # met
    ((("db", R),), {"db": [RUN, RUN]}, None),
    ((("db", R),), {"db": []}, None),  # scaled to 0: nothing to wait for
    ((("db", S),), {"db": [Member(State.STARTING)]}, None),
    ((("db", S),), {"db": [Member(State.EXITED, exit_code=0)]}, None),
    ((("db", H),), {"db": [Member(State.RUNNING, health="healthy")]}, None),
    ((("m", C),), {"m": [Member(State.EXITED, exit_code=0)]}, None),
    ((("m", C),), {"m": [Member(State.STOPPED, exit_code=0)]}, None),  # stopped once done
    ((("m", C),), {"m": [Member(State.STOPPED, exit_code=-15)]},
     Wait("waiting for m: stopped", hopeless=True)),
    # waiting, with hope
    ((("db", R),), {"db": [RUN, Member(State.STARTING)]}, Wait("waiting for db (ready)")),
    ((("db", R),), {"db": [Member(State.BACKOFF, reason="restarting in 1s")]},
     Wait("waiting for db (ready)")),
    ((("db", H),), {"db": [Member(State.RUNNING, health="unknown")]},
     Wait("waiting for db (healthy)")),
    ((("db", H),), {"db": [Member(State.RUNNING, health="unhealthy")]},
     Wait("waiting for db (healthy)")),
    ((("m", C),), {"m": [RUN]}, Wait("waiting for m (completed)")),
    ((("db", R), ("m", C)), {"db": [Member(State.STARTING)], "m": [RUN]},
     Wait("waiting for db (ready), m (completed)")),
    ((("db", R),), {"db": [Member(State.WAITING)]}, Wait("waiting for db (ready)")),
    # hopeless: only a command brings it
    ((("m", C),), {"m": [Member(State.EXITED, exit_code=1)]},
     Wait("waiting for m: exited with code 1", hopeless=True)),
    ((("m", C),), {"m": [Member(State.EXITED, exit_code=-9)]},
     Wait("waiting for m: killed by SIGKILL", hopeless=True)),
    ((("db", R),), {"db": [Member(State.EXITED, exit_code=0)]},
     Wait('waiting for db: exited with code 0; use "completed" for a one-shot task',
          hopeless=True)),
    ((("db", R),), {"db": [Member(State.ERRORED, reason="cannot execute x")]},
     Wait("waiting for db: errored (cannot execute x)", hopeless=True)),
    ((("db", R),), {"db": [Member(State.STOPPED)]}, Wait("waiting for db: stopped", True)),
    ((("db", R),), {"db": [Member(State.STOPPED, disabled=True)]},
     Wait("waiting for db: disabled", True)),
    ((("db", R),), {"db": [Member(State.WAITING, stuck=True)]},
     Wait("waiting for db (ready)", hopeless=True)),
    # one hopeless among pending ones: there is still hope; the blocked one is named first
    ((("db", R), ("m", C)), {"db": [Member(State.STARTING)], "m": [Member(State.ERRORED)]},
     Wait("waiting for m: errored; db (ready)")),
])
def test_unmet(needs: tuple[tuple[str, Condition], ...], members: dict[str, list[Member]],
               expected: Wait | None) -> None:
    assert deps.unmet(app("web", *needs), members) == expected
