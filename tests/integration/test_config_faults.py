"""Hostile config trees against a real procsupd: a symlink loop under an include glob, a FIFO
as apps.toml, an include deeper than the bound. The daemon must keep answering, refuse what it
cannot read with the reason, and leave the running apps alone.

Each of these froze the daemon before (a recursive glob growing exponentially on the loop, an
open() of a FIFO waiting for a writer): the timeouts make that a failure, not a hang."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import PY, Daemon, wait_for

pytestmark = pytest.mark.timeout(90)

#: A ping answered within this, while the config is being loaded or refused. A ping is a fresh
#: Python CLI process (about 0.2 s on a loaded machine), so this is slack, not the latency.
PING_BOUND = 5.0

SLEEPER = """
    [apps.s]
    command = ["sleep", "1000"]
    min_uptime = "100ms"
    """


def ping_within(daemon: Daemon, bound: float = PING_BOUND) -> float:
    started = time.monotonic()
    try:
        r = daemon.cli("ping", timeout=bound)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"procsupd did not answer ping within {bound}s") from None
    assert r.returncode == 0, r.stderr
    return time.monotonic() - started


class Background:
    """A CLI command run on a thread, so that the test can ping meanwhile."""

    def __init__(self, daemon: Daemon, *args: str, timeout: float = 30) -> None:
        self.result: subprocess.CompletedProcess[str] | BaseException | None = None

        def run() -> None:
            try:
                self.result = daemon.cli(*args, timeout=timeout)
            except BaseException as exc:  # reported by wait()
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the command did not end within {timeout}s"
        if isinstance(self.result, BaseException):
            raise AssertionError(f"the command failed: {self.result!r}")
        assert self.result is not None
        return self.result


def pings_while(daemon: Daemon, command: Background) -> int:
    """Ping until `command` ends; every ping within the bound. Returns how many."""
    count = 0
    while command.running():
        ping_within(daemon)
        count += 1
    return count


def start_with_sleeper(daemon: Daemon, extra: str = "watch_config = false") -> int:
    daemon.write(SLEEPER, extra)
    daemon.start()
    return int(daemon.wait_states("s", "running", 1)[0]["pid"])


def self_links(root: Path) -> None:
    """The fault run's tree: loop.d/self1 -> . and loop.d/self2 -> ., and one app file."""
    d = root / "loop.d"
    d.mkdir()
    (d / "b.toml").write_text('[apps.b]\ncommand = ["sleep", "1000"]\nmin_uptime = "100ms"\n')
    (d / "self1").symlink_to(".")
    (d / "self2").symlink_to(".")


def test_update_with_a_symlink_loop_under_an_include(daemon: Daemon) -> None:
    pid = start_with_sleeper(daemon)
    self_links(daemon.root)
    daemon.write(SLEEPER, 'watch_config = false\ninclude = ["loop.d/**/*.toml"]')
    update = Background(daemon, "update")
    pings_while(daemon, update)
    r = update.wait(20)
    assert r.returncode == 0, r.stdout + r.stderr
    d = daemon.root / "loop.d"
    # The loop is not followed: one warning naming both links, b defined once.
    assert (f"a symlink loop, not followed: {d}/self1 -> {d}, {d}/self2 -> {d}"
            in r.stdout + r.stderr)
    assert "defined twice" not in r.stdout + r.stderr
    daemon.wait_states("b", "running", 1)
    assert daemon.instances("s")[0]["pid"] == pid
    assert daemon.status()["config"]["applied"] is True


def test_a_save_that_includes_a_symlink_loop_is_applied_by_the_watch(daemon: Daemon) -> None:
    """watch_config: the watch finds the directories of the new glob (loop-free too) and the
    save is applied; ping answers all along."""
    pid = start_with_sleeper(daemon, "watch_config = true")
    self_links(daemon.root)
    tmp = daemon.config.with_name(".apps.toml.new")
    tmp.write_text(daemon.header('watch_config = true\ninclude = ["loop.d/**/*.toml"]') + SLEEPER)
    os.replace(tmp, daemon.config)

    def b_running() -> bool:
        ping_within(daemon)
        return [i["state"] for i in daemon.instances("b")] == ["running"]

    wait_for(b_running, 20, "b started by the watch")
    assert daemon.instances("s")[0]["pid"] == pid
    # A new file below the glob is seen: its directory is watched (once, not through links).
    (daemon.root / "loop.d" / "c.toml").write_text(
        '[apps.c]\ncommand = ["sleep", "1000"]\nmin_uptime = "100ms"\n')
    daemon.wait_states("c", "running", 1, timeout=20)


