"""`procsup import supervisord`: parsing, expansions, includes, the mapping, notes, errors."""

from __future__ import annotations

import os
import subprocess
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from procsup import config
from procsup.cli import LocalFiles
from procsup.errors import ConfigError
from procsup.importers import Result, ini, supervisord

FIXTURES = Path(__file__).resolve().parent.parent / "import_fixtures" / "supervisord"
ENV = {"HOME": "/home/ops", "APPS": "/srv/apps", "PATH": "/usr/bin:/bin"}


def convert(tmp_path: Path, text: str, name: str = "supervisord.conf") -> Result:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return supervisord.convert(str(path), LocalFiles(), ENV, "node1")


def loaded(tmp_path: Path, result: Result) -> config.Desired:
    out = tmp_path / "out" / "apps.toml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(result.toml)
    return config.load(str(out), uid=1000, environ={"HOME": str(tmp_path)})


def program(tmp_path: Path, options: str) -> tuple[dict[str, Any], list[str]]:
    """Convert `[program:p]` with these option lines -> (its table, note keys)."""
    result = convert(tmp_path, "[program:p]\n" + textwrap.dedent(options))
    loaded(tmp_path, result)
    return tomllib.loads(result.toml)["apps"]["p"], [n.key for n in result.notes]


DEFAULTS = {"autorestart": "on-failure", "max_restarts": 3, "kill_timeout": "10s",
            "log_max_size": "50M", "log_retain": 10}

