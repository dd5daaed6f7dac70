"""procsup.dump: the effective config as TOML, and its round trip through config.load."""

from __future__ import annotations

import dataclasses
import os
import signal
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procsup import config, limits, schema, values
from procsup.dump import MERGED_APP_KEYS, MERGED_DAEMON_KEYS, dump
from procsup.model import AppSpec, DaemonSpec, Desired, ExecMode, RestartPolicy

REPO = Path(__file__).resolve().parents[2]
CPUS = len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def reload(tmp_path: Path, desired: Desired, **kw: Any) -> Desired:
    """Write dump(desired) somewhere else than the original and load it back."""
    kw.setdefault("uid", 0)
    kw.setdefault("environ", {})
    out = tmp_path / "dumped" / "deeper" / "effective.toml"
    return config.load(write(out, dump(desired)), **kw)


def assert_same(original: Desired, again: Desired) -> None:
    assert list(again.apps) == list(original.apps)
    for name, app in original.apps.items():
        assert again.apps[name] == app, name
    assert dict(again.apps) == dict(original.apps)
    expected_daemon = dataclasses.replace(
        original.daemon,
        config_path=again.daemon.config_path,
        include=(),
        env=original.profile,  # the active profile is what gets written
    )
    assert again.daemon == expected_daemon
    assert again.profile == original.profile
    assert again.files == (again.daemon.config_path,)


def round_trip(tmp_path: Path, text: str, **kw: Any) -> tuple[Desired, Desired]:
    kw.setdefault("uid", 0)
    kw.setdefault("environ", {})
    original = config.load(write(tmp_path / "conf" / "apps.toml", text), **kw)
    kw.pop("profile", None)  # the dump carries the active profile itself
    again = reload(tmp_path, original, **kw)
    assert_same(original, again)
    return original, again


# -- the shipped configs ----------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["etc/procsup/apps.toml", "etc/demo/apps.toml"])
@pytest.mark.parametrize("uid", [0, 1000])
def test_shipped_configs_round_trip(tmp_path: Path, relative: str, uid: int) -> None:
    environ = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"}
    original = config.load(str(REPO / relative), uid=uid, environ=environ)
    assert original.apps
    assert_same(original, reload(tmp_path, original, uid=uid, environ=environ))


def test_reference_config_dump_text(tmp_path: Path) -> None:
    original = config.load(str(REPO / "etc/procsup/apps.toml"), uid=0, environ={})
    text = dump(original)
    data = tomllib.loads(text)
    assert text.startswith("# procsup dump:")
    assert data["procsup"]["env"] == "production"
    assert "include" not in data["procsup"]
    web = data["apps"]["web"]
    assert web["env"] == {"APP_COLOR": "blue", "PORT": "8000", "LOG_LEVEL": "warn"}
    assert not any(key.startswith("env_") for key in web)
    assert web["command"] == ["python3", "-m", "myapp", "--port-from-fd", "3"]
    assert web["out_file"] == "/var/log/procsup/web.out.log"
    assert web["umask"] == "0022"
    assert web["log_max_size"] == "50M"
    assert web["kill_signal"] == "SIGTERM"
    worker = data["apps"]["worker"]
    assert worker["instances"] == max(1, CPUS - 1)
    assert worker["autorestart"] == "on-failure"
    assert worker["watch"] == ["/srv/web/myapp", "/srv/web/settings.toml"]
    report = data["apps"]["nightly-report"]
    assert (report["command"], report["shell"]) == (
        "python3 report.py > /tmp/report.txt && echo done",
        True,
    )
    assert report["autorestart"] is False


def test_dump_of_a_dump_is_the_same_text(tmp_path: Path) -> None:
    original = config.load(str(REPO / "etc/procsup/apps.toml"), uid=0, environ={})
    again = reload(tmp_path, original)
    body = dump(original).split("\n\n", 1)[1]  # after the header, which names the files
    assert dump(again).split("\n\n", 1)[1] == body


