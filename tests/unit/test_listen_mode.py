"""`listen = ["unix:/path?mode=0600"]`: the socket file's mode, from config to the bound file."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from procsup import config, sockets, units
from procsup.errors import ConfigError


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("unix:/run/app.sock", ("/run/app.sock", None)),
        ("unix:/run/app.sock?mode=0600", ("/run/app.sock", 0o600)),
        ("unix:rel/app.sock?mode=660", ("rel/app.sock", 0o660)),
    ],
)
def test_split_unix_listen(address: str, expected: tuple[str, int | None]) -> None:
    assert units.split_unix_listen(address) == expected


@pytest.mark.parametrize(
    "address",
    ["unix:", "unix:/run/", "unix:/a?mode=", "unix:/a?mode=0999", "unix:/a?owner=x", "tcp://x:1"],
)
def test_split_unix_listen_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        units.split_unix_listen(address)


def _load(tmp_path: Path, listen: str) -> tuple[str, ...]:
    f = tmp_path / "apps.toml"
    f.write_text(f'[apps.web]\ncommand = "x"\nexec_mode = "cluster"\nlisten = ["{listen}"]\n')
    return config.load(str(f), uid=1000, environ={"HOME": str(tmp_path)}).apps["web"].listen


def test_config_keeps_the_mode_and_makes_the_path_absolute(tmp_path: Path) -> None:
    assert _load(tmp_path, "unix:run/web.sock?mode=600") == (
        f"unix:{tmp_path}/run/web.sock?mode=0600",)


def test_config_names_a_bad_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "unix:/run/web.sock?owner=root")
    assert err.value.key == "listen" and "mode" in err.value.message


def test_bind_applies_the_mode_of_the_address() -> None:
    d = tempfile.mkdtemp(dir="/tmp")
    try:
        for mode in (0o600, 0o640):
            path = f"{d}/s{mode:o}.sock"
            sock = sockets.bind(f"unix:{path}?mode={mode:04o}")
            try:
                assert stat.S_IMODE(os.stat(path).st_mode) == mode
                assert sockets.fd_name(f"unix:{path}?mode={mode:04o}") == sockets.fd_name(
                    f"unix:{path}")
            finally:
                sockets.release(sock)
    finally:
        for p in Path(d).iterdir():
            p.unlink()
        os.rmdir(d)
