"""procsup.drops: the bookkeeping of refused log writes, as tables (no files, no clock)."""

from __future__ import annotations

import re

import pytest

from procsup.drops import Ledger, LogHealth, clock_text

T0 = 1_800_000_000.0  # a wall-clock time in seconds
ENOSPC = "cannot write: No space left on device"


def test_a_clean_ledger_shows_nothing() -> None:
    ledger = Ledger()
    assert ledger.clean
    assert ledger.health("/l/app.log") is None
    assert ledger.marker() == b""


def test_each_kind_of_failure_is_reported_once_per_episode() -> None:
    ledger = Ledger()
    reports = [ledger.fail(e, T0 + i) for i, e in enumerate(
        [ENOSPC, ENOSPC, "cannot open: No such file or directory", ENOSPC])]
    assert reports == [True, False, True, False]
    assert ledger.episode is not None
    assert ledger.episode.cause == ENOSPC  # the marker names what started it
    assert ledger.episode.error == ENOSPC  # status shows the latest
    assert ledger.episode.since == T0
    ledger.resume("/l/app.log")
    assert ledger.fail(ENOSPC, T0 + 9)  # a new episode reports again


@pytest.mark.parametrize(
    ("chunks", "lines", "size"),
    [
        ([b"one\n"], 1, 4),
        ([b"one\ntwo\n", b"three\n"], 3, 14),
        ([memoryview(b"a\nb\n")[2:]], 1, 2),  # a view, as the sink hands the unwritten rest
        ([b"no newline: the rest of a cut line"], 0, 34),
        ([b""], 0, 0),
    ],
)
def test_drop_counts_lines_and_bytes(chunks: list[bytes], lines: int, size: int) -> None:
    ledger = Ledger()
    ledger.fail(ENOSPC, T0)
    for chunk in chunks:
        ledger.drop(chunk, T0 + 1)
    assert (ledger.lines, ledger.size) == (lines, size)
    assert ledger.health("p") == LogHealth("p", ENOSPC, T0, lines, size)


def test_totals_outlive_the_episode() -> None:
    ledger = Ledger()
    ledger.fail(ENOSPC, T0)
    ledger.drop(b"x\ny\n", T0)
    message = ledger.resume("/l/app.log")
    assert message == (f"logging to /l/app.log resumed; 2 lines (4 bytes) were dropped since "
                       f"{clock_text(T0)}")
    assert ledger.health("/l/app.log") == LogHealth("/l/app.log", None, None, 2, 4)
    assert not ledger.clean  # the registry keeps it for the path's next sink
    ledger.fail(ENOSPC, T0 + 60)
    ledger.drop(b"z\n", T0 + 60)
    assert ledger.health("p") == LogHealth("p", ENOSPC, T0 + 60, 3, 6)
    assert ledger.marker().startswith(b"[procsup] 1 lines (2 bytes) dropped")


@pytest.mark.parametrize(
    ("cuts", "prefix", "starts"),
    [
        ([None], b"", b"[procsup] "),
        ([True], b"", b"\n[procsup] "),  # the file ends inside a line: end it first
        ([True, False], b"", b"[procsup] "),  # a later write ended on a line boundary
        ([True, None], b"", b"\n[procsup] "),  # nothing written since the cut
        ([None], b"2026-12-02 07:00:00 ", b"2026-12-02 07:00:00 [procsup] "),
        ([True], b"D ", b"\nD [procsup] "),
    ],
)
def test_marker_line(cuts: list[bool | None], prefix: bytes, starts: bytes) -> None:
    ledger = Ledger()
    ledger.fail(ENOSPC, T0)
    for cut in cuts:
        ledger.drop(b"lost line\n", T0, cut=cut)
    marker = ledger.marker(prefix)
    assert marker.startswith(starts)
    assert marker.endswith(b"\n") and marker.count(b"\n") == marker.startswith(b"\n") + 1
    n = len(cuts)
    assert re.search(rb"\] %d lines \(%d bytes\) dropped since .*: " % (n, 10 * n)
                     + ENOSPC.encode() + rb"\n$", marker)


def test_a_drop_without_a_failure_still_opens_an_episode() -> None:
    # A sink whose file is gone without an error of its own (closed under it) still says so.
    ledger = Ledger()
    ledger.drop(b"x\n", T0)
    health = ledger.health("p")
    assert health is not None and health.error == "the log file is not open"
    assert health.dropped_lines == 1


def test_health_as_json() -> None:
    assert LogHealth("/l/a.log", ENOSPC, T0, 3, 30).to_json() == {
        "path": "/l/a.log", "error": ENOSPC, "since": clock_text(T0),
        "dropped_lines": 3, "dropped_bytes": 30,
    }
    assert LogHealth("/l/a.log", None, None, 3, 30).to_json()["since"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", clock_text(T0))