MAPPING: list[tuple[str, dict[str, Any], list[str]]] = [
    # (options of [program:p], expected subset of its table, expected note keys)
    ("command=sleep 10", {"command": "sleep 10", **DEFAULTS}, []),
    ("command=/bin/cat 'a b' ; comment\n", {"command": "/bin/cat 'a b'"}, []),
    ("command=run # comment\nautorestart=true", {"autorestart": True}, []),
    ("command=run\nautorestart=false", {"autorestart": False}, []),
    ("command=run\nautorestart=unexpected", {"autorestart": "on-failure"}, []),
    ("command=run\nexitcodes=0", {}, []),
    ("command=run\nexitcodes=0,2", {}, ["exitcodes"]),
    ("command=run\nstartsecs=0\nstartretries=7", {"min_uptime": "0s", "max_restarts": 7}, []),
    ("command=run\nstopsignal=QUIT\nstopwaitsecs=30",
     {"kill_signal": "SIGQUIT", "kill_timeout": "30s"}, []),
    ("command=run\nstopsignal=9", {"kill_signal": "SIGKILL"}, []),
    ("command=run\nstopasgroup=true\nkillasgroup=true", {}, []),
    ("command=run\nstopasgroup=false", {}, ["stopasgroup"]),
    ("command=run\nuser=www-data\ndirectory=/srv/app\numask=022",
     {"user": "www-data", "cwd": "/srv/app", "umask": "0022"}, []),
    ("command=run\ndirectory=app", {"cwd": "{base}/app"}, ["directory"]),
    ("command=run\npriority=10", {}, ["priority"]),
    ("command=run\nnumprocs=3", {"instances": 3}, []),
    ("command=run\nautostart=false\nnumprocs=2", {"instances": 0}, ["autostart"]),
    ("command=run\nautostart=yes", {}, []),
    ("command=run\nenvironment=A=\"1\",B='two, three',C=plain , D=\"\"",
     {"env": {"A": "1", "B": "two, three", "C": "plain", "D": ""}}, []),
    ("command=run\nstdout_logfile=/var/log/p.out\nstderr_logfile=/var/log/p.err",
     {"out_file": "/var/log/p.out", "error_file": "/var/log/p.err"}, []),
    ("command=run\nstdout_logfile=AUTO\nstderr_logfile=NONE", {"error_file": False}, []),
    ("command=run\nstdout_logfile=NONE\nstderr_logfile=NONE",
     {"out_file": False, "error_file": False}, []),
    ("command=run\nredirect_stderr=true", {"out_file": "p.log", "error_file": "p.log"}, []),
    ("command=run\nredirect_stderr=true\nstdout_logfile=/l/p.log\nstderr_logfile=/l/e.log",
     {"out_file": "/l/p.log", "error_file": "/l/p.log"}, ["stderr_logfile"]),
    ("command=run\nstdout_logfile=logs/p.log", {"out_file": "{base}/logs/p.log"},
     ["stdout_logfile"]),
    ("command=run\nstdout_logfile=syslog", {}, ["stdout_logfile"]),
    ("command=run\nstdout_logfile_maxbytes=1KB\nstdout_logfile_backups=2\n"
     "stderr_logfile_maxbytes=1KB\nstderr_logfile_backups=2",
     {"log_max_size": "1K", "log_retain": 2}, []),
    ("command=run\nstdout_logfile_maxbytes=1000\nstderr_logfile_maxbytes=1000",
     {"log_max_size": 1000}, []),
    ("command=run\nstdout_logfile_maxbytes=0\nstderr_logfile_maxbytes=0", {}, []),
    ("command=run\nstdout_logfile_maxbytes=5MB", {"log_max_size": "5M"},
     ["stderr_logfile_maxbytes"]),
    ("command=run\nstdout_events_enabled=true\nstderr_syslog=true\nserverurl=AUTO",
     {}, ["stdout_events_enabled", "stderr_syslog"]),
    ("command=run\nstdout_capture_maxbytes=0", {}, []),
    ("command=run\nprocess_name=%(program_name)s", {}, ["process_name"]),
    ("command=run\nfrobnicate=1", {}, ["frobnicate"]),
    ("command=run %(program_name)s %(group_name)s %(host_node_name)s %(numprocs)d "
     "%(process_num)d %(here)s %(ENV_APPS)s %%",
     {"command": "run p p node1 1 0 {base} /srv/apps %"}, []),
    ("command=run %(process_num)02d\nnumprocs_start=5", {"command": "run 05"}, []),
    ("command=run\nnumprocs=2\nstdout_logfile=/var/log/shared.log",
     {"merge_logs": True, "out_file": "/var/log/shared.log"}, []),
    ("command=run\nnumprocs=2\nstdout_logfile=/var/log/p-%(process_num)s.log",
     {"out_file": "/var/log/p.log"}, ["stdout_logfile"]),
    ("command=run\nnumprocs=2\nstdout_logfile=/dev/stdout\nstdout_logfile_maxbytes=0\n"
     "redirect_stderr=true", {"merge_logs": True, "out_file": "/dev/stdout"}, []),
    ("command=run\nnumprocs=2\ndirectory=/srv/%(process_num)d",
     {"cwd": "/srv/0"}, ["directory"]),
]


@pytest.mark.parametrize(("options", "expected", "note_keys"), MAPPING)
def test_mapping(tmp_path: Path, options: str, expected: dict[str, Any],
                 note_keys: list[str]) -> None:
    table, notes = program(tmp_path, options)
    for key, value in expected.items():
        if isinstance(value, str):
            value = value.replace("{base}", str(tmp_path))
        assert table.get(key) == value, (key, table)
    if "merge_logs" not in expected:
        assert "merge_logs" not in table
    assert sorted(notes) == sorted(note_keys)


def run_shell(table: dict[str, Any], instance: int) -> str:
    """Run the app's shell command as procsup would: its env, plus PROCSUP_INSTANCE."""
    command = table["command"]
    env = dict(os.environ, **table.get("env", {}), PROCSUP_INSTANCE=str(instance))
    return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True,
                          text=True, timeout=10, check=True).stdout


def test_process_num_in_command_and_environment_is_computed_per_instance(
        tmp_path: Path) -> None:
    table, notes = program(tmp_path, """\
        command=/bin/sh -c 'echo "$0 $1 $PORT $NAME"' w-%(process_num)02d "it's %(process_num)d"
        numprocs=3
        numprocs_start=7
        environment=PORT="80%(process_num)02d",NAME="fixed"
        """)
    assert table["shell"] is True
    assert table["instances"] == 3
    assert table["env"] == {"NAME": "fixed"}  # PORT is computed by the shell
    assert notes == ["command"]
    # The real /bin/sh runs exactly the argv supervisord would have run for that process.
    assert run_shell(table, 0) == "w-07 it's 7 8007 fixed\n"
    assert run_shell(table, 2) == "w-09 it's 9 8009 fixed\n"


