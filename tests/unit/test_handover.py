"""The re-exec's hand-over image (issue 14): what one image writes, the next reads back the
same; what it cannot take over, it refuses with the reason."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from procsup import handover
from procsup.handover import HandoverError, Image, Listener, RunRecord, SlotRecord, Stray, Stream


def _image(**changes: object) -> Image:
    run = RunRecord(
        pid=4242, started=123.5, start_ticks=99, pidfd=7, status="serving",
        exit_status=(None, 9), signalled=15, main=4250, main_fd=8, cgroup="/sys/fs/cgroup/x",
        probing=True, streams=(Stream("out", 9, b"half a li\xffne", True), Stream("err", 10)),
        strays=(Stray(4300, 4300, 1234),), groups=(4300,))
    image = Image(
        foreground=True, applied="[apps.a]\ncommand = 'x'\n", engine_apps=None,
        config_error="apps.toml:3: bad", control_fd=3, notify_fd=4, pidfile_fd=None,
        slots=(SlotRecord("a", 0, {"state": "running", "pid": 4242, "restarts": 2}, 3,
                          note="memory", run=run),
               SlotRecord("a", 1, {"state": "stopped"}, 0)),
        listeners=(Listener("a", None, "tcp://127.0.0.1:80", "kernel", 11),),
        old_version="0.1.0", began=1.25, files=("/etc/apps.toml",), include=("conf.d/*.toml",),
        sources={"a": ("/etc/apps.toml", 3)}, reexecs=2, config_path="/etc/apps.toml",
        profile="prod", state_dir="/var/lib/procsup", restart_daemon=("socket",),
        nofile=(1024, 524288), started=1764590400.0)
    return dataclasses.replace(image, **changes)  # type: ignore[arg-type]


def test_an_image_reads_back_as_written() -> None:
    image = _image()
    assert handover.loads(handover.dumps(image)) == image


def test_through_the_memfd_the_new_image_inherits() -> None:
    image = _image(engine_apps="[apps.a]\ninstances = 3\n")
    fd = handover.write(image)
    assert os.get_inheritable(fd)  # the new image finds it open
    assert handover.read(fd) == image
    with pytest.raises(OSError):
        os.fstat(fd)  # read closes it


def test_fields_of_a_newer_image_are_ignored_and_missing_ones_default() -> None:
    data = json.loads(handover.dumps(_image()))
    data["from_the_future"] = 1
    data["slots"][0]["run"]["new_field"] = {"x": 1}
    del data["restart_daemon"]
    image = handover.loads(json.dumps(data).encode())
    assert image.restart_daemon == ()
    assert image.slots[0].run is not None and image.slots[0].run.pid == 4242


@pytest.mark.parametrize(("raw", "why"), [
    (b"{", "not JSON"),
    (b"[]", "image: not an object"),
    (json.dumps({"version": 99}).encode(), "image version 99"),
    (json.dumps({**json.loads(handover.dumps(_image())), "slots": [{"app": "a"}]}).encode(),
     "malformed"),
])
def test_what_cannot_be_taken_over_is_refused_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(HandoverError, match=why):
        handover.loads(raw)
