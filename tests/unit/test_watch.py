"""procsup.watch: config file changes reach the loop, with real files and a real observer."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from procsup.watch import ConfigWatch, _glob_match

#: inotify events take ~100 ms; watchdog 2.x holds them 0.5 s to pair renames.
DEADLINE = 5.0


class Recorder:
    """Collects on_change calls, checks they run on the loop's thread."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.thread = threading.get_ident()
        self.foreign: list[int] = []

    def __call__(self, path: str) -> None:
        if threading.get_ident() != self.thread:
            self.foreign.append(threading.get_ident())
        self.paths.append(path)

    async def wait_for(self, path: str | Path, *, after: int = 0) -> None:
        """Until `path` is reported (at index >= after), or fail at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while str(path) not in self.paths[after:]:
            if loop.time() > deadline:
                raise AssertionError(f"no change reported for {path}; got {self.paths}")
            await asyncio.sleep(0.01)


Scenario = Callable[[ConfigWatch, Recorder], Awaitable[None]]


def run(scenario: Scenario) -> Recorder:
    """Run `scenario` on a fresh loop with a ConfigWatch; close it before the loop closes."""
    recorder = Recorder()

    async def main() -> None:
        cw = ConfigWatch(asyncio.get_running_loop(), recorder)
        try:
            await scenario(cw, recorder)
        finally:
            cw.close()

    asyncio.run(main())
    assert recorder.foreign == [], "on_change ran on a foreign thread"
    return recorder


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    (d / "apps.d").mkdir(parents=True)
    (d / "apps.toml").write_text("[apps]\n")
    (d / "apps.d" / "one.toml").write_text("[apps]\n")
    (d / "barrier").write_text("")
    return d


def watch_conf(cw: ConfigWatch, conf: Path) -> None:
    cw.watch([str(conf / "apps.toml"), str(conf / "barrier")], [str(conf / "apps.d" / "*.toml")])


async def barrier(rec: Recorder, conf: Path) -> None:
    """Write a watched file in the same directory and wait for it: inotify keeps the order of
    one directory's events, so whatever should have been reported before has been."""
    mark = len(rec.paths)
    (conf / "barrier").write_text("x")
    await rec.wait_for(conf / "barrier", after=mark)


# -- saves ----------------------------------------------------------------------------------------


