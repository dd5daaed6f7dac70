"""`procsup`'s start-up: the modules it must not import (each costs every run of `procsup
status`; docs/benchmarks.md, "Hostile control clients"), and the shortcuts that keep them out
behaving as what they replace (the one-command parser, the terminal width, the config read
for the socket without the TOML parser).

The import checks run a fresh interpreter with `-S` (no site: an editable install's finder
imports pathlib, re, enum... before procsup does) and compare `sys.modules` before and after.
If a newer Python's own argparse or json imports one of the modules listed, drop it from the
list with a note: the list is about what procsup brings in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import procsup
from procsup import cli

ROOT = str(Path(procsup.__file__).resolve().parent.parent)

#: What `import procsup.cli` and a daemon command up to its connect must not load. Before this
#: list existed: socket (and selectors), contextlib and struct at import; shutil, with bz2, lzma
#: and zlib, from argparse's help formatter at every run; tomllib (typing, datetime) and units
#: (decimal, signal) with `paths` at every run without -s.
HEAVY = (
    "socket", "selectors", "contextlib", "struct", "shutil", "bz2", "lzma", "zlib",
    "tomllib", "typing", "datetime", "decimal", "signal", "pathlib", "urllib.parse",
    "ipaddress", "asyncio", "dataclasses", "subprocess", "threading", "psutil",
    "procsup.paths", "procsup.units", "procsup.importers", "procsup.config", "procsup.schema",
    "procsup.logtargets", "procsup.journal", "procsup.outlets", "procsup.cgroups",
)

_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
import procsup.cli
imported = set(sys.modules) - before
code = procsup.cli.main(sys.argv[2:]) if len(sys.argv) > 2 else None
print(json.dumps({"import": sorted(imported), "run": sorted(set(sys.modules) - before),
                  "code": code}))
"""


