"""statefile: the atomic instance record, start ticks, leftovers and the environment marker
(real processes, real /proc)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procsup import statefile
from procsup.statefile import (
    MARKER_VAR,
    Marked,
    Record,
    daemon_marker,
    leader_start_ticks,
    leftovers,
    marked_processes,
    read,
    read_checked,
    write,
)

HZ = os.sysconf("SC_CLK_TCK")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()

Spawn = Callable[..., subprocess.Popen[bytes]]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_line(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bytes:
    """One line of `proc`'s stdout, or AssertionError after `timeout`."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from pid {proc.pid} within {timeout} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"pid {proc.pid} closed stdout after {line!r}")
        line += chunk
    return line


def has_env(pid: int, name: str) -> bool:
    """Whether `pid` has exec'd with `name` in its environment.

    Between fork and exec a child shows its parent's environ, and for an instant inside
    execve none at all (the kernel sets the new environ's bounds after the new program's
    name), so a test waits for this before it scans.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"\0{name}=".encode() in b"\0" + f.read()
    except OSError:
        return False


def is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def extra_pids() -> Iterator[list[int]]:
    """Pids outside the spawned sessions (setsid grandchildren), SIGKILLed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start commands each in its own session; kill their whole groups afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.PIPE, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def marker(tmp_path: Path) -> str:
    """A marker no other test (or concurrent test run) uses."""
    return daemon_marker(str(tmp_path / "state"))


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (MARKER_VAR, "PROCSUP_APP")}
    env.pop("PROCSUP_INSTANCE", None)
    env.update(extra)
    return env


def record_of(proc: subprocess.Popen[bytes], index: int = 0) -> Record:
    ticks = leader_start_ticks(proc.pid)
    assert ticks is not None
    return Record(app="web", index=index, pid=proc.pid, pgid=proc.pid, start_ticks=ticks)


def entry(**fields: Any) -> dict[str, Any]:
    return {"app": "a", "index": 0, "pid": 5, "pgid": 5, "start_ticks": 17} | fields


def payload(*instances: Any, **top: Any) -> bytes:
    doc = {"version": 2, "boot_id": BOOT_ID, "daemon_pid": 1, "instances": list(instances)}
    return json.dumps(doc | top).encode()


# --- the file ---------------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    state = tmp_path / "state" / "sub"
    records = [
        Record("web", 0, 100, 100, 12345),
        Record("web", 1, 101, 101, 0),
        Record("worker name", 0, 200, 200, 2**40),
    ]
    write(str(state), records, daemon_pid=42)
    assert read(str(state)) == records
    assert read_checked(str(state)) == records
    path = state / statefile.FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0  # created 0700 (minus umask)
    doc = json.loads(path.read_text())
    assert doc["daemon_pid"] == 42
    assert doc["boot_id"] == BOOT_ID
    assert doc["version"] == 2
    assert doc["instances"][0]["start_ticks"] == 12345
    assert os.listdir(state) == [statefile.FILENAME]  # no temporary file left behind


def test_write_replaces_the_previous_record(tmp_path: Path) -> None:
    write(str(tmp_path), [Record("a", 0, 10, 10, 1), Record("a", 1, 11, 11, 1)], 1)
    write(str(tmp_path), [Record("b", 0, 12, 12, 2)], 1)
    assert read(str(tmp_path)) == [Record("b", 0, 12, 12, 2)]
    write(str(tmp_path), [], 1)
    assert read(str(tmp_path)) == []
    assert os.listdir(tmp_path) == [statefile.FILENAME]


def test_write_keeps_an_existing_state_dir_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    write(str(tmp_path), [], 1)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_write_to_an_impossible_dir_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        write(str(tmp_path / "file"), [], 1)


# --- the disabled apps ----------------------------------------------------------------------


