"""procsup.config and procsup.schema: loading, validation, locations, defaults, socket discovery."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from procsup import config, configfile, paths, schema, values
from procsup.errors import ConfigError
from procsup.model import AppSpec, Condition, DaemonSpec, Desired, ExecMode, RestartPolicy

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "etc" / "procsup" / "apps.toml"
DOCS = REPO / "docs" / "config.md"
CPUS = len(os.sched_getaffinity(0))
USER_ENV = {"HOME": "/home/u"}


def write(tmp_path: Path, text: str, name: str = "apps.toml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_text(tmp_path: Path, text: str, **kw: Any) -> Desired:
    kw.setdefault("uid", 0)
    kw.setdefault("environ", {})
    return config.load(write(tmp_path, text), **kw)


def load_app(tmp_path: Path, snippet: str, **kw: Any) -> AppSpec:
    return load_text(tmp_path, f'[apps.a]\ncommand = "x"\n{snippet}\n', **kw).apps["a"]


def load_error(tmp_path: Path, text: str, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **kw)
    return info.value


# -- every app key: valid values ------------------------------------------------------------

APP_VALID = [
    ("shell = true\n", "command", ("/bin/sh", "-c", "x")),
    ('cwd = "/srv/a"', "cwd", "/srv/a"),
    ('cwd = "sub/dir"', "cwd", "{tmp}/sub/dir"),
    ('cwd = "../up"', "cwd", "{parent}/up"),
    ("instances = 0", "instances", 0),
    ("instances = 3", "instances", 3),
    ('instances = "max"', "instances", CPUS),
    ("instances = -1", "instances", max(1, CPUS - 1)),
    ("instances = -1000", "instances", 1),
    ('exec_mode = "fork"', "exec_mode", ExecMode.FORK),
    ('exec_mode = "cluster"\nlisten = "tcp://127.0.0.1:8000"', "exec_mode", ExecMode.CLUSTER),
    ('env = { A = "1", PORT = 8000 }', "env", {"A": "1", "PORT": "8000"}),
    ("inherit_env = false", "inherit_env", False),
    ('user = "www-data"', "user", "www-data"),
    ('group = "www-data"', "group", "www-data"),
    ('umask = "022"', "umask", 0o22),
    ('umask = "0077"', "umask", 0o77),
    ("autorestart = true", "autorestart", RestartPolicy.ALWAYS),
    ("autorestart = false", "autorestart", RestartPolicy.NEVER),
    ('autorestart = "on-failure"', "autorestart", RestartPolicy.ON_FAILURE),
    ("max_restarts = 0", "max_restarts", 0),
    ("max_restarts = 3", "max_restarts", 3),
    ('min_uptime = "2s"', "min_uptime", 2.0),
    ("min_uptime = 500", "min_uptime", 0.5),
    ('restart_delay = "1m"', "restart_delay", 60.0),
    ('exp_backoff_restart_delay = "100ms"', "exp_backoff_restart_delay", 0.1),
    ('kill_signal = "INT"', "kill_signal", int(signal.SIGINT)),
    ('kill_signal = "sigquit"', "kill_signal", int(signal.SIGQUIT)),
    ("kill_signal = 9", "kill_signal", 9),
    ('kill_signal = "10"', "kill_signal", 10),
    ('kill_timeout = "1.5s"', "kill_timeout", 1.5),
    ("kill_timeout = 0", "kill_timeout", 0.0),
    ('out_file = "a.log"', "out_file", "/var/log/procsup/a.log"),
    ('out_file = "/abs/o.log"', "out_file", "/abs/o.log"),
    ("out_file = false", "out_file", None),
    ('error_file = "sub/e.log"', "error_file", "/var/log/procsup/sub/e.log"),
    ("error_file = false", "error_file", None),
    ('out_file = "-"', "out_file", "-"),  # procsupd's stdout: not a file in log_dir
    ('error_file = "-"', "error_file", "-"),
    ('out_file = "./-"', "out_file", "/var/log/procsup/-"),  # a file named "-"
    ('out_file = "./journal"', "out_file", "/var/log/procsup/journal"),
    ('log_format = "json"', "log_format", "json"),
    ('log_format = "text"', "log_format", "text"),
    ("merge_logs = true", "merge_logs", True),
    ('log_date_format = "%H:%M"', "log_date_format", "%H:%M"),
    ('log_max_size = "50M"', "log_max_size", 50 * 1024 * 1024),
    ("log_max_size = 4096", "log_max_size", 4096),
    ("log_retain = 0", "log_retain", 0),
    ("log_retain = 9", "log_retain", 9),
    ('max_memory_restart = "512M"', "max_memory_restart", 512 * 1024 * 1024),
    ("watch = false", "watch", ()),
    ("watch = true", "watch", ("{tmp}",)),
    ('watch = true\ncwd = "/srv/a"', "watch", ("/srv/a",)),
    ('watch = ["src", "/etc/x"]\ncwd = "/srv/a"', "watch", ("/srv/a/src", "/etc/x")),
    ('ignore_watch = ["*.tmp"]', "ignore_watch", ("*.tmp",)),
    ('ignore_watch = "*.tmp"', "ignore_watch", ("*.tmp",)),
    ('cron_restart = "0 4 * * *"', "cron_restart", "0 4 * * *"),
    ('cron_restart = "*/15 0-6 1,15 JAN mon-fri"', "cron_restart", "*/15 0-6 1,15 JAN mon-fri"),
    ('ready = "started"', "ready", "started"),
    ('ready = "notify"', "ready", "notify"),
    ('ready = "tcp://127.0.0.1:8000"', "ready", "tcp://127.0.0.1:8000"),
    ('ready = "tcp://[::1]:8000"', "ready", "tcp://[::1]:8000"),
    ('ready = "http://localhost:8000/health"', "ready", "http://localhost:8000/health"),
    ('ready_timeout = "45s"', "ready_timeout", 45.0),
    ('ready = "notify"\nheartbeat_timeout = "10s"', "heartbeat_timeout", 10.0),
    ('ready = "log:Ready to accept"', "ready", "log:Ready to accept"),
    ('health = "tcp://127.0.0.1:6379"', "health", "tcp://127.0.0.1:6379"),
    ('health = ["redis-cli", "ping"]', "health", ("redis-cli", "ping")),
    ('health = "http://[::1]:80/h"\nhealth_interval = "1s"', "health_interval", 1.0),
    ('health = "tcp://h:1"\nhealth_failures = 1', "health_failures", 1),
    ('reload_signal = "HUP"', "reload_signal", 1),
    ('reload_signal = 10', "reload_signal", 10),
    (
        'exec_mode = "cluster"\nlisten = ["tcp://0.0.0.0:80", "tcp://[::]:80", "unix:/run/a.sock"]',
        "listen",
        ("tcp://0.0.0.0:80", "tcp://[::]:80", "unix:/run/a.sock"),
    ),
    ('exec_mode = "cluster"\nlisten = "unix:a.sock"', "listen", ("unix:{tmp}/a.sock",)),
    ('exec_mode = "cluster"\nlisten = "tcp://h:1"\nbalance = "reuseport"', "balance", "reuseport"),
]


@pytest.mark.parametrize(("snippet", "field", "expected"), APP_VALID)
def test_app_key_valid(tmp_path: Path, snippet: str, field: str, expected: object) -> None:
    app = load_app(tmp_path, snippet)
    if isinstance(expected, str):
        expected = expected.replace("{tmp}", str(tmp_path))
        expected = expected.replace("{parent}", str(tmp_path.parent))
    elif isinstance(expected, tuple):
        expected = tuple(e.replace("{tmp}", str(tmp_path)) for e in expected)
    assert getattr(app, field) == expected


# -- every app key: invalid values (error names app, key, exact line, and says why) ----------

APP_INVALID = [
    ("command = 5", "command", "expected string or array of strings, got integer"),
    ('command = ""', "command", "must not be empty"),
    ("command = []", "command", "must not be empty"),
    ('command = ["", "x"]', "command", "program"),
    ('command = ["x", 1]', "command", "item 1"),
    ('command = "x \'unclosed"', "command", "cannot split"),
    ('shell = "yes"', "shell", "expected boolean, got string"),
    ("cwd = 1", "cwd", "expected string (path), got integer"),
    ('cwd = ""', "cwd", "must not be empty"),
    ("instances = 1.5", "instances", 'expected integer or "max", got float'),
    ('instances = "all"', "instances", '"max"'),
    ("instances = true", "instances", "got boolean"),
    ('exec_mode = "cluster_mode"', "exec_mode", '"fork" or "cluster"'),
    ("env = 1", "env", "expected table of strings"),
    ("env = { A = true }", "env", "variable 'A': expected string or integer, got boolean"),
    ("env = { A = [1] }", "env", "got array"),
    ("env_file = 1", "env_file", "expected string or array"),
    ('env_file = [""]', "env_file", "must not be empty"),
    ('inherit_env = "no"', "inherit_env", "expected boolean"),
    ("user = 1000", "user", "expected string (user name), got integer"),
    ('group = ""', "group", "must not be empty"),
    ("umask = 22", "umask", "expected string (octal)"),
    ('umask = "089"', "umask", "invalid mode"),
    ('autorestart = "always"', "autorestart", 'true, false or "on-failure"'),
    ("autorestart = 1", "autorestart", "got integer"),
    ("max_restarts = -1", "max_restarts", ">= 0"),
    ('max_restarts = "3"', "max_restarts", "expected integer >= 0, got string"),
    ('min_uptime = "1"', "min_uptime", "invalid duration"),
    ("min_uptime = -5", "min_uptime", "negative"),
    ("min_uptime = 1.5", "min_uptime", "got float"),
    ('restart_delay = "1 day"', "restart_delay", "invalid duration"),
    ('exp_backoff_restart_delay = "0s"', "exp_backoff_restart_delay", "greater than zero"),
    ('kill_signal = "SIGFOO"', "kill_signal", "unknown signal"),
    ("kill_signal = 0", "kill_signal", "invalid signal"),
    ("kill_timeout = true", "kill_timeout", "got boolean"),
    ("out_file = true", "out_file", "true is not allowed"),
    ("out_file = 1", "out_file", 'expected string (path), "-", "journal" or false'),
    ('log_format = "xml"', "log_format", 'expected "text" or "json"'),
    ('log_format = "json"\nlog_date_format = "%H"', "log_date_format", "not used with"),
    ("error_file = true", "error_file", "true is not allowed"),
    ('merge_logs = "no"', "merge_logs", "expected boolean"),
    ("log_date_format = 1", "log_date_format", "expected string"),
    ('log_max_size = "50T"', "log_max_size", "invalid size"),
    ("log_max_size = 0", "log_max_size", "greater than zero"),
    ("log_retain = -1", "log_retain", ">= 0"),
    ('max_memory_restart = "lots"', "max_memory_restart", "invalid size"),
    ('watch = "src"', "watch", "expected boolean or array"),
    ("watch = [1]", "watch", "item 0"),
    ("ignore_watch = true", "ignore_watch", "expected string or array"),
    ('cron_restart = "0 4 * *"', "cron_restart", "5 fields"),
    ('cron_restart = "0 4 * * * *"', "cron_restart", "5 fields"),
    ('cron_restart = "0 4 * * ;"', "cron_restart", "invalid cron"),
    ('ready = "ready"', "ready", "invalid ready"),
    ('ready = "tcp://host"', "ready", "HOST:PORT"),
    ('ready = "tcp://host:70000"', "ready", "1..65535"),
    ('ready = "http://:80/x"', "ready", "HOST:PORT"),
    ('ready_timeout = "0s"', "ready_timeout", "greater than zero"),
    ('heartbeat_timeout = "10s"', "heartbeat_timeout", 'only used with ready = "notify"'),
    ('ready = "log:"', "ready", "regular expression after"),
    ('ready = "log:(unclosed"', "ready", "bad regular expression"),
    ('health = "redis-cli ping"', "health", "a command as an array"),
    ('health = "tcp://h"', "health", "HOST:PORT"),
    ("health = []", "health", "must not be empty"),
    ('health_interval = "1s"', "health_interval", "only used with health"),
    ('health = "tcp://h:1"\nhealth_failures = 0', "health_failures", ">= 1"),
    ('health = "tcp://h:1"\nhealth_timeout = 0', "health_timeout", "greater than zero"),
    ('reload_signal = "SIGNOPE"', "reload_signal", "signal"),
    ('pidfile = ""', "pidfile", "must not be empty"),
    ("pidfile = 1", "pidfile", "expected string (path)"),
    ('instances = 2\npidfile = "x.pid"', "pidfile", "define one app per instance"),
    ('exec_mode = "cluster"\nlisten = "tcp://h:1"\npidfile = "x.pid"', "pidfile",
     'only used with exec_mode = "fork"'),
    ('depends_on = "db"', "depends_on", "expected array"),
    ('depends_on = { db = "up" }', "depends_on", 'expected one of "started"'),
    ('depends_on = { db = 1 }', "depends_on", "got integer"),
    ('depends_on = ["db", "db"]', "depends_on", "listed twice"),
    ('depends_on = ["all"]', "depends_on", "not an app"),
    ('ready = "notify"\nheartbeat_timeout = 0', "heartbeat_timeout", "greater than zero"),
    ('listen = "tcp://0.0.0.0:80"', "listen", 'only used with exec_mode = "cluster"'),
    ('balance = "shared"', "balance", 'only used with exec_mode = "cluster"'),
    ('exec_mode = "cluster"\nlisten = "tcp://0.0.0.0"', "listen", "HOST:PORT"),
    ('exec_mode = "cluster"\nlisten = "tcp://[zz]:80"', "listen", "IPv6"),
    ('exec_mode = "cluster"\nlisten = "tcp://h:0"', "listen", "1..65535"),
    ('exec_mode = "cluster"\nlisten = "udp://h:80"', "listen", "invalid listen address"),
    ('exec_mode = "cluster"\nlisten = "unix:"', "listen", "unix:/path"),
    ('exec_mode = "cluster"\nlisten = []', "listen", "needs"),
    ('exec_mode = "cluster"\nlisten = "tcp://h:1"\nbalance = "rr"', "balance", "reuseport"),
    ("env_production = 1", "env_production", "expected table of strings"),
    ('env_files = [".env"]', "env_files", "did you mean 'env_file'?"),
    ("kill_sginal = 9", "kill_sginal", "unknown key 'kill_sginal'; did you mean 'kill_signal'?"),
    ("autorestrat = true", "autorestart", None),  # key named as written; see next test
    ("zzzzzz = 1", "zzzzzz", "unknown key 'zzzzzz'"),
]


@pytest.mark.parametrize(("snippet", "key", "message"), APP_INVALID)
def test_app_key_invalid(tmp_path: Path, snippet: str, key: str, message: str | None) -> None:
    text = f'# leading comment\n\n[apps.a]\ncommand = "x"\n{snippet}\n'
    if snippet.startswith("command"):
        text = f"# leading comment\n\n[apps.a]\n{snippet}\n"
    err = load_error(tmp_path, text)
    if message is None:  # a typo: the key is named as written, with a suggestion
        assert err.key == "autorestrat"
        assert "did you mean 'autorestart'?" in err.message
        return
    assert err.app == "a"
    assert err.key == key
    assert err.file == str(tmp_path / "apps.toml")
    assert message in err.message
    # The error points at the line of the key itself.
    lines = text.splitlines()
    expected = next(i for i, ln in enumerate(lines, 1) if re.match(rf"{key}\s*=", ln))
    assert err.line == expected, str(err)
    assert str(err).startswith(f"{err.file}:{err.line}: app 'a', key '{key}': ")


def test_pidfile_is_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    got = load_text(tmp_path, '[apps.a]\ncommand = "x"\ncwd = "run"\npidfile = "a.pid"\n'
                    '[apps.b]\ncommand = "x"\npidfile = "/abs/b.pid"\n[apps.c]\ncommand = "x"\n')
    assert got.apps["a"].pidfile == str(tmp_path / "run" / "a.pid")
    assert got.apps["b"].pidfile == "/abs/b.pid"
    assert got.apps["c"].pidfile is None


def test_missing_command_points_at_the_app_table(tmp_path: Path) -> None:
    err = load_error(tmp_path, "\n[apps.a]\ninstances = 2\n")
    assert (err.app, err.key, err.line) == ("a", "command", 2)
    assert "missing required key 'command'" in err.message


def test_cluster_without_listen_is_rejected(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[apps.a]\ncommand = "x"\nexec_mode = "cluster"\n')
    assert (err.app, err.key, err.line) == ("a", "listen", 1)
    assert "listen" in err.message


# -- [procsup] keys -----------------------------------------------------------------------------

DAEMON_VALID = [
    ('socket = "/x/s.sock"', "socket", "/x/s.sock"),
    ('socket = "run/s.sock"', "socket", "{tmp}/run/s.sock"),
    ('socket_mode = "0600"', "socket_mode", 0o600),
    ('socket_group = "procsup"', "socket_group", "procsup"),
    ('pidfile = "/x/p.pid"', "pidfile", "/x/p.pid"),
    ('log_dir = "logs"', "log_dir", "{tmp}/logs"),
    ('state_dir = "/x/state"', "state_dir", "/x/state"),
    ('include = ["d/*.toml"]', "include", ("{tmp}/d/*.toml",)),
    ('include = "/etc/x/*.toml"', "include", ("/etc/x/*.toml",)),
    ('env = "production"', "env", "production"),
    ("watch_config = false", "watch_config", False),
    ('shutdown_timeout = "1m"', "shutdown_timeout", 60.0),
    ("shutdown_timeout = 2500", "shutdown_timeout", 2.5),
]


@pytest.mark.parametrize(("snippet", "field", "expected"), DAEMON_VALID)
def test_daemon_key_valid(tmp_path: Path, snippet: str, field: str, expected: object) -> None:
    daemon = load_text(tmp_path, f"[procsup]\n{snippet}\n").daemon
    if isinstance(expected, str):
        expected = expected.replace("{tmp}", str(tmp_path))
    elif isinstance(expected, tuple):
        expected = tuple(e.replace("{tmp}", str(tmp_path)) for e in expected)
    assert getattr(daemon, field) == expected


DAEMON_INVALID = [
    ("socket = 1", "socket", "expected string (path), got integer"),
    ('socket = ""', "socket", "must not be empty"),
    ("socket_mode = 660", "socket_mode", "expected string (octal)"),
    ('socket_mode = "rw"', "socket_mode", "invalid mode"),
    ("socket_group = false", "socket_group", "expected string"),
    ("pidfile = []", "pidfile", "got array"),
    ("log_dir = {}", "log_dir", "got table"),
    ("state_dir = 1", "state_dir", "got integer"),
    ("include = [1]", "include", "item 0"),
    ('env = "prod uction"', "env", "invalid profile name"),
    ('watch_config = "yes"', "watch_config", "expected boolean"),
    ('shutdown_timeout = "forever"', "shutdown_timeout", "invalid duration"),
    ('sokcet = "/x"', "sokcet", "unknown key 'sokcet'; did you mean 'socket'?"),
]


@pytest.mark.parametrize(("snippet", "key", "message"), DAEMON_INVALID)
def test_daemon_key_invalid(tmp_path: Path, snippet: str, key: str, message: str) -> None:
    err = load_error(tmp_path, f'[apps.a]\ncommand = "x"\n\n[procsup]\n{snippet}\n')
    assert (err.app, err.key, err.line) == (None, key, 5)
    assert message in err.message
    assert str(err).startswith(f"{tmp_path / 'apps.toml'}:5: key '{key}': ")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[app.web]\ncommand = "x"\n', 1, "unknown top-level key 'app'; did you mean 'apps'?"),
        ("\nprocsop = 1\n", 2, "did you mean 'procsup'?"),
        ("procsup = 1\n", 1, "'procsup' must be a table"),
        ("apps = 1\n", 1, "'apps' must be a table"),
        ('[apps]\nweb = "x"\n', 2, "an app must be a table"),
    ],
)
def test_top_level_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    err = load_error(tmp_path, text)
    assert err.line == line
    assert message in err.message


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("[apps.all]", "reserved"),
        ('[apps."my app"]', "invalid app name"),
        ('[apps."a/b"]', "invalid app name"),
        ('[apps.""]', "invalid app name"),
        # `$` matched before a final newline: "web\n" passed.
        ('[apps."web\\n"]', "invalid app name"),
        # Issue 11: `procsup stop -h` printed the usage instead of stopping the app.
        ('[apps."-h"]', "app names may not start with '-' (it reads as an option on the "
                        "command line)"),
        ("[apps.-web]", "may not start with '-'"),
        # Issue 11: a 300-character name failed only at start, with ENAMETOOLONG.
        (f"[apps.{'a' * 300}]", "app name too long: 300 characters, at most 100"),
        (f"[apps.{'a' * 101}]", "app name too long: 101 characters, at most 100"),
    ],
)
def test_bad_app_names(tmp_path: Path, header: str, message: str) -> None:
    err = load_error(tmp_path, f'\n{header}\ncommand = "x"\n')
    assert err.line == 2
    assert message in err.message
    assert str(err).startswith(f"{tmp_path / 'apps.toml'}:2: app ")


def test_app_name_limits_are_allowed(tmp_path: Path) -> None:
    """Up to 100 characters; '-' anywhere but first; a leading '.' or '_' is no option."""
    names = ["a" * values.APP_NAME_MAX, "a-", "_x", ".x", "9"]
    text = "".join(f'[apps."{n}"]\ncommand = "x"\n' for n in names)
    assert list(load_text(tmp_path, text).apps) == names


def test_the_longest_app_name_fits_its_log_file_names(tmp_path: Path) -> None:
    """The bound leaves every default log file (per instance, rotated) a file name the file
    system takes: each is created for real."""
    name = "a" * values.APP_NAME_MAX
    app = load_text(tmp_path, f'[apps.{name}]\ncommand = "x"\ninstances = 100000\n'
                    "log_retain = 1000\n").apps[name]
    for path in app.log_paths(99999):
        assert path is not None
        (tmp_path / (os.path.basename(path) + ".1000")).touch()


def test_app_names_with_dots_and_quotes(tmp_path: Path) -> None:
    desired = load_text(tmp_path, '[apps."api.v2"]\ncommand = "x"\n[apps.b-1_c]\ncommand = "y"\n')
    assert list(desired.apps) == ["api.v2", "b-1_c"]
    assert desired.apps["api.v2"].line == 1
    assert desired.apps["b-1_c"].line == 3


# -- line locator -------------------------------------------------------------------------------

APP_LINE_CASES = [
    # (text, line of app "a"): its header where it has one (the header scan), else the first
    # line that defines it (the scan of every line)
    ('[apps.a]\ncommand = "x"\n', 1),
    ('# c\n\n  [ apps . "a" ]  # x\ncommand = "x"\n', 3),
    ("[apps.b]\ncommand = 'y'\n\n[apps.'a']\ncommand = 'x'\n", 4),
    ('[apps]\nb = { command = "y" }\na = { command = "x" }\n', 3),
    ('apps.b.command = "y"\napps.a.command = "x"\n', 2),
    # a line like a header inside a multi-line string is not one
    ('[apps.b]\ncommand = """\n[apps.a]\n"""\n[apps.a]\ncommand = "x"\n', 5),
    ("[apps.b]\ncommand = '''\n[apps.a]\n'''\n[apps.a]\ncommand = 'x'\n", 5),
]


@pytest.mark.parametrize(("text", "line"), APP_LINE_CASES)
def test_app_definition_line(tmp_path: Path, text: str, line: int) -> None:
    assert load_text(tmp_path, text).apps["a"].line == line


LOCATOR_CASES = [
    # (text, (app, key), expected line)
    ('[apps.a]\ncommand = "x"\nshell = 1\n', "shell", 3),
    ('[apps."a"]\ncommand = "x"\n\n  shell  =  1\n', "shell", 4),
    ("[apps.'a']\ncommand = \"x\"\n'shell' = 1\n", "shell", 3),
    ('[apps]\na = { command = "x", shell = 1 }\n', "shell", 2),
    ('[apps]\na.command = "x"\na.shell = 1\n', "shell", 3),
    ('apps.a.command = "x"\n\napps.a.shell = 1\n', "shell", 3),
    ('[apps.a]\ncommand = """\nshell = 1\n"""\nshell = 1\n', "shell", 5),
    ('[apps.b]\ncommand = "x"\nshell = true\n[apps.a]\ncommand = "x"\nshell = 1\n', "shell", 6),
    ('[apps.a]\ncommand = "x"\nenv.A = "1"\nenv.B = true\n', "env", 4),
    ('[apps.a]\ncommand = "x"\n[apps.a.env]\nA = "1"\nB = true\n', "env", 5),
    ('[apps.a]\ncommand = "x"\nenv_file = [\n  "ok",\n  1,\n]\n', "env_file", 3),
]


@pytest.mark.parametrize(("text", "key", "line"), LOCATOR_CASES)
def test_error_line_numbers(tmp_path: Path, text: str, key: str, line: int) -> None:
    err = load_error(tmp_path, text)
    assert (err.app, err.key, err.line) == ("a", key, line), str(err)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[apps.a]\ncommand = "x"\nshell = \n', 3),
        ('[apps.a]\ncommand = "x\n', 2),
        ('[apps.a]\ncommand = "x"\n[apps.a]\n', 3),
        ("\n\n[apps.a\n", 3),
    ],
)
def test_toml_syntax_error_line(tmp_path: Path, text: str, line: int) -> None:
    err = load_error(tmp_path, text)
    assert err.message.startswith("TOML syntax error: ")
    assert "(at line" not in err.message
    assert err.line == line
    assert err.file == str(tmp_path / "apps.toml")


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    path.write_bytes(b'[apps.a]\ncommand = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(path), uid=0, environ={})
    assert (info.value.line, info.value.message) == (2, "not valid UTF-8")
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        config.load(str(tmp_path / "nope.toml"), uid=0, environ={})
    assert info.value.file == str(tmp_path / "nope.toml")


# -- command, env, profiles -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "argv"),
    [
        ("command = \"python3 -m app --name 'a b'\"", ("python3", "-m", "app", "--name", "a b")),
        ('command = ["python3", "-c", "print(1)", ""]', ("python3", "-c", "print(1)", "")),
        ('command = "echo $HOME | cat"\nshell = true', ("/bin/sh", "-c", "echo $HOME | cat")),
        ('command = ["echo", "a b"]\nshell = true', ("/bin/sh", "-c", "echo 'a b'")),
    ],
)
def test_command_forms(tmp_path: Path, snippet: str, argv: tuple[str, ...]) -> None:
    text = f"[apps.a]\n{snippet}\n"
    assert load_text(tmp_path, text).apps["a"].command == argv


ENV_APP = """
[procsup]
{procsup}