def probe(*argv: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What a fresh `python -S` imports for `import procsup.cli`, then for `main(argv)`."""
    r = subprocess.run([sys.executable, "-S", "-c", _PROBE, ROOT, *argv], capture_output=True,
                       text=True, timeout=60, check=False, env=env)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    out["stderr"] = r.stderr
    return out


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m in HEAVY or m.startswith("procsup.importers.")]


def test_import_of_the_cli_loads_no_heavy_module() -> None:
    got = probe()
    assert "procsup.cli" in got["import"]  # the probe sees what the import brings
    assert heavy(got["import"]) == []


@pytest.mark.parametrize("argv", [
    ("status", "--json"), ("status",), ("ls", "web"), ("ping",), ("version",), ("dump",),
    ("stop", "--no-wait", "web"), ("logs", "-n", "5"),
])
def test_a_daemon_command_up_to_the_connect_loads_no_heavy_module(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    sock = str(tmp_path / "missing.sock")
    got = probe("-s", sock, *argv)
    assert got["code"] == 3 and f"cannot reach procsupd at {sock}" in got["stderr"]
    assert heavy(got["run"]) == []


def test_finding_the_socket_in_a_config_without_one_needs_no_toml_parser(
    tmp_path: Path,
) -> None:
    # -c FILE, the file names no socket: the default socket (for root the system's, which is
    # why -s is not given here: any reply will do, the modules are what is checked).
    config = tmp_path / "apps.toml"
    config.write_text('[procsup]\nlog_dir = "logs"\n\n[apps.web]\ncommand = ["sleep", "1"]\n')
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    got = probe("-c", str(config), "ping", env=env)
    assert "procsup.paths" in got["run"]
    assert [m for m in heavy(got["run"]) if m != "procsup.paths"] == []


_SOCKET_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from procsup import paths
found = [paths.socket_from_file(p) for p in sys.argv[2:]]
print(json.dumps({"found": found, "tomllib": "tomllib" in sys.modules}))
"""


def socket_probe(*files: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-S", "-c", _SOCKET_PROBE, ROOT, *map(str, files)],
                       capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(r.stdout)
    return result


@pytest.mark.parametrize(("text", "found", "parsed"), [
    ('[apps.web]\ncommand = ["sleep", "1"]\n', None, False),
    ("not = [toml\n", None, False),
    ('[procsup]\nsocket = "s.sock"\n', "s.sock", True),
    ('[procsup]\n"\\u0073ocket" = "e.sock"\n', "e.sock", True),  # the key spelt with an escape
    ('[procsup]\n"\\U00000073ocket" = "u.sock"\n', "u.sock", True),
    ('# socket = "c.sock" in a comment\n', None, True),
    ('[procsup]\nsocket = "b.sock"\nbroken = [\n', "b.sock", True),  # not TOML: the line scan
])
def test_socket_from_file_parses_only_a_file_that_may_name_a_socket(
    tmp_path: Path, text: str, found: str | None, parsed: bool
) -> None:
    config = tmp_path / "apps.toml"
    config.write_text(text)
    got = socket_probe(config)
    assert got["found"] == [None if found is None else str(tmp_path / found)]
    assert got["tomllib"] is parsed


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(("argv", "word"), [
    (["status"], "status"),
    (["-s", "/x", "status", "--json"], "status"),
    (["-s", "status", "ping"], "ping"),  # the value of -s is not the command
    (["-c", "a.toml", "-s", "/x", "ls"], "ls"),
    (["-sx", "ping"], "ping"),
    (["-s=/x", "ping"], "ping"),
    (["--socket=/x", "--config=a", "stop", "web"], "stop"),
    (["--socket", "/x", "logs", "-f"], "logs"),
    (["bogus"], "bogus"),
    ([], None),
    (["-s"], None),
    (["-s", "/x"], None),
    (["--sock", "/x", "status"], None),  # an abbreviation: argparse knows, not the guess
    (["--", "status"], None),
    (["-h"], None),
    (["--version"], None),
])
def test_command_word(argv: list[str], word: str | None) -> None:
    assert cli.command_word(argv) == word


def outcome(parser_of: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> object:
    """What parsing `argv` gives: the namespace, or argparse's exit code and output."""
    parser = parser_of(argv)
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:
        out = capsys.readouterr()
        return ("exit", exc.code, out.out, out.err)
    return ("parsed", vars(ns))


@pytest.mark.parametrize("argv", [
    ["-s", "/x", "status", "--json"], ["ls", "web", "api"], ["-sx", "ping"], ["-s=/x", "dump"],
    ["--socket=/x", "logs", "-f", "web", "--err"], ["-c", "c.toml", "stop", "--no-wait", "a"],
    ["-s", "status", "ping"], ["scale", "web", "3"], ["signal", "USR2", "web"],
    ["import", "pm2", "eco.json", "-o", "out.toml", "--force"], ["reread", "--json"],
    ["update"], ["shutdown", "--no-wait"], ["version"], ["restart", "all"], ["reload", "w"],
    ["start", "w"],
    # errors, help: the same message, usage line and exit code
    ["status", "-s", "/x"], ["-s"], ["-s", "-x", "status"], ["stop"], ["scale", "web", "-1"],
    ["signal", "NOPE", "web"], ["logs", "--err", "--out"], ["import", "ini", "f"],
    ["-s", "/x", "bogus"], ["--sock", "/x", "status"], ["status", "-h"], ["logs", "--help"],
    ["-h"], ["--version"], ["--", "status"], ["-s", "/x"], [],
])
def test_the_one_command_parser_parses_as_the_whole_one(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "90")
    whole = outcome(lambda _: cli.build_parser(), argv, capsys)
    one = outcome(lambda a: cli.build_parser(cli.command_word(a)), argv, capsys)
    assert one == whole


def test_the_one_command_parser_has_only_that_command() -> None:
    # The shortcut is taken (what the test above compares is not twice the whole parser).
    def commands(command: str | None) -> list[str]:
        (sub,) = (a for a in cli.build_parser(command)._actions if a.dest == "cmd")
        assert isinstance(sub.choices, dict)
        return sorted(sub.choices)

    assert commands("status") == ["ls", "status"]
    assert commands("ls") == ["ls", "status"]
    assert commands("ping") == ["ping"]
    assert len(commands(None)) == 19 == len(commands("bogus"))
    assert commands("disable") == ["disable"]


@pytest.mark.parametrize("columns", [None, "120", "0", "-3", "wide", ""])
def test_the_help_width_is_shutils(columns: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli._columns() == shutil.get_terminal_size().columns