def test_every_key_is_written_or_merged(tmp_path: Path) -> None:
    """A new schema row must be taught to dump: a full app writes every non-merged key."""
    text = """
[procsup]
socket_group = "adm"
[apps.full]
command = "x"
cwd = "/srv"
exec_mode = "cluster"
listen = "tcp://127.0.0.1:8000"
env = { A = "1" }
user = "u"
group = "g"
umask = "077"
limits = { nofile = 4096, core = [0, "unlimited"], as = "1G" }
nice = 5
oom_score_adjust = -100
exp_backoff_restart_delay = "1s"
log_date_format = "%H"
log_max_size = "1M"
max_memory_restart = "1G"
memory_max = "512M"
cpu_weight = 50
pids_max = 64
cron_restart = "0 4 * * *"
ready = "notify"
heartbeat_timeout = "10s"
depends_on = { once = "completed" }
health = ["/bin/true"]
reload_signal = "HUP"
[apps.once]
command = "true"
autorestart = false
[apps.bg]
command = "x"
pidfile = "/run/bg.pid"
"""
    original, _ = round_trip(tmp_path, text, profile="p")
    data = tomllib.loads(dump(original))
    # (pidfile is for fork apps: from the second one)
    keys = set(data["apps"]["full"]) | ({"pidfile"} & set(data["apps"]["bg"]))
    assert keys == set(schema.APP_KEYS) - MERGED_APP_KEYS
    assert set(data["procsup"]) == set(schema.DAEMON_KEYS) - MERGED_DAEMON_KEYS


# -- a table of small configs -----------------------------------------------------------------

SMALL_CONFIGS = {
    "empty": "",
    "no apps, daemon keys": """
[procsup]
socket = "run/s.sock"
socket_mode = "0600"
socket_group = "adm"
pidfile = "/run/x.pid"
log_dir = "logs"
state_dir = "../state"
watch_config = false
shutdown_timeout = 1500
""",
    "file profile": """
[procsup]
env = "production"
[apps.a]
command = "x"
env = { A = "base", B = "base" }
env_production = { B = "prod" }
env_staging = { B = "staging" }
""",
    "profile without a table for the app": """
[procsup]
env = "other"
[apps.a]
command = "x"
env_production = { B = "prod" }
""",
    "shell string": """
[apps.a]
command = "echo $HOME | tr a-z A-Z > out.txt"
shell = true
""",
    "shell array": """
[apps.a]
command = ["echo", "two words", "it's"]
shell = true
""",
    "argv that looks like a shell": """
[apps.a]
command = ["/bin/sh", "-c", "echo hi"]
""",
    "split string": """
[apps.a]
command = "python3 -m 'my app' --flag=\\"quoted value\\""
""",
    "user group umask": """
[apps.a]
command = "x"
user = "www-data"
group = "adm"
umask = "0027"
inherit_env = false
""",
    "every duration and size": """
[procsup]
shutdown_timeout = "2m"
[apps.a]
command = "x"
min_uptime = 250
restart_delay = "1.5s"
exp_backoff_restart_delay = "0.1ms"
kill_timeout = "1h"
ready = "notify"
ready_timeout = "1.234s"
heartbeat_timeout = "3m"
log_max_size = 1500
max_memory_restart = "1.5G"
[apps.b]
command = "x"
min_uptime = "0s"
restart_delay = 1
kill_timeout = "90s"
log_max_size = "1.3M"
max_memory_restart = "512K"
ready_timeout = 7
""",
    "cluster with listen": """
[apps.web]
command = "x"
exec_mode = "cluster"
instances = "max"
listen = ["tcp://0.0.0.0:8000", "tcp://[::]:8000", "unix:run/web.sock"]
balance = "reuseport"
ready = "tcp://127.0.0.1:8000"
[apps.api]
command = "x"
exec_mode = "cluster"
instances = -1
listen = "unix:/run/api.sock"
ready = "http://127.0.0.1:8001/health"
""",
    "merge_logs": """
[procsup]
log_dir = "/logs"
[apps.a]
command = "x"
instances = 3
merge_logs = true
out_file = "a.log"
error_file = "a.log"
""",
    "false and relative logs": """
[procsup]
log_dir = "logs"
[apps.quiet]
command = "x"
out_file = false
error_file = false
[apps.half]
command = "x"
out_file = "sub/half.log"
error_file = false
[apps.abs]
command = "x"
out_file = "/var/log/abs.log"
""",
    "watch": """
[apps.no_cwd]
command = "x"
watch = true
[apps.with_cwd]
command = "x"
cwd = "srv"
watch = true
ignore_watch = ["*.tmp"]
[apps.list]
command = "x"
cwd = "/srv/x"
watch = ["src", "/etc/x.conf", "../up"]
ignore_watch = []
""",
    "signals and restart policy": """
[apps.a]
command = "x"
kill_signal = 9
autorestart = false
max_restarts = 0
log_retain = 0
[apps.b]
command = "x"
kill_signal = "usr1"
autorestart = "on-failure"
[apps.c]
command = "x"
kill_signal = "35"
cron_restart = "*/5  * * * 1-5"
""",
    "awkward names and values": """
[apps."api.v2"]
command = ["prog", "line\\nbreak", "tab\\there", "quote\\"", "back\\\\slash", "ünï"]
env = { "A.B" = "dot", "with space" = "x", "ü" = "ü", Q = "a \\"quoted\\" \\\\ value\\n", E = "" }
log_date_format = "%Y \\"%m\\" \\\\ %d"
[apps.zero]
command = "x"
instances = 0
""",
}


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_small_configs_round_trip(tmp_path: Path, name: str) -> None:
    round_trip(tmp_path, SMALL_CONFIGS[name])


