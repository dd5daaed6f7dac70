"""procsup.units: table-driven parse/format of durations, sizes, signals and modes."""

from __future__ import annotations

import signal

import pytest

from procsup import units


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (0, 0.0),
        (250, 0.25),
        (1000, 1.0),
        (1500, 1.5),
        ("0s", 0.0),
        ("0ms", 0.0),
        ("100ms", 0.1),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.5h", 1800.0),
        (".5s", 0.5),
        ("30s", 30.0),
        (" 5s ", 5.0),
        ("10 s", 10.0),
    ],
)
def test_parse_duration_valid(raw: object, seconds: float) -> None:
    assert units.parse_duration(raw) == seconds


@pytest.mark.parametrize(
    "raw",
    [-1, "5", "-5s", "5 sec", "5S", "s", "", "1d", "1.2.3s", True, False, 1.5, None, [], {}],
)
def test_parse_duration_invalid(raw: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        units.parse_duration(raw)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.1, "100ms"),
        (0.25, "250ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (30.0, "30s"),
        (90.0, "90s"),
        (120.0, "2m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (0.0015, "0.0015s"),
        (1e-7, "0.0000001s"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_format_duration_rejects(bad: float) -> None:
    with pytest.raises(ValueError):
        units.format_duration(bad)


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("1K", 1024),
        ("1k", 1024),
        ("64KB", 64 * 1024),
        ("50M", 50 * 1024**2),
        ("50mb", 50 * 1024**2),
        ("1G", 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        (" 2 M ", 2 * 1024**2),
    ],
)
def test_parse_size_valid(raw: object, size: int) -> None:
    assert units.parse_size(raw) == size


@pytest.mark.parametrize(
    "raw", [-1, "", "M", "50T", "50MiB", "-5M", "5 megabytes", True, 1.5, None, ["1M"]]
)
def test_parse_size_invalid(raw: object) -> None:
    with pytest.raises(ValueError, match="size"):
        units.parse_size(raw)


@pytest.mark.parametrize(
    ("size", "text", "exact"),
    [
        (0, "0B", True),
        (100, "100B", True),
        (1024, "1K", True),
        (512 * 1024, "512K", True),
        (50 * 1024**2, "50M", True),
        (3 * 1024**3, "3G", True),
        (1536, "1.5K", True),
        (24536679, "23.4M", False),
    ],
)
def test_format_size(size: int, text: str, exact: bool) -> None:
    assert units.format_size(size) == text
    assert (units.parse_size(text) == size) is exact


@pytest.mark.parametrize(
    ("raw", "signum"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("TERM", signal.SIGTERM),
        ("term", signal.SIGTERM),
        ("sigusr2", signal.SIGUSR2),
        ("USR2", signal.SIGUSR2),
        (" HUP ", signal.SIGHUP),
        (15, 15),
        ("15", 15),
        (9, 9),
        ("SIGKILL", 9),
    ],
)
def test_parse_signal_valid(raw: object, signum: int) -> None:
    assert units.parse_signal(raw) == signum


@pytest.mark.parametrize(
    "raw", ["SIGFOO", "", "SIG", "SIG_DFL", "SIG_IGN", 0, -15, 999, "999", True, 15.0, None]
)
def test_parse_signal_invalid(raw: object) -> None:
    with pytest.raises(ValueError, match="signal"):
        units.parse_signal(raw)


@pytest.mark.parametrize(
    ("signum", "name"), [(15, "SIGTERM"), (9, "SIGKILL"), (int(signal.SIGUSR1), "SIGUSR1")]
)
def test_signal_name(signum: int, name: str) -> None:
    assert units.signal_name(signum) == name
    assert units.parse_signal(name) == signum


def test_signal_name_of_unnamed_signal_is_its_number() -> None:
    rt = int(signal.SIGRTMIN) + 1
    assert units.signal_name(rt) == str(rt)
    assert units.parse_signal(units.signal_name(rt)) == rt


@pytest.mark.parametrize(
    ("raw", "mode"),
    [("0660", 0o660), ("660", 0o660), ("022", 0o22), ("0", 0), ("0o755", 0o755), ("7777", 0o7777)],
)
def test_parse_mode_valid(raw: object, mode: int) -> None:
    assert units.parse_mode(raw) == mode


@pytest.mark.parametrize("raw", ["0888", "abc", "", "17777", "0x1ff", 660, 0o660, True, None])
def test_parse_mode_invalid(raw: object) -> None:
    with pytest.raises(ValueError, match="mode"):
        units.parse_mode(raw)


@pytest.mark.parametrize(("mode", "text"), [(0o660, "0660"), (0o22, "0022"), (0, "0000")])
def test_format_mode_round_trips(mode: int, text: str) -> None:
    assert units.format_mode(mode) == text
    assert units.parse_mode(text) == mode
