"""procsup.watch.AppWatch: an app's watched files, with real files and a real observer."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from procsup.watch import AppWatch, _counts, _ignored, _Watched

from ..inotify import watched

DEFAULT_IGNORE = ("*.log", ".git", "__pycache__", "node_modules")
SETTLE = 0.3
#: inotify events take ~100 ms; watchdog 2.x holds them 0.5 s to pair renames.
DEADLINE = 5.0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.thread = threading.get_ident()
        self.foreign = 0

    def __call__(self, key: str, path: str) -> None:
        if threading.get_ident() != self.thread:
            self.foreign += 1
        self.calls.append((key, path, time.monotonic()))

    async def wait_calls(self, n: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(self.calls) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.calls)} change(s) reported, wanted {n}")
            await asyncio.sleep(0.01)

    async def quiet(self, seconds: float) -> None:
        """Let `seconds` pass (events that would come, come): for asserting that none did."""
        await asyncio.sleep(seconds)


Scenario = Callable[[AppWatch, Recorder], Awaitable[None]]


def run(scenario: Scenario) -> Recorder:
    recorder = Recorder()

    async def main() -> None:
        aw = AppWatch(asyncio.get_running_loop(), recorder, settle=SETTLE)
        try:
            await scenario(aw, recorder)
        finally:
            aw.close()

    asyncio.run(main())
    assert recorder.foreign == 0, "on_change ran on a foreign thread"
    return recorder


async def settled(aw: AppWatch, key: str) -> None:
    """Until the watches of `key` are in place (they are added on a worker thread)."""
    deadline = time.monotonic() + DEADLINE
    while key not in aw._scheduled:
        if time.monotonic() > deadline:
            raise AssertionError("watches not scheduled")
        await asyncio.sleep(0.01)


# -- pure filtering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "patterns", "ignored"),
    [
        ("app.py", DEFAULT_IGNORE, False),
        ("server.log", DEFAULT_IGNORE, True),
        ("logs/x/server.log", DEFAULT_IGNORE, True),
        (".git/index", DEFAULT_IGNORE, True),
        (".git", DEFAULT_IGNORE, True),
        ("src/__pycache__/m.cpython-311.pyc", DEFAULT_IGNORE, True),
        ("node_modules/left-pad/index.js", DEFAULT_IGNORE, True),
        ("src/node_modules_notes.txt", DEFAULT_IGNORE, False),
        ("static/site.css", ("static/*.css",), True),
        ("static/img/a.css", ("static/*.css",), False),  # fnmatch's * spans "/", but not here:
        ("other/static/site.css", ("static/*.css",), False),  # anchored at the root
        ("build/out/a.o", ("build",), True),
        ("build/out/a.o", ("/build/",), True),
        # A leading or trailing "/" is dropped (not .gitignore's anchoring or directories-only,
        # which is why pathspec is not used): "/.git/" names .git at any depth, "build/" a file
        # named build too.
        ("sub/.git/index", ("/.git/",), True),
        ("build", ("build/",), True),
        ("tmp/a", ("tmp/*",), True),
        ("src/tmp.py", ("tmp",), False),
        ("data.json", (), False),
    ],
)
def test_ignored(rel: str, patterns: tuple[str, ...], ignored: bool) -> None:
    assert _ignored(rel, patterns) is ignored


def test_counts_skips_own_logs_and_paths_outside() -> None:
    spec = _Watched(("/srv/app",), DEFAULT_IGNORE, frozenset({"/srv/app/out.txt"}))
    assert _counts("/srv/app/main.py", spec)
    assert not _counts("/srv/app/out.txt", spec)  # the app's own log, whatever its name
    assert not _counts("/srv/app/out.txt.3", spec)  # ... and its rotated files
    assert _counts("/srv/app/out.txt.old", spec)
    assert not _counts("/srv/application/main.py", spec)  # a sibling sharing a prefix
    assert not _counts("/srv/main.py", spec)
    assert _counts("/srv/app", spec)  # the root itself (deleted, moved)


def test_counts_skips_the_temporary_files_own_files_are_written_through() -> None:
    record = "/srv/app/state/instances.json"
    spec = _Watched(("/srv/app",), DEFAULT_IGNORE, frozenset({record}))
    assert not _counts(record, spec)
    assert not _counts("/srv/app/state/.instances.json.jti0p53v.tmp", spec)  # mkstemp's name
    assert _counts("/srv/app/state/.instances.json.tmp", spec)  # no random part: not ours
    assert _counts("/srv/app/state/.other.json.x1.tmp", spec)
    assert _counts("/srv/app/.instances.json.x1.tmp", spec)  # another directory
    assert _counts("/srv/app/state/instances.json.x1.tmp", spec)  # not hidden: not ours


# -- real files ----------------------------------------------------------------------------------


def test_a_burst_of_200_writes_reports_once_after_it_settles(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()

    async def scenario(aw: AppWatch, rec: Recorder) -> None:
        aw.watch("web", [str(tmp_path)], DEFAULT_IGNORE, [])
        await settled(aw, "web")
        for i in range(200):
            (tmp_path / "src" / f"m{i % 20}.py").write_text(f"v = {i}\n")
            if i % 50 == 0:
                await asyncio.sleep(0.05)  # a burst with small pauses, shorter than settle
        last = time.monotonic()
        await rec.wait_calls(1)
        await rec.quiet(SETTLE + 0.7)
        assert len(rec.calls) == 1, rec.calls
        key, path, when = rec.calls[0]
        assert key == "web" and path.startswith(str(tmp_path / "src"))
        assert SETTLE * 0.9 <= when - last < 2.0

    run(scenario)


def test_ignored_paths_and_own_logs_report_nothing(tmp_path: Path) -> None:
    for d in (".git", "node_modules/pkg", "__pycache__", "logs"):
        (tmp_path / d).mkdir(parents=True)
    own = tmp_path / "logs" / "web-out.txt"

    async def scenario(aw: AppWatch, rec: Recorder) -> None:
        aw.watch("web", [str(tmp_path)], DEFAULT_IGNORE, [str(own)])
        await settled(aw, "web")
        (tmp_path / ".git" / "index").write_text("x")
        (tmp_path / "node_modules" / "pkg" / "index.js").write_text("x")
        (tmp_path / "__pycache__" / "m.pyc").write_bytes(b"x")
        (tmp_path / "app.log").write_text("x")
        own.write_text("line\n")
        os.rename(own, str(own) + ".1")  # rotation of the app's own log
        await rec.quiet(SETTLE + 1.0)
        assert rec.calls == []
        (tmp_path / "main.py").write_text("x")  # and a real change still counts
        await rec.wait_calls(1)
        assert rec.calls[0][1] == str(tmp_path / "main.py")

    run(scenario)


def test_new_subdirectories_and_file_roots(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    single = tmp_path / "settings.toml"
    single.write_text("a = 1\n")

    async def scenario(aw: AppWatch, rec: Recorder) -> None:
        missing = aw.watch(
            "api", [str(tmp_path / "tree"), str(single), str(tmp_path / "nope")], (), []
        )
        assert missing == [str(tmp_path / "nope")]
        await settled(aw, "api")
        (tmp_path / "sibling.toml").write_text("x")  # beside the watched file: not watched
        await rec.quiet(SETTLE + 0.7)
        assert rec.calls == []
        single.write_text("a = 2\n")
        await rec.wait_calls(1)
        deep = tmp_path / "tree" / "a" / "b"
        deep.mkdir(parents=True)
        await rec.wait_calls(2)
        await watched(deep.parent, deep)  # watchdog adds the new directories' watches
        (deep / "c.txt").write_text("x")
        await rec.wait_calls(3)
        assert rec.calls[2][1] == str(deep / "c.txt")

    run(scenario)


def test_unwatch_and_rewatch(tmp_path: Path) -> None:
    async def scenario(aw: AppWatch, rec: Recorder) -> None:
        aw.watch("a", [str(tmp_path)], (), [])
        aw.watch("b", [str(tmp_path)], ("*.tmp",), [])
        await settled(aw, "a")
        await settled(aw, "b")
        (tmp_path / "x.tmp").write_text("x")
        await rec.wait_calls(1)
        await rec.quiet(SETTLE + 0.5)
        assert [c[0] for c in rec.calls] == ["a"]  # b ignores *.tmp
        aw.unwatch("a")
        (tmp_path / "y.txt").write_text("x")
        await rec.wait_calls(2)
        await rec.quiet(SETTLE + 0.5)
        assert [c[0] for c in rec.calls] == ["a", "b"]
        assert aw.keys == {"b"}

    run(scenario)


def test_ten_thousand_files_are_watched_without_holding_the_loop(tmp_path: Path) -> None:
    """The watches are added on a worker thread: the loop keeps ticking meanwhile."""
    for d in range(100):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"f{f}.txt").touch()

    async def scenario(aw: AppWatch, rec: Recorder) -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        aw.watch("big", [str(tmp_path)], DEFAULT_IGNORE, [])
        await settled(aw, "big")
        task.cancel()
        assert ticks > 0
        (tmp_path / "d57" / "f3.txt").write_text("changed")
        await rec.wait_calls(1)
        assert rec.calls[0][1] == str(tmp_path / "d57" / "f3.txt")

    run(scenario)


def test_a_quick_rewatch_of_a_big_tree_keeps_watching(tmp_path: Path) -> None:
    """Re-watching while the first walk of the tree is still going (an ignore_watch edit
    during start-up) ends with the second watch in place, not with nothing watched."""
    for d in range(60):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for f in range(20):
            (sub / f"f{f}.txt").touch()

    async def scenario(aw: AppWatch, rec: Recorder) -> None:
        aw.watch("a", [str(tmp_path)], ("*.log",), [])
        await asyncio.sleep(0.01)
        aw.watch("a", [str(tmp_path)], ("*.tmp",), [])
        aw.watch("b", [str(tmp_path)], (), [])
        aw.unwatch("b")
        await settled(aw, "a")
        await asyncio.sleep(0.3)  # the superseded attach and detach have run by now
        (tmp_path / "d7" / "new.log").write_text("x")  # counts under the second ignore list
        await rec.wait_calls(1)
        assert rec.calls[0][:2] == ("a", str(tmp_path / "d7" / "new.log"))

    for _ in range(3):  # the race was timing-dependent
        run(scenario)
