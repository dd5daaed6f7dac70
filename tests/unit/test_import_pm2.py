"""`procsup import pm2`: the JS literal reader, the option mapping, notes and errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from procsup import config
from procsup.cli import LocalFiles
from procsup.errors import ConfigError
from procsup.importers import Result, jsobject, pm2

FIXTURES = Path(__file__).resolve().parent.parent / "import_fixtures" / "pm2"
ENV = {"HOME": "/home/deploy"}


def convert(tmp_path: Path, text: str, name: str = "ecosystem.config.js") -> Result:
    path = tmp_path / name
    path.write_text(text)
    return pm2.convert(str(path), LocalFiles(), ENV)


def loaded(tmp_path: Path, result: Result) -> config.Desired:
    """The output really loads (the same validation `procsupd --check` does)."""
    out = tmp_path / "out" / "apps.toml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(result.toml)
    return config.load(str(out), uid=1000, environ={"HOME": str(tmp_path)})


def one_app(tmp_path: Path, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Convert one app given as a Python dict (written as JSON); -> (its table, note keys)."""
    result = convert(tmp_path, json.dumps({"apps": [options]}), "ecosystem.json")
    loaded(tmp_path, result)
    apps = tomllib.loads(result.toml)["apps"]
    assert len(apps) == 1
    return next(iter(apps.values())), [n.key for n in result.notes]


# -- the JavaScript reader -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("module.exports = {a: 1}", {"a": 1}),
        ("'use strict';\nmodule.exports = {a: 'x',};", {"a": "x"}),
        ('"use strict"\nmodule.exports = {"a": [1, 2,],}', {"a": [1, 2]}),
        ("// c\n/* d\n e */ module.exports = { a: true, b: false, c: null }",
         {"a": True, "b": False, "c": None}),
        ("module.exports = { a: undefined, b: 2 }", {"b": 2}),
        ("module.exports = { a: -1, b: +2, c: 0x1F, d: 1.5, e: 1e3, f: 1_000, g: 0o17 }",
         {"a": -1, "b": 2, "c": 31, "d": 1.5, "e": 1000, "f": 1000, "g": 15}),
        ("module.exports = { a: 'it\\'s', b: \"tab\\there\", c: `tpl`, d: '\\u00e9\\x41' }",
         {"a": "it's", "b": "tab\there", "c": "tpl", "d": "éA"}),
        ("module.exports = { a: __dirname + '/app.js', b: 'x' + 1 }",
         {"a": "/srv/app/app.js", "b": "x1"}),
        ("module.exports = { 'quoted-key': 1, 42: 'n' }", {"quoted-key": 1, "42": "n"}),
        ('{"apps": [{"name": "json"}]}', {"apps": [{"name": "json"}]}),
        ("[{name: 'bare'}]", [{"name": "bare"}]),
        ("module.exports = {a: 'slash // not a comment', b: '/* nor this */'}",
         {"a": "slash // not a comment", "b": "/* nor this */"}),
        # declarations: plain data is bound, anything else skipped while unused
        ("const base = {};\nmodule.exports = base", {}),
        ("const path = require('path')\nconst name = 'api';\n"
         "module.exports = { apps: [{ script: name + '.js' }] }",
         {"apps": [{"script": "api.js"}]}),
        ("'use strict'\nlet os = require('os'), fs = require('fs');\nvar n = 2\n"
         "module.exports = { instances: n }", {"instances": 2}),
        ("const cfg = {\n  a: require('x'),\n}\nmodule.exports = { b: 1 }", {"b": 1}),
    ],
)
def test_js_reader_reads_plain_data(text: str, expected: object) -> None:
    assert jsobject.parse(text, "/srv/app/eco.js", "/srv/app") == expected


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("module.exports = require('./base')", 1, "function call require(...)"),
        ("module.exports = {\n  cwd: path.join(__dirname, 'x'),\n}", 2, "path.join(...)"),
        ("module.exports = {\n  a: 1,\n  b: process.env.PORT || 3000 }", 3, "process.env.PORT"),
        ("const path = require('path');\nmodule.exports = {\n  cwd: path }", 3,
         "variable 'path'"),
        ("module.exports = {\n\n  ...base }", 3, "spread"),
        ("module.exports = { name }", 1, "shorthand"),
        ("module.exports = {\n  [k]: 1 }", 2, "computed key"),
        ("module.exports = {\n  a: `x${y}` }", 2, "${...}"),
        ("module.exports = {\n  a: 1\n", 3, "not closed"),
        ("module.exports = {\n  a: 'open\n}", 2, "unterminated string"),
        ("module.exports = { a: 1 }\nconsole.log('x')", 2, "after the exported value"),
        ("/* never closed\nmodule.exports = {}", 1, "not closed"),
        ("module.exports = { a: 1 b: 2 }", 1, "expected ','"),
        ("module.exports = { start() { return 1 } }", 1, "method"),
        ("module.exports = { a: () => 1 }", 1, "expected a value"),
    ],
)
def test_js_reader_refuses_code_with_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        jsobject.parse(text, "/srv/eco.js", "/srv")
    assert err.value.file == "/srv/eco.js"
    assert err.value.line == line
    assert words in str(err.value)


