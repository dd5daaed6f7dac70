"""A full disk under a running app's log file: the drops are counted and shown in `status`, the
daemon log says so once, the app is not disturbed, and logging resumes by itself with a marker
line where the gap is. Root only: the disk is a small tmpfs mounted for the test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..tinyfs import NOT_ROOT, WHY, fill, tiny_tmpfs
from .conftest import Daemon, app_cmd, wait_for

pytestmark = [pytest.mark.root, pytest.mark.skipif(NOT_ROOT, reason=WHY)]

LINE = re.compile(r"n=(\d{6}) x{90}")  # whole: 100 bytes with the newline
MARKER = re.compile(r"\[procsup\] (\d+) lines \((\d+) bytes\) dropped since (\S+): "
                    r"cannot write: No space left on device")


def _after_the_gap(log: Path) -> str | None:
    """The file once it has the marker line and a whole line after it."""
    text = log.read_text()
    marker = MARKER.search(text)
    if marker is None or not any(LINE.fullmatch(ln)
                                 for ln in text[marker.end():].splitlines()):
        return None
    return text


def _log_entry(daemon: Daemon, path: Path) -> dict[str, object] | None:
    rows = daemon.instances("c")
    assert len(rows) == 1
    return next((e for e in rows[0]["log_errors"] if e["path"] == str(path)), None)


def test_a_full_disk_is_counted_shown_and_survived(daemon: Daemon, tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "disk", "256k") as disk:
        log = disk / "c.log"
        daemon.write(f"""
            [apps.c]
            command = {app_cmd("counter", "0.005", "100")}
            out_file = "{log}"
            error_file = false
            """)
        daemon.start()
        pid = daemon.wait_states("c", "running", 1)[0]["pid"]
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 10, "the first lines")
        assert _log_entry(daemon, log) is None  # nothing refused yet

        filler = fill(disk)
        entry = wait_for(lambda: (e := _log_entry(daemon, log)) and e["dropped_lines"] >= 100
                         and e, 20, "100 lines dropped")  # 100 writes, at least 100 chunks
        assert entry["error"] == "cannot write: No space left on device"
        # Each dropped line is a whole 100-byte line but the first, which may be the rest of
        # the line the disk filled up in.
        assert isinstance(entry["since"], str)
        assert entry["dropped_bytes"] > (entry["dropped_lines"] - 1) * 100, entry
        human = daemon.cli("status")
        assert human.returncode == 0
        shown = (rf"c:0: log file {re.escape(str(log))}: cannot write: No space left on device "
                 r"\(since \S+; \d+ lines, \S+ dropped\)")
        assert re.search(shown, human.stdout), human.stdout
        about = [ln for ln in daemon.daemon_log().splitlines() if str(log) in ln]
        assert len(about) == 1 and "ERROR" in about[0], about  # one line, not one per chunk
        row = daemon.instances("c")[0]
        assert (row["state"], row["pid"], row["restarts"]) == ("running", pid, 0)

        filler.unlink()
        entry = wait_for(lambda: (e := _log_entry(daemon, log)) and e["error"] is None and e,
                         10, "the error to clear")
        assert entry["since"] is None and entry["dropped_lines"] >= 100  # the total stays
        assert "log file" not in daemon.cli("status").stdout
        text = wait_for(lambda: _after_the_gap(log), 10, "lines after the marker")
        resumed = wait_for(lambda: [ln for ln in daemon.daemon_log().splitlines()
                                    if f"logging to {log} resumed" in ln], 10, "the resume line")
        row = daemon.instances("c")[0]
        assert (row["state"], row["pid"], row["restarts"]) == ("running", pid, 0)
        daemon.stop_daemon()

    marker = MARKER.search(text)
    assert marker is not None
    dropped = int(marker[1])
    assert dropped == entry["dropped_lines"] and int(marker[2]) == entry["dropped_bytes"]
    assert len(resumed) == 1 and f"{dropped} lines ({marker[2]} bytes) were dropped" in resumed[0]
    # Exactly the lines the marker counts are missing: the app went on writing all along.
    before = text[: marker.start()].splitlines()
    whole = [int(m[1]) for ln in before if (m := LINE.fullmatch(ln))]
    assert whole == list(range(len(whole)))
    assert len(before) - len(whole) <= 1  # at most the line the full disk cut short
    after = [int(m[1]) for ln in text[marker.end():].splitlines() if (m := LINE.fullmatch(ln))]
    assert len(after) == len(text[marker.end():].splitlines()) - 1  # (the marker's own end)
    assert after[0] == len(whole) + dropped, text[marker.start() - 300: marker.end() + 300]
    assert after == list(range(after[0], after[0] + len(after)))