def test_disabled_round_trips_sorted_and_durable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert statefile.read_disabled(str(state)) == frozenset()  # no file, no directory: none
    statefile.write_disabled(str(state), ["web", "db", "web"])
    assert statefile.read_disabled(str(state)) == {"web", "db"}
    path = state / statefile.DISABLED_FILENAME
    assert json.loads(path.read_text()) == {"version": 1, "apps": ["db", "web"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    statefile.write_disabled(str(state), [])
    assert statefile.read_disabled(str(state)) == frozenset()
    assert os.listdir(state) == [statefile.DISABLED_FILENAME]  # no temporary file left behind


def test_disabled_is_beside_the_instance_record_and_holds_across_boots(tmp_path: Path) -> None:
    statefile.write_disabled(str(tmp_path), ["web"])
    write(str(tmp_path), [Record("db", 0, 10, 10, 1)], 1)
    assert statefile.read_disabled(str(tmp_path)) == {"web"}
    assert read(str(tmp_path)) == [Record("db", 0, 10, 10, 1)]
    doc = json.loads((tmp_path / statefile.DISABLED_FILENAME).read_text())
    assert "boot_id" not in doc  # a reboot does not enable an app


@pytest.mark.parametrize("text", [
    "{", "[]", '{"version": 2, "apps": []}', '{"version": 1}', '{"version": 1, "apps": "web"}',
    '{"version": 1, "apps": [""]}', '{"version": 1, "apps": [1]}', "\xff",
])
def test_a_bad_disabled_record_raises_rather_than_enabling_everything(
        tmp_path: Path, text: str) -> None:
    (tmp_path / statefile.DISABLED_FILENAME).write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=statefile.DISABLED_FILENAME):
        statefile.read_disabled(str(tmp_path))


def test_an_unreadable_disabled_record_raises(tmp_path: Path) -> None:
    (tmp_path / statefile.DISABLED_FILENAME).mkdir()
    with pytest.raises(OSError):
        statefile.read_disabled(str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        statefile.write_disabled(str(tmp_path / "file" / "state"), ["web"])


def test_missing_file_reads_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="procsup.statefile")
    assert read(str(tmp_path / "nope")) == []
    assert read_checked(str(tmp_path / "nope")) == []
    assert caplog.records == []


def test_unreadable_file_reads_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / statefile.FILENAME).mkdir()  # open() fails with IsADirectoryError, even as root
    with pytest.raises(OSError):
        read_checked(str(tmp_path))
    assert read(str(tmp_path)) == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        payload(version=99),
        payload(version="2"),
        payload(version=None),
        payload(boot_id=None),
        payload(boot_id=7),
        payload(instances={}),
        payload(1),
        payload({"app": "a", "index": 0, "pid": 5, "pgid": 5}),
        payload(entry(pid="5")),
        payload(entry(app=None)),
        payload(entry(index=-1)),
        payload(entry(index=True)),
        payload(entry(pid=0)),
        payload(entry(pgid=-5)),
        payload(entry(start_ticks=-1)),
        payload(entry(start_ticks=1.5)),
        payload(entry(start_ticks=17.0)),
        payload(entry(start_ticks=True)),
        payload(entry(), entry(start_ticks="17")),
    ],
)
def test_corrupt_file_reads_empty_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / statefile.FILENAME).write_bytes(content)
    with pytest.raises(ValueError):
        read_checked(str(tmp_path))
    caplog.clear()
    assert read(str(tmp_path)) == []
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("procsup.statefile", logging.WARNING)
    ]
    assert "ignoring instance record" in caplog.text


def test_valid_payload_helper_reads(tmp_path: Path) -> None:
    # The corrupt cases above differ from this one in one field each.
    (tmp_path / statefile.FILENAME).write_bytes(payload(entry(), entry(app="b", index=3)))
    assert read_checked(str(tmp_path)) == [Record("a", 0, 5, 5, 17), Record("b", 3, 5, 5, 17)]


