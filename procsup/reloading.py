"""Which way `reload` renews an instance (layer 1: a pure decision, no I/O).

`way(spec, holds)` decides it from the app's definition and what its old instance holds:

- `reload_signal` set: `SIGNAL`, in place (nginx, gunicorn, uwsgi reload on SIGHUP): the signal
  goes to the instance's main process and no process is replaced, whatever the exec mode.
- a cluster app: `ROLLING`, replacement first (procsupd holds its sockets, so the replacement
  accepts on them beside the old instance: no connection is refused).
- a fork app whose readiness is a `tcp://` or `http://` probe: `STOP_START`, since the old
  instance (which listens there) would answer the probe for its replacement.
- a fork app whose old instance holds listening sockets, or whose sockets cannot be read:
  `STOP_START`, since a replacement cannot bind them while it runs.
- any other fork app (a worker that listens on nothing): `ROLLING`.

A `STOP_START` reload is an outage by construction: `notice` words it for the reply and the log,
with the way out (reload_signal, or cluster mode).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from procsup import units
from procsup.model import AppSpec, ExecMode

__all__ = ["How", "Way", "notice", "way"]


class How(str, enum.Enum):
    ROLLING = "rolling"  # a replacement is started and ready before the old instance stops
    STOP_START = "stop-start"  # the old instance stops, then a new one starts: a gap
    SIGNAL = "signal"  # reload_signal to the instance's main process, in place


@dataclasses.dataclass(frozen=True)
class Way:
    how: How
    reason: str | None = None  # why not rolling (for STOP_START), for people


def way(spec: AppSpec, holds: Sequence[str] | None) -> Way:
    """How `reload` renews an instance of `spec` whose old process holds the listening
    addresses `holds` (None: they could not be read). Only fork apps without reload_signal
    look at `holds`."""
    if spec.reload_signal is not None:
        return Way(How.SIGNAL)
    if spec.exec_mode is ExecMode.CLUSTER:
        return Way(How.ROLLING)
    if spec.ready.startswith(("tcp://", "http://")):
        return Way(How.STOP_START, f"its readiness probe {spec.ready} would be answered by "
                                   "the old instance")
    if holds is None:
        return Way(How.STOP_START, "procsupd cannot read which ports its instance holds, and "
                                   "a replacement could not bind them while it runs")
    if holds:
        return Way(How.STOP_START, f"its instance holds {', '.join(holds)}, which a "
                                   "replacement cannot bind while it runs")
    return Way(How.ROLLING)


def notice(app: str, indexes: Sequence[int], spec: AppSpec, chosen: Way) -> str | None:
    """The line `reload` prints and logs for a way other than rolling (None for rolling):
    `web: restarted stop-then-start (its instance holds 127.0.0.1:8081, ...)`."""
    who = app if spec.instances <= 1 else ", ".join(f"{app}:{i}" for i in indexes)
    if chosen.how is How.STOP_START:
        return (f"{who}: restarted stop-then-start, not served meanwhile ({chosen.reason}; set "
                "reload_signal for an in-place reload, or exec_mode = \"cluster\")")
    if chosen.how is How.SIGNAL:
        sig = units.signal_name(spec.reload_signal or 0)
        return f"{who}: reloaded in place: sent {sig} (reload_signal)"
    return None


def settle(spec: AppSpec) -> float:
    """How long every instance must stay running after its reload_signal for the reload to
    succeed: min_uptime, at least 1 s (a program that dies on the signal, or on the config it
    re-read, does so within that)."""
    return max(1.0, spec.min_uptime)