[apps.a]
command = "x"
cwd = "work"
env = {{ A = "env", B = "env", C = "env" }}
env_file = ["one.env", "/abs/{abs_name}"]
env_production = {{ C = "production" }}
env_staging = {{ C = "staging", D = "staging" }}
"""


def env_case(tmp_path: Path, procsup: str = "", **kw: Any) -> dict[str, str]:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "one.env").write_text("# comment\n\nB=one\nexport C='one'\nE=\"one\"\n")
    absdir = tmp_path / "abs"
    absdir.mkdir()
    (absdir / "two.env").write_text("E=two # trailing comment\n")
    text = ENV_APP.format(procsup=procsup, abs_name="two.env").replace("/abs/", f"{absdir}/")
    return dict(load_text(tmp_path, text, **kw).apps["a"].env)


def test_env_precedence_without_profile(tmp_path: Path) -> None:
    assert env_case(tmp_path) == {"A": "env", "B": "one", "C": "one", "E": "two"}


def test_env_precedence_with_file_profile(tmp_path: Path) -> None:
    env = env_case(tmp_path, 'env = "production"')
    assert env == {"A": "env", "B": "one", "C": "production", "E": "two"}


def test_profile_argument_overrides_file_profile(tmp_path: Path) -> None:
    desired_env = env_case(tmp_path, 'env = "production"', profile="staging")
    assert desired_env == {"A": "env", "B": "one", "C": "staging", "D": "staging", "E": "two"}


def test_active_profile_is_reported(tmp_path: Path) -> None:
    text = '[procsup]\nenv = "production"\n[apps.a]\ncommand = "x"\n'
    assert load_text(tmp_path, text).profile == "production"
    assert load_text(tmp_path, text, profile="dev").profile == "dev"
    assert load_text(tmp_path, '[apps.a]\ncommand = "x"\n').profile is None
    err = load_error(tmp_path, text, profile="a b")
    assert "invalid profile name" in err.message


def test_env_file_relative_to_file_dir_without_cwd(tmp_path: Path) -> None:
    (tmp_path / "x.env").write_text("K=v\n")
    app = load_app(tmp_path, 'env_file = "x.env"')
    assert app.env == {"K": "v"}


def test_missing_env_file_names_app_key_and_path(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[apps.a]\ncommand = "x"\nenv_file = [".env"]\n')
    main = str(tmp_path / "apps.toml")
    assert (err.file, err.line, err.app, err.key) == (main, 3, "a", "env_file")
    assert str(tmp_path / ".env") in err.message


def test_env_file_syntax_error_points_into_the_env_file(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("A=1\n\nnot a pair\n")
    err = load_error(tmp_path, '[apps.a]\ncommand = "x"\nenv_file = "bad.env"\n')
    assert (err.file, err.line, err.app, err.key) == (str(tmp_path / "bad.env"), 3, "a", "env_file")


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("", None),
        ("   ", None),
        ("# c", None),
        ("  # c = d", None),
        ("A=1", ("A", "1")),
        ("A = 1", ("A", "1")),
        ("export A=1", ("A", "1")),
        ("A=", ("A", "")),
        ("A=a b  ", ("A", "a b")),
        ("A=a#b", ("A", "a#b")),
        ("A=a #b", ("A", "a")),
        ("A='x # y'", ("A", "x # y")),
        ("A='a\\nb'", ("A", "a\\nb")),
        ('A="a\\nb"', ("A", "a\nb")),
        ('A="say \\"hi\\""', ("A", 'say "hi"')),
        ('A="x" # comment', ("A", "x")),
        ("A=x=y", ("A", "x=y")),
        ("_A9=1", ("_A9", "1")),
    ],
)
def test_parse_env_line(line: str, parsed: tuple[str, str] | None) -> None:
    assert values.parse_env_line(line) == parsed


@pytest.mark.parametrize(
    "line", ["A", "9A=1", "A-B=1", "=1", 'A="open', "A='open", 'A="x" y', "export"]
)
def test_parse_env_line_invalid(line: str) -> None:
    with pytest.raises(ValueError):
        values.parse_env_line(line)


# -- includes ----------------------------------------------------------------------------------


def test_includes_are_merged_in_order(tmp_path: Path) -> None:
    write(tmp_path, '[apps.c]\ncommand = "c"\ncwd = "here"\n', "d/2.toml")
    write(tmp_path, '[apps.b]\ncommand = "b"\n', "d/1.toml")
    write(tmp_path, '[apps.z]\ncommand = "z"\n', "d/ignored.txt")
    text = '[procsup]\ninclude = ["d/*.toml", "d/1.toml"]\n[apps.a]\ncommand = "a"\n'
    desired = load_text(tmp_path, text)
    assert list(desired.apps) == ["a", "b", "c"]
    assert desired.files == (
        str(tmp_path / "apps.toml"),
        str(tmp_path / "d" / "1.toml"),
        str(tmp_path / "d" / "2.toml"),
    )
    # Relative paths in an included file are relative to that file.
    assert desired.apps["c"].cwd == str(tmp_path / "d" / "here")
    assert desired.apps["c"].source == str(tmp_path / "d" / "2.toml")


def test_include_glob_without_match_is_fine(tmp_path: Path) -> None:
    desired = load_text(tmp_path, '[procsup]\ninclude = "nothing/*.toml"\n')
    assert desired.apps == {}
    assert len(desired.files) == 1


@pytest.mark.parametrize(
    ("included", "line", "message"),
    [
        ('[apps.b]\ncommand = "b"\n\n[procsup]\nenv = "x"\n', 4, "found [procsup]"),
        ('include = ["*.toml"]\n', 1, "found key 'include'"),
        ('[apps.b]\ncommand = "b"\nkill_sginal = 9\n', 3, "did you mean 'kill_signal'?"),
        ('[apps.b]\ncommand = "b\n', 2, "TOML syntax error"),
    ],
)
def test_errors_in_included_file_name_that_file(
    tmp_path: Path, included: str, line: int, message: str
) -> None:
    inc = write(tmp_path, included, "apps.d/inc.toml")
    err = load_error(tmp_path, '[procsup]\ninclude = ["apps.d/*.toml"]\n')
    assert (err.file, err.line) == (inc, line)
    assert message in err.message


def test_duplicate_app_between_main_and_include(tmp_path: Path) -> None:
    inc = write(tmp_path, '\n[apps.a]\ncommand = "other"\n', "apps.d/inc.toml")
    err = load_error(
        tmp_path, '[procsup]\ninclude = ["apps.d/*.toml"]\n\n[apps.a]\ncommand = "x"\n'
    )
    assert (err.file, err.line, err.app) == (inc, 2, "a")
    assert f"{tmp_path / 'apps.toml'}:4" in err.message
    assert "defined twice" in err.message


def test_an_invalid_config_names_the_files_and_globs_it_read(tmp_path: Path) -> None:
    """For the config watch: what a refused config would have read, to watch it as well."""
    inc = write(tmp_path, '[apps.a]\ncommand = "x"\ninstances = 1.5\n', "apps.d/inc.toml")
    err = load_error(tmp_path, '[procsup]\ninclude = ["apps.d/*.toml"]\n')
    assert err.files == (str(tmp_path / "apps.toml"), inc)
    assert err.include == (str(tmp_path / "apps.d/*.toml"),)


def test_duplicate_app_between_two_includes(tmp_path: Path) -> None:
    one = write(tmp_path, '[apps.a]\ncommand = "x"\n', "apps.d/1.toml")
    two = write(tmp_path, '[apps.b]\ncommand = "x"\n[apps.a]\ncommand = "y"\n', "apps.d/2.toml")
    err = load_error(tmp_path, '[procsup]\ninclude = ["apps.d/*.toml"]\n')
    assert (err.file, err.line, err.app) == (two, 3, "a")
    assert f"{one}:1" in err.message


# -- includes through links, bounds, special files: a load that cannot hang -------------------
# Each of these hung (a FIFO, a recursive glob through links) or misreported before; the timeout
# makes such a regression fail instead of hanging the run.


@pytest.mark.timeout(20)
def test_include_through_a_symlink_loop_reads_each_file_once(tmp_path: Path) -> None:
    """The fault run's tree: loop.d/self1 -> . and loop.d/self2 -> . under `**`. Before, the
    glob grew exponentially; one loop also made 20 "defined twice" errors."""
    write(tmp_path, '[apps.b]\ncommand = "b"\n', "loop.d/a.toml")
    (tmp_path / "loop.d" / "self1").symlink_to(".")
    (tmp_path / "loop.d" / "self2").symlink_to(".")
    text = '[apps.a]\ncommand = "a"\n[procsup]\ninclude = ["loop.d/**/*.toml"]\n'
    desired = load_text(tmp_path, text)
    assert list(desired.apps) == ["a", "b"]
    assert desired.files == (str(tmp_path / "apps.toml"), str(tmp_path / "loop.d" / "a.toml"))
    d = tmp_path / "loop.d"
    assert desired.warnings == (
        f"{tmp_path / 'apps.toml'}:4: key 'include': include '{d}/**/*.toml': a symlink loop, "
        f"not followed: {d}/self1 -> {d}, {d}/self2 -> {d}",
    )


def test_a_file_reached_through_two_links_or_globs_is_included_once(tmp_path: Path) -> None:
    write(tmp_path, '[apps.s]\ncommand = "s"\n', "shared/s.toml")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").symlink_to("../shared")
    (tmp_path / "d" / "y").symlink_to("../shared")
    (tmp_path / "d" / "z.toml").symlink_to("../shared/s.toml")
    text = '[procsup]\ninclude = ["d/*/*.toml", "d/*.toml", "shared/*.toml", "*.toml"]\n'
    desired = load_text(tmp_path, text)  # no "defined twice": one file, four ways to it
    assert list(desired.apps) == ["s"]
    assert desired.files == (str(tmp_path / "apps.toml"), str(tmp_path / "d/x/s.toml"))
    assert desired.warnings == ()


def test_include_deeper_than_the_bound_names_pattern_line_and_limit(tmp_path: Path) -> None:
    deep = tmp_path.joinpath("conf.d", *(f"n{i}" for i in range(17)))
    write(tmp_path, '[apps.b]\ncommand = "b"\n', str(deep.relative_to(tmp_path) / "b.toml"))
    err = load_error(tmp_path, '[procsup]\n\ninclude = ["conf.d/**/*.toml"]\n')
    main = str(tmp_path / "apps.toml")
    assert (err.file, err.line, err.app, err.key) == (main, 3, None, "include")
    assert err.message == (
        f"include '{tmp_path}/conf.d/**/*.toml' goes more than 16 directories deep below "
        f"{tmp_path}/conf.d (at {deep})")


def test_include_of_more_files_than_the_bound(tmp_path: Path) -> None:
    (tmp_path / "many").mkdir()
    for i in range(1001):
        (tmp_path / "many" / f"{i:04}.toml").write_text("")
    err = load_error(tmp_path, '[procsup]\ninclude = ["many/*.toml"]\n')
    assert (err.line, err.key) == (2, "include")
    assert err.message == f"include '{tmp_path}/many/*.toml' matches more than 1000 files"
    (tmp_path / "many" / "1000.toml").unlink()
    assert len(load_text(tmp_path, '[procsup]\ninclude = ["many/*.toml"]\n').files) == 1001


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def socket_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    return path


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (fifo, "a FIFO"),
        (socket_file, "a socket"),
        (lambda p: Path("/dev/null"), "a character device"),
        (lambda p: p.parent, "a directory"),
    ],
)
def test_a_main_config_that_is_no_regular_file_is_refused(
    tmp_path: Path, make: Any, kind: str
) -> None:
    path = make(tmp_path / "apps.toml")
    with pytest.raises(ConfigError) as info:
        config.load(str(path), uid=0, environ={})
    assert (info.value.file, info.value.line) == (str(path), None)
    assert info.value.message == f"cannot read config file: it is {kind}, not a regular file"


@pytest.mark.timeout(10)
def test_special_files_matched_by_an_include_are_refused_by_name(tmp_path: Path) -> None:
    write(tmp_path, '[apps.ok]\ncommand = "x"\n', "apps.d/1.toml")
    pipe = fifo(tmp_path / "apps.d" / "2.toml")
    sock = socket_file(tmp_path / "apps.d" / "3.toml")
    (tmp_path / "apps.d" / "4.toml").symlink_to("/dev/null")
    (tmp_path / "apps.d" / "5.toml").mkdir()  # a directory a glob matches is no file: skipped
    err = load_error(tmp_path, '[procsup]\ninclude = ["apps.d/*.toml"]\n')
    assert str(err).splitlines() == [
        f"{pipe}: cannot read config file: it is a FIFO, not a regular file",
        f"{sock}: cannot read config file: it is a socket, not a regular file",
        f"{tmp_path}/apps.d/4.toml: cannot read config file: it is a character device, "
        "not a regular file",
    ]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["a FIFO", "a character device"])
def test_an_env_file_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    env = fifo(tmp_path / "x.env") if kind == "a FIFO" else Path("/dev/null")
    err = load_error(tmp_path, f'[apps.a]\ncommand = "x"\nenv_file = "{env}"\n')
    main = str(tmp_path / "apps.toml")
    assert (err.file, err.line, err.app, err.key) == (main, 3, "a", "env_file")
    assert err.message == f"cannot read env file {env}: it is {kind}, not a regular file"


def test_a_config_file_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "apps.d" / "big.toml"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(configfile.MAX_FILE_SIZE + 1)  # sparse: no disk used
    err = load_error(tmp_path, '[procsup]\ninclude = ["apps.d/*.toml"]\n')
    assert (err.file, err.message) == (
        str(big),
        "cannot read config file: it holds more than 16 MiB, the most a config file may hold")


# -- every problem at once: one broken file never hides the others ------------------------------

INC = '[procsup]\ninclude = ["apps.d/*.toml"]\n'

#: (files by name relative to tmp_path, "apps.toml" being the main file; expected problems in
#: order as (file, line, app, key, part of the message)). "{d}" is tmp_path/apps.d, "{t}" tmp_path.
Problem = tuple[str, int, str | None, str | None, str]
MULTI_CASES: dict[str, tuple[dict[str, str | bytes], list[Problem]]] = {
    "two includes, two errors": (
        {
            "apps.toml": INC,
            "apps.d/1.toml": '[apps.a]\ncommand = "x"\ninstances = 1.5\n',
            "apps.d/2.toml": '\n[apps.b]\nautorestart = "always"\ncommand = "x"\n',
        },
        [
            ("{d}/1.toml", 3, "a", "instances", 'expected integer or "max", got float'),
            ("{d}/2.toml", 3, "b", "autorestart", 'true, false or "on-failure"'),
        ],
    ),
    "syntax error in one include, unknown key in another": (
        {
            "apps.toml": INC,
            "apps.d/1.toml": '[apps.a]\ncommand = "x\n',
            "apps.d/2.toml": '[apps.b]\ncommand = "x"\nkill_sginal = 9\n',
        },
        [
            ("{d}/1.toml", 2, None, None, "TOML syntax error: Illegal character"),
            ("{d}/2.toml", 3, "b", "kill_sginal", "did you mean 'kill_signal'?"),
        ],
    ),
    "broken [procsup] key in the main file and a broken include": (
        {
            "apps.toml": INC + 'shutdown_timeout = "forever"\n[apps.m]\ncommand = "x"\n',
            "apps.d/1.toml": "[apps.a]\ncommand = 5\n",
        },
        [
            ("{t}/apps.toml", 3, None, "shutdown_timeout", "invalid duration"),
            ("{d}/1.toml", 2, "a", "command", "expected string or array of strings"),
        ],
    ),
    "every broken app of a file, the first problem of each": (
        {
            "apps.toml": '[apps.a]\ncommand = 5\nshell = "no"\n[apps.ok]\ncommand = "x"\n'
            "[apps.b]\ncwd = 1\n",
        },
        [
            ("{t}/apps.toml", 2, "a", "command", "expected string or array"),
            ("{t}/apps.toml", 7, "b", "cwd", "expected string (path), got integer"),
        ],
    ),
    "each bad [procsup] key and top-level key": (
        {"apps.toml": '[procsup]\nsokcet = "s"\nsocket_mode = 1\n[app.x]\ncommand = "x"\n'},
        [
            ("{t}/apps.toml", 4, None, "app", "unknown top-level key 'app'"),
            ("{t}/apps.toml", 2, None, "sokcet", "did you mean 'socket'?"),
            ("{t}/apps.toml", 3, None, "socket_mode", "expected string (octal)"),
        ],
    ),
    "an include holding [procsup]: its apps are still checked": (
        {"apps.toml": INC, "apps.d/1.toml": '[procsup]\nenv = "x"\n[apps.a]\n'},
        [
            ("{d}/1.toml", 1, None, "procsup", "may only hold [apps.*] tables, found [procsup]"),
            ("{d}/1.toml", 3, "a", "command", "missing required key 'command'"),
        ],
    ),
    "a duplicate across files is found beside a broken include": (
        {
            "apps.toml": INC + '[apps.a]\ncommand = "x"\n',
            "apps.d/1.toml": "not toml\n",
            "apps.d/2.toml": '[apps.a]\ncommand = "y"\n',
        },
        [
            ("{d}/1.toml", 1, None, None, "TOML syntax error: Expected '='"),
            ("{d}/2.toml", 1, "a", None, "defined twice: first in {t}/apps.toml:3"),
        ],
    ),
    "a second definition of a broken app is still a duplicate": (
        {
            "apps.toml": INC,
            "apps.d/1.toml": "[apps.a]\ncommand = 5\n",
            "apps.d/2.toml": '[apps.a]\ncommand = "x"\n',
        },
        [
            ("{d}/1.toml", 2, "a", "command", "expected string or array"),
            ("{d}/2.toml", 1, "a", None, "defined twice: first in {d}/1.toml:1"),
        ],
    ),
    "an include matched by two globs is reported once": (
        {
            "apps.toml": '[procsup]\ninclude = ["apps.d/*.toml", "apps.d/1.toml"]\n'
            '[apps.a]\nbad = 1\ncommand = "x"\n',
            "apps.d/1.toml": "[apps\n",
        },
        [
            ("{t}/apps.toml", 4, "a", "bad", "unknown key 'bad'"),
            ("{d}/1.toml", 1, None, None, "TOML syntax error"),
        ],
    ),
    "an include that is not UTF-8": (
        {
            "apps.toml": INC,
            "apps.d/1.toml": b'[apps.a]\ncommand = "\xff"\n',
            "apps.d/2.toml": "[apps.b]\n",
        },
        [
            ("{d}/1.toml", 2, None, None, "not valid UTF-8"),
            ("{d}/2.toml", 1, "b", "command", "missing required key 'command'"),
        ],
    ),
    "'procsup' not a table: the apps are still checked": (
        {"apps.toml": "procsup = 1\n[apps.a]\ncommand = []\n"},
        [
            ("{t}/apps.toml", 1, None, None, "'procsup' must be a table"),
            ("{t}/apps.toml", 3, "a", "command", "must not be empty"),
        ],
    ),
    "an env file error and another app's error": (
        {
            "apps.toml": '[apps.a]\ncommand = "x"\nenv_file = "bad.env"\n[apps.b]\ncommand = 1\n',
            "bad.env": "A=1\nnope\n",
        },
        [
            ("{t}/bad.env", 2, "a", "env_file", "expected KEY=VALUE"),
            ("{t}/apps.toml", 5, "b", "command", "expected string or array"),
        ],
    ),
}


def write_files(tmp_path: Path, files: dict[str, str | bytes]) -> str:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return str(tmp_path / "apps.toml")


@pytest.mark.parametrize(("files", "expected"), MULTI_CASES.values(), ids=MULTI_CASES.keys())
def test_every_problem_is_reported(
    tmp_path: Path,
    files: dict[str, str | bytes],
    expected: list[Problem],
) -> None:
    main = write_files(tmp_path, files)
    with pytest.raises(config.ConfigErrors) as info:
        config.load(main, uid=0, environ={})
    err = info.value

    def fill(text: str) -> str:
        return text.format(d=tmp_path / "apps.d", t=tmp_path)

    found = [(e.file, e.line, e.app, e.key) for e in err.errors]
    assert found == [(fill(f), line, app, key) for f, line, app, key, _ in expected], str(err)
    for e, (*_, part) in zip(err.errors, expected, strict=True):
        assert fill(part) in e.message
    # One line per problem, each with its own location; the first problem's location on top.
    assert str(err) == err.message == "\n".join(str(e) for e in err.errors)
    for text, (f, line, *_) in zip(str(err).splitlines(), expected, strict=True):
        assert text.startswith(f"{fill(f)}:{line}: ")
    first = err.errors[0]
    assert (err.file, err.line, err.app, err.key) == (first.file, first.line, first.app, first.key)
    assert err.omitted == 0
    assert isinstance(err, ConfigError)


def test_fixing_every_file_applies_all_of_them(tmp_path: Path) -> None:
    files, _ = MULTI_CASES["syntax error in one include, unknown key in another"]
    main = write_files(tmp_path, files)
    with pytest.raises(ConfigError):
        config.load(main, uid=0, environ={})
    write(tmp_path, '[apps.a]\ncommand = "x"\n', "apps.d/1.toml")
    with pytest.raises(ConfigError) as info:  # one left: a plain ConfigError
        config.load(main, uid=0, environ={})
    assert type(info.value) is ConfigError
    write(tmp_path, '[apps.b]\ncommand = "x"\nkill_signal = 9\n', "apps.d/2.toml")
    assert list(config.load(main, uid=0, environ={}).apps) == ["a", "b"]


def test_invalid_profile_argument_is_reported_with_the_rest(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[apps.a]\ncommand = 1\n", profile="a b")
    assert isinstance(err, config.ConfigErrors)
    assert [(e.file, e.app, e.key) for e in err.errors] == [
        (None, None, "env"),
        (str(tmp_path / "apps.toml"), "a", "command"),
    ]
    assert str(err).splitlines()[0] == (
        "key 'env': invalid profile name 'a b': use letters, digits, '_' and '-'"
    )


@pytest.mark.parametrize(
    ("files", "text"),
    [
        (
            {"apps.toml": INC, "apps.d/1.toml": '[apps.a]\ncommand = "x"\n',
             "apps.d/2.toml": '[apps.b]\ncommand = "x"\nkill_sginal = 9\n'},
            "{d}/2.toml:3: app 'b', key 'kill_sginal': "
            "unknown key 'kill_sginal'; did you mean 'kill_signal'?",
        ),
        (
            {"apps.toml": INC, "apps.d/1.toml": '[apps.a]\ncommand = "x\n'},
            "{d}/1.toml:2: TOML syntax error: Illegal character '\\n'",
        ),
        (
            {"apps.toml": '[apps.a]\ncommand = "x"\n[procsup]\nsokcet = "/s"\n'},
            "{t}/apps.toml:4: key 'sokcet': unknown key 'sokcet'; did you mean 'socket'?",
        ),
        (
            {"apps.toml": '[apps.a]\ncommand = "x"\n',
             "apps.d/1.toml": '[apps.b]\ncommand = "x"\n'},  # not included: not read
            None,
        ),
    ],
)
def test_a_single_problem_is_a_plain_config_error(
    tmp_path: Path, files: dict[str, str | bytes], text: str | None
) -> None:
    main = write_files(tmp_path, files)
    if text is None:
        assert list(config.load(main, uid=0, environ={}).apps) == ["a"]
        return
    with pytest.raises(ConfigError) as info:
        config.load(main, uid=0, environ={})
    assert type(info.value) is ConfigError
    assert str(info.value) == text.format(d=tmp_path / "apps.d", t=tmp_path)
    assert "errors" not in info.value.to_dict()


@pytest.mark.parametrize(
    ("broken", "kept", "omitted"), [(2, 2, 0), (20, 20, 0), (21, 20, 1), (45, 20, 25)]
)
def test_problems_are_capped(tmp_path: Path, broken: int, kept: int, omitted: int) -> None:
    text = "".join(f"[apps.a{i:02}]\ncommand = 1\n" for i in range(broken))
    err = load_error(tmp_path, text)
    assert isinstance(err, config.ConfigErrors)
    assert config.MAX_ERRORS == 20
    assert [e.app for e in err.errors] == [f"a{i:02}" for i in range(kept)]
    assert err.omitted == omitted
    lines = str(err).splitlines()
    assert len(lines) == kept + (1 if omitted else 0)
    assert (lines[-1] == f"... and {omitted} more") == bool(omitted)
    last = f"{tmp_path / 'apps.toml'}:{2 * kept}: app 'a{kept - 1:02}', key 'command': "
    assert lines[kept - 1].startswith(last)


def test_config_errors_to_dict(tmp_path: Path) -> None:
    files, _ = MULTI_CASES["two includes, two errors"]
    main = write_files(tmp_path, files)
    with pytest.raises(config.ConfigErrors) as info:
        config.load(main, uid=0, environ={})
    err = info.value
    d = err.to_dict()
    assert set(d) == {"message", "file", "line", "app", "key", "text", "errors", "omitted"}
    first = str(tmp_path / "apps.d" / "1.toml")
    assert (d["file"], d["line"], d["app"], d["key"]) == (first, 3, "a", "instances")
    assert d["text"] == d["message"] == str(err)
    assert d["omitted"] == 0
    assert d["errors"] == [e.to_dict() for e in err.errors]
    wire = json.loads(json.dumps(d))  # goes over the control protocol as is
    assert wire == d
    assert [(e["file"], e["line"], e["key"], e["text"]) for e in wire["errors"]] == [
        (first, 3, "instances", str(err.errors[0])),
        (str(tmp_path / "apps.d" / "2.toml"), 3, "autorestart", str(err.errors[1])),
    ]


def test_config_errors_constructed_directly() -> None:
    parts = [ConfigError(f"m{i}", file="f", line=i, app="a", key="k") for i in range(5)]
    err = config.ConfigErrors(parts, limit=3)
    assert err.errors == tuple(parts[:3])
    assert err.omitted == 2
    assert str(err).splitlines() == [
        "f:0: app 'a', key 'k': m0",
        "f:1: app 'a', key 'k': m1",
        "f:2: app 'a', key 'k': m2",
        "... and 2 more",
    ]
    assert err.location() == "f:0: app 'a', key 'k'"
    with pytest.raises(ValueError):
        config.ConfigErrors([])


# -- defaults ------------------------------------------------------------------------------------


def test_root_defaults(tmp_path: Path) -> None:
    daemon = load_text(tmp_path, "", uid=0, environ={"XDG_RUNTIME_DIR": "/ignored"}).daemon
    assert daemon == DaemonSpec(
        config_path=str(tmp_path / "apps.toml"),
        socket="/run/procsup/procsup.sock",
        socket_mode=0o660,
        pidfile="/run/procsup/procsupd.pid",
        log_dir="/var/log/procsup",
        state_dir="/var/lib/procsup",
        watch_config=True,
        shutdown_timeout=30.0,
    )
    assert daemon.daemon_log == "/var/log/procsup/procsupd.log"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/st", "HOME": "/home/u"},
            (
                "/run/user/1000/procsup/procsup.sock",
                "/run/user/1000/procsup/procsupd.pid",
                "/st/procsup/logs",
                "/st/procsup/state",
            ),
        ),
        (
            {"HOME": "/home/u"},
            (
                "/tmp/procsup-1000/procsup.sock",
                "/tmp/procsup-1000/procsupd.pid",
                "/home/u/.local/state/procsup/logs",
                "/home/u/.local/state/procsup/state",
            ),
        ),
        (  # relative XDG values are invalid per the spec and ignored
            {"XDG_RUNTIME_DIR": "rel", "XDG_STATE_HOME": "rel", "HOME": "/home/u"},
            (
                "/tmp/procsup-1000/procsup.sock",
                "/tmp/procsup-1000/procsupd.pid",
                "/home/u/.local/state/procsup/logs",
                "/home/u/.local/state/procsup/state",
            ),
        ),
    ],
)
def test_non_root_defaults(
    tmp_path: Path, environ: dict[str, str], expected: tuple[str, str, str, str]
) -> None:
    daemon = load_text(tmp_path, '[apps.a]\ncommand = "x"\n', uid=1000, environ=environ).daemon
    assert (daemon.socket, daemon.pidfile, daemon.log_dir, daemon.state_dir) == expected
    assert paths.default_socket_path(1000, environ) == expected[0]


def test_default_log_files_and_per_instance_names(tmp_path: Path) -> None:
    text = """
