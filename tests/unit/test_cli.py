"""`procsup` and its blocking client: arguments, exit codes, output formatting, and end to end
against a real ControlServer (with a fake `Commands`) on a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from procsup import cli, output, protocol
from procsup.client import Client, Unreachable
from procsup.control import ControlServer, Peer, Send
from procsup.errors import ProtocolError, RemoteError

T = TypeVar("T")
Result = Callable[[dict[str, Any], Send], Coroutine[Any, Any, object]]


# --------------------------------------------------------------------------- arguments


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def test_parse_global_options_and_commands() -> None:
    ns = parse("-c", "/etc/x.toml", "-s", "/run/x.sock", "status", "web", "--json")
    assert (ns.config, ns.socket, ns.cmd, ns.apps, ns.json) == (
        "/etc/x.toml", "/run/x.sock", "status", ["web"], True,
    )
    assert parse("ls").cmd == "status"
    assert parse("ls").handler is cli.cmd_status
    ns = parse("stop", "web", "api:1", "--no-wait")
    assert (ns.cmd, ns.apps, ns.no_wait) == ("stop", ["web", "api:1"], True)
    assert parse("restart", "all").no_wait is False
    ns = parse("logs", "web", "-n", "5", "-f", "--err")
    assert (ns.app, ns.lines, ns.follow, ns.err, ns.out) == ("web", 5, True, True, False)
    ns = parse("logs")
    assert (ns.app, ns.lines, ns.follow) == (None, 20, False)
    ns = parse("signal", "USR2", "web", "api")
    assert (ns.sig, ns.apps) == (signal.SIGUSR2, ["web", "api"])
    ns = parse("scale", "web", "4")
    assert (ns.app, ns.instances, ns.no_wait) == ("web", 4, False)
    assert parse("reread", "--json").json is True
    assert parse("update", "--no-wait").no_wait is True
    assert parse("shutdown", "--no-wait").no_wait is True
    for name in ("dump", "version", "ping"):
        assert parse(name).cmd == name


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["start"],
        ["stop", "--no-wait"],
        ["signal", "USR2"],
        ["signal", "NOPE", "web"],
        ["signal", "0", "web"],
        ["logs", "-n", "x"],
        ["logs", "--err", "--out"],
        ["scale", "web"],
        ["scale", "web", "-1"],
        ["status", "--bogus"],
        ["import", "pm3", "x.json"],
        ["import", "pm2"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_arguments_the_table_refuses_exit_2_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No daemon at that path: a 3 would mean the request was tried.
    assert cli.main(["-s", str(tmp_path / "none.sock"), "logs", "-n", "100001"]) == 2
    assert "lines" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("status", "start", "logs", "shutdown", "reread", "scale"):
        assert name in out


@pytest.mark.parametrize(
    ("text", "number"),
    [("SIGUSR2", signal.SIGUSR2), ("USR2", signal.SIGUSR2), ("usr2", signal.SIGUSR2),
     ("12", 12), ("SIGTERM", 15), ("hup", 1), ("9", 9)],
)
def test_parse_signal(text: str, number: int) -> None:
    assert cli.parse_signal_arg(text) == number


@pytest.mark.parametrize("text", ["NOPE", "SIG", "0", "-1", "", "SIG_IGN", "1.5"])
def test_parse_signal_refuses(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_signal_arg(text)


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0s"), (0.9, "0s"), (12.5, "12s"), (59.99, "59s"), (60, "1m0s"),
     (303, "5m3s"), (3599, "59m59s"), (3600, "1h0m"), (7440, "2h4m"), (86399, "23h59m"),
     (86400, "1d0h"), (266400, "3d2h"), (-5, "0s")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert output.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"),
     (25165824, "24.0M"), (1024**3 * 2, "2.0G"), (1024**4 * 3, "3.0T"), (1024**5, "1024.0T")],
)
def test_format_size(n: int | None, text: str) -> None:
    assert output.format_size(n) == text


def test_format_cpu_and_exit() -> None:
    assert output.format_cpu(0.3) == "0.3%"
    assert output.format_cpu(123.456) == "123.5%"
    assert output.format_cpu(None) == "-"
    assert output.format_exit(None) == "-"
    assert output.format_exit(0) == "exit 0"
    assert output.format_exit(3) == "exit 3"
    assert output.format_exit(-9) == "SIGKILL"


def instance(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "app": "web", "instance": 0, "pid": 4242, "state": "running", "uptime": 12.5,
        "restarts": 0, "cpu": 0.3, "memory": 25165824, "exit_code": None, "reason": None,
        "status": None, "next_cron_restart": None,
    }
    row.update(kw)
    return row


STATUS = {
    "config": {"path": "/etc/procsup/apps.toml", "applied": True, "error": None,
               "profile": None},
    "instances": [
        instance(),
        instance(instance=1, pid=None, state="errored", uptime=None, restarts=15, cpu=None,
                 memory=None, exit_code=1, reason="executable not found: foo"),
        instance(app="worker", pid=77, uptime=7440, cpu=12.0, memory=1536, restarts=2,
                 exit_code=-9),
    ],
}


def test_format_status_table() -> None:
    assert output.format_status(STATUS) == (
        "APP     ID  PID   STATE    UPTIME  RESTARTS  CPU    MEM    LAST EXIT/REASON\n"
        "web     0   4242  running  12s     0         0.3%   24.0M  -\n"
        "web     1   -     errored  -       15        -      -      executable not found: foo\n"
        "worker  0   77    running  2h4m    2         12.0%  1.5K   SIGKILL\n"
    )


def test_format_status_shows_the_status_text_an_instance_sent() -> None:
    """STATUS= is in the table too (contract §1), quoted as the app's words, after the reason
    or last exit when there is one; a long one is cut, control characters are escaped."""
    rows = [
        instance(status="serving 12 clients"),
        instance(instance=1, restarts=2, exit_code=1, status="warming cache"),
        instance(instance=2, state="stopping", reason="over max_memory_restart", status="bye"),
        instance(instance=3, status="x" * 100),
        instance(instance=4, status='say "hi"\tthen\x1b[31m'),
        instance(instance=5, status=""),
        instance(instance=6, status=["not", "text"]),
    ]
    lines = output.format_status({"instances": rows}).splitlines()[1:]
    ends = [line.rsplit("24.0M  ", 1)[1] for line in lines]
    assert ends == [
        '"serving 12 clients"',
        'exit 1; "warming cache"',
        'over max_memory_restart; "bye"',
        '"' + "x" * 57 + '..."',
        '"say \\"hi\\"\\tthen\\u001b[31m"',
        "-",
        "-",
    ]


def test_format_status_health_column_only_with_health_checks() -> None:
    rows = {"instances": [
        instance(health="healthy"),
        instance(instance=1, pid=4243, health="unhealthy",
                 reason="health check failed (1 of 3): GET /healthz answered 500"),
        instance(instance=2, pid=None, state="starting", uptime=None, cpu=None, memory=None,
                 health="unknown"),
        instance(app="worker", pid=77, health=None),  # no check: "-"
    ]}
    assert output.format_status(rows) == (
        "APP     ID  PID   STATE     HEALTH     UPTIME  RESTARTS  CPU   MEM    LAST EXIT/REASON\n"
        "web     0   4242  running   healthy    12s     0         0.3%  24.0M  -\n"
        "web     1   4243  running   unhealthy  12s     0         0.3%  24.0M  "
        "health check failed (1 of 3): GET /healthz answered 500\n"
        "web     2   -     starting  unknown    -       0         -     -      -\n"
        "worker  0   77    running   -          12s     0         0.3%  24.0M  -\n"
    )
    # no app shown has a check (health null, or a daemon that does not say): no column
    assert "HEALTH" not in output.format_status({"instances": [instance(health=None)]})
    assert output.format_status(STATUS) == output.format_status(
        {**STATUS, "instances": [{**i, "health": None} for i in STATUS["instances"]]})


def test_format_status_config_not_applied_and_empty() -> None:
    res = {
        "config": {"path": "/etc/apps.toml", "applied": False,
                   "error": "/etc/apps.toml:3: app 'web', key 'comand': unknown key"},
        "instances": [],
    }
    assert output.format_status(res) == (
        "config /etc/apps.toml is not applied: /etc/apps.toml:3: app 'web', key 'comand': "
        "unknown key\n"
        "no apps configured\n"
    )
    res["config"]["error"] = {"message": "bad", "text": "/etc/apps.toml:3: bad"}  # type: ignore[index]
    assert output.format_status(res).startswith(
        "config /etc/apps.toml is not applied: /etc/apps.toml:3: bad\n"
    )
    assert output.format_status({"config": {"applied": True}, "instances": []}) == (
        "no apps configured\n"
    )
    assert output.format_status({"instances": []}, filtered=True) == "no matching instances\n"


def test_format_status_names_log_files_that_refuse_writes() -> None:
    full = {"path": "/l/web-out.log", "error": "cannot write: No space left on device",
            "since": "2026-12-02T07:20:00+00:00", "dropped_lines": 3555,
            "dropped_bytes": 355500}
    resumed = {**full, "path": "/l/web-error.log", "error": None, "since": None}
    row = {"app": "web", "pid": 4242, "state": "running", "uptime": 5, "restarts": 0}
    res = {"instances": [
        {**row, "instance": 0, "log_errors": [full, resumed]},
        {**row, "instance": 1, "log_errors": [full]},  # merge_logs: one file, both named
        {**row, "instance": 2, "log_errors": [resumed]},  # writing again: only --json has it
        {**row, "instance": 3, "log_errors": "garbage from a newer daemon"},
    ]}
    text = output.format_status(res)
    assert text.endswith(
        "  -\n"
        "web:0, web:1: log file /l/web-out.log: cannot write: No space left on device (since "
        "2026-12-02T07:20:00+00:00; 3555 lines, 347.2K dropped)\n")
    assert "web-error.log" not in text
    assert output.format_status({"instances": [row]}) == output.format_status(
        {"instances": [{**row, "log_errors": []}]})


def test_format_outcome_signalled_and_plan() -> None:
    res = {
        "instances": [
            {"app": "web", "instance": 0, "state": "running", "pid": 4242, "reason": None},
            {"app": "web", "instance": 1, "state": "errored", "pid": None,
             "reason": "executable not found: foo"},
            {"app": "api", "instance": 10, "state": "stopped", "pid": None, "reason": None},
        ],
        "failed": True,
    }
    assert output.format_outcome(res) == (
        "web:0   running  pid 4242\n"
        "web:1   errored  executable not found: foo\n"
        "api:10  stopped\n"
    )
    assert output.format_outcome({"instances": []}) == "no instances\n"
    assert output.format_signalled(
        {"signalled": [{"app": "web", "instance": 0, "pid": 4242}], "failed": False}, "SIGUSR2"
    ) == "sent SIGUSR2 to web:0 (pid 4242)\n"
    assert "not sent" in output.format_signalled({"signalled": [], "failed": True}, "SIGHUP")
    assert output.format_plan({
        "actions": [
            {"action": "restart", "app": "web", "instances": [0, 1], "reason": "command changed"},
            {"action": "start", "app": "new", "instances": [0], "reason": "new app"},
        ],
        "restart_daemon": ["socket"],
    }) == (
        "restart  web (0, 1): command changed\n"
        "start    new (0): new app\n"
        "takes effect when procsupd restarts: socket\n"
    )
    assert output.format_plan({"actions": [], "restart_daemon": []}) == "no changes\n"


def line(text: str, app: str = "web", inst: int | None = 0, stream: str = "out") -> dict[str, Any]:
    return {"app": app, "instance": inst, "stream": stream, "text": text}


def printed(*frames: object) -> str:
    out: list[str] = []
    printer = output.LogPrinter(out.append)
    for f in frames:
        printer.feed(f)
    return "".join(out)


def test_log_lines_plain_from_one_file_prefixed_from_several() -> None:
    assert printed({"lines": [line("a"), line("b")]}) == "a\nb\n"
    assert printed({"lines": [line("a"), line("oops", stream="err"), line("c", "api", None)]}) == (
        "web:0 | a\nweb:0 err | oops\napi | c\n"  # both streams shown: stderr labelled
    )
    assert printed({"lines": [line("x", stream="err"), line("y", inst=1, stream="err")]}) == (
        "web:0 | x\nweb:1 | y\n"  # one stream: no label needed
    )
    # Following: the first frame decides; a second file switches to prefixes.
    frames = ({"lines": [line("a")]}, {"lines": [line("b")]}, {"lines": [line("c", inst=1)]})
    assert printed(*frames) == "a\nb\nweb:1 | c\n"
    assert printed({"lines": []}) == ""


def test_streams_elsewhere_say_where_they_go() -> None:
    def said(place: dict[str, str] | None, *, stream: str = "out", json_format: bool = False,
             instances: list[int] | None = None) -> str:
        entry = {"app": "web", "instances": [0] if instances is None else instances,
                 "stream": stream, "target": "-", "place": place, "json": json_format}
        return output.format_elsewhere(entry, lines=20, follow=False)

    head = 'web:0 stdout goes to procsupd\'s standard output (out_file = "-")'
    assert said({"kind": "null"}).startswith(head + ": procsupd runs daemonized")
    assert said({"kind": "terminal", "path": "/dev/pts/3"}) == (
        head + ": it is the terminal procsupd runs in (/dev/pts/3)")
    assert said({"kind": "pipe"}) == (
        head + ": read it where procsupd's output goes (docker logs, kubectl logs, journalctl "
        '-u procsup), where its lines start with "web:<instance> | " (after the date, if any)')
    assert said({"kind": "journal", "unit": "procsup.service"}).endswith(
        ": journalctl -u procsup.service")
    assert said(None, stream="err", json_format=True, instances=[0, 1, 2, 3]).startswith(
        'web:0-3 stderr goes to procsupd\'s standard error (error_file = "-"): read it where')
    assert 'JSON objects with "app": "web"' in said({"kind": "pipe"}, json_format=True)
    assert output.format_elsewhere(
        {"app": "a b", "instances": [1], "stream": "both", "target": "journal"},
        lines=5, follow=True) == ('a b:1 stdout and stderr go to the systemd journal (out_file '
                                  "and error_file = \"journal\"), not to a file: journalctl -n 5 "
                                  "-f 'PROCSUP_APP=a b'")


def test_stdio_place_tells_a_file_a_pipe_and_dev_null(tmp_path: Path) -> None:
    from procsup import outlets

    with open(tmp_path / "out.log", "w") as f:
        assert outlets.stdio_place(f.fileno(), {}) == {"kind": "file",
                                                        "path": str(tmp_path / "out.log")}
    with open(os.devnull, "w") as f:
        assert outlets.stdio_place(f.fileno(), {}) == {"kind": "null"}
    r, w = os.pipe()
    try:
        assert outlets.stdio_place(w, {}) == {"kind": "pipe"}
        st = os.fstat(w)
        journal = outlets.stdio_place(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert journal["kind"] == "journal"
    finally:
        os.close(r)
        os.close(w)
    assert outlets.stdio_place(10**6, {}) == {"kind": "closed"}


# --------------------------------------------------------------------------- end to end


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def finish() -> None:
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        self.run(finish())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class FakeDaemon:
    """`Commands` answering from canned coroutines; records what it was asked."""

    def __init__(self) -> None:
        self.handlers: dict[str, Result] = {}
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.cancelled = threading.Event()

    def on(self, cmd: str, result: object) -> None:
        async def canned(args: dict[str, Any], send: Send) -> object:
            if isinstance(result, BaseException):
                raise result
            return result

        self.handlers[cmd] = canned

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: Peer, send: Send) -> object:
        self.seen.append((cmd, args))
        handler = self.handlers.get(cmd)
        if handler is None:
            raise RemoteError("unknown_command", f"this procsupd does not support {cmd!r}")
        try:
            return await handler(args, send)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[FakeDaemon, str]]:
    lt = LoopThread()
    fake = FakeDaemon()
    path = str(tmp_path / "ctl.sock")
    server = ControlServer(path, fake, mode=0o600, group_gid=None,
                           logger=logging.getLogger("test.cli"))
    lt.run(server.start())
    yield fake, path
    lt.run(server.close())
    lt.close()


def run(path: str, *argv: str) -> int:
    return cli.main(["-s", path, *argv])


def test_status_table_and_json(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, path = daemon
    fake.on("status", STATUS)
    assert run(path, "status") == 0
    assert capsys.readouterr().out == output.format_status(STATUS)
    assert run(path, "ls", "--json", "web") == 0
    out = capsys.readouterr().out
    assert out == json.dumps(STATUS) + "\n"
    assert list(json.loads(out)) == ["config", "instances"]  # order as received
    assert fake.seen == [("status", {"apps": []}), ("status", {"apps": ["web"]})]


def test_start_stop_restart_wait_and_exit_status(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, path = daemon
    ok = {"instances": [{"app": "web", "instance": 0, "state": "running", "pid": 42,
                         "reason": None}], "failed": False}
    bad = {"instances": [{"app": "web", "instance": 1, "state": "errored", "pid": None,
                          "reason": "executable not found: foo"}], "failed": True}
    fake.on("start", ok)
    fake.on("restart", bad)
    fake.on("stop", ok)
    assert run(path, "start", "web") == 0
    assert capsys.readouterr().out == "web:0  running  pid 42\n"
    assert run(path, "restart", "all") == 1
    assert capsys.readouterr().out == "web:1  errored  executable not found: foo\n"
    assert run(path, "stop", "web", "--no-wait") == 0
    assert fake.seen == [
        ("start", {"apps": ["web"], "wait": True}),
        ("restart", {"apps": ["all"], "wait": True}),
        ("stop", {"apps": ["web"], "wait": False}),
    ]


def test_double_dash_ends_the_options_before_an_app_name(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11: `procsup stop -h` is the help of `stop` (exit 0, nothing sent); an app named
    "-h" (valid before names starting with '-' were refused) is reached after `--`, and the
    main help says so."""
    fake, path = daemon
    ok = {"instances": [{"app": "-h", "instance": 0, "state": "stopped", "pid": None,
                         "reason": None}], "failed": False}
    fake.on("stop", ok)
    assert run(path, "stop", "-h") == 0
    assert "usage: procsup stop" in capsys.readouterr().out
    assert fake.seen == []
    assert run(path, "stop", "--", "-h") == 0
    assert capsys.readouterr().out == "-h:0  stopped\n"
    fake.on("status", STATUS)
    assert run(path, "status", "--json", "--", "-h") == 0
    assert fake.seen == [("stop", {"apps": ["-h"], "wait": True}), ("status", {"apps": ["-h"]})]
    capsys.readouterr()
    assert cli.main(["--help"]) == 0
    assert "procsup stop -- -h" in " ".join(capsys.readouterr().out.split())