def test_old_version_file_is_ignored_at_info_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What procsupd wrote before start ticks and boot ids (format version 1).
    (tmp_path / statefile.FILENAME).write_text(
        '{"daemon_pid": 7, "instances": [{"app": "a", "create_time": 1700000000.5,'
        ' "index": 0, "pgid": 5, "pid": 5}], "version": 1}\n'
    )
    caplog.set_level(logging.INFO, logger="procsup.statefile")
    assert read_checked(str(tmp_path)) == []
    caplog.clear()
    assert read(str(tmp_path)) == []
    assert [(r.name, r.levelno) for r in caplog.records] == [("procsup.statefile", logging.INFO)]
    assert "version 1" in caplog.text


def test_record_from_another_boot_is_ignored_at_info_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(str(tmp_path), [Record("a", 0, 5, 5, 17)], 1)
    assert read(str(tmp_path)) == [Record("a", 0, 5, 5, 17)]  # this boot: kept
    path = tmp_path / statefile.FILENAME
    doc = json.loads(path.read_text())
    doc["boot_id"] = "00000000-1111-2222-3333-444444444444"
    path.write_text(json.dumps(doc))
    caplog.set_level(logging.INFO, logger="procsup.statefile")
    assert read_checked(str(tmp_path)) == []
    caplog.clear()
    assert read(str(tmp_path)) == []
    assert [(r.name, r.levelno) for r in caplog.records] == [("procsup.statefile", logging.INFO)]
    assert "reboot" in caplog.text


# --- start ticks ------------------------------------------------------------------------------


def psutil_ticks(pid: int) -> int:
    # psutil reads btime afresh on each call, as create_time() does.
    return round((psutil.Process(pid).create_time() - psutil.boot_time()) * HZ)


def test_start_ticks_agree_with_psutil(spawn: Spawn) -> None:
    child = spawn("sleep", "30")
    for pid in (os.getpid(), child.pid, 1):
        assert leader_start_ticks(pid) == psutil_ticks(pid)
    ticks = leader_start_ticks(child.pid)
    assert ticks is not None
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert abs(ticks / HZ - uptime) < 5.0  # started just now
    assert leader_start_ticks(child.pid) == ticks  # and it does not move


def test_start_ticks_of_a_gone_process_are_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=5)
    assert leader_start_ticks(proc.pid) is None
    assert leader_start_ticks(0) is None


def test_command_names_with_parentheses_and_spaces(tmp_path: Path, spawn: Spawn) -> None:
    # The comm field of /proc/<pid>/stat is "(name)"; a name holding ") 1 2 (" would shift
    # every field for a parser that splits at the first ")".
    weird = tmp_path / "a) S 1 2 (b"
    weird.symlink_to("/bin/sleep")
    proc = spawn(str(weird), "30")
    wait_for(lambda: psutil.Process(proc.pid).name().startswith("a) S"), what="exec")
    assert leader_start_ticks(proc.pid) == psutil_ticks(proc.pid)
    assert leftovers([record_of(proc)]) == [record_of(proc)]


# --- leftovers --------------------------------------------------------------------------------


def test_live_leader_with_matching_ticks_is_left_over(spawn: Spawn) -> None:
    a, b = spawn("sleep", "30"), spawn("sleep", "30")
    records = [record_of(b, 1), record_of(a, 0)]
    assert leftovers(records) == records  # order kept


def test_live_pid_with_other_ticks_is_a_reused_pid(spawn: Spawn) -> None:
    proc = spawn("sleep", "30")
    rec = record_of(proc)
    for shift in (-100, -1, 1, 100):
        other = Record(rec.app, rec.index, rec.pid, rec.pgid, rec.start_ticks + shift)
        assert leftovers([other]) == []
    assert leftovers([rec]) == [rec]
    # Our own pid is alive but (as far as the record says) started before it did.
    me = leader_start_ticks(os.getpid())
    assert me is not None
    assert leftovers([Record("x", 0, os.getpid(), os.getpgid(0), me - 1)]) == []