@pytest.mark.parametrize("uid", [0, 1000])
def test_profile_argument_round_trips(tmp_path: Path, uid: int) -> None:
    original, again = round_trip(
        tmp_path, SMALL_CONFIGS["file profile"], profile="staging", uid=uid,
        environ={"HOME": "/home/u"},
    )
    assert original.daemon.env == "production"
    assert again.daemon.env == again.profile == "staging"
    assert again.apps["a"].env == {"A": "base", "B": "staging"}


def test_env_files_are_merged_and_no_longer_needed(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "srv" / ".env", "A=from-file\nexport C='c'\n")
    write(tmp_path / "conf" / "base.env", "B=base-file\n")
    text = """
[procsup]
env = "production"
[apps.with_cwd]
command = "x"
cwd = "srv"
env = { A = "table", Z = "z" }
env_file = ".env"
env_production = { C = "prod" }
[apps.without_cwd]
command = "x"
env_file = ["base.env"]
"""
    original = config.load(write(tmp_path / "conf" / "apps.toml", text), uid=0, environ={})
    assert original.apps["with_cwd"].env == {"A": "from-file", "Z": "z", "C": "prod"}
    os.remove(tmp_path / "conf" / "srv" / ".env")
    os.remove(tmp_path / "conf" / "base.env")
    again = reload(tmp_path, original)
    assert_same(original, again)
    apps = tomllib.loads(dump(original))["apps"]
    assert not any("env_file" in app for app in apps.values())
    assert apps["without_cwd"]["env"] == {"B": "base-file"}


def test_includes_are_merged(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "apps.d" / "b.toml", '[apps.b]\ncommand = "b"\nout_file = "b.log"\n')
    write(conf / "apps.d" / "c.toml", '[apps.c]\ncommand = "c"\ncwd = "rel"\n')
    main = write(
        conf / "apps.toml",
        '[procsup]\ninclude = ["apps.d/*.toml"]\nlog_dir = "logs"\n[apps.a]\ncommand = "a"\n',
    )
    original = config.load(main, uid=0, environ={})
    assert list(original.apps) == ["a", "b", "c"] and len(original.files) == 3
    text = dump(original)
    assert "include" not in tomllib.loads(text)["procsup"]
    assert repr(str(conf / "apps.d" / "b.toml")) in text.split("\n\n", 1)[0]  # named in header
    assert_same(original, reload(tmp_path, original))


def test_dump_does_not_depend_on_who_loads_it(tmp_path: Path) -> None:
    environ = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/st"}
    original = config.load(
        write(tmp_path / "apps.toml", '[apps.a]\ncommand = "x"\n'), uid=1000, environ=environ
    )
    as_root = reload(tmp_path, original, uid=0, environ={})
    assert as_root.daemon.socket == "/run/user/1000/procsup/procsup.sock"
    assert as_root.apps["a"].out_file == "/st/procsup/logs/a-out.log"
    assert_same(original, as_root)