def test_process_num_only_in_environment(tmp_path: Path) -> None:
    table, notes = program(tmp_path, """\
        command=printenv PORT
        numprocs=2
        environment=PORT=90%(process_num)02d
        """)
    assert notes == ["environment"]
    assert run_shell(table, 1) == "9001\n"


def test_supervisord_sections(tmp_path: Path) -> None:
    result = convert(tmp_path, """\
        [unix_http_server]
        file=/var/run/supervisor.sock
        chmod=0770
        chown=root:ops
        username=u

        [inet_http_server]
        port=9001

        [supervisord]
        logfile=/var/log/supervisord.log
        childlogdir=%(here)s/logs
        environment=SHARED="yes",OVERRIDE="daemon"
        umask=027
        directory=/srv
        minfds=4096

        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

        [supervisorctl]
        serverurl=unix:///var/run/supervisor.sock

        [eventlistener:m]
        command=memmon

        [fcgi-program:f]
        command=php-cgi

        [program:a]
        command=run
        environment=OVERRIDE="app"

        [program:b]
        command=run
        umask=002
        directory=/opt
        """)
    doc = tomllib.loads(result.toml)
    assert doc["procsup"] == {"log_dir": f"{tmp_path}/logs", "socket_mode": "0770",
                              "socket_group": "ops"}
    assert doc["apps"]["a"]["env"] == {"SHARED": "yes", "OVERRIDE": "app"}
    assert (doc["apps"]["a"]["umask"], doc["apps"]["a"]["cwd"]) == ("0027", "/srv")
    assert (doc["apps"]["b"]["umask"], doc["apps"]["b"]["cwd"]) == ("0002", "/opt")
    keys = [n.key for n in result.notes]
    assert sorted(keys) == sorted(["file", "chown", "username", "[inet_http_server]", "logfile",
                                   "minfds", "[rpcinterface:supervisor]", "[supervisorctl]",
                                   "[eventlistener:m]", "[fcgi-program:f]"])
    header = result.toml.split("\n[procsup]\n")[0]
    assert all(f"#   - {n}" in header for n in result.notes)
    loaded(tmp_path, result)


def test_includes_groups_and_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text(
        "; b\n[program:b]\ncommand=run %(here)s\npriority=5\n[include]\nfiles=more/*.conf\n")
    (tmp_path / "conf.d" / "a.conf").write_text("[program:a]\ncommand=run\n")
    (tmp_path / "conf.d" / "ignored.txt").write_text("[program:x]\ncommand=run\n")
    result = convert(tmp_path, """\
        [include]
        files = conf.d/*.conf /nonexistent/*.conf

        [group:g]
        programs=a, b
        priority=1

        [program:main]
        command=run %(group_name)s
        """)
    apps = tomllib.loads(result.toml)["apps"]
    assert list(apps) == ["main", "a", "b"]
    assert apps["b"]["command"] == f"run {tmp_path}/conf.d"
    assert apps["main"]["command"] == "run main"
    where = {n.key: n.where for n in result.notes}
    assert where["[group:g]"] == f"{tmp_path}/supervisord.conf:4"
    assert where["priority"] == f"{tmp_path}/conf.d/b.conf:4"
    assert where["[include]"] == f"{tmp_path}/conf.d/b.conf:5"  # not followed, as supervisord
    loaded(tmp_path, result)


def test_a_long_program_name_is_cut_to_a_valid_app_name(tmp_path: Path) -> None:
    """Issue 11: a 300-character name would fail at start (ENAMETOOLONG): cut to 100, noted."""
    result = convert(tmp_path, f"[program:{'p' * 300}]\ncommand=run\n")
    assert list(loaded(tmp_path, result).apps) == ["p" * 100]
    assert [n.key for n in result.notes] == ["[program]"]
    assert "at most 100 characters" in result.notes[0].message


