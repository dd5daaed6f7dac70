"""`procsup import`: every fixture in tests/import_fixtures is converted by the real CLI,
checked by the real `procsupd --check`, and run by a real procsupd until its instances are
running (cluster apps also answer HTTP on their port)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.integration.conftest import PY, Daemon, wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "import_fixtures"
#: Ports written in the fixtures; each copy gets free ports instead, so runs never collide.
FIXTURE_PORTS = ("47813", "47814", "47815")
CASES = [("pm2", p.name) for p in sorted((FIXTURES / "pm2").glob("*.*"))] + [
    ("supervisord", p.name) for p in sorted((FIXTURES / "supervisord").glob("*.conf"))
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of the fixtures (the imported paths point into it: logs land there)."""
    root = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, root)
    for port in FIXTURE_PORTS:
        new = str(free_port())
        for path in root.rglob("*.*"):
            if path.is_file() and port in path.read_text():
                path.write_text(path.read_text().replace(port, new))
    return root


def run(*argv: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
        return str(reply.read().decode())


@pytest.mark.parametrize(("kind", "fixture"), CASES)
def test_import_check_and_run(daemon: Daemon, workspace: Path, kind: str, fixture: str) -> None:
    source = workspace / kind / fixture
    env = dict(daemon.env, FIXTURE_APPS=str(workspace / "supervisord" / "apps"))
    out = daemon.root / "imported.toml"

    converted = run(PY, "-m", "procsup.cli", "import", kind, str(source), "--output", str(out),
                    env=env)
    assert converted.returncode == 0, converted.stderr
    notes = [line for line in converted.stderr.splitlines() if "warning:" in line]
    header = out.read_text().split("\n[")[0]
    assert len(notes) == header.count("\n#   - ")  # each note is in both places

    checked = run(PY, "-m", "procsup.daemon", "--check", "-c", str(out), env=env)
    assert checked.returncode == 0, checked.stderr

    doc: dict[str, Any] = tomllib.loads(out.read_text())
    apps: dict[str, dict[str, Any]] = doc["apps"]
    if shutil.which("node") is None and any(a["command"].startswith("node") for a in apps.values()):
        pytest.skip("node is not installed")
    # Run it as converted; only the daemon's own places move into the test's directory.
    doc["procsup"] = {**doc.get("procsup", {}), "socket": daemon.socket,
                      "pidfile": daemon.pidfile, "state_dir": str(daemon.state_dir),
                      "log_dir": str(daemon.log_dir), "watch_config": False}
    doc["procsup"].pop("socket_group", None)  # the group named in the fixture may not exist
    daemon.config.write_text(tomli_w.dumps(doc))
    os.chmod(daemon.config, 0o644)
    expected = sum(a.get("instances", 1) for a in apps.values())
    daemon.start()

    def all_running() -> bool:
        rows = daemon.instances()
        return len(rows) == expected and all(r["state"] == "running" for r in rows)

    wait_for(all_running, 15, f"{expected} instances of {fixture} running "
             f"(status: {daemon.instances()})")
    for app in apps.values():  # cluster apps serve on the port procsupd holds for them
        for address in app.get("listen", []):
            port = int(address.rsplit(":", 1)[1])
            assert http_get(port).startswith("hello from ")
    if fixture == "numprocs.conf":  # %(process_num) computed per instance by /bin/sh
        for row in daemon.instances("consumer"):
            argv = Path(f"/proc/{row['pid']}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            number = f"{row['instance'] + 1:02d}".encode()
            assert argv[-4:] == [b"--id", number, b"--of", b"3"], argv
            assert b"PORT=90" + number in Path(f"/proc/{row['pid']}/environ").read_bytes()
    assert daemon.stop_daemon() == 0


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "apps.toml"
    out.write_text("keep me")
    source = str(FIXTURES / "pm2" / "ecosystem.json")
    env = dict(os.environ)
    refused = run(PY, "-m", "procsup.cli", "import", "pm2", source, "-o", str(out), env=env)
    assert refused.returncode == 1
    assert str(out) in refused.stderr and "--force" in refused.stderr
    assert out.read_text() == "keep me"
    forced = run(PY, "-m", "procsup.cli", "import", "pm2", source, "-o", str(out), "--force",
                 env=env)
    assert forced.returncode == 0, forced.stderr
    assert "[apps.metrics]" in out.read_text()


def test_stdout_errors_and_usage(tmp_path: Path) -> None:
    env = dict(os.environ)
    ok = run(PY, "-m", "procsup.cli", "import", "pm2", str(FIXTURES / "pm2" / "legacy.json"),
             env=env)
    assert ok.returncode == 0
    assert "[apps.legacy-api]" in ok.stdout and "warning:" not in ok.stdout
    assert "procsup: warning:" in ok.stderr and "pid_file" in ok.stderr
    bad = tmp_path / "eco.config.js"
    bad.write_text("module.exports = {\n  apps: [{ script: require('./x') }],\n}\n")
    failed = run(PY, "-m", "procsup.cli", "import", "pm2", str(bad), env=env)
    assert failed.returncode == 1
    assert f"{bad}:2: function call require(...)" in failed.stderr
    missing = run(PY, "-m", "procsup.cli", "import", "supervisord", str(tmp_path / "no.conf"),
                  env=env)
    assert missing.returncode == 1 and "No such file" in missing.stderr
    usage = run(PY, "-m", "procsup.cli", "import", "systemd", str(bad), env=env)
    assert usage.returncode == 2
