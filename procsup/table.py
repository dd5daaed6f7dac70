"""The engine's vocabulary (layer 3, below `supervisor`): the slot the engine keeps per
instance, the frozen `View` the layers above read, the handles (`Ref`, `Marks`), and the seams
the engine is built on (`Clock`, `ProcessLayer`). Only `supervisor` writes a `Slot`; everything
else sees `View`s. `supervisor` re-exports the names the layers above use.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from procsup import deps, handover, lifecycle, logs
from procsup.lifecycle import Instance, Policy
from procsup.model import LIVE_STATES, AppSpec, InstanceId, State
from procsup.running import RunHandle

#: States in which a `start`/`restart` considers its work done (contract: running or errored;
#: exited and stopped too, as nothing more will happen without another command).
SETTLED = frozenset({State.RUNNING, State.ERRORED, State.EXITED, State.STOPPED})

#: A slot's handle for the layers above: stable for the slot's life, never reused.
Ref = int
#: What a start or restart returns for `started`: per instance, the generation its run ends.
Marks = dict[Ref, int]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the engine needs of time: the asyncio loop is one; tests give a fake."""

    def time(self) -> float: ...
    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable: ...


class ProcessLayer(Protocol):
    """The OS side of runs (`running.Processes`). It reports what runs do later through the
    `report` callback given to its factory."""

    def spawn(self, iid: InstanceId, spec: AppSpec) -> RunHandle | lifecycle.SpawnFailed: ...
    def kill(self, run: RunHandle, sig: int) -> None: ...
    def signal(self, run: RunHandle, sig: int, *, leader: bool = False) -> bool: ...
    def watch_heartbeat(self, run: RunHandle, timeout: float | None) -> None: ...
    def retarget(self, run: RunHandle, spec: AppSpec) -> None: ...
    def close_listeners(
        self, users: Iterable[tuple[AppSpec, int]], specs: Mapping[str, AppSpec]) -> None: ...
    def record(self) -> None: ...
    def run_record(self, run: RunHandle) -> handover.RunRecord: ...
    def adopt(self, iid: InstanceId, spec: AppSpec, rec: handover.RunRecord) -> RunHandle: ...


class Role(str, enum.Enum):
    CURRENT = "current"  # the instance of its id in the table
    REPLACEMENT = "replacement"  # a reload's new process, until it takes over
    OUTGOING = "outgoing"  # replaced (or scaled away and started anew), still stopping


@dataclasses.dataclass(eq=False)
class Slot:
    """One instance: the lifecycle's view of it, and the run it has now. Written here only."""

    ref: Ref
    id: InstanceId
    spec: AppSpec
    policy: Policy
    inst: Instance
    role: Role = Role.CURRENT
    run: RunHandle | None = None
    timer: Cancellable | None = None
    timer_at: float | None = None
    generation: int = 0  # runs spawned so far
    run_spec: AppSpec | None = None  # the definition the current run was started with
    retiring: bool = False  # removed by a plan or `scale`: forgotten once stopped
    note: str | None = None  # why a monitor last replaced or restarted it (shown in status)
    gone: bool = False  # forgotten: no longer in the table
    wait: deps.Wait | None = None  # WAITING for its depends_on, and why (held by the gate)


@dataclasses.dataclass(frozen=True)
class View:
    """One instance at one moment, for status, metrics, events and the plan executor."""

    ref: Ref
    id: InstanceId
    spec: AppSpec
    inst: Instance
    role: Role
    generation: int
    retiring: bool
    note: str | None
    status: str | None  # the last STATUS= of its current run
    log_health: tuple[logs.LogHealth, ...] = ()  # its current run's log files that refused writes
    warning: str | None = None  # what its current run does wrong (a socket it does not use)

    @property
    def state(self) -> State:
        return self.inst.state

    @property
    def pid(self) -> int | None:
        return self.inst.pid

    @property
    def live(self) -> bool:
        return self.inst.state in LIVE_STATES


@dataclasses.dataclass(frozen=True)
class Replacement:
    """How a `replace` ended: `old` (now outgoing, stopping) when the replacement took over;
    else `new` as it was when it was given up (`superseded`: it was live, but the old
    instance stopped or the daemon began to shut down meanwhile) and how long it was waited
    for."""

    new: View
    old: Ref | None
    superseded: bool = False
    waited: float = 0.0