def test_shell_spec_that_no_file_can_express() -> None:
    daemon = DaemonSpec(
        config_path="/c.toml", socket="/s", pidfile="/p", log_dir="/l", state_dir="/d"
    )
    app = AppSpec(name="a", command=("bash", "-c", "x"), shell=True)
    with pytest.raises(ValueError, match="/bin/sh -c TEXT"):
        dump(Desired(daemon=daemon, apps={"a": app}, profile=None, files=("/c.toml",)))


# -- property: any representable spec survives ------------------------------------------------

_seconds = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
_positive_seconds = _seconds.filter(lambda s: s > 0)
_bytes = st.integers(min_value=1, max_value=2**50)
_chars = st.characters(blacklist_characters="\0", blacklist_categories=["Cs"])
_text = st.text(_chars, min_size=1).filter(str.strip)
_env = st.dictionaries(
    _text.filter(lambda k: "=" not in k),
    st.text(_chars),
    max_size=4,
)


@st.composite
def _limits(draw: st.DrawFn) -> tuple[tuple[str, int, int], ...]:
    names = draw(st.sets(st.sampled_from(list(limits.RESOURCES)), max_size=3))
    value = st.just(limits.UNLIMITED) | st.integers(min_value=0, max_value=1 << 40)
    out = []
    for name in limits.RESOURCES:
        if name in names:
            a, b = draw(value), draw(value)
            soft, hard = (b, a) if limits.above(a, b) else (a, b)
            out.append((name, soft, hard))
    return tuple(out)


@st.composite
def _apps(draw: st.DrawFn) -> AppSpec:
    notify = draw(st.booleans())
    shell = draw(st.booleans())
    argv = tuple(draw(st.lists(_text, min_size=1, max_size=3)))
    return AppSpec(
        name=draw(st.from_regex(values.APP_NAME_RE, fullmatch=True).filter(lambda n: n != "all")),
        command=("/bin/sh", "-c", argv[0]) if shell else argv,
        shell=shell,
        cwd=draw(st.none() | st.just("/srv/app")),
        instances=draw(st.integers(min_value=0, max_value=64)),
        env=draw(_env),
        inherit_env=draw(st.booleans()),
        umask=draw(st.none() | st.integers(min_value=0, max_value=0o777)),
        limits=draw(_limits()),
        nice=draw(st.none() | st.integers(min_value=-20, max_value=19)),
        oom_score_adjust=draw(st.none() | st.integers(min_value=-1000, max_value=1000)),
        autorestart=draw(st.sampled_from(list(RestartPolicy))),
        max_restarts=draw(st.integers(min_value=0, max_value=1000)),
        min_uptime=draw(_seconds),
        restart_delay=draw(_seconds),
        exp_backoff_restart_delay=draw(st.none() | _positive_seconds),
        kill_signal=draw(st.sampled_from(sorted(signal.valid_signals() - {0}))),
        kill_timeout=draw(_seconds),
        out_file=draw(st.none() | st.just("/logs/o.log")),
        error_file=draw(st.none() | st.just("/logs/e.log")),
        merge_logs=draw(st.booleans()),
        log_date_format=draw(st.none() | _text),
        log_max_size=draw(st.none() | _bytes),
        log_retain=draw(st.integers(min_value=0, max_value=100)),
        max_memory_restart=draw(st.none() | _bytes),
        ready="notify" if notify else "started",
        ready_timeout=draw(_positive_seconds),
        heartbeat_timeout=draw(st.none() | _positive_seconds) if notify else None,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(app=_apps(), shutdown=_seconds, mode=st.integers(min_value=0, max_value=0o7777))
def test_any_spec_round_trips(tmp_path: Path, app: AppSpec, shutdown: float, mode: int) -> None:
    daemon = DaemonSpec(
        config_path=str(tmp_path / "x.toml"), socket="/run/s.sock", socket_mode=mode,
        pidfile="/run/p.pid", log_dir="/logs", state_dir="/state", shutdown_timeout=shutdown,
    )
    original = Desired(daemon=daemon, apps={app.name: app}, profile=None, files=())
    again = reload(tmp_path, original)
    assert_same(original, again)
    assert again.apps[app.name].exec_mode is ExecMode.FORK