[procsup]
log_dir = "/logs"
[apps.web]
command = "x"
instances = 2
[apps.one]
command = "x"
[apps.merged]
command = "x"
instances = 2
merge_logs = true
[apps.custom]
command = "x"
instances = 3
out_file = "web.out.log"
error_file = "web.out.log"
[apps.quiet]
command = "x"
instances = 2
out_file = false
error_file = "/var/err"
"""
    apps = load_text(tmp_path, text).apps
    web = apps["web"]
    assert (web.out_file, web.error_file) == ("/logs/web-out.log", "/logs/web-error.log")
    assert apps["web"].log_paths(1) == ("/logs/web-out-1.log", "/logs/web-error-1.log")
    assert apps["one"].log_paths(0) == ("/logs/one-out.log", "/logs/one-error.log")
    assert apps["merged"].log_paths(1) == ("/logs/merged-out.log", "/logs/merged-error.log")
    assert apps["custom"].log_paths(2) == ("/logs/web.out-2.log", "/logs/web.out-2.log")
    assert apps["quiet"].log_paths(0) == (None, "/var/err-0")


# The defaults users are promised (CONTRACT.md §2 and docs/config.md), written out here by hand
# so that a default changed in the schema, the model or config.py fails a test: key -> (the
# value as written in TOML, None when the default is "absent"; the value the model holds).
# ignore_watch: the contract shows an example; docs/config.md documents this default.
APP_DEFAULTS: dict[str, tuple[str | None, object]] = {
    "shell": ("false", False),
    "cwd": (None, None),
    "instances": ("1", 1),
    "exec_mode": ('"fork"', ExecMode.FORK),
    "env": ("{}", {}),
    "env_file": ("[]", None),  # no model field: merged into env
    "inherit_env": ("true", True),
    "user": (None, None),
    "group": (None, None),
    "umask": (None, None),
    "limits": ("{}", ()),
    "nice": (None, None),
    "oom_score_adjust": (None, None),
    "autorestart": ("true", RestartPolicy.ALWAYS),
    "max_restarts": ("15", 15),
    "min_uptime": ('"1s"', 1.0),
    "restart_delay": ('"0s"', 0.0),
    "exp_backoff_restart_delay": (None, None),
    "kill_signal": ('"SIGTERM"', int(signal.SIGTERM)),
    "kill_timeout": ('"5s"', 5.0),
    "merge_logs": ("false", False),
    "log_date_format": (None, None),
    "log_max_size": (None, None),
    "log_retain": ("5", 5),
    "log_format": ('"text"', "text"),
    "max_memory_restart": (None, None),
    "memory_max": (None, None),
    "cpu_weight": (None, None),
    "pids_max": (None, None),
    "watch": ("false", ()),
    "ignore_watch": ('["*.log", ".git", "__pycache__", "node_modules"]',
                     ("*.log", ".git", "__pycache__", "node_modules")),
    "cron_restart": (None, None),
    "ready": ('"started"', "started"),
    "ready_timeout": ('"30s"', 30.0),
    "heartbeat_timeout": (None, None),
    "depends_on": ("[]", ()),
    "health": (None, None),
    "health_interval": ('"10s"', 10.0),  # with health only: checked below
    "health_timeout": ('"2s"', 2.0),
    "health_failures": ("3", 3),
    "reload_signal": (None, None),
    "pidfile": (None, None),
    "listen": ("[]", ()),  # required in cluster mode, refused in fork mode: checked below
    "balance": ('"shared"', "shared"),  # cluster only: checked below
}
#: `[procsup]`; the path keys depend on the user (test_root_defaults and the ones after it).
DAEMON_DEFAULTS: dict[str, tuple[str | None, object]] = {
    "socket_mode": ('"0660"', 0o660),
    "socket_group": (None, None),
    "include": ("[]", ()),
    "env": (None, None),
    "watch_config": ("true", True),
    "shutdown_timeout": ('"30s"', 30.0),
    "cgroups": ('"auto"', "auto"),
}
DAEMON_PATH_KEYS = {"socket", "pidfile", "log_dir", "state_dir"}
#: Required, or resolved against log_dir (test_default_log_files_and_per_instance_names).
APP_CONTEXT_KEYS = {"command", "out_file", "error_file"}
CLUSTER_ONLY = {"listen", "balance"}
HEALTH_ONLY = {"health_interval", "health_timeout", "health_failures"}
CLUSTER_APP = '[apps.c]\ncommand = "x"\nexec_mode = "cluster"\nlisten = ["tcp://127.0.0.1:8000"]\n'


def _same(got: object, expected: object) -> bool:
    """Equal, and of the same kind: True is not 1, "fork" is not ExecMode.FORK."""
    return got == expected and type(got) is type(expected)


def test_absent_keys_take_the_documented_defaults(tmp_path: Path) -> None:
    desired = load_text(tmp_path, '[apps.a]\ncommand = "x"\n' + CLUSTER_APP)
    app, cluster = desired.apps["a"], desired.apps["c"]
    for name, (_, expected) in APP_DEFAULTS.items():
        if name == "env_file":
            continue
        got = getattr(cluster if name == "balance" else app, name)
        if name == "env":
            got = dict(got)  # a read-only mapping in the model
        assert _same(got, expected), (name, got, expected)
    for name, (_, expected) in DAEMON_DEFAULTS.items():
        got = getattr(desired.daemon, name)
        assert _same(got, expected), (name, got, expected)


def test_the_documented_defaults_written_out_change_nothing(tmp_path: Path) -> None:
    def written(table: dict[str, tuple[str | None, object]], skip: set[str]) -> str:
        return "".join(f"{name} = {text}\n" for name, (text, _) in table.items()
                       if text is not None and name not in skip)

    absent = load_text(tmp_path, '[apps.a]\ncommand = "x"\n' + CLUSTER_APP)
    explicit = load_text(
        tmp_path,
        "[procsup]\n" + written(DAEMON_DEFAULTS, set())
        + '[apps.a]\ncommand = "x"\n' + written(APP_DEFAULTS, CLUSTER_ONLY | HEALTH_ONLY)
        + CLUSTER_APP + 'balance = "shared"\n',
    )
    assert explicit.apps == absent.apps
    assert explicit.daemon == absent.daemon


def test_the_schema_has_the_documented_defaults() -> None:
    """Both ways: every key of the schema is in the tables above, every key of the tables is
    in the schema, and each row's default (as docs and dump show it) is the documented one."""
    for rows, table, contextual in ((schema.APP_KEYS, APP_DEFAULTS, APP_CONTEXT_KEYS),
                                    (schema.DAEMON_KEYS, DAEMON_DEFAULTS, DAEMON_PATH_KEYS)):
        assert set(rows) == set(table) | contextual
        for name, (text, _) in table.items():
            row = rows[name]
            if text is None:
                assert row.default is None, name
                continue
            documented = tomllib.loads(f"v = {text}")["v"]
            default = list(row.default) if isinstance(row.default, tuple) else row.default
            if row.default is None:  # "absent" in the schema: must mean the empty value
                assert documented in ([], {}), name
            else:
                assert default == documented, (name, row.default, text)
        for name in contextual:
            assert rows[name].default is None, name