def test_group_name_in_grouped_program(tmp_path: Path) -> None:
    table, _ = program(tmp_path, "command=run %(group_name)s\n[group:grp]\nprograms=p\n")
    assert table["command"] == "run grp"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[program:a]\ncommand=run\n  \nthis is not an option\n", 4, "cannot parse"),
        ("command=run\n", 1, "[section] header"),
        ("[program:a]\nnumprocs=2\n", 1, "has no command"),
        ("[program:a]\ncommand=run\nautostart=maybe\n", 3, "expected true or false"),
        ("[program:a]\ncommand=run\nautorestart=sometimes\n", 3, "unexpected"),
        ("[program:a]\ncommand=run\nnumprocs=two\n", 3, "expected an integer"),
        ("[program:a]\ncommand=run\nnumprocs=0\n", 3, "must be >= 1"),
        ("[program:a]\ncommand=run\nstopsignal=TERMINATE\n", 3, "unknown signal"),
        ("[program:a]\ncommand=run\nstdout_logfile_maxbytes=lots\n", 3, "invalid size"),
        ("[program:a]\ncommand=run\numask=999\n", 3, "invalid mode"),
        ("[program:a]\n\ncommand=run %(ENV_NOPE)s\n", 3, "NOPE is not set"),
        ("[program:a]\ncommand=run %(nope)s\n", 2, "cannot be expanded"),
        ("[program:a]\ncommand=run %(process_num)z\n", 2, "bad %(...) expansion"),
        ("[program:a]\ncommand=run 'unclosed\n", 2, "cannot split"),
        ("[program:a]\ncommand=run\nenvironment=A=\"x\" B=1\n", 3, "expected ','"),
        ("[program:a]\ncommand=run\nenvironment=justtext\n", 3, "KEY=VALUE"),
        ("[group:g]\nprograms=a,missing\n[program:a]\ncommand=run\n", 2, "'missing'"),
        ("[include]\nfile=x\n[program:a]\ncommand=run\n", 1, "files ="),
        ("[supervisord]\n", None, "no [program:x]"),
    ],
)
def test_errors(tmp_path: Path, text: str, line: int | None, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        convert(tmp_path, text)
    assert err.value.file == str(tmp_path / "supervisord.conf")
    assert err.value.line == line
    assert words in str(err.value)


def test_duplicate_program_across_includes(tmp_path: Path) -> None:
    (tmp_path / "x.conf").write_text("\n[program:a]\ncommand=other\n")
    with pytest.raises(ConfigError) as err:
        convert(tmp_path, "[include]\nfiles=x.conf\n[program:a]\ncommand=run\n")
    assert (err.value.file, err.value.line) == (str(tmp_path / "x.conf"), 2)
    assert f"first in {tmp_path}/supervisord.conf:3" in str(err.value)


def test_unreadable_include_names_the_include_line(tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as err:
        convert(tmp_path, "[program:a]\ncommand=run\n[include]\nfiles=bad.conf\n")
    assert (err.value.file, err.value.line) == (str(tmp_path / "supervisord.conf"), 4)
    assert "not UTF-8" in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("A=1", {"A": "1"}),
        ('A="1,2",B=3', {"A": "1,2", "B": "3"}),
        ("A = 'x' , B = y z ,", {"A": "x", "B": "y z"}),
        ('HOME="/home/u",PATH="/a:/b"', {"HOME": "/home/u", "PATH": "/a:/b"}),
        ('EMPTY=""', {"EMPTY": ""}),
    ],
)
def test_parse_environment(text: str, expected: dict[str, str]) -> None:
    assert ini.parse_environment(text) == expected


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.conf")))
def test_every_fixture_converts_and_loads(tmp_path: Path, fixture: str) -> None:
    env = dict(ENV, FIXTURE_APPS=str(FIXTURES / "apps"))
    result = supervisord.convert(str(FIXTURES / fixture), LocalFiles(), env, "node1")
    assert loaded(tmp_path, result).apps
    assert result.toml.startswith("# Converted by `procsup import supervisord`")
