"""cgroups: reading /proc/self/mountinfo and /proc/self/cgroup, and the names and values the
module writes (pure; tests/integration/test_cgroups.py runs real processes in real cgroups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from procsup import cgroups, config, reconcile
from procsup.errors import ConfigError
from procsup.model import AppSpec, Desired

V1_AND_V2 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
SYSTEMD = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
)


@pytest.mark.parametrize(("text", "want"), [
    (V1_AND_V2, ("/sys/fs/cgroup/unified", "/")),
    (SYSTEMD, ("/sys/fs/cgroup", "/")),
    # v1 only, or nothing at all
    ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None),
    ("", None),
    # a mount of a subtree (a container's bind mount) before one of the whole hierarchy
    ("40 1 0:38 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
     "41 1 0:38 / /mnt/cg rw - cgroup2 cgroup2 rw\n", ("/mnt/cg", "/")),
    ("40 1 0:38 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
     ("/sys/fs/cgroup", "/docker/abc")),
    # escaped characters in the mount point; optional fields before the separator
    ("41 31 0:38 / /mnt/my\\040cgroups rw shared:5 master:1 - cgroup2 none rw\n",
     ("/mnt/my cgroups", "/")),
    # malformed lines are skipped
    ("garbage\n41 31 0:38 /\n- cgroup2\n" + SYSTEMD, ("/sys/fs/cgroup", "/")),
    # a file system whose *source* is called cgroup2 is not one
    ("41 31 0:38 / /mnt rw - tmpfs cgroup2 rw\n", None),
])
def test_parse_mountinfo(text: str, want: tuple[str, str] | None) -> None:
    assert cgroups.parse_mountinfo(text) == want


@pytest.mark.parametrize(("text", "want"), [
    ("0::/\n", "/"),
    ("0::/system.slice/procsup.service\n", "/system.slice/procsup.service"),
    # hybrid: v1 lines first, as on this project's CI machine
    ("9:name=systemd:/\n4:memory:/x/y\n1:cpu:/\n0::/\n", "/"),
    # v1 only: no 0:: line
    ("4:memory:/x\n1:cpu,cpuacct:/\n", None),
    # a path holding ':' is kept whole
    ("0::/odd:name/x\n", "/odd:name/x"),
    # outside the cgroup namespace: still parsed, own_dir refuses it
    ("0::/../sibling\n", "/../sibling"),
    ("", None),
    ("0:cpu:/\n", None),
])
def test_parse_proc_cgroup(text: str, want: str | None) -> None:
    assert cgroups.parse_proc_cgroup(text) == want


@pytest.mark.parametrize(("mount", "root", "path", "want"), [
    ("/sys/fs/cgroup", "/", "/", "/sys/fs/cgroup"),
    ("/sys/fs/cgroup", "/", "/system.slice/procsup.service",
     "/sys/fs/cgroup/system.slice/procsup.service"),
    ("/sys/fs/cgroup/unified", "/", "/", "/sys/fs/cgroup/unified"),
    # a mount of the subtree /docker/abc shows /docker/abc/x at <mount>/x
    ("/sys/fs/cgroup", "/docker/abc", "/docker/abc/x", "/sys/fs/cgroup/x"),
    ("/sys/fs/cgroup", "/docker/abc", "/docker/abc", "/sys/fs/cgroup"),
    ("/sys/fs/cgroup", "/docker/abc", "/docker/abcd", None),  # a sibling, not below
    ("/sys/fs/cgroup", "/docker/abc", "/other", None),
    ("/sys/fs/cgroup", "/", "/../sibling", None),  # outside our cgroup namespace
    ("/sys/fs/cgroup", "/", "/gone (deleted)", None),
])
def test_own_dir(mount: str, root: str, path: str, want: str | None) -> None:
    assert cgroups.own_dir(mount, root, path) == want


@pytest.mark.parametrize(("name", "want"), [
    ("web@0.3", ("web", 0)),
    ("my.app-x@12.0", ("my.app-x", 12)),
    ("procsupd", None),
    ("web@x.1", None),
    ("@0.1", None),
])
def test_group_names_say_their_instance(name: str, want: tuple[str, int] | None) -> None:
    assert cgroups.Group(f"/cg/{name}").instance() == want


def test_limits_write_only_what_is_set() -> None:
    assert cgroups.Limits().files() == {}
    assert cgroups.Limits().controllers() == frozenset()
    limits = cgroups.Limits(memory_max=1 << 30, cpu_weight=200, pids_max=64)
    assert limits.files() == {"memory.max": "1073741824", "cpu.weight": "200",
                              "pids.max": "64"}
    assert limits.controllers() == {"memory", "cpu", "pids"}
    assert set(cgroups.KEY_CONTROLLER.values()) == limits.controllers()


# -- the config keys --------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> Desired:
    path = tmp_path / "apps.toml"
    path.write_text(text)
    return config.load(str(path), uid=0, environ={})


@pytest.mark.parametrize(("snippet", "field", "want"), [
    ('memory_max = "1G"', "memory_max", 1 << 30),
    ("memory_max = 4096", "memory_max", 4096),
    ("cpu_weight = 1", "cpu_weight", 1),
    ("cpu_weight = 10000", "cpu_weight", 10000),
    ("pids_max = 512", "pids_max", 512),
    ("", "memory_max", None),
    ("", "cpu_weight", None),
    ("", "pids_max", None),
])
def test_app_keys(tmp_path: Path, snippet: str, field: str, want: int | None) -> None:
    app = _load(tmp_path, f'[apps.a]\ncommand = "x"\n{snippet}\n').apps["a"]
    assert getattr(app, field) == want


@pytest.mark.parametrize(("snippet", "message"), [
    ("memory_max = 0", "greater than zero"),
    ('memory_max = "lots"', "memory_max"),
    ("cpu_weight = 0", "1..10000"),
    ("cpu_weight = 10001", "1..10000"),
    ('cpu_weight = "100"', "expected integer"),
    ("pids_max = 0", ">= 1"),
    ("pids_max = true", "expected integer"),
])
def test_app_keys_refused(tmp_path: Path, snippet: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _load(tmp_path, f'[apps.a]\ncommand = "x"\n{snippet}\n')
    assert info.value.key == snippet.partition(" ")[0] and info.value.line == 3


@pytest.mark.parametrize(("snippet", "want"), [
    ("", "auto"), ('cgroups = "auto"', "auto"), ("cgroups = false", False),
    ("cgroups = true", True),
])
def test_daemon_setting(tmp_path: Path, snippet: str, want: str | bool) -> None:
    assert _load(tmp_path, f"[procsup]\n{snippet}\n").daemon.cgroups == want


def test_daemon_setting_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='expected "auto", true or false'):
        _load(tmp_path, '[procsup]\ncgroups = "yes"\n')


def test_a_changed_setting_takes_a_daemon_restart() -> None:
    assert "cgroups" in reconcile.RESTART_DAEMON_KEYS


APPS = {
    "web": AppSpec("web", ("x",), memory_max=1 << 30, pids_max=10, source="/c.toml", line=4),
    "plain": AppSpec("plain", ("x",)),
}


@pytest.mark.parametrize(("support", "setting", "want"), [
    # everything offered: nothing to say
    (cgroups.Support(None, frozenset({"memory", "pids"})), "auto", []),
    (cgroups.Support(None, frozenset({"pids"})), "auto",
     ["/c.toml:4: app 'web', key 'memory_max': the cgroup hierarchy does not offer the memory "
      "controller (offered: pids): it has no effect"]),
    (cgroups.Support(None), "auto",
     ["/c.toml:4: app 'web', key 'memory_max': the cgroup hierarchy does not offer the memory "
      "controller (offered: none): it has no effect",
      "/c.toml:4: app 'web', key 'pids_max': the cgroup hierarchy does not offer the pids "
      "controller (offered: none): it has no effect"]),
    (cgroups.Support("no cgroup2 hierarchy"), "auto",
     ["/c.toml:4: app 'web', key 'memory_max': procsupd cannot create cgroups here (no cgroup2 "
      "hierarchy): it has no effect",
      "/c.toml:4: app 'web', key 'pids_max': procsupd cannot create cgroups here (no cgroup2 "
      "hierarchy): it has no effect"]),
    (cgroups.Support(None, frozenset({"memory", "pids"})), False,
     ["/c.toml:4: app 'web', key 'memory_max': [procsup] cgroups = false: it has no effect",
      "/c.toml:4: app 'web', key 'pids_max': [procsup] cgroups = false: it has no effect"]),
])
def test_check_warns_of_keys_without_effect(
        support: cgroups.Support, setting: str | bool, want: list[str]) -> None:
    assert cgroups.app_warnings(APPS, support, setting) == want


def test_limits_of_an_app() -> None:
    assert cgroups.limits_of(APPS["web"]) == cgroups.Limits(memory_max=1 << 30, pids_max=10)
    assert cgroups.limits_of(APPS["plain"]) == cgroups.Limits()
