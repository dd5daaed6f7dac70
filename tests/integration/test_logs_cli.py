"""Logs end to end: files, names, prefixes, partial lines, rotation, `procsup logs`."""

from __future__ import annotations

import re
import socket
import subprocess

from .conftest import PY, Daemon, LineReader, app_cmd, wait_for


def test_partial_last_line_is_flushed_and_prefixed(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.p]
        command = {app_cmd("partial")}
        autorestart = false
        log_date_format = "%Y-%m-%d %H:%M:%S.%f %z"
        """)
    daemon.start()
    daemon.wait_states("p", "exited", 1)
    log = daemon.log_dir / "p-out.log"
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 2, 5, "both lines")
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} [+-]\d{4} "
    assert re.fullmatch(stamp + "whole line", lines[0]), lines[0]
    assert re.fullmatch(stamp + "partial tail", lines[1]), lines[1]


def test_file_options_merge_same_path_and_discard(daemon: Daemon) -> None:
    daemon.write(f"""
        [apps.m]
        command = {app_cmd("sleeper")}
        instances = 2
        merge_logs = true
        out_file = "merged.log"
        error_file = "merged.log"
        [apps.d]
        command = {app_cmd("sleeper")}
        out_file = false
        error_file = "d.custom.err"
        [apps.i]
        command = {app_cmd("sleeper")}
        instances = 2
        out_file = "i.out.log"
        """)
    daemon.start()
    merged = daemon.log_dir / "merged.log"
    wait_for(lambda: merged.exists() and merged.read_text().count("\n") == 4, 5, "merged")
    text = merged.read_text()
    assert "instance=0" in text and "instance=1" in text and text.count("to stderr") == 2
    err = daemon.log_dir / "d.custom.err"
    wait_for(lambda: err.exists() and "to stderr" in err.read_text(), 5, "custom err")
    assert not (daemon.log_dir / "d-out.log").exists()
    for i in (0, 1):
        p = daemon.log_dir / f"i.out-{i}.log"
        wait_for(lambda p=p, i=i: p.exists() and f"instance={i}" in p.read_text(), 5, str(p))


def test_logs_command_tail_and_follow(daemon: Daemon) -> None:
    daemon.write("""
        [apps.n]
        command = ["/bin/sh", "-c",
                   "for i in $(seq 1 50); do echo line$i; done; echo oops >&2; exec sleep 1000"]
        min_uptime = "100ms"
        """)
    daemon.start()
    log = daemon.log_dir / "n-out.log"
    wait_for(lambda: log.exists() and "line50" in log.read_text(), 5, "50 lines")
    r = daemon.cli("logs", "n", "-n", "3", "--out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["line48", "line49", "line50"]
    r = daemon.cli("logs", "n", "-n", "2")
    assert "line50" in r.stdout and "oops" in r.stdout
    r = daemon.cli("logs", "n", "--err", "-n", "5")
    assert "oops" in r.stdout and "line50" not in r.stdout
    r = daemon.cli("logs", "nope")
    assert r.returncode == 1
    # -f follows new lines as they are written. The last line comes first (-n 1): once it is
    # here, the follower is subscribed (the daemon subscribes as it sends the tail).
    with subprocess.Popen(
        [PY, "-m", "procsup.cli", "-s", daemon.socket, "logs", "n", "-f", "-n", "1", "--out"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=daemon.env,
    ) as follower:
        try:
            assert follower.stdout is not None
            reader = LineReader(follower.stdout.fileno())
            tail = reader.line(10, "the tail")
            assert tail.strip().endswith("line50"), tail
            assert daemon.cli("restart", "n").returncode == 0
            first = reader.line(10, "the first line after the restart")
            assert first.strip().endswith("line1"), first
        finally:
            follower.terminate()
            follower.wait(5)


def test_rotation_by_size_keeps_retain_files(daemon: Daemon) -> None:
    daemon.write("""
        [apps.r]
        command = ["/bin/sh", "-c", '''i=0; while [ $i -lt 3000 ]; do
                   echo 0123456789012345678901234567890123456789-$i; i=$((i+1));
                   done; exec sleep 1000''']
        log_max_size = "20K"
        log_retain = 2
        min_uptime = "100ms"
        """)
    daemon.start()

    def written() -> str:
        return "".join(p.read_text() for p in daemon.log_dir.glob("r-out.log*"))

    # the write that passes the size is rotated away at once, so look at every file
    wait_for(lambda: "-2999" in written(), 10, "all lines")
    rotated = sorted(p.name for p in daemon.log_dir.glob("r-out.log*"))
    assert rotated == ["r-out.log", "r-out.log.1", "r-out.log.2"]
    for p in daemon.log_dir.glob("r-out.log*"):
        # a file passes the size by at most one line, however much one read brought
        assert p.stat().st_size <= 20 * 1024 + 50
        for line in p.read_text().splitlines():
            assert re.fullmatch(r"0123456789012345678901234567890123456789-\d+", line), line


def test_logs_says_where_streams_that_are_not_files_go(daemon: Daemon) -> None:
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal_path = str(daemon.run_dir / "journal.sock")
    journal.bind(journal_path)  # a fake journal: the entries are not read here
    daemon.env["PROCSUP_JOURNAL_SOCKET"] = journal_path
    daemon.write("""
        [apps.a]
        command = ["/bin/sh", "-c", "echo to-dash; echo to-journal >&2; exec sleep 1000"]
        instances = 2
        out_file = "-"
        error_file = "journal"
        [apps.j]
        command = "sleep 1000"
        out_file = "journal"
        error_file = "journal"
        [apps.d]
        command = "sleep 1000"
        out_file = false
        error_file = false
        [apps.f]
        command = ["/bin/sh", "-c", "echo in-a-file; exec sleep 1000"]
        error_file = "-"
        """)
    try:
        daemon.start()
        log = daemon.log_dir / "f-out.log"
        wait_for(lambda: log.exists() and "in-a-file" in log.read_text(), 5, "f's line")
        # Daemon.start puts procsupd's stdout and stderr in one file: the message names it.
        dash = (f'procsup: a:0,1 stdout goes to procsupd\'s standard output (out_file = "-"), '
                f'the file {daemon.stderr_path}, where its lines start with "a:<instance> | "')
        in_journal = ('procsup: a:0,1 stderr goes to the systemd journal (error_file = '
                      '"journal"), not to a file: journalctl -n 20 PROCSUP_APP=a '
                      'PROCSUP_STREAM=err\n')

        # Nothing at all to show: every stream is elsewhere; exit 1, the why on stderr.
        r = daemon.cli("logs", "a")
        assert r.returncode == 1 and r.stdout == "", r
        assert dash in r.stderr and in_journal in r.stderr, r.stderr
        r = daemon.cli("logs", "a", "--err", "-n", "5", "-f", timeout=10)  # returns at once
        assert r.returncode == 1 and r.stdout == "", r
        assert r.stderr == ("procsup: a:0,1 stderr goes to the systemd journal (error_file = "
                            '"journal"), not to a file: journalctl -n 5 -f PROCSUP_APP=a '
                            "PROCSUP_STREAM=err\n"), r.stderr
        r = daemon.cli("logs", "j")
        assert r.returncode == 1, r
        assert r.stderr == ("procsup: j:0 stdout and stderr go to the systemd journal "
                            '(out_file and error_file = "journal"), not to a file: '
                            "journalctl -n 20 PROCSUP_APP=j\n"), r.stderr
        r = daemon.cli("logs", "d", "--out")
        assert r.returncode == 1, r
        assert r.stderr == ("procsup: d:0 stdout is discarded (out_file = false): there is "
                            "nothing to show\n"), r.stderr

        # A file to show: it is shown, the rest is said on stderr, exit 0.
        r = daemon.cli("logs", "f")
        assert r.returncode == 0 and r.stdout == "in-a-file\n", r
        assert "procsup: f:0 stderr goes to procsupd's standard error" in r.stderr, r.stderr
        r = daemon.cli("logs")
        assert r.returncode == 0 and "in-a-file" in r.stdout, r
        assert dash in r.stderr and in_journal in r.stderr and "j:0 stdout and stderr" in r.stderr
        assert "d:0 stdout and stderr are discarded" in r.stderr, r.stderr
        assert daemon.stop_daemon() == 0
    finally:
        journal.close()