def test_update_with_an_include_past_the_depth_bound_changes_nothing(daemon: Daemon) -> None:
    pid = start_with_sleeper(daemon)
    deep = daemon.root.joinpath("conf.d", *(f"n{i}" for i in range(17)))
    deep.mkdir(parents=True)
    (deep / "b.toml").write_text('[apps.b]\ncommand = ["sleep", "1000"]\n')
    daemon.write(SLEEPER, 'watch_config = false\ninclude = ["conf.d/**/*.toml"]')
    r = daemon.cli("update", timeout=20)
    assert r.returncode == 1
    assert "goes more than 16 directories deep below" in r.stderr
    assert f"{daemon.config}:7: key 'include'" in r.stderr
    assert [i["pid"] for i in daemon.instances()] == [pid]  # b not started, s untouched
    assert daemon.status()["config"]["applied"] is False


def replace_with_fifo(path: Path) -> None:
    fifo = path.with_name(".fifo.tmp")
    os.mkfifo(fifo)
    os.replace(fifo, path)


def test_update_with_a_fifo_as_apps_toml_is_refused_at_once(daemon: Daemon) -> None:
    pid = start_with_sleeper(daemon)
    replace_with_fifo(daemon.config)
    update = Background(daemon, "update")
    pings_while(daemon, update)
    r = update.wait(20)
    assert r.returncode == 1
    assert (f"{daemon.config}: cannot read config file: it is a FIFO, not a regular file"
            in r.stderr)
    ping_within(daemon)
    status = daemon.status()
    assert status["config"]["applied"] is False
    assert "it is a FIFO" in status["config"]["error"]
    assert daemon.instances("s")[0]["pid"] == pid


def test_a_fifo_saved_over_a_watched_apps_toml_and_written_to(daemon: Daemon) -> None:
    """watch_config: the FIFO is refused without being opened (so writing to it does not wake
    the daemon's read); a burst of writes to it is one more attempt, not one per write."""
    pid = start_with_sleeper(daemon, "watch_config = true")
    replace_with_fifo(daemon.config)
    refused = "saved config not applied"
    wait_for(lambda: refused in daemon.daemon_log(), 15, "the FIFO refused")
    assert "it is a FIFO, not a regular file" in daemon.status()["config"]["error"]
    before = daemon.daemon_log().count(refused)
    # Open both ends (O_RDWR never waits on Linux), as a writer with a reader would.
    fd = os.open(daemon.config, os.O_RDWR | os.O_NONBLOCK)
    try:
        for i in range(40):  # 2 s of writes, each one a "modified" event of apps.toml
            os.write(fd, b"x" * 16)
            os.read(fd, 16)
            if i % 10 == 0:
                ping_within(daemon)
            time.sleep(0.05)
    finally:
        os.close(fd)
    ping_within(daemon)
    # After the burst: debounced into one read (and its recheck), reported once.
    wait_for(lambda: daemon.daemon_log().count(refused) > before, 15, "the burst read")
    time.sleep(1.5)  # longer than the debounce and the recheck: no more reads would come
    assert daemon.daemon_log().count(refused) - before == 1
    # A regular file again: applied by the watch as usual.
    tmp = daemon.config.with_name(".apps.toml.new")
    tmp.write_text(daemon.header("watch_config = true") + SLEEPER)
    os.replace(tmp, daemon.config)
    wait_for(lambda: daemon.status()["config"]["applied"], 15, "the fixed config applied")
    assert daemon.instances("s")[0]["pid"] == pid


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_procsupd_refuses_a_config_that_is_no_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "apps.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    r = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(path)],
                       capture_output=True, text=True, timeout=30)
    what = "a FIFO" if kind == "fifo" else "a directory"
    assert (r.returncode, r.stderr.strip()) == (1, (
        f"procsupd: invalid config: {path}: cannot read config file: it is {what}, "
        "not a regular file"))


def test_reread_answers_with_the_loop_warning(daemon: Daemon) -> None:
    start_with_sleeper(daemon)
    self_links(daemon.root)
    daemon.write(SLEEPER, 'watch_config = false\ninclude = ["loop.d/**/*.toml"]')
    r = daemon.cli("reread", "--json", timeout=20)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [a["app"] for a in out["actions"]] == ["b"]
    assert len(out["warnings"]) == 1 and "a symlink loop, not followed" in out["warnings"][0]
