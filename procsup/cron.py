"""`cron_restart`: a cron expression and the next time it fires (pure; croniter does the work).

The expression has the five classic fields (minute hour day-of-month month day-of-week) with
what croniter accepts in each: `*`, lists, ranges, steps, month and day names (`0 4 * * mon`).
Shortcuts such as `@daily` and a sixth (seconds) field are refused: they are croniter
extensions, not cron, and the field count is the first check users rely on. An expression
that can never fire (`0 0 31 2 *`) is refused too.

Times are the daemon's local wall-clock time, as in cron, and fire times are naive datetimes:
a fixed UTC offset would put every fire after a DST change an hour off. The caller passes the
current time, so nothing here reads the clock. Uses only what croniter 1.3.5 (Debian 12) has.

`Schedule` and `check` follow one app's fire times across changes of the clock. They tell the
clock being *set* (NTP stepping it, an administrator, a VM restored) from daylight saving time
by comparing the wall clock with the monotonic clock: a set clock moves against the monotonic
one, a DST change moves only the local time's UTC offset.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from typing import Any

__all__ = ["STEP", "CronError", "Schedule", "check", "next_fire", "normalize", "schedule", "until"]

_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
_FIELDS = "minute hour day-of-month month day-of-week"
#: Any fixed start works for "does it ever fire" (within croniter's search horizon).
_PROBE = datetime(2000, 1, 1)


class CronError(ValueError):
    """The expression is not a valid five-field cron expression; the message says why."""


def normalize(expr: str) -> str:
    """The expression with its fields separated by single spaces, or CronError."""
    fields = expr.split()
    if len(fields) != 5 or not all(_FIELD_RE.match(f) for f in fields):
        raise CronError(
            f"invalid cron expression {expr!r}: expected 5 fields ({_FIELDS}), "
            'e.g. "0 4 * * *"'
        )
    text = " ".join(fields)
    try:
        itr = _croniter(text, _PROBE)
    except (ValueError, KeyError) as exc:  # croniter's errors derive from ValueError
        raise CronError(f"invalid cron expression {expr!r}: {_reason(exc)}") from None
    try:
        itr.get_next(datetime)  # Feb 31 parses, but croniter gives up searching
    except (ValueError, KeyError):
        raise CronError(f"invalid cron expression {expr!r}: it never fires") from None
    return text


def _croniter(expr: str, start: datetime) -> Any:
    """croniter's iterator, imported at the first use: only a config with `cron_restart`
    pays for croniter and dateutil (50 ms of import and 4.7 MiB here, in the daemon and in
    every config check)."""
    from croniter import croniter

    return croniter(expr, start)


def next_fire(expr: str, after: datetime) -> datetime:
    """The first wall-clock time strictly after `after` at which `expr` fires. Both naive
    (local wall time); `expr` must have passed `normalize`. Raises CronError if croniter finds
    no such time."""
    if after.tzinfo is not None:
        raise ValueError("next_fire takes naive local times")
    try:
        fire = _croniter(expr, after).get_next(datetime)
    except (ValueError, KeyError):
        raise CronError(f"cron expression {expr!r} has no time after {after}") from None
    assert isinstance(fire, datetime)
    return fire


#: Seconds the wall clock may fall behind the monotonic clock between two looks and still count
#: as the same clock: a step back shorter than this (an NTP correction) only delays the next
#: fire by that much and fires nothing again; cron's resolution is a minute anyway.
STEP = 60.0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Where one app's cron stands: the next fire time `fire` (naive local wall time), and the
    clocks at the last look, `wall` (aware, local with its UTC offset) and `mono` (monotonic
    seconds), by which `check` tells a set clock from time passing."""

    expr: str
    fire: datetime
    wall: datetime
    mono: float


def schedule(expr: str, wall: datetime, mono: float) -> Schedule:
    """The schedule of `expr` (normalized) from the clocks now: `wall` the local time with
    its UTC offset (`datetime.now().astimezone()`), `mono` the monotonic clock. Raises
    CronError as `next_fire`."""
    return Schedule(expr, next_fire(expr, _local(wall)), wall, mono)


def check(s: Schedule, wall: datetime, mono: float) -> tuple[datetime | None, Schedule]:
    """Look at the clocks again: the fire time that is due now (None: nothing is), and the
    schedule from here on. Raises CronError as `next_fire`.

    - Due once the local wall time reaches the planned fire time, and then once, however many
      fire times a jump forward (the clock set ahead, a resumed machine) passed over: the next
      is planned after now.
    - The clock set back by more than `STEP`: the plan is made again from the new wall time,
      so the wall clock is followed both ways and the times it shows again fire again (set back
      4 h, an hourly cron fires within the hour, not in 4 h). The plan starts from the earliest
      wall time the clock can have shown since the last look, so a step that lands just before
      a fire time, between two looks, still fires it.
    - DST is not a set clock: the local time changes, time does not. Each local fire time
      fires once: in the hour repeated when DST ends, the times that fired before do not fire
      again (a job at 02:30 runs once that night), and the times skipped when DST starts are
      due at once, at the change, as any jump forward.
    """
    local = _local(wall)
    elapsed = mono - s.mono
    fire = s.fire
    # Timestamps, not `wall - s.wall`: two times of one ZoneInfo zone subtract as naive local
    # times, which would make the end of DST look like the clock set back an hour.
    if elapsed - (wall.timestamp() - s.wall.timestamp()) > STEP:
        # `next_fire` is strictly after: a microsecond earlier, a step landing exactly on a
        # fire time keeps it.
        fire = next_fire(s.expr, local - timedelta(seconds=elapsed, microseconds=1))
    if local < fire:
        return None, Schedule(s.expr, fire, wall, mono)
    return fire, Schedule(s.expr, next_fire(s.expr, local), wall, mono)


def until(s: Schedule, wall: datetime) -> float:
    """Seconds from `wall` (aware local time) to the planned fire time, by the local clock;
    0 when it is due."""
    return max((s.fire - _local(wall)).total_seconds(), 0.0)


def _local(wall: datetime) -> datetime:
    if wall.tzinfo is None:
        raise ValueError("the wall clock must be an aware local time (datetime.now().astimezone())")
    return wall.replace(tzinfo=None)


def _reason(exc: Exception) -> str:
    text = str(exc)
    # croniter says "[61 * * * *] is not acceptable, out of range": drop the echoed expression.
    return re.sub(r"^\[[^\]]*\]\s*", "", text) or type(exc).__name__