def test_load_creates_nothing_and_does_not_need_cwd(tmp_path: Path) -> None:
    text = """
[procsup]
log_dir = "logs"
state_dir = "state"
socket = "run/s.sock"
[apps.a]
command = "x"
cwd = "missing/dir"
watch = true
"""
    load_text(tmp_path, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apps.toml"]


@pytest.mark.nonroot  # its last check differs for root
def test_require_root_owned(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps.a]\ncommand = "x"\n')
    os.chmod(path, 0o664)
    with pytest.raises(ConfigError, match="writable by anyone but root"):
        config.load(path, uid=0, environ={}, require_root_owned=True)
    os.chmod(path, 0o644)
    if os.geteuid() == 0:
        config.load(path, uid=0, environ={}, require_root_owned=True)
    else:
        with pytest.raises(ConfigError, match="owner uid"):
            config.load(path, uid=0, environ={}, require_root_owned=True)


# -- default paths and socket discovery ---------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "environ", "expected"),
    [
        (0, {}, "/etc/procsup/apps.toml"),
        (0, {"PROCSUP_CONFIG": "/c.toml"}, "/c.toml"),
        (1000, {"PROCSUP_CONFIG": "/c.toml", "HOME": "/h"}, "/c.toml"),
        (1000, {"HOME": "/h"}, "/h/.config/procsup/apps.toml"),
        (1000, {"HOME": "/h", "XDG_CONFIG_HOME": "/xc"}, "/xc/procsup/apps.toml"),
    ],
)
def test_default_config_path(uid: int, environ: dict[str, str], expected: str) -> None:
    assert paths.default_config_path(uid, environ) == expected


