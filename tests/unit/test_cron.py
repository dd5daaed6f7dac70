"""cron.py: validation and next fire times, with an injected clock."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from procsup import cron


def at(*fields: int) -> datetime:
    return datetime(*fields)


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
        ("0 0 31 2 *", "never fires"),
        ("0 0 30 2 *", "never fires"),
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
    ],
)
def test_next_fire(expr: str, after: datetime, expected: datetime) -> None:
    assert cron.next_fire(expr, after) == expected


def test_next_fire_takes_naive_local_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        cron.next_fire("0 4 * * *", datetime.now().astimezone())


@pytest.fixture
def berlin() -> Iterator[None]:
    """The process's local zone set to one with DST (restored afterwards)."""
    if not os.path.exists("/usr/share/zoneinfo/Europe/Berlin"):
        pytest.skip("no time zone data (Debian: tzdata)")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("berlin")
@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # Spring forward (2026-03-29 02:00 -> 03:00) and fall back (2026-10-25 03:00 -> 02:00):
        # the fire stays at 04:00 on the wall clock, and so at the UTC offset of that day.
        (at(2026, 3, 28, 23, 0), at(2026, 3, 29, 4, 0)),
        (at(2026, 10, 24, 23, 0), at(2026, 10, 25, 4, 0)),
    ],
)
def test_dst_changes_keep_the_wall_clock_time(after: datetime, expected: datetime) -> None:
    fire = cron.next_fire("0 4 * * *", after)
    assert fire == expected
    assert fire.astimezone().utcoffset() != after.astimezone().utcoffset()


def test_replayed_clock_fires_once_per_minute() -> None:
    """Feeding each fire time back as `after` walks the schedule without skipping or repeating."""
    t = at(2026, 11, 21, 23, 58, 10)
    seen = []
    for _ in range(4):
        t = cron.next_fire("* * * * *", t)
        seen.append(t.strftime("%d %H:%M:%S"))
    assert seen == ["21 23:59:00", "22 00:00:00", "22 00:01:00", "22 00:02:00"]
