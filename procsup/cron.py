"""`cron_restart`: a cron expression and the next time it fires (pure; croniter does the work).

The expression has the five classic fields (minute hour day-of-month month day-of-week) with
what croniter accepts in each: `*`, lists, ranges, steps, month and day names (`0 4 * * mon`).
Shortcuts such as `@daily` and a sixth (seconds) field are refused: they are croniter
extensions, not cron, and the field count is the first check users rely on. Times are the
daemon's local time, as in cron; the caller passes the current time (an aware datetime), so
nothing here reads the clock. Uses only what croniter 1.3.5 (Debian 12) has.
"""

from __future__ import annotations

import re
from datetime import datetime

from croniter import croniter

__all__ = ["CronError", "next_fire", "normalize"]

_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
_FIELDS = "minute hour day-of-month month day-of-week"


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
        croniter(text)
    except (ValueError, KeyError) as exc:  # croniter's errors derive from ValueError
        raise CronError(f"invalid cron expression {expr!r}: {_reason(exc)}") from None
    return text


def next_fire(expr: str, after: datetime) -> datetime:
    """The first time strictly after `after` (timezone-aware) at which `expr` fires, in the
    same timezone. `expr` must have passed `normalize`."""
    if after.tzinfo is None:
        raise ValueError("next_fire needs a timezone-aware datetime")
    fire = croniter(expr, after).get_next(datetime)
    assert isinstance(fire, datetime)
    return fire


def _reason(exc: Exception) -> str:
    text = str(exc)
    # croniter says "[61 * * * *] is not acceptable, out of range": drop the echoed expression.
    return re.sub(r"^\[[^\]]*\]\s*", "", text) or type(exc).__name__