# -- the mapping -----------------------------------------------------------------------------

MAPPING: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = [
    # (PM2 options, expected subset of the procsup table, expected note keys)
    ({"script": "app.js"}, {"command": "node app.js"}, []),
    ({"script": "app.js", "args": "--port 80 'a b'", "node_args": ["--inspect"]},
     {"command": "node --inspect app.js --port 80 'a b'"}, []),
    ({"script": "srv.py", "interpreter": "/usr/bin/python3.11", "interpreter_args": "-u"},
     {"command": "/usr/bin/python3.11 -u srv.py"}, []),
    ({"script": "srv.py"}, {"command": "python3 srv.py"}, ["script"]),
    ({"script": "run.sh", "args": ["a", 1]}, {"command": "bash run.sh a 1"}, []),
    ({"script": "npm", "args": "start"}, {"command": "npm start"}, []),
    ({"script": "./bin/www"}, {"command": "./bin/www"}, ["script"]),
    ({"script": "./server", "interpreter": "none", "interpreter_args": "-x"},
     {"command": "./server"}, ["interpreter_args"]),
    ({"script": "npm run start", "args": "x"}, {"command": "npm run start", "shell": True},
     ["args"]),
    ({"script": "a.js", "cwd": "/srv/web"}, {"cwd": "/srv/web"}, []),
    ({"script": "a.js", "cwd": "~/web"}, {"cwd": "/home/deploy/web"}, []),
    ({"script": "a.js", "instances": 4}, {"instances": 4}, ["exec_mode"]),
    ({"script": "a.js", "instances": "max", "exec_mode": "fork"}, {"instances": "max"}, []),
    ({"script": "a.js", "instances": 0, "exec_mode": "fork_mode"}, {"instances": "max"}, []),
    ({"script": "a.js", "instances": -1, "exec_mode": "fork"}, {"instances": -1}, []),
    ({"script": "a.js", "instances": "3", "exec_mode": "fork"}, {"instances": 3}, []),
    ({"script": "a.js", "exec_mode": "cluster", "instances": 2, "env": {"PORT": 3000}},
     {"exec_mode": "cluster", "listen": ["tcp://0.0.0.0:3000"], "instances": 2}, ["exec_mode"]),
    ({"script": "a.js", "exec_mode": "cluster_mode", "env": {"PORT": "8080"}},
     {"exec_mode": "cluster", "listen": ["tcp://0.0.0.0:8080"]}, ["exec_mode"]),
    ({"script": "a.js", "exec_mode": "cluster", "instances": 2}, {"instances": 2}, ["exec_mode"]),
    ({"script": "a.py", "exec_mode": "cluster", "env": {"PORT": 1}}, {}, ["script", "exec_mode"]),
    ({"script": "a.js", "exec_mode": "cluster", "env": {"PORT": 3000},
      "env_production": {"PORT": 4000}},
     {"listen": ["tcp://0.0.0.0:3000"], "env_production": {"PORT": 4000}},
     ["exec_mode", "env_production"]),
    ({"script": "a.js", "env": {"A": "x", "N": 1, "B": True, "F": 1.5, "O": {"k": 1}, "Z": None}},
     {"env": {"A": "x", "N": 1, "B": "true", "F": "1.5", "O": '{"k": 1}'}}, ["env", "env"]),
    ({"script": "a.js", "env_staging": {"A": "s"}, "env_bad name": {"A": 1}},
     {"env_staging": {"A": "s"}}, ["env_bad name"]),
    ({"script": "a.js", "out_file": "logs/o.log", "error_file": "/var/log/e.log"},
     {"out_file": "{base}/logs/o.log", "error_file": "/var/log/e.log"}, []),
    ({"script": "a.js", "output": "/dev/null", "error": "NULL"},
     {"out_file": False, "error_file": False}, []),
    ({"script": "a.js", "log_file": "all.log"},
     {"out_file": "{base}/all.log", "error_file": "{base}/all.log"}, ["log_file"]),
    ({"script": "a.js", "log_file": "all.log", "out_file": "o.log"},
     {"out_file": "{base}/o.log"}, ["log_file"]),
    ({"script": "a.js", "disable_logs": True}, {"out_file": False, "error_file": False}, []),
    ({"script": "a.js", "merge_logs": True}, {"merge_logs": True}, []),
    ({"script": "a.js", "combine_logs": True}, {"merge_logs": True}, []),
    ({"script": "a.js", "instances": 2, "exec_mode": "fork", "out_file": "/dev/stdout"},
     {"merge_logs": True, "out_file": "/dev/stdout"}, []),
    ({"script": "a.js", "log_date_format": "YYYY-MM-DD HH:mm Z"},
     {"log_date_format": "%Y-%m-%d %H:%M %z"}, []),
    ({"script": "a.js", "time": True}, {"log_date_format": "%Y-%m-%dT%H:%M:%S"}, []),
    ({"script": "a.js", "max_memory_restart": "300M"}, {"max_memory_restart": "300M"}, []),
    ({"script": "a.js", "max_memory_restart": 1048576}, {"max_memory_restart": 1048576}, []),
    ({"script": "a.js", "autorestart": False, "max_restarts": 3},
     {"autorestart": False, "max_restarts": 3}, []),
    ({"script": "a.js", "stop_exit_codes": [0]}, {"autorestart": "on-failure"}, []),
    ({"script": "a.js", "stop_exit_codes": [0, 2]}, {}, ["stop_exit_codes"]),
    ({"script": "a.js", "min_uptime": "10s", "restart_delay": 3000, "kill_timeout": "1600",
      "exp_backoff_restart_delay": 100},
     {"min_uptime": "10s", "restart_delay": 3000, "kill_timeout": 1600,
      "exp_backoff_restart_delay": 100}, []),
    ({"script": "a.js", "watch": True, "ignore_watch": ["node_modules"]},
     {"watch": True, "ignore_watch": ["node_modules"]}, []),
    ({"script": "a.js", "watch": "src", "ignore_watch": "^tmp/.*$"},
     {"watch": ["src"], "ignore_watch": "^tmp/.*$"}, ["ignore_watch"]),
    ({"script": "a.js", "cron_restart": "0 4 * * *"}, {"cron_restart": "0 4 * * *"}, []),
    ({"script": "a.js", "cron_restart": "0 30 4 * * 1"}, {"cron_restart": "30 4 * * 1"}, []),
    ({"script": "a.js", "cron_restart": "*/10 * * * * *"}, {}, ["cron_restart"]),
    ({"script": "a.js", "uid": "www-data", "gid": "www-data"},
     {"user": "www-data", "group": "www-data"}, []),
    ({"script": "a.js", "user": 33}, {}, ["user"]),
    ({"script": "a.js", "autostart": False, "instances": 3, "exec_mode": "fork"},
     {"instances": 0}, ["autostart"]),
    ({"script": "a.js", "treekill": True}, {}, []),
    ({"script": "a.js", "treekill": False}, {}, ["treekill"]),
    ({"script": "a.js", "wait_ready": True, "listen_timeout": 5000, "shutdown_with_message": True,
      "instance_var": "ID", "namespace": "x", "frobnicate": 1},
     {}, ["wait_ready", "listen_timeout", "shutdown_with_message", "instance_var", "namespace",
          "frobnicate"]),
    ({"name": "my app@v2", "script": "a.js"}, {}, ["name"]),
]