@pytest.mark.parametrize(
    "text",
    [
        '[procsup]\nsocket = "s.sock"\n',
        '[procsup]\nsocket = "s.sock"\nsokcet = 1\n[apps.a]\nbogus = true\n',  # invalid, valid TOML
        '# broken\n[procsup]\nsocket = "s.sock"  # here\n[apps.a]\ncommand = \n',  # not TOML
        "[procsup]\nsocket = 's.sock'\n[apps.a\n",
        'procsup.socket = "s.sock"\n[apps.a\n',
        '[apps.a]\nsocket = "other"\n[ procsup ]\n  socket="s.sock"\n[apps.b\n',
    ],
)
def test_socket_from_file_is_lenient(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert paths.socket_from_file(path) == str(tmp_path / "s.sock")


@pytest.mark.parametrize(
    "text",
    [
        '[apps.a]\ncommand = "x"\n',
        '[apps.a]\nsocket = "x"\n[broken\n',
        "[procsup]\nsocket = 5\n",
        '[procsup]\nsocket = ""\n',
    ],
)
def test_socket_from_file_without_socket(tmp_path: Path, text: str) -> None:
    assert paths.socket_from_file(write(tmp_path, text)) is None


def test_socket_from_missing_or_unreadable_file(tmp_path: Path) -> None:
    assert paths.socket_from_file(str(tmp_path / "none.toml")) is None
    assert paths.socket_from_file(str(tmp_path)) is None  # a directory


def test_find_socket_order(tmp_path: Path) -> None:
    c_file = write(tmp_path, '[procsup]\nsocket = "/from/c.sock"\n[apps\n', "c.toml")
    c_nosock = write(tmp_path, '[apps.a]\ncommand = "x"\n', "c2.toml")
    env_file = write(tmp_path, '[procsup]\nsocket = "/from/envconfig.sock"\n', "e.toml")
    home = tmp_path / "home"
    write(home, '[procsup]\nsocket = "/from/default.sock"\n', ".config/procsup/apps.toml")
    base = {"HOME": str(home), "XDG_RUNTIME_DIR": "/run/user/1000"}
    full = {**base, "PROCSUP_SOCKET": "/from/env.sock", "PROCSUP_CONFIG": env_file}

    def find(socket: str | None, cfg: str | None, environ: dict[str, str], uid: int = 1000) -> str:
        return paths.find_socket(
            socket=socket, config=cfg, environ=environ, uid=uid,
            system_config=str(tmp_path / "no-system.toml"),
        )

    assert find("/from/s.sock", c_file, full) == "/from/s.sock"
    assert find(None, c_file, full) == "/from/c.sock"
    # -c naming a file without a socket: the daemon of that file uses the default socket.
    assert find(None, c_nosock, full) == "/run/user/1000/procsup/procsup.sock"
    assert find(None, None, full) == "/from/env.sock"
    assert find(None, None, {**base, "PROCSUP_CONFIG": env_file}) == "/from/envconfig.sock"
    assert find(None, None, base) == "/from/default.sock"
    assert find(None, None, {"HOME": str(tmp_path / "nohome")}) == "/tmp/procsup-1000/procsup.sock"
    assert find(None, None, {}, uid=0).startswith("/")


def test_find_socket_falls_back_to_the_system_daemon(tmp_path: Path) -> None:
    """A member of socket_group with no config and no daemon of their own reaches the system
    daemon (the distro package's); anything of their own wins."""
    system_sock = tmp_path / "run" / "procsup.sock"
    system = write(tmp_path, f'[procsup]\nsocket = "{system_sock}"\n', "etc/apps.toml")
    home = tmp_path / "home"
    runtime = tmp_path / "user-run"
    environ = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    own = str(runtime / "procsup" / "procsup.sock")

    def find(uid: int = 1000) -> str:
        return paths.find_socket(
            socket=None, config=None, environ=environ, uid=uid, system_config=system
        )

    assert find() == own  # the system socket does not exist: nothing to fall back to
    system_sock.parent.mkdir()
    system_sock.touch()
    assert find() == str(system_sock)
    (runtime / "procsup").mkdir(parents=True)
    Path(own).touch()  # a daemon of the user's own serves: it wins
    assert find() == own
    Path(own).unlink()
    write(home, '[apps.a]\ncommand = "x"\n', ".config/procsup/apps.toml")
    assert find() == own  # a config of the user's own (its daemon uses the user's socket)


# -- the reference config and docs --------------------------------------------------------------


@pytest.mark.parametrize("uid", [0, 1000])
def test_reference_config_loads(uid: int) -> None:
    desired = config.load(str(REFERENCE), uid=uid, environ=USER_ENV)
    assert set(desired.apps) >= {"web", "worker"}
    assert desired.apps["web"].exec_mode is ExecMode.CLUSTER
    assert desired.profile == "production"
    text = config.describe(desired)
    assert "profile: production" in text
    assert re.search(r"^  web +4 instances +cluster +python3 -m myapp", text, re.M)


def _reference_keys() -> tuple[set[str], set[str]]:
    """The keys the reference config shows, set or commented out: ([procsup], [apps.*])."""
    daemon: set[str] = set()
    apps: set[str] = set()
    into: set[str] | None = None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("["):
            into = daemon if line == "[procsup]" else apps if line.startswith("[apps.") else None
        elif (m := re.match(r"^(?:# )?([a-z_]+) = ", line)) and into is not None:
            into.add(m.group(1))
    return daemon, apps


def _documented_keys() -> tuple[dict[str, str], dict[str, str]]:
    """The rows of docs/config.md's key tables, key -> its default cell: ([procsup], [apps])."""
    daemon: dict[str, str] = {}
    apps: dict[str, str] = {}
    section: dict[str, str] | None = None
    in_table = False
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            section = (daemon if "`[procsup]`" in line
                       else apps if "`[apps.NAME]`" in line else None)
            in_table = False
        elif line == "| key | type | default | meaning |":
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and section is not None and (m := re.match(r"^\| `([^`]+)` \|", line)):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            section[m.group(1)] = cells[2]
    return daemon, apps


def _app_keys(found: set[str]) -> set[str]:
    """`found` with the env_<profile> examples as the one pattern key "env_<profile>"."""
    return {"env_<profile>" if name not in schema.APP_KEYS
            and schema.ENV_PROFILE_KEY_RE.match(name) else name for name in found}


def test_reference_config_shows_exactly_the_known_keys() -> None:
    daemon, apps = _reference_keys()
    assert daemon == set(schema.DAEMON_KEYS)
    assert _app_keys(apps) == {*schema.APP_KEYS, "env_<profile>"}


def test_docs_document_exactly_the_known_keys_with_their_defaults() -> None:
    daemon, apps = _documented_keys()
    assert set(daemon) == set(schema.DAEMON_KEYS)
    assert set(apps) == {*schema.APP_KEYS, "env_<profile>"}
    for documented, table in ((daemon, DAEMON_DEFAULTS), (apps, APP_DEFAULTS)):
        for name, (text, _) in table.items():
            cell = documented[name]
            if name == "listen":  # no default: required in cluster mode
                assert cell == "—", cell
            elif text is None:
                assert not cell.startswith("`"), (name, cell)  # "none", or words
            else:
                assert cell == f"`{text}`", (name, cell, text)


def test_reference_config_examples_load(tmp_path: Path) -> None:
    text = REFERENCE.read_text()
    # Uncomment the commented examples: they must be valid too (env files need the file).
    keys = "|".join([*schema.DAEMON_KEYS, *schema.APP_KEYS])
    uncommented = re.sub(rf"^# ((?:{keys}) = )", r"\1", text, flags=re.M)
    assert uncommented != text
    (tmp_path / "srv").mkdir()
    uncommented = uncommented.replace('"/srv/web"', f'"{tmp_path}/srv"')
    (tmp_path / "srv" / ".env").write_text("FROM_FILE=1\n")
    desired = load_text(tmp_path, uncommented, uid=1000, environ=USER_ENV)
    assert desired.daemon.socket_group == "procsup"
    assert desired.apps["web"].env["FROM_FILE"] == "1"


def test_describe(tmp_path: Path) -> None:
    text = '[apps.a]\ncommand = "echo hi | cat"\nshell = true\n[apps.bb]\ncommand = ["p", "a b"]\n'
    out = config.describe(load_text(tmp_path, text))
    assert "profile: (none)" in out
    assert "apps: 2" in out
    assert "  a   1 instance   fork     echo hi | cat\n" in out
    assert "  bb  1 instance   fork     p 'a b'\n" in out


# -- warnings: valid but probably not meant -------------------------------------------------


def test_a_small_integer_duration_is_warned_about(tmp_path: Path) -> None:
    """supervisord's stopwaitsecs=5 written as kill_timeout = 5 is 5 ms: valid, but said."""
    desired = load_text(tmp_path, (
        "[procsup]\nshutdown_timeout = 30\n\n"
        "[apps.a]\ncommand = \"x\"\nkill_timeout = 5\nmin_uptime = 1000\n"
        "restart_delay = 0\nready_timeout = \"5s\"\n"
    ))
    path = str(tmp_path / "apps.toml")
    assert desired.apps["a"].kill_timeout == 0.005  # still what the contract says
    assert desired.warnings == (
        f"{path}:2: key 'shutdown_timeout': 30 means 30 milliseconds (an integer duration "
        'counts milliseconds, as in PM2); write "30s" for seconds, or "30ms" to say so',
        f"{path}:6: app 'a', key 'kill_timeout': 5 means 5 milliseconds (an integer duration "
        'counts milliseconds, as in PM2); write "5s" for seconds, or "5ms" to say so',
    )


def test_no_warnings_for_plain_configs(tmp_path: Path) -> None:
    desired = load_text(tmp_path, '[apps.a]\ncommand = "x"\nkill_timeout = "5s"\ninstances = 2\n')
    assert desired.warnings == ()


def test_shell_syntax_in_a_string_command_without_shell_is_warned_about(
        tmp_path: Path) -> None:
    """Located at the command key; an array command or shell = true never warns, nor does
    quoted text; the app still loads as the contract says (shell-like split, no shell)."""
    (tmp_path / "more.toml").write_text('[apps.inc]\n\ncommand = "FOO=1 x"\n')
    desired = load_text(tmp_path, (
        '[procsup]\ninclude = ["more.toml"]\n'
        '[apps.web]\ncwd = "/tmp"\ncommand = "cd /tmp && ls"\n'
        '[apps.arr]\ncommand = ["sh", "-c", "a && b", "|"]\n'
        '[apps.sh]\ncommand = "cd /tmp && ls | wc"\nshell = true\n'
        '[apps.off]\nshell = false\ncommand = "x | y"\n'
        '[apps.quoted]\ncommand = "python3 -c \\"print(\'a|b\')\\""\n'
    ))
    path, more = tmp_path / "apps.toml", tmp_path / "more.toml"
    assert desired.apps["web"].command == ("cd", "/tmp", "&&", "ls")
    assert desired.warnings == (
        f"{path}:5: app 'web', key 'command': \"cd /tmp && ls\" contains shell syntax ('cd', "
        "'&&'): without shell = true it runs \"cd\" (a shell builtin, not a program) with "
        '"&&" as an argument; set shell = true',
        f"{path}:13: app 'off', key 'command': \"x | y\" contains shell syntax ('|'): without "
        'shell = true it runs "x" with "|" as an argument; set shell = true',
        f"{more}:3: app 'inc', key 'command': \"FOO=1 x\" contains shell syntax ('FOO=1'): "
        'without shell = true it runs "FOO=1" as the program; set env = { FOO = "1" } instead, '
        "or shell = true",
    )


def test_depends_on_is_checked_against_the_other_apps_with_file_and_line(
        tmp_path: Path) -> None:
    (tmp_path / "more.toml").write_text(
        '[apps.web]\ncommand = "x"\n\ndepends_on = { dbb = "ready", job = "completed" }\n')
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '[procsup]\ninclude = ["more.toml"]\n[apps.db]\ncommand = "x"\n'
                  '[apps.job]\ncommand = "x"\n[apps.a]\ncommand = "x"\ndepends_on = ["b"]\n'
                  '[apps.b]\ncommand = "x"\ndepends_on = ["a"]\n')
    text = str(caught.value)
    more = tmp_path / "more.toml"
    assert f"{more}:4: app 'web', key 'depends_on': unknown app 'dbb' (did you mean 'db'?)" in text
    assert (f"{more}:4: app 'web', key 'depends_on': 'job' is restarted whenever it ends "
            "(autorestart = true)") in text
    assert "apps.toml:9: app 'a', key 'depends_on': depends_on cycle: a -> b -> a" in text


