"""cron.py: validation and next fire times, with an injected clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

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


# -- following the clock: cron.check with both clocks injected --------------------------------

BERLIN = ZoneInfo("Europe/Berlin") if os.path.exists("/usr/share/zoneinfo/Europe/Berlin") else None
#: How often the monitors look at least (monitors.CRON_RECHECK).
RECHECK = 60.0


def simulate(
    expr: str,
    start: datetime,
    hours: float,
    steps: Mapping[float, timedelta] = {},
    zone: tzinfo | None = UTC,
) -> list[str]:
    """Walk the monitors' looks for `hours` of monotonic time: each look sleeps until the
    planned fire time by the local clock, at most RECHECK, then calls `check`. The clock reads
    `start` (UTC) at monotonic 0 and is set by `steps[t]` at monotonic second t; `zone` gives
    the local time. Returns the fire times, "HH:MM" (local), in order; "HH:MM@HH:MM" when the
    look that found it due came a minute or more after it (the clock jumped over it)."""
    def wall(mono: float) -> datetime:
        moved = sum((d for t, d in steps.items() if t <= mono), timedelta())
        return (start + timedelta(seconds=mono) + moved).astimezone(zone)

    mono = 0.0
    plan = cron.schedule(expr, wall(mono), mono)
    fired = []
    while mono < hours * 3600:
        mono += max(min(cron.until(plan, plan.wall), RECHECK), 0.001)
        # A step between two looks is seen at the next look, as with the real timer.
        fire, plan = cron.check(plan, wall(mono), mono)
        if fire is not None:
            now = plan.wall.replace(tzinfo=None)
            late = "" if now - fire < timedelta(minutes=1) else now.strftime("@%H:%M")
            fired.append(fire.strftime("%H:%M") + late)
    return fired


def utc(*fields: int) -> datetime:
    return datetime(*fields).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "start", "hours", "steps", "expected"),
    [
        # A steady clock: each fire time once.
        ("0 * * * *", utc(2026, 11, 21, 8, 30), 3, {}, ["09:00", "10:00", "11:00"]),
        # Set back 4 h at 10:59:30 (issue 11): the hourly fires follow the clock at once
        # (07:00 within the hour), where the old plan waited for 11:00 and skipped four.
        ("0 * * * *", utc(2026, 11, 21, 10, 30), 3,
         {1770.0: -timedelta(hours=4)}, ["07:00", "08:00", "09:00"]),
        # Set back just after a fire: the time that fired, shown again, fires again.
        ("0 * * * *", utc(2026, 11, 21, 9, 59), 1.5,
         {61.0: -timedelta(minutes=5)}, ["10:00", "10:00", "11:00"]),
        # A step that lands just before a fire time, between two looks, does not miss it.
        ("0 * * * *", utc(2026, 11, 21, 10, 0, 30), 1.05,
         {3500.0: -timedelta(minutes=59)}, ["10:00"]),
        # NTP's small corrections: back 30 s after a fire fires nothing again.
        ("0 * * * *", utc(2026, 11, 21, 9, 59, 50), 1.5,
         {11.0: -timedelta(seconds=30)}, ["10:00", "11:00"]),
        # Set ahead past four fire times (or a resumed machine): one restart, then on time.
        ("0 * * * *", utc(2026, 11, 21, 8, 30), 2.5,
         {600.0: timedelta(hours=4)}, ["09:00@12:40", "13:00", "14:00", "15:00"]),
        # Set ahead within one interval: the skipped fire time is due at once.
        ("*/15 * * * *", utc(2026, 11, 21, 8, 1), 0.5,
         {60.0: timedelta(minutes=20)}, ["08:15@08:22", "08:30", "08:45"]),
    ],
)
def test_check_follows_a_set_clock_both_ways(
    expr: str, start: datetime, hours: float, steps: dict[float, timedelta],
    expected: list[str],
) -> None:
    assert simulate(expr, start, hours, steps) == expected


@pytest.mark.skipif(BERLIN is None, reason="no time zone data (Debian: tzdata)")
@pytest.mark.parametrize(
    ("expr", "start", "hours", "expected"),
    [
        # DST ends 2026-10-25 03:00 CEST -> 02:00 CET: the local hour 02:xx is shown twice. No
        # clock was set, so each local fire time fires once: the 02:30 job runs once that night.
        ("30 2 * * *", utc(2026, 10, 24, 23, 0), 5, ["02:30"]),
        ("0 * * * *", utc(2026, 10, 24, 23, 30), 4, ["02:00", "03:00", "04:00"]),
        # DST starts 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 never shows; it is due at the
        # change (one restart), and 04:00 stays 04:00 on the wall clock.
        ("30 2 * * *", utc(2026, 3, 28, 23, 0), 4, ["02:30@03:00"]),
        ("0 4 * * *", utc(2026, 3, 28, 23, 0), 4, ["04:00"]),
        ("0 * * * *", utc(2026, 3, 28, 23, 30), 3, ["01:00", "02:00@03:00", "04:00"]),
    ],
)
def test_check_keeps_local_times_across_dst(
    expr: str, start: datetime, hours: float, expected: list[str],
) -> None:
    assert simulate(expr, start, hours, zone=BERLIN) == expected


def test_check_across_dst_with_fixed_offsets() -> None:
    """What `datetime.now().astimezone()` gives: a fixed UTC offset that changes at DST. The
    end of DST is not the clock set back an hour: 03:00 CET fires, not 02:00 CET again."""
    plan = cron.schedule("0 * * * *", datetime(2026, 10, 25, 2, 59, 30, tzinfo=CEST), 0.0)
    fire, plan = cron.check(plan, datetime(2026, 10, 25, 2, 0, 30, tzinfo=CET), 60.0)
    assert fire is None
    assert plan.fire == at(2026, 10, 25, 3, 0)


def test_check_takes_aware_times() -> None:
    with pytest.raises(ValueError, match="aware"):
        cron.schedule("0 4 * * *", datetime(2026, 11, 21, 8, 0), 0.0)


CET = timezone(timedelta(hours=1), "CET")
CEST = timezone(timedelta(hours=2), "CEST")


def test_croniter_is_imported_only_for_a_cron_restart(tmp_path: Path) -> None:
    """The daemon's modules and a config without `cron_restart` leave croniter (and dateutil)
    unloaded; the first cron expression loads it."""
    (tmp_path / "plain.toml").write_text('[apps.a]\ncommand = "sleep 1"\n')
    (tmp_path / "cron.toml").write_text(
        '[apps.a]\ncommand = "sleep 1"\ncron_restart = "0 4 * * *"\n')
    probe = (
        "import sys, procsup.daemon, procsup.config as c\n"
        f"c.load({str(tmp_path / 'plain.toml')!r}, uid=0, environ={{}})\n"
        "print('croniter' in sys.modules, 'dateutil' in sys.modules)\n"
        f"c.load({str(tmp_path / 'cron.toml')!r}, uid=0, environ={{}})\n"
        "print('croniter' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["False", "False", "True"]