@pytest.mark.parametrize(("options", "expected", "note_keys"), MAPPING)
def test_mapping(tmp_path: Path, options: dict[str, Any], expected: dict[str, Any],
                 note_keys: list[str]) -> None:
    table, notes = one_app(tmp_path, options)
    for key, value in expected.items():
        if isinstance(value, str):
            value = value.replace("{base}", str(tmp_path))
        assert table.get(key) == value, (key, table)
    assert sorted(notes) == sorted(note_keys)
    assert table["cwd"].startswith("/")  # always written, absolute


def test_default_name_cwd_and_renames(tmp_path: Path) -> None:
    result = convert(tmp_path, """module.exports = { apps: [
        { script: 'api/index.js' },
        { name: 'index', script: 'b.js' },
        { name: 'all', script: 'c.js' },
    ] }""")
    apps = tomllib.loads(result.toml)["apps"]
    assert list(apps) == ["index", "index-2", "all-app"]
    assert apps["index"]["cwd"] == str(tmp_path)
    assert [n.key for n in result.notes] == ["name", "name"]
    loaded(tmp_path, result)


def test_long_and_dash_names_are_renamed_to_valid_ones(tmp_path: Path) -> None:
    """Issue 11: a 300-character name is cut to 100 (a second one with the same start gets a
    "-2" within the 100), a leading '-' is dropped; each with a note, and the result loads."""
    long = "w" * 300
    result = convert(tmp_path, f"""module.exports = {{ apps: [
        {{ name: '{long}', script: 'a.js' }},
        {{ name: '{long}x', script: 'b.js' }},
        {{ name: '-h', script: 'c.js' }},
    ] }}""")
    apps = tomllib.loads(result.toml)["apps"]
    assert list(apps) == ["w" * 100, "w" * 98 + "-2", "h"]
    assert [n.key for n in result.notes] == ["name", "name", "name"]
    assert "at most 100 characters" in result.notes[0].message
    assert list(loaded(tmp_path, result).apps) == list(apps)