def test_modify_in_place(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        with open(conf / "apps.toml", "r+") as f:
            f.seek(0, os.SEEK_END)
            f.write("# more\n")
        await rec.wait_for(conf / "apps.toml")

    run(go)


def test_truncate_and_write(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        with open(conf / "apps.toml", "w") as f:
            f.write("[procsup]\n")
        await rec.wait_for(conf / "apps.toml")

    run(go)


def test_save_by_rename_over(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        tmp = conf / ".apps.toml.tmp"
        tmp.write_text("[procsup]\n")
        await barrier(rec, conf)
        assert str(tmp) not in rec.paths  # the temporary file is not watched
        os.replace(tmp, conf / "apps.toml")
        await rec.wait_for(conf / "apps.toml")
        # The new inode is still watched: the next save is seen too.
        mark = len(rec.paths)
        (conf / "apps.toml").write_text("[apps]\n")
        await rec.wait_for(conf / "apps.toml", after=mark)

    run(go)


def test_delete_and_recreate(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        os.remove(conf / "apps.toml")
        await rec.wait_for(conf / "apps.toml")
        mark = len(rec.paths)
        (conf / "apps.toml").write_text("[apps]\n")
        await rec.wait_for(conf / "apps.toml", after=mark)

    run(go)


def test_included_file_changes_and_new_file_matching_the_glob(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        (conf / "apps.d" / "one.toml").write_text("[apps.x]\n")
        await rec.wait_for(conf / "apps.d" / "one.toml")
        (conf / "apps.d" / "two.toml").write_text("[apps.y]\n")
        await rec.wait_for(conf / "apps.d" / "two.toml")
        mark = len(rec.paths)
        os.rename(conf / "apps.d" / "two.toml", conf / "apps.d" / "two.toml.disabled")
        await rec.wait_for(conf / "apps.d" / "two.toml", after=mark)  # moved away: seen
        mark = len(rec.paths)
        os.rename(conf / "apps.d" / "one.toml", conf / "apps.d" / "uno.toml")  # both ends
        await rec.wait_for(conf / "apps.d" / "one.toml", after=mark)
        await rec.wait_for(conf / "apps.d" / "uno.toml", after=mark)

    rec = run(go)
    assert str(conf / "apps.d" / "two.toml.disabled") not in rec.paths


def test_rename_into_a_glob_reports_the_destination(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        draft = conf / "apps.d" / "draft.txt"
        draft.write_text("[apps.z]\n")
        os.rename(draft, conf / "apps.d" / "three.toml")
        await rec.wait_for(conf / "apps.d" / "three.toml")

    rec = run(go)
    assert str(conf / "apps.d" / "draft.txt") not in rec.paths


def test_unrelated_files_in_the_same_directories_are_ignored(conf: Path) -> None:
    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        for name in (".apps.toml.swp", "apps.toml~", "4913", "apps.toml.bak", "notes.txt"):
            (conf / name).write_text("x")
            os.remove(conf / name)
        (conf / "apps.d" / ".hidden.toml").write_text("x")  # glob's * skips hidden names
        (conf / "apps.d" / "readme.md").write_text("x")
        (conf / "apps.d" / "sub").mkdir()
        (conf / "sub").mkdir()
        await barrier(rec, conf)
        (conf / "apps.d" / "one.toml").write_text("barrier of the other directory")
        await rec.wait_for(conf / "apps.d" / "one.toml")

    rec = run(go)
    assert set(rec.paths) == {str(conf / "barrier"), str(conf / "apps.d" / "one.toml")}


def test_reading_a_watched_file_is_not_a_change(conf: Path) -> None:
    """Loading the config reads it; newer watchdog reports opens and closes without writing."""

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        for _ in range(3):
            (conf / "apps.toml").read_text()
            (conf / "apps.d" / "one.toml").read_bytes()
        await barrier(rec, conf)

    rec = run(go)
    assert set(rec.paths) == {str(conf / "barrier")}


# -- directories ----------------------------------------------------------------------------------


def test_rewatch_moves_to_the_new_directories(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        (d / "apps.toml").write_text("")

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        cw.watch([str(old / "apps.toml")], [])
        assert cw.directories == {str(old)}
        (old / "apps.toml").write_text("1")
        await rec.wait_for(old / "apps.toml")

        cw.watch([str(new / "apps.toml")], [str(new / "apps.d" / "*.toml")])
        assert cw.directories == {str(new)}  # apps.d is missing: watched through new/
        mark = len(rec.paths)
        (old / "apps.toml").write_text("2")
        (new / "apps.toml").write_text("2")
        await rec.wait_for(new / "apps.toml", after=mark)
        await asyncio.sleep(0.6)  # longer than watchdog 2.x holds events back
        assert str(old / "apps.toml") not in rec.paths[mark:]

    run(go)


def test_missing_directory_is_picked_up_when_created(conf: Path) -> None:
    later = conf / "later.d"

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        cw.watch([str(conf / "apps.toml")], [str(later / "*.toml")])  # no error, nothing logged
        later.mkdir()
        await rec.wait_for(later)  # reported, so the supervisor re-reads the config
        assert str(later) in cw.directories  # and watched without another watch() call
        (later / "web.toml").write_text("[apps.web]\n")
        await rec.wait_for(later / "web.toml")

    run(go)


def test_deleted_and_recreated_directory_is_watched_again(conf: Path) -> None:
    included = conf / "apps.d"

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        shutil.rmtree(included)
        # Reported as the directory; its files may be too, unless its watch is dropped first.
        await rec.wait_for(included)
        assert str(included) not in cw.directories  # its inotify watch is gone
        # Let every event of the removal land (watchdog 2.x holds them 0.5 s) before the
        # directory comes back, so that the test knows when the new one is watched.
        await asyncio.sleep(0.7)
        mark = len(rec.paths)
        included.mkdir()
        await rec.wait_for(included, after=mark)
        assert str(included) in cw.directories
        (included / "new.toml").write_text("[apps.n]\n")
        await rec.wait_for(included / "new.toml")

    run(go)


def test_directory_swapped_by_renames(conf: Path) -> None:
    """mv apps.d apps.d.old; mv apps.d.new apps.d: an inotify watch follows the old inode, so
    it must be replaced by one on the new directory (and report no paths it no longer has)."""
    included = conf / "apps.d"
    staged = conf / "apps.d.new"
    staged.mkdir()
    (staged / "new.toml").write_text("")

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        os.rename(included, conf / "apps.d.old")
        os.rename(staged, included)
        await rec.wait_for(included)
        await asyncio.sleep(0.7)  # every event of the swap has landed (see above)
        mark = len(rec.paths)
        (conf / "apps.d.old" / "one.toml").write_text("old, not included any more")
        (included / "new.toml").write_text("[apps.n]\n")
        await rec.wait_for(included / "new.toml", after=mark)
        assert str(included / "one.toml") not in rec.paths[mark:]

    run(go)


def test_directory_wildcards(tmp_path: Path) -> None:
    root = tmp_path / "conf.d"
    (root / "a").mkdir(parents=True)

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        cw.watch([], [str(root / "*" / "app.toml"), str(tmp_path / "deep" / "**" / "*.toml")])
        (root / "a" / "app.toml").write_text("")
        await rec.wait_for(root / "a" / "app.toml")
        (root / "b").mkdir()
        await rec.wait_for(root / "b")
        (root / "b" / "app.toml").write_text("")
        await rec.wait_for(root / "b" / "app.toml")
        (tmp_path / "deep").mkdir()
        await rec.wait_for(tmp_path / "deep")
        (tmp_path / "deep" / "x").mkdir()
        await rec.wait_for(tmp_path / "deep" / "x")
        (tmp_path / "deep" / "x" / "y.toml").write_text("")
        await rec.wait_for(tmp_path / "deep" / "x" / "y.toml")

    run(go)


@pytest.mark.timeout(20)
def test_a_symlink_loop_under_a_recursive_glob_is_watched_once(tmp_path: Path) -> None:
    """loop.d/self1 -> . and loop.d/self2 -> .: the directories of `loop.d/**/*.toml` are
    loop.d and its real subdirectory (before, finding them grew exponentially on the loop)."""
    d = tmp_path / "loop.d"
    (d / "sub").mkdir(parents=True)
    (d / "self1").symlink_to(".")
    (d / "self2").symlink_to(".")

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        cw.watch([], [str(d / "**" / "*.toml")])
        assert cw.directories == {str(d), str(d / "sub")}
        (d / "sub" / "a.toml").write_text("")
        await rec.wait_for(d / "sub" / "a.toml")

    run(go)


# -- lifetime -------------------------------------------------------------------------------------


def test_close_joins_the_threads(conf: Path) -> None:
    before = set(threading.enumerate())
    started: list[threading.Thread] = []

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        watch_conf(cw, conf)
        started.extend(t for t in threading.enumerate() if t not in before)
        assert started and all(t.daemon for t in started)
        (conf / "apps.toml").write_text("x")
        await rec.wait_for(conf / "apps.toml")
        cw.close()
        assert not any(t.is_alive() for t in started)
        cw.close()  # idempotent
        with pytest.raises(RuntimeError):
            cw.watch([str(conf / "apps.toml")], [])

    run(go)


def test_no_thread_before_the_first_watch(conf: Path) -> None:
    before = set(threading.enumerate())

    async def go(cw: ConfigWatch, rec: Recorder) -> None:
        assert set(threading.enumerate()) == before

    run(go)


# -- glob semantics (as config.py's glob.glob(recursive=True)) -----------------------------------


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("/e/apps.d/a.toml", "/e/apps.d/*.toml", True),
        ("/e/apps.d/.a.toml", "/e/apps.d/*.toml", False),
        ("/e/apps.d/.a.toml", "/e/apps.d/.*.toml", True),
        ("/e/apps.d/a.toml.swp", "/e/apps.d/*.toml", False),
        ("/e/apps.d/sub/a.toml", "/e/apps.d/*.toml", False),
        ("/e/apps.d/a.toml", "/e/apps.d/?.toml", True),
        ("/e/apps.d/[x].toml", "/e/apps.d/[[]x].toml", True),
        ("/e/apps.d/a.toml", "/e/**/*.toml", True),
        ("/e/a.toml", "/e/**/*.toml", True),
        ("/e/x/y/z/a.toml", "/e/**/*.toml", True),
        ("/e/x/.git/a.toml", "/e/**/*.toml", False),
        ("/e/x/a.toml", "/e/**", True),
        ("/e/x/a.toml", "/e/*/a.toml", True),
        ("/f/x/a.toml", "/e/*/a.toml", False),
    ],
)
def test_glob_match(path: str, pattern: str, expected: bool) -> None:
    assert _glob_match(path, tuple(pattern.split("/"))) is expected