def test_depends_on_forms() -> None:
    assert schema.check(schema.APP_KEYS["depends_on"], ["db", "cache"]) == (
        ("db", Condition.READY), ("cache", Condition.READY))
    assert schema.check(schema.APP_KEYS["depends_on"], {"db": "healthy", "m": "completed"}) == (
        ("db", Condition.HEALTHY), ("m", Condition.COMPLETED))


def test_journal_target_needs_a_journal_socket(tmp_path: Path) -> None:
    text = '[apps.a]\ncommand = "x"\ninstances = 2\nout_file = "journal"\nerror_file = "-"\n'
    here = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(here)
        app = load_text(tmp_path, text, environ={"PROCSUP_JOURNAL_SOCKET": here}).apps["a"]
    # Not files: no log_dir, no per-instance suffix.
    assert app.log_paths(1) == ("journal", "-")
    missing = str(tmp_path / "gone.sock")
    err = load_error(tmp_path, text, environ={"PROCSUP_JOURNAL_SOCKET": missing})
    assert (err.app, err.key, err.line) == ("a", "out_file", 4)
    assert f"no journal socket at {missing}" in err.message
    os.mkfifo(tmp_path / "fifo")  # something else at the path is no journal either
    err = load_error(tmp_path, text, environ={"PROCSUP_JOURNAL_SOCKET": str(tmp_path / "fifo")})
    assert err.key == "out_file"


