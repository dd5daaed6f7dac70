"""Log targets besides files, with a real procsupd: `"-"` (procsupd's own stdout/stderr, read
back here through pipes), `log_format = "json"`, `"journal"` (a fake journal: a datagram socket
this test binds and parses), and the sd-daemon priority prefixes of procsupd's own log."""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from .conftest import PY, Daemon, LineReader, app_cmd, wait_for

COUNTED = re.compile(r"(c):([01]) \| n=(\d{6,}) x+")
ECHO = ("import sys, time\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "time.sleep(1000)\n")


_PIPES: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _close_pipes() -> Iterator[None]:
    yield
    while _PIPES:
        proc = _PIPES.pop()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


#: Two instances writing numbered 120-byte lines to procsupd's stdout as fast as they can.
FLOODERS = f"""
    [apps.c]
    command = {app_cmd("counter", "0", "120")}
    instances = 2
    out_file = "-"
    error_file = false
    """


def _stderr_file(daemon: Daemon) -> IO[bytes]:
    """The file procsupd's stderr goes to: the daemon's log, as `Daemon.start` has it."""
    if not hasattr(daemon, "_stderr"):
        daemon._stderr = open(daemon.stderr_path, "ab")  # noqa: SIM115
    return daemon._stderr  # type: ignore[no-any-return]


def _start(daemon: Daemon, *, env: dict[str, str] | None = None,
           stderr: int | None = None) -> tuple[subprocess.Popen[bytes], LineReader]:
    """`procsupd -n` with its stdout on a pipe read by the returned reader; its stderr on a
    pipe too with `stderr=subprocess.PIPE`, else in the daemon's log file."""
    daemon.proc = subprocess.Popen(
        [PY, "-m", "procsup.daemon", "-n", "-c", str(daemon.config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=_stderr_file(daemon) if stderr is None else stderr, env=env or daemon.env)
    _PIPES.append(daemon.proc)
    assert daemon.proc.stdout is not None
    os.set_blocking(daemon.proc.stdout.fileno(), False)
    wait_for(lambda: daemon.proc is not None and (daemon.proc.poll() is not None
                                                  or daemon.ping()), 15, "procsupd to serve")
    assert daemon.proc.poll() is None, daemon.daemon_log()
    return daemon.proc, LineReader(daemon.proc.stdout.fileno())


def _stop_reading(proc: subprocess.Popen[bytes], reader: LineReader) -> int:
    """SIGTERM procsupd and read its stdout to the end (it flushes what it holds), checking
    that every line is whole: a counter line or a line of procsupd's own log."""
    proc.terminate()
    deadline = time.monotonic() + 30
    tail = reader.buffer
    while time.monotonic() < deadline:
        if not select.select([reader.fd], [], [], deadline - time.monotonic())[0]:
            break
        chunk = os.read(reader.fd, 1 << 16)
        if not chunk:
            break
        tail += chunk
    assert tail.endswith(b"\n") or not tail, tail[-200:]
    for line in tail.decode(errors="replace").splitlines():
        assert COUNTED.fullmatch(line) or re.match(r"\d{4}-\d\d-\d\d ", line), repr(line)
    return proc.wait(10)


def _wait_full(fd: int) -> None:
    """Until the pipe read by `fd` is full: more than half its capacity unread (pieces of
    whole lines up to PIPE_BUF leave the end of each page empty, a short line a page almost
    empty) and nothing more arriving for 0.2 s."""
    capacity = fcntl.fcntl(fd, 1032)  # F_GETPIPE_SZ
    seen = {"size": -1, "since": time.monotonic()}

    def full() -> bool:
        size, now = _unread(fd), time.monotonic()
        if size != seen["size"]:
            seen.update(size=size, since=now)
        return size > capacity // 2 and now - seen["since"] >= 0.2

    wait_for(full, 10, "procsupd's stdout pipe to fill")


def _unread(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def test_two_flooding_instances_on_stdout_never_mix_and_lose_nothing(daemon: Daemon) -> None:
    daemon.write(FLOODERS)
    proc, reader = _start(daemon)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    nxt = {"0": 0, "1": 0}

    def read(lines: int) -> None:
        for _ in range(lines):
            line = reader.line(10, "a line of the counters")
            m = COUNTED.fullmatch(line)
            assert m is not None and len(line) == len("c:0 | ") + 119, repr(line)
            assert int(m.group(3)) == nxt[m.group(2)], (line, nxt)  # none lost, in order
            nxt[m.group(2)] += 1

    read(20000)
    # A reader that stops: the pipe fills, the apps are held back, the daemon still serves.
    _wait_full(fd)
    rows = daemon.wait_states("c", "running", 2)  # min_uptime passes: the loop goes on
    assert all(r["restarts"] == 0 and not r.get("log_errors") for r in rows), rows
    read(20000)
    assert min(nxt.values()) > 0, nxt  # both instances were read
    assert _stop_reading(proc, reader) == 0


def test_own_log_on_the_same_stalled_pipe_does_not_stall_the_daemon(daemon: Daemon) -> None:
    """procsupd -n 2>&1 (one pipe for both): while nobody reads it, the apps are held back,
    and a line the daemon logs (an apply error) neither blocks the loop nor cuts a line."""
    daemon.write(FLOODERS)
    proc, reader = _start(daemon, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    _wait_full(fd)
    daemon.config.write_text(daemon.config.read_text() + "\n[apps.broken]\ncommand = 1\n")
    r = daemon.cli("update", timeout=10)  # answered: the error line did not block the loop
    assert r.returncode == 1 and "broken" in r.stderr, r
    nxt = {"0": 0, "1": 0}
    seen_error = False
    while not (seen_error and min(nxt.values()) > 1000):
        line = reader.line(10, "a line on procsupd's stdout and stderr")
        m = COUNTED.fullmatch(line)
        if m is None:  # procsupd's own log: a whole line of its own
            assert re.match(r"\d{4}-\d\d-\d\d \S+ (INFO|WARNING|ERROR) ", line), repr(line)
            seen_error = seen_error or "config not applied" in line
            continue
        assert int(m.group(3)) == nxt[m.group(2)], (line, nxt)
        nxt[m.group(2)] += 1
    assert _stop_reading(proc, reader) == 0


def test_a_partial_last_line_goes_out_whole_at_exit(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.p]
        command = {app_cmd("partial")}
        autorestart = false
        out_file = "-"
        """)
    _proc, reader = _start(daemon)
    assert reader.line(10, "the whole line") == "p:0 | whole line"
    assert reader.line(10, "the partial line") == "p:0 | partial tail"
    assert daemon.stop_daemon() == 0


def test_stderr_dash_and_the_date_prefix(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.e]
        command = {json.dumps([PY, "-c", ECHO])}
        out_file = "-"
        error_file = "-"
        log_date_format = "%Y@%H"
        """)
    proc, out = _start(daemon, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    err = LineReader(proc.stderr.fileno())
    assert re.fullmatch(r"\d{4}@\d\d e:0 \| to stdout", out.line(10, "stdout line"))
    line = err.line(10, "a line on procsupd's stderr")
    while "e:0 |" not in line:  # procsupd's own log shares its stderr
        line = err.line(10, "the app's line on procsupd's stderr")
    assert re.fullmatch(r"\d{4}@\d\d e:0 \| to stderr", line), line
    daemon.stop_daemon()


def test_json_lines_to_stdout_and_to_a_file(daemon: Daemon, tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    daemon.write(f"""
        [apps.j]
        command = {json.dumps([PY, "-c", ECHO])}
        log_format = "json"
        out_file = "-"
        error_file = "{log}"
        """)
    _proc, out = _start(daemon)
    got = json.loads(out.line(10, "a JSON line"))
    assert set(got) == {"time", "app", "instance", "stream", "message"}
    assert (got["app"], got["instance"], got["stream"], got["message"]) == (
        "j", 0, "out", "to stdout")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", got["time"])
    text = wait_for(lambda: log.exists() and log.read_text(), 10, "the JSON log file")
    entry = json.loads(text.splitlines()[0])
    assert (entry["app"], entry["instance"], entry["stream"], entry["message"]) == (
        "j", 0, "err", "to stderr")
    daemon.stop_daemon()


def _fields(payload: bytes) -> dict[str, bytes]:
    """A native journal entry, parsed (both field encodings)."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(payload):
        nl = payload.index(b"\n", i)
        eq = payload.find(b"=", i, nl)
        if eq >= 0:
            out[payload[i:eq].decode()] = payload[eq + 1:nl]
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", payload[nl + 1:nl + 9])
            out[payload[i:nl].decode()] = payload[nl + 9:nl + 9 + size]
            assert payload[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return out


@pytest.fixture
def fake_journal(daemon: Daemon) -> Iterator[tuple[socket.socket, str]]:
    path = str(daemon.run_dir / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def test_journal_entries_carry_the_fields(daemon: Daemon,
                                          fake_journal: tuple[socket.socket, str]) -> None:
    sock, path = fake_journal
    daemon.write(f"""
        [apps.web]
        command = {json.dumps([PY, "-c", ECHO])}
        out_file = "journal"
        error_file = "journal"
        """)
    env = {**daemon.env, "PROCSUP_JOURNAL_SOCKET": path}
    _start(daemon, env=env)
    entries = {}
    while len(entries) < 2:
        fields = _fields(sock.recv(65536))
        entries[fields["PROCSUP_STREAM"].decode()] = fields
    common = {"SYSLOG_IDENTIFIER": b"web", "PROCSUP_APP": b"web", "PROCSUP_INSTANCE": b"0"}
    assert entries["out"] == {**common, "MESSAGE": b"to stdout", "PRIORITY": b"6",
                              "PROCSUP_STREAM": b"out"}
    assert entries["err"] == {**common, "MESSAGE": b"to stderr", "PRIORITY": b"3",
                              "PROCSUP_STREAM": b"err"}
    assert daemon.stop_daemon() == 0


def test_journal_without_a_journal_socket_is_refused(daemon: Daemon) -> None:
    daemon.write("""
        [apps.web]
        command = "sleep 100"
        error_file = "journal"
        """)
    missing = str(daemon.run_dir / "no-journal.sock")
    r = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=20,
                       env={**daemon.env, "PROCSUP_JOURNAL_SOCKET": missing})
    assert r.returncode == 1
    line = next(n for n, t in enumerate(daemon.config.read_text().splitlines(), 1)
                if t.startswith("error_file"))
    assert f"{daemon.config}:{line}" in r.stderr, r.stderr
    assert "web" in r.stderr and "error_file" in r.stderr and missing in r.stderr, r.stderr


def test_dash_without_foreground_is_warned_about(daemon: Daemon) -> None:
    daemon.write("""
        [apps.web]
        command = "sleep 100"
        out_file = "-"
        """)
    r = subprocess.run([PY, "-m", "procsup.daemon", "--check", "-c", str(daemon.config)],
                       capture_output=True, text=True, timeout=20, env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert "out_file = \"-\" writes to procsupd's stdout, which is /dev/null" in r.stderr


def test_own_log_under_systemd_carries_priority_prefixes(daemon: Daemon) -> None:
    # memory_max without cgroups: a start-up warning, printed before the log exists
    daemon.write("""
        [apps.web]
        command = "sleep 100"
        memory_max = "64M"
        """)
    env = {**daemon.env, "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}
    env.pop("JOURNAL_STREAM", None)
    _start(daemon, env=env)
    daemon.config.write_text(daemon.config.read_text() + "\n[apps.broken]\ncommand = 1\n")
    assert daemon.cli("update").returncode == 1
    wait_for(lambda: "config not applied" in daemon.daemon_log(), 10, "the apply error")
    daemon.stop_daemon()
    lines = daemon.daemon_log().splitlines()
    assert any(ln.startswith("<6>INFO procsupd") and "serving" in ln for ln in lines), lines
    assert any(ln.startswith("<3>ERROR ") and "config not applied" in ln for ln in lines), lines
    assert any(ln.startswith("<4>procsupd: warning: ") and "memory_max" in ln
               for ln in lines), lines
    assert all(re.match(r"<[3467]>", ln) for ln in lines), lines


def test_start_up_failure_under_systemd_is_an_error(daemon: Daemon) -> None:
    """Why procsupd -n does not start reaches the journal at err priority (`journalctl -u
    procsup -p err` shows it), as the log's own errors do; --check prints no prefixes."""
    daemon.write("""
        [apps.web]
        command =
        """)
    env = {**daemon.env, "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}
    env.pop("JOURNAL_STREAM", None)
    for args, prefix in ((["-n"], "<3>"), (["-n", "--check"], "")):
        r = subprocess.run([PY, "-m", "procsup.daemon", *args, "-c", str(daemon.config)],
                           capture_output=True, text=True, timeout=20, env=env)
        # 78 (EX_CONFIG) to start, which the unit's RestartPreventExitStatus= names; 1 to check
        assert r.returncode == (1 if "--check" in args else 78)
        assert r.stderr.startswith(f"{prefix}procsupd: invalid config: "), (args, r.stderr)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare to run procsupd as PID 1 of a pid namespace")
def test_container_pid1_logs_to_stdout_and_stops_in_dependency_order(daemon: Daemon) -> None:
    """procsupd -n as PID 1 of a pid namespace, as a container runs it: the apps' lines reach
    its stdout, and SIGTERM stops the dependent app before its dependency, then exits 0."""
    trap = "trap 'echo {0} stopping; exit 0' TERM; echo {0} up; while :; do sleep 0.05; done"
    daemon.write(f"""
        [apps.db]
        command = "{trap.format("db")}"
        shell = true
        out_file = "-"
        min_uptime = "100ms"

        [apps.web]
        command = "{trap.format("web")}"
        shell = true
        out_file = "-"
        min_uptime = "100ms"
        depends_on = ["db"]
        """)
    ns = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", PY, "-m", "procsup.daemon", "-n",
         "-c", str(daemon.config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=_stderr_file(daemon),
        env=daemon.env)
    _PIPES.append(ns)
    assert ns.stdout is not None
    reader = LineReader(ns.stdout.fileno())
    try:
        assert {reader.line(15, "an app up"), reader.line(15, "the other app up")} == {
            "db:0 | db up", "web:0 | web up"}
        daemon.wait_states("web", "running", 1)
        [procsupd] = map(int, Path(f"/proc/{ns.pid}/task/{ns.pid}/children").read_text().split())
        os.kill(procsupd, signal.SIGTERM)
        assert reader.line(15, "web stopping") == "web:0 | web stopping"
        assert reader.line(15, "db stopping") == "db:0 | db stopping"
        assert ns.wait(20) == 0
    finally:
        if ns.poll() is None:
            daemon.cli("shutdown")
            ns.wait(20)


def test_own_log_and_dash_output_in_one_file_stay_whole(daemon: Daemon) -> None:
    """`procsupd -n > out.log 2>&1`: procsupd's own log (from the loop, and off it: at exit)
    and the apps' "-" lines share one open file without O_APPEND. Each lands after the other,
    whole: no line written at a stale offset over the others."""
    daemon.write(f"""
        [apps.c]
        command = {app_cmd("counter", "0.0005", "120")}
        instances = 2
        out_file = "-"
        error_file = false
        """)
    out = daemon.root / "out.log"
    with open(out, "wb") as f:  # as the shell's `> out.log 2>&1`: one file, no O_APPEND
        daemon.proc = subprocess.Popen(
            [PY, "-m", "procsup.daemon", "-n", "-c", str(daemon.config)],
            stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=daemon.env)
    wait_for(daemon.ping, 15, "procsupd to serve")
    wait_for(lambda: out.read_bytes().count(b"c:1 | ") > 500, 10, "lines of both instances")
    daemon.config.write_text(daemon.config.read_text() + "\n[apps.broken]\ncommand = 1\n")
    assert daemon.cli("update").returncode == 1  # an error line logged on the loop
    time.sleep(0.3)
    assert daemon.stop_daemon() == 0  # and the lines of the exit, after the outlets closed
    nxt = {"0": 0, "1": 0}
    own = []
    data = out.read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    for line in data.decode(errors="replace").splitlines():
        m = COUNTED.fullmatch(line)
        if m is None:
            assert re.match(r"\d{4}-\d\d-\d\d \S+ (INFO|WARNING|ERROR) ", line), repr(line)
            own.append(line)
            continue
        assert int(m.group(3)) == nxt[m.group(2)], (line, nxt)  # none overwritten
        nxt[m.group(2)] += 1
    assert any("config not applied" in line for line in own), own
    assert own[-1].endswith("procsupd exiting"), own[-3:]
    assert min(nxt.values()) > 500, nxt