def test_dead_leader_is_not_left_over(spawn: Spawn) -> None:
    proc = spawn("sleep", "30")
    rec = record_of(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert leftovers([rec]) == []


def test_zombie_leader_is_not_left_over(spawn: Spawn) -> None:
    proc = spawn("sh", "-c", "read x")
    rec = record_of(proc)
    assert proc.stdin is not None
    proc.stdin.close()
    # Not reaped yet: a zombie still has its /proc entry and start ticks.
    wait_for(lambda: is_zombie(proc.pid), what="zombie")
    assert leader_start_ticks(proc.pid) == rec.start_ticks
    assert leftovers([rec]) == []


def test_group_outliving_its_leader_is_found_by_marker_not_by_record(
    spawn: Spawn, marker: str
) -> None:
    # The shell leads the group and starts a sleep in it, then exits when stdin closes, as if
    # the daemon was killed -9 before the leader went: the record no longer matches anything
    # (no guessing from pgids), and the marker finds the rest of the instance.
    env = env_with(**{MARKER_VAR: marker, "PROCSUP_APP": "web", "PROCSUP_INSTANCE": "2"})
    leader = spawn("sh", "-c", "sleep 30 & read x", env=env)
    wait_for(lambda: len(psutil.Process(leader.pid).children()) == 1, what="the child")
    member = psutil.Process(leader.pid).children()[0].pid
    wait_for(lambda: psutil.Process(member).name() == "sleep" and has_env(member, MARKER_VAR))
    rec = record_of(leader)
    assert leader.stdin is not None
    leader.stdin.close()
    wait_for(lambda: is_zombie(leader.pid), what="zombie")
    assert leftovers([rec]) == []
    assert marked_processes(marker) == [Marked(member, leader.pid, "web", 2)]


# --- the environment marker -------------------------------------------------------------------


def test_daemon_marker_is_stable_per_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    m = daemon_marker(str(state))
    assert len(m) == 16
    assert int(m, 16) >= 0  # hex
    state.mkdir()
    (tmp_path / "link").symlink_to(state)
    assert daemon_marker(str(state)) == m  # whether or not the directory exists yet
    assert daemon_marker(str(tmp_path / "x" / ".." / "state")) == m
    assert daemon_marker(str(tmp_path / "link")) == m
    assert daemon_marker(str(tmp_path / "other")) != m


def test_marked_processes_finds_children_and_grandchildren(
    spawn: Spawn, marker: str, extra_pids: list[int]
) -> None:
    env = env_with(**{MARKER_VAR: marker, "PROCSUP_APP": "web", "PROCSUP_INSTANCE": "1"})
    plain = spawn("sleep", "30", env=env_with())
    # The grandchild leaves the group for a session of its own (a double-forked daemon) and
    # inherits the environment; the inner sh prints its pid, which exec keeps for sleep.
    child = spawn(
        "sh", "-c", 'setsid sh -c "echo \\$\\$; exec sleep 30" & read x',
        env=env, stdout=subprocess.PIPE,
    )
    grandchild = int(read_line(child))
    extra_pids.append(grandchild)
    wait_for(
        lambda: psutil.Process(grandchild).name() == "sleep"
        and os.getpgid(grandchild) == grandchild
        and has_env(grandchild, MARKER_VAR),
        what="the grandchild to exec in its own session",
    )
    found = marked_processes(marker)
    assert found == sorted(
        [Marked(child.pid, child.pid, "web", 1), Marked(grandchild, grandchild, "web", 1)],
        key=lambda m: m.pid,
    )
    assert all(m.pid != plain.pid for m in found)
    assert marked_processes(marker, exclude={child.pid}) == [
        Marked(grandchild, grandchild, "web", 1)
    ]
    assert marked_processes(marker, exclude=[child.pid, grandchild]) == []
    assert marked_processes(daemon_marker("/elsewhere")) == []


def test_marked_processes_matches_the_exact_entry_only(spawn: Spawn, marker: str) -> None:
    near_misses = [
        {MARKER_VAR: daemon_marker("/some/other/state")},
        {MARKER_VAR: marker + "0"},
        {MARKER_VAR: marker[:-1]},
        {MARKER_VAR: ""},
        {"X" + MARKER_VAR: marker},
        {MARKER_VAR + "X": marker},
        {"OTHER": f"{MARKER_VAR}={marker}"},
    ]
    misses = [(spawn("sleep", "30", env=env_with(**extra)), extra) for extra in near_misses]
    # The marker as the first and only entry (no NUL before it), and as the last of several.
    alone = spawn("sleep", "30", env={MARKER_VAR: marker})
    last = spawn("sleep", "30", env={"A": "1", "PROCSUP_INSTANCE": "x", MARKER_VAR: marker})
    waits = [(p, next(iter(extra))) for p, extra in misses]
    waits += [(alone, MARKER_VAR), (last, MARKER_VAR)]
    wait_for(lambda: all(has_env(p.pid, name) for p, name in waits), what="exec")
    assert marked_processes(marker) == [
        Marked(p.pid, p.pid, None, None) for p in sorted((alone, last), key=lambda p: p.pid)
    ]


def test_marked_processes_parses_app_and_index(spawn: Spawn, marker: str) -> None:
    cases = {
        ("web", "0"): ("web", 0),
        ("wörker", "12"): ("wörker", 12),
        ("", "-1"): (None, None),
        ("x", "1.5"): ("x", None),
        ("x", " 3"): ("x", None),
    }
    procs = {
        spawn(
            "sleep", "30",
            env=env_with(**{MARKER_VAR: marker, "PROCSUP_APP": app, "PROCSUP_INSTANCE": idx}),
        ).pid: want
        for (app, idx), want in cases.items()
    }
    wait_for(lambda: all(has_env(p, MARKER_VAR) for p in procs), what="exec")
    found = {m.pid: (m.app, m.index) for m in marked_processes(marker)}
    assert found == procs


def test_marked_zombies_are_skipped(spawn: Spawn, marker: str) -> None:
    proc = spawn("sh", "-c", "read x", env=env_with(**{MARKER_VAR: marker}))
    wait_for(lambda: [m.pid for m in marked_processes(marker)] == [proc.pid], what="the shell")
    assert proc.stdin is not None
    proc.stdin.close()
    wait_for(lambda: is_zombie(proc.pid), what="zombie")
    assert marked_processes(marker) == []


_SELF_SCRIPT = """
import json, os, subprocess, sys
from procsup.statefile import MARKER_VAR, marked_processes
marker = os.environ[MARKER_VAR]
saw = [m.pid for m in marked_processes(marker)]
inner = None
if sys.argv[1] == "outer":
    run = subprocess.run([sys.executable, "-c", sys.argv[2], "inner"], capture_output=True,
                         check=True, timeout=20)
    inner = json.loads(run.stdout)
print(json.dumps({"pid": os.getpid(), "saw": saw, "inner": inner}))
"""


def test_marked_processes_skips_the_caller_and_its_ancestors(spawn: Spawn, marker: str) -> None:
    env = env_with(**{MARKER_VAR: marker})
    sibling = spawn("sleep", "30", env=env)
    wait_for(lambda: has_env(sibling.pid, MARKER_VAR), what="exec")
    out = subprocess.run(
        [sys.executable, "-c", _SELF_SCRIPT, "outer", _SELF_SCRIPT],
        env=env, capture_output=True, check=True, timeout=30,
    ).stdout
    outer = json.loads(out)
    inner = outer["inner"]
    # Each saw the marked sibling, not itself, and the inner one not its marked parent either.
    assert outer["saw"] == [sibling.pid]
    assert inner["saw"] == [sibling.pid]
    assert inner["pid"] not in (outer["pid"], sibling.pid)
