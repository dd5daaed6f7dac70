"""cron.py: validation and next fire times, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from procsup import cron

PLUS2 = timezone(timedelta(hours=2))


def at(*fields: int, tz: timezone = UTC) -> datetime:
    return datetime(*fields, tzinfo=tz)


@pytest.mark.parametrize(
    ("expr", "normal"),
    [
        ("0 4 * * *", "0 4 * * *"),
        ("  */5   *  * * * ", "*/5 * * * *"),
        ("0 0 1,15 * mon-fri", "0 0 1,15 * mon-fri"),
        ("30 2 * jan,jul sun", "30 2 * jan,jul sun"),
        ("0-10/2 1-3 * * *", "0-10/2 1-3 * * *"),
    ],
)
def test_normalize_accepts(expr: str, normal: str) -> None:
    assert cron.normalize(expr) == normal


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 4 * *", "expected 5 fields"),
        ("0 4 * * * 2026", "expected 5 fields"),
        ("@daily", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("61 * * * *", "out of range"),
        ("0 25 * * *", "out of range"),
        ("0 4 * * funday", "invalid cron expression"),
        ("0 4 $ * *", "expected 5 fields"),
    ],
)
def test_normalize_refuses(expr: str, message: str) -> None:
    with pytest.raises(cron.CronError, match=message) as info:
        cron.normalize(expr)
    assert repr(expr) in str(info.value)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("0 4 * * *", at(2026, 11, 21, 3, 59), at(2026, 11, 21, 4, 0)),
        # Strictly after: at 04:00 exactly the next one is tomorrow's.
        ("0 4 * * *", at(2026, 11, 21, 4, 0), at(2026, 11, 22, 4, 0)),
        ("* * * * *", at(2026, 11, 21, 8, 0, 30), at(2026, 11, 21, 8, 1)),
        ("*/15 * * * *", at(2026, 11, 21, 8, 16), at(2026, 11, 21, 8, 30)),
        # Monday 09:00; 2026-11-21 is a Saturday.
        ("0 9 * * mon", at(2026, 11, 21, 12, 0), at(2026, 11, 23, 9, 0)),
        ("0 0 1 * *", at(2026, 12, 15), at(2027, 1, 1)),
        # Local time of the given timezone, not UTC.
        ("0 4 * * *", at(2026, 11, 21, 5, 0, tz=PLUS2), at(2026, 11, 22, 4, 0, tz=PLUS2)),
    ],
)
def test_next_fire(expr: str, after: datetime, expected: datetime) -> None:
    fire = cron.next_fire(expr, after)
    assert fire == expected
    assert fire.utcoffset() == after.utcoffset()


def test_next_fire_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        cron.next_fire("0 4 * * *", datetime(2026, 11, 21, 4, 0))


def test_replayed_clock_fires_once_per_minute() -> None:
    """Feeding each fire time back as `after` walks the schedule without skipping or repeating."""
    t = at(2026, 11, 21, 23, 58, 10)
    seen = []
    for _ in range(4):
        t = cron.next_fire("* * * * *", t)
        seen.append(t.strftime("%d %H:%M:%S"))
    assert seen == ["21 23:59:00", "22 00:00:00", "22 00:01:00", "22 00:02:00"]