# -- limits, nice, oom_score_adjust ----------------------------------------------------------

INF = -1  # resource.RLIM_INFINITY

LIMITS_VALID = [
    ("limits = { nofile = 4096 }", "limits", (("nofile", 4096, 4096),)),
    ('limits = { nofile = [1024, 4096], core = "unlimited" }', "limits",
     (("core", INF, INF), ("nofile", 1024, 4096))),
    ('limits = { core = [0, "unlimited"] }', "limits", (("core", 0, INF),)),
    ('limits = { as = "1G", stack = "8M" }', "limits",
     (("as", 1 << 30, 1 << 30), ("stack", 8 << 20, 8 << 20))),
    ("limits = { nproc = 512, cpu = 0 }", "limits", (("cpu", 0, 0), ("nproc", 512, 512))),
    ("limits = {}", "limits", ()),
    ("nice = -20", "nice", -20),
    ("nice = 19", "nice", 19),
    ("oom_score_adjust = -1000", "oom_score_adjust", -1000),
    ("oom_score_adjust = 1000", "oom_score_adjust", 1000),
]


@pytest.mark.parametrize(("snippet", "field", "expected"), LIMITS_VALID)
def test_limits_nice_oom_valid(tmp_path: Path, snippet: str, field: str, expected: object) -> None:
    assert getattr(load_app(tmp_path, snippet), field) == expected