def test_error_reply_exits_1_with_the_message(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, path = daemon
    fake.on("stop", RemoteError("unknown_app", "unknown app or instance: wbe (apps: web)"))
    assert run(path, "stop", "wbe") == 1
    assert capsys.readouterr().err == "procsup: unknown app or instance: wbe (apps: web)\n"
    # Commands this daemon does not implement yet.
    for argv in (["reread"], ["update"], ["reload", "all"], ["scale", "web", "2"], ["dump"]):
        assert run(path, *argv) == 1
        assert "does not support" in capsys.readouterr().err


def test_signal_logs_ping_version_shutdown(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, path = daemon
    fake.on("signal", {"signalled": [{"app": "web", "instance": 0, "pid": 42}], "failed": False})
    assert run(path, "signal", "SIGUSR2", "web") == 0
    assert capsys.readouterr().out == "sent SIGUSR2 to web:0 (pid 42)\n"
    assert fake.seen[-1] == ("signal", {"signal": 12, "apps": ["web"]})

    fake.on("logs", {"lines": [line("hello"), line("world")]})
    assert run(path, "logs", "web", "-n", "2", "--out") == 0
    assert capsys.readouterr().out == "hello\nworld\n"
    assert fake.seen[-1] == ("logs", {"app": "web", "lines": 2, "stream": "out", "follow": False})

    fake.on("ping", {"pong": True, "pid": 42, "version": "9.9"})
    assert run(path, "ping") == 0
    assert capsys.readouterr().out == "pong from procsupd 9.9 (pid 42)\n"

    fake.on("version", {"version": "9.9", "protocol": 1})
    assert run(path, "version") == 0
    from procsup import __version__

    assert capsys.readouterr().out == (
        f"procsup {__version__} (protocol 1)\nprocsupd 9.9 (protocol 1)\n"
    )

    fake.on("shutdown", {"stopped": 3})
    assert run(path, "shutdown", "--no-wait") == 0
    assert capsys.readouterr().out == "procsupd is shutting down\n"
    assert fake.seen[-1] == ("shutdown", {"wait": False})


def test_reserved_commands_print_their_results(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, path = daemon
    plan = {"actions": [{"action": "stop", "app": "old", "instances": [0], "reason": "removed"}],
            "restart_daemon": []}
    fake.on("reread", plan)
    assert run(path, "reread") == 0
    assert capsys.readouterr().out == "stop     old (0): removed\n"
    assert run(path, "reread", "--json") == 0
    assert json.loads(capsys.readouterr().out) == plan
    fake.on("update", {**plan, "failed": True})
    assert run(path, "update") == 1
    fake.on("dump", {"toml": "[apps.web]\ncommand = \"x\"\n"})
    assert run(path, "dump") == 0
    assert capsys.readouterr().out.endswith('[apps.web]\ncommand = "x"\n')
    fake.on("scale", {"instances": [], "failed": False})
    assert run(path, "scale", "web", "0", "--no-wait") == 0
    assert fake.seen[-1] == ("scale", {"app": "web", "instances": 0, "wait": False})


def test_unreachable_exits_3_and_names_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.sock")
    assert cli.main(["-s", missing, "status"]) == 3
    err = capsys.readouterr().err
    assert missing in err and "no such socket" in err

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, never listening: connect() is refused
    assert cli.main(["-s", str(stale), "ping"]) == 3
    err = capsys.readouterr().err
    assert str(stale) in err and "refused" in err

    # `version` still tells the client's version.
    assert cli.main(["-s", missing, "version"]) == 3
    assert capsys.readouterr().out.startswith("procsup ")


def test_client_errors(tmp_path: Path) -> None:
    with pytest.raises(Unreachable) as info:
        Client(str(tmp_path / "x.sock"), 1).call("ping")
    assert info.value.path == str(tmp_path / "x.sock")
    with pytest.raises(ProtocolError):  # refused before connecting
        Client(str(tmp_path / "x.sock"), 1).call("stop", apps=[])


def test_client_timeout_and_a_daemon_that_dies(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        start = time.monotonic()
        with pytest.raises(Unreachable, match=r"no reply within 0\.3s"):
            Client(path, 0.3).call("ping")  # accepted by the kernel, never answered
        assert time.monotonic() - start < 3

        def answer_badly() -> None:
            conn, _ = listener.accept()
            with conn:
                protocol.read_frame(conn, protocol.MAX_REQUEST)
                conn.sendall(protocol.encode({"v": 1, "ok": True, "result": 1})[:-1])

        listener.accept()[0].close()  # the connection left over from the timeout
        t = threading.Thread(target=answer_badly)
        t.start()
        with pytest.raises(Unreachable, match="closed before the reply"):
            Client(path, 5).call("ping")
        t.join(5)


@pytest.mark.nonroot
@pytest.mark.skipif(os.geteuid() == 0, reason="root may connect to any socket")
def test_permission_denied_exits_3(
    daemon: tuple[FakeDaemon, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = daemon
    os.chmod(path, 0)
    assert cli.main(["-s", path, "ping"]) == 3
    assert "permission denied" in capsys.readouterr().err


def test_logs_follow_stops_on_ctrl_c_with_exit_0(daemon: tuple[FakeDaemon, str]) -> None:
    fake, path = daemon

    async def follow(args: dict[str, Any], send: Send) -> object:
        await send({"lines": [line("first")]})
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    fake.handlers["logs"] = follow
    proc = subprocess.Popen(
        [sys.executable, "-m", "procsup.cli", "-s", path, "logs", "-f"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err
    assert fake.cancelled.wait(5)  # the daemon stopped following for it
    assert fake.seen[-1][1]["follow"] is True


def test_the_cli_loads_no_daemon_machinery(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from procsup import cli\n"
        f"rc = cli.main(['-s', {str(tmp_path / 'none.sock')!r}, 'status'])\n"
        "heavy = ['asyncio', 'psutil', 'daemon', 'watchdog', 'procsup.supervisor',\n"
        "         'procsup.apply', 'procsup.running', 'procsup.monitors',\n"
        "         'procsup.control', 'procsup.spawn', 'procsup.logs', 'procsup.metrics',\n"
        "         'procsup.config', 'procsup.schema']\n"
        "print(rc, [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out == "3 []\n"


def test_status_finds_the_socket_without_the_config_machinery(tmp_path: Path) -> None:
    # Without -s, `status` reads the config file for its socket (CONTRACT §1), a broken one too,
    # and still loads neither the schema nor cron nor croniter (`procsup status` starts fast).
    broken = tmp_path / "apps.toml"
    broken.write_text('[procsup]\nsocket = "x.sock"\n[apps\n')
    code = (
        "import sys\n"
        "from procsup import cli\n"
        "rc = cli.main(['status'])\n"
        "heavy = ['croniter', 'procsup.schema', 'procsup.cron', 'procsup.config', 'asyncio',\n"
        "         'psutil', 'daemon', 'watchdog', 'procsup.procfs']\n"
        "print(rc, [m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "PROCSUP_CONFIG": str(broken)}
    env.pop("PROCSUP_SOCKET", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True,
        env=env,
    )
    assert proc.stdout == "3 []\n"
    assert str(tmp_path / "x.sock") in proc.stderr  # the socket named by the broken file


def test_format_status_names_a_stream_that_is_not_a_file() -> None:
    gone = {"path": "stdout", "error": "cannot write: Broken pipe", "since": "2026-12-02T07:20",
            "dropped_lines": 2, "dropped_bytes": 20}
    row = {"app": "web", "instance": 0, "pid": 4242, "state": "running", "uptime": 5,
           "restarts": 0, "log_errors": [gone]}
    assert output.format_status({"instances": [row]}).endswith(
        "web:0: logging to stdout: cannot write: Broken pipe (since 2026-12-02T07:20; "
        "2 lines, 20B dropped)\n")
