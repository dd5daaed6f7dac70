"""`cron_restart`: a cron expression and the next time it fires (pure; croniter does the work).

The expression has the five classic fields (minute hour day-of-month month day-of-week) with
what croniter accepts in each: `*`, lists, ranges, steps, month and day names (`0 4 * * mon`).
Shortcuts such as `@daily` and a sixth (seconds) field are refused: they are croniter
extensions, not cron, and the field count is the first check users rely on. An expression
that can never fire (`0 0 31 2 *`) is refused too.

Times are the daemon's local wall-clock time, as in cron, and are given and returned as naive
datetimes: a fixed UTC offset would put every fire after a DST change an hour off. The caller
passes the current time, so nothing here reads the clock. Uses only what croniter 1.3.5
(Debian 12) has.
"""

from __future__ import annotations

import re
from datetime import datetime

from croniter import croniter

__all__ = ["CronError", "next_fire", "normalize"]

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
        itr = croniter(text, _PROBE)
    except (ValueError, KeyError) as exc:  # croniter's errors derive from ValueError
        raise CronError(f"invalid cron expression {expr!r}: {_reason(exc)}") from None
    try:
        itr.get_next(datetime)  # Feb 31 parses, but croniter gives up searching
    except (ValueError, KeyError):
        raise CronError(f"invalid cron expression {expr!r}: it never fires") from None
    return text


def next_fire(expr: str, after: datetime) -> datetime:
    """The first wall-clock time strictly after `after` at which `expr` fires. Both naive
    (local wall time); `expr` must have passed `normalize`. Raises CronError if croniter finds
    no such time."""
    if after.tzinfo is not None:
        raise ValueError("next_fire takes naive local times")
    try:
        fire = croniter(expr, after).get_next(datetime)
    except (ValueError, KeyError):
        raise CronError(f"cron expression {expr!r} has no time after {after}") from None
    assert isinstance(fire, datetime)
    return fire


def _reason(exc: Exception) -> str:
    text = str(exc)
    # croniter says "[61 * * * *] is not acceptable, out of range": drop the echoed expression.
    return re.sub(r"^\[[^\]]*\]\s*", "", text) or type(exc).__name__