def test_bare_name_that_is_a_local_file_runs_from_cwd(tmp_path: Path) -> None:
    (tmp_path / "server").write_text("#!/bin/sh\n")
    table, notes = one_app(tmp_path, {"script": "server"})
    assert table["command"] == "./server"
    assert notes == ["script"]


def test_notes_are_in_the_header_and_name_file_app_and_key(tmp_path: Path) -> None:
    result = convert(tmp_path, "module.exports = {apps: [{name: 'w', script: 'w.js', "
                     "wait_ready: true}], deploy: {}}")
    header = result.toml.split("[apps.w]")[0]
    assert len(result.notes) == 2
    for note in result.notes:
        assert note.where == str(tmp_path / "ecosystem.config.js")
        assert f"#   - {note}" in header
    assert "app 'w', key 'wait_ready'" in header
    assert "key 'deploy'" in header


def test_yaml_and_single_app_object(tmp_path: Path) -> None:
    result = convert(tmp_path, "apps:\n  - name: y\n    script: y.js\n    env:\n      A: 1\n",
                     "process.yml")
    assert tomllib.loads(result.toml)["apps"]["y"]["env"] == {"A": 1}
    result = convert(tmp_path, '{"name": "solo", "script": "s.js"}', "solo.json")
    assert list(tomllib.loads(result.toml)["apps"]) == ["solo"]


@pytest.mark.parametrize(
    ("name", "text", "line", "words"),
    [
        ("e.yml", "apps:\n  - name: a\n    script: [unclosed\n", 4, "YAML syntax error"),
        ("e.json", '{"apps": [\n  {"name": "a", "script": "a.js"\n]}', 3, "expected ','"),
        ("e.json", '{"apps": [{"name": "a"}]}', None, "missing 'script'"),
        ("e.json", '{"apps": [{"script": "a.js", "instances": "lots"}]}', None, "instances"),
        ("e.json", '{"apps": [{"script": "a.js", "instances": 1.5}]}', None, "instances"),
        ("e.json", '{"apps": [{"script": "a.js", "exec_mode": "turbo"}]}', None, "exec_mode"),
        ("e.json", '{"apps": [{"script": "a.js", "max_memory_restart": "lots"}]}', None,
         "invalid size"),
        ("e.json", '{"apps": [{"script": "a.js", "min_uptime": "soon"}]}', None,
         "invalid duration"),
        ("e.json", '{"apps": [{"script": "a.js", "cron_restart": "daily"}]}', None, "cron"),
        ("e.json", '{"apps": [{"script": "a.js", "env": ["A=1"]}]}', None, "expected an object"),
        ("e.json", '{"apps": []}', None, "no apps"),
        ("e.json", '{"services": []}', None, '"apps"'),
        ("e.json", '{"apps": ["a.js"]}', None, "expected an object"),
    ],
)
def test_errors(tmp_path: Path, name: str, text: str, line: int | None, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        convert(tmp_path, text, name)
    assert err.value.file == str(tmp_path / name)
    assert err.value.line == line
    assert words in str(err.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        pm2.convert(str(tmp_path / "missing.js"), LocalFiles(), ENV)


@pytest.mark.parametrize(
    ("moment", "strftime", "lost"),
    [
        ("YYYY-MM-DD HH:mm:ss", "%Y-%m-%d %H:%M:%S", []),
        ("YYYY-MM-DDTHH:mm:ss.SSS Z", "%Y-%m-%dT%H:%M:%S.%f %z", []),
        ("DD/MM/YY hh:mm A", "%d/%m/%y %I:%M %p", []),
        ("[Today is] dddd, MMMM Do", "Today is %A, %B ", ["Do"]),
        ("100% X", "100%% %s", []),
    ],
)
def test_moment_formats(moment: str, strftime: str, lost: list[str]) -> None:
    assert pm2.moment_to_strftime(moment) == (strftime, lost)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.*")))
def test_every_fixture_converts_and_loads(tmp_path: Path, fixture: str) -> None:
    result = pm2.convert(str(FIXTURES / fixture), LocalFiles(), ENV)
    desired = loaded(tmp_path, result)
    assert desired.apps
    assert result.toml.startswith("# Converted by `procsup import pm2`")