LIMITS_INVALID = [
    ("limits = { nofiles = 3 }", "limits", "unknown resource 'nofiles'; did you mean 'nofile'?"),
    ("limits = { zzz = 3 }", "limits", "unknown resource 'zzz' (known: as, core,"),
    ("limits = { nofile = [8192, 4096] }", "limits",
     "nofile: soft limit 8192 is above the hard limit 4096"),
    ('limits = { nofile = ["unlimited", 4096] }', "limits",
     "nofile: soft limit unlimited is above the hard limit 4096"),
    ("limits = { nofile = [1, 2, 3] }", "limits", "nofile: expected [soft, hard], got 3 items"),
    ("limits = { nofile = -1 }", "limits", 'nofile: must be >= 0 or "unlimited", got -1'),
    ('limits = { nofile = "4K" }', "limits",
     "nofile: expected an integer or \"unlimited\", got '4K'"),
    ('limits = { core = "lots" }', "limits", "core: "),
    ("limits = { nofile = true }", "limits", "nofile: expected an integer or \"unlimited\", got "
     "boolean"),
    ("limits = 4096", "limits", "expected table of resource"),
    ("nice = 20", "nice", "must be -20..19, got 20"),
    ("nice = -21", "nice", "must be -20..19, got -21"),
    ('nice = "5"', "nice", "expected integer -20..19, got string"),
    ("oom_score_adjust = 1001", "oom_score_adjust", "must be -1000..1000, got 1001"),
]


@pytest.mark.parametrize(("snippet", "key", "message"), LIMITS_INVALID)
def test_limits_nice_oom_invalid(tmp_path: Path, snippet: str, key: str, message: str) -> None:
    err = load_error(tmp_path, f'[apps.a]\ncommand = "x"\n{snippet}\n')
    assert (err.app, err.key, err.line) == ("a", key, 3)
    assert message in err.message, err.message
