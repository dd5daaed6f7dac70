"""Dependencies between apps: validation, order, and whether a dependency is met (layer 1:
pure, no I/O, no clock).

`depends_on` (contract §3 Dependencies) orders starts and stops; it never couples restarts.
Everything here works on `AppSpec`s and on `Member`s, a small frozen picture of one instance of
a dependency that the engine gives, so that the rules are table-tested without processes:

- `problems(apps)`: what validation rejects (an unknown app with "did you mean", a cycle named
  in full, `healthy` without `health`, `completed` on an always-restarting app);
- `layers(apps)`: the apps in start order, grouped; each group depends only on earlier ones,
  and reversed it is the stop order (dependents before their dependencies);
- `closure(names, apps)`: the apps a `start` of `names` brings up, dependencies first;
- `unmet(spec, members)`: why an instance must still wait (a `Wait`), or None when it may start.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from procsup.model import AppSpec, Condition, RestartPolicy, State
from procsup.units import exit_code_text, exit_text


@dataclass(frozen=True)
class Problem:
    """A validation error of `app`'s `depends_on` (the entry `dependency`, if one)."""

    app: str
    message: str
    dependency: str | None = None


def problems(apps: Mapping[str, AppSpec]) -> list[Problem]:
    """Everything wrong with the `depends_on` of `apps` (in file order), at most one cycle."""
    out: list[Problem] = []
    for name, spec in apps.items():
        for dep, cond in spec.depends_on:
            target = apps.get(dep)
            if dep == name:
                out.append(Problem(name, f"{name!r} cannot depend on itself", dep))
            elif target is None:
                close = difflib.get_close_matches(dep, [n for n in apps if n != name], n=1,
                                                  cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                out.append(Problem(name, f"unknown app {dep!r}{hint}", dep))
            elif cond is Condition.HEALTHY and target.health is None:
                out.append(Problem(
                    name, f"{dep!r} has no health check: \"healthy\" needs `health` in "
                    f"[apps.{dep}] (or use \"ready\")", dep))
            elif cond is Condition.COMPLETED and target.autorestart is RestartPolicy.ALWAYS:
                out.append(Problem(
                    name, f"{dep!r} is restarted whenever it ends (autorestart = true), so it "
                    "never completes: set autorestart = false or \"on-failure\" in "
                    f"[apps.{dep}], or use \"ready\"", dep))
    loop = cycle(apps)
    if loop is not None:
        out.append(Problem(loop[0], "depends_on cycle: " + " -> ".join(loop), loop[1]))
    return out


def cycle(apps: Mapping[str, AppSpec]) -> list[str] | None:
    """One dependency cycle as a path that ends where it began (["web", "api", "web"]), the
    first found in file order; None when there is none. Unknown and self dependencies are
    `problems` of their own and are skipped here."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(apps, WHITE)
    for root in apps:
        if color[root] != WHITE:
            continue
        # Iterative depth-first search: a chain of thousands of apps must not hit the
        # recursion limit.
        path: list[str] = [root]
        todo: list[Iterator[str]] = [iter(_needs(apps, root))]
        color[root] = GREY
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                color[path.pop()] = BLACK
                todo.pop()
                continue
            if color[nxt] == GREY:
                return [*path[path.index(nxt):], nxt]
            if color[nxt] == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                todo.append(iter(_needs(apps, nxt)))
    return None


def _needs(apps: Mapping[str, AppSpec], name: str) -> list[str]:
    """The known dependencies of `name`, other than itself."""
    return [d for d, _ in apps[name].depends_on if d in apps and d != name]


def layers(apps: Mapping[str, AppSpec]) -> list[list[str]]:
    """The apps grouped in start order: the first group depends on nothing, each later one
    only on apps of earlier groups (an app is in the group after its deepest dependency); file
    order within a group. Apps of a cycle (validation refuses one) come last, together."""
    depth: dict[str, int] = {}
    remaining = list(apps)
    while remaining:
        progress = False
        for name in list(remaining):
            needs = _needs(apps, name)
            if all(d in depth for d in needs):
                depth[name] = 1 + max((depth[d] for d in needs), default=-1)
                remaining.remove(name)
                progress = True
        if not progress:  # a cycle: no order exists; keep them rather than lose them
            last = 1 + max(depth.values(), default=-1)
            depth.update(dict.fromkeys(remaining, last))
            break
    out: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for name in apps:
        out[depth[name]].append(name)
    return out


def stop_layers(names: Iterable[str], apps: Mapping[str, AppSpec]) -> list[list[str]]:
    """`names` grouped in stop order: dependents before their dependencies. A name that is not
    in `apps` (a removed app still stopping) has no known dependencies and goes first."""
    wanted = set(names)
    unknown = [n for n in dict.fromkeys(names) if n not in apps]
    ordered = [[n for n in group if n in wanted] for group in reversed(layers(apps))]
    return [g for g in ([*unknown], *ordered) if g]


def closure(names: Iterable[str], apps: Mapping[str, AppSpec]) -> list[str]:
    """`names` and everything they depend on, directly or not, in start order."""
    todo = [n for n in names if n in apps]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_needs(apps, name))
    return [n for group in layers(apps) for n in group if n in seen]


def dependents(name: str, apps: Mapping[str, AppSpec]) -> list[str]:
    """The apps that depend on `name` directly, in file order."""
    return [n for n, spec in apps.items() if any(d == name for d, _ in spec.depends_on)]


@dataclass(frozen=True)
class Member:
    """One instance of a dependency, as far as the gate needs it. `stuck`: it is waiting
    itself, and what it waits for cannot come without a command (see `Wait.hopeless`)."""

    state: State
    exit_code: int | None = None
    health: str | None = None  # None, "unknown", "healthy", "unhealthy"
    reason: str | None = None
    disabled: bool = False
    stuck: bool = False


@dataclass(frozen=True)
class Wait:
    """Why an instance is `waiting`. `hopeless`: no dependency it waits for will get there
    by itself (errored, stopped, disabled, exited for good): the instance waits on, and
    starts as soon as someone starts them, but a `start` that waits for it returns."""

    reason: str
    hopeless: bool = False


#: States after which an instance changes only when a command (or an apply) says so.
_FINAL = frozenset({State.STOPPED, State.ERRORED, State.EXITED})


def unmet(spec: AppSpec, members: Mapping[str, Sequence[Member]]) -> Wait | None:
    """Whether an instance of `spec` may start now: None when every `depends_on` is met, else
    the wait, its reason naming what it waits for ("waiting for db (ready)"), or why it
    cannot come ("waiting for migrate: exited with code 1"). A dependency without instances
    (scaled to 0) is met: there is nothing to wait for."""
    pending: list[str] = []
    blocked: list[str] = []
    for dep, cond in spec.depends_on:
        found = _condition(dep, cond, members.get(dep, ()))
        if found is None:
            continue
        text, hopeless = found
        (blocked if hopeless else pending).append(text)
    if not pending and not blocked:
        return None
    if pending and not blocked:
        return Wait("waiting for " + ", ".join(pending))
    return Wait("waiting for " + "; ".join([*blocked, *pending]), hopeless=not pending)


def _condition(dep: str, cond: Condition, members: Sequence[Member]) -> tuple[str, bool] | None:
    """None when `cond` holds for every member; else what to say and whether it is hopeless."""
    waiting = f"{dep} ({cond.value})"
    for m in members:
        if _holds(cond, m):
            continue
        if m.disabled:
            return f"{dep}: disabled", True
        if m.state is State.WAITING:
            return waiting, m.stuck
        if cond is Condition.COMPLETED:
            if m.state is State.EXITED:  # exited non-zero, else it would hold
                return f"{dep}: {_ended(m.exit_code)}", True
        elif m.state is State.EXITED:
            hint = "; use \"completed\" for a one-shot task" if m.exit_code == 0 else ""
            return f"{dep}: {_ended(m.exit_code)}{hint}", True
        if m.state is State.ERRORED:
            return f"{dep}: errored ({m.reason})" if m.reason else f"{dep}: errored", True
        if m.state is State.STOPPED:
            return f"{dep}: stopped", True
        return waiting, False
    return None


def _ended(code: int | None) -> str:
    return exit_text(None, None) if code is None else exit_code_text(code)


def _holds(cond: Condition, m: Member) -> bool:
    if cond is Condition.STARTED:
        return m.state in (State.STARTING, State.RUNNING) or (
            m.state is State.EXITED and m.exit_code == 0)
    if cond is Condition.READY:
        return m.state is State.RUNNING
    if cond is Condition.HEALTHY:
        return m.state is State.RUNNING and m.health == "healthy"
    return completed(m.state, m.exit_code)


def completed(state: State, exit_code: int | None) -> bool:
    """The `completed` condition for one instance: its last run exited with code 0, and
    nothing runs now (a later `stop` of the finished task, as `stop all` does, leaves it
    completed)."""
    return state in (State.EXITED, State.STOPPED) and exit_code == 0
