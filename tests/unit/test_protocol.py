"""The wire format: framing, limits, request validation against the command table, replies."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from procsup import protocol
from procsup.errors import WireError


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def violation_code(fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(protocol.ProtocolViolation) as info:
        fn(*args)
    return info.value.code


# --------------------------------------------------------------------------- framing


def test_encode_is_length_prefixed_compact_utf8_json() -> None:
    data = protocol.encode({"v": 1, "cmd": "ping", "args": {}, "text": "é"})
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    assert data[4:] == '{"v":1,"cmd":"ping","args":{},"text":"é"}'.encode()
    assert protocol.decode_header(data[:4]) == n
    assert protocol.decode_payload(data[4:])["text"] == "é"


def test_encode_refuses_what_is_not_json_and_what_is_too_large() -> None:
    with pytest.raises(ValueError):
        protocol.encode({"cpu": float("nan")})
    with pytest.raises(TypeError):
        protocol.encode({"x": object()})
    assert violation_code(protocol.encode, {"x": "a" * 100}, 50) == protocol.TOO_LARGE
    assert len(protocol.encode({"x": "a" * 100}, 200)) > 100


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe", b"{not json", b"[1, 2]", b'"text"', b"NaN", b'{"x": NaN}', b"[" * 100000],
)
def test_decode_payload_refuses_everything_but_a_json_object(payload: bytes) -> None:
    assert violation_code(protocol.decode_payload, payload) == protocol.BAD_REQUEST


def test_protocol_codes_are_wire_error_values() -> None:
    for code in (protocol.BAD_REQUEST, protocol.TOO_LARGE, protocol.UNSUPPORTED_VERSION,
                 protocol.UNKNOWN_COMMAND):
        assert WireError(code).value == code


def test_read_frame_reads_whole_frames_from_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        data = protocol.encode({"n": 1}) + protocol.encode({"n": 2, "big": "x" * 300000})
        sender = threading.Thread(target=a.sendall, args=(data,))
        sender.start()
        assert protocol.read_frame(b) == {"n": 1}
        assert protocol.read_frame(b)["big"] == "x" * 300000
        sender.join(5)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError, match=r"connection closed$"):
            protocol.read_frame(b)


def test_read_frame_eof_inside_a_frame() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(protocol.encode({"n": 1})[:-2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError, match="inside a frame"):
            protocol.read_frame(b)


def test_read_frame_refuses_an_oversized_length_without_reading_the_body() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 1000) + b"{}")
        assert violation_code(protocol.read_frame, b, 999) == protocol.TOO_LARGE
        b.setblocking(False)
        assert b.recv(10) == b"{}"  # the body is still unread


# --------------------------------------------------------------------------- requests


def test_make_request_fills_defaults() -> None:
    assert protocol.make_request("status") == {"v": 1, "cmd": "status", "args": {"apps": []}}
    assert protocol.make_request("logs", {"app": "web"})["args"] == {
        "app": "web", "lines": 20, "stream": "both", "follow": False,
    }
    assert protocol.make_request("stop", {"apps": ["all"]})["args"] == {
        "apps": ["all"], "wait": True,
    }
    assert protocol.make_request("shutdown")["args"] == {"wait": True}


def test_defaults_are_fresh_copies() -> None:
    args = protocol.validate_args("status", {})
    args["apps"].append("web")
    assert protocol.validate_args("status", {}) == {"apps": []}


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("stop", {}),  # apps required
        ("stop", {"apps": []}),  # non-empty
        ("stop", {"apps": "web"}),  # a list
        ("stop", {"apps": ["web", ""]}),  # names are non-empty
        ("stop", {"apps": ["web", 3]}),
        ("stop", {"apps": ["web"], "wait": 1}),  # bool, not int
        ("stop", {"apps": ["web"], "force": True}),  # unknown argument
        ("logs", {"lines": -1}),
        ("logs", {"lines": 100001}),
        ("logs", {"lines": True}),  # JSON true is not the number 1
        ("logs", {"lines": "20"}),
        ("logs", {"stream": "stdout"}),
        ("logs", {"app": 3}),
        ("signal", {"signal": 0, "apps": ["web"]}),
        ("signal", {"signal": 15}),
        ("scale", {"app": "web"}),
        ("scale", {"app": "web", "instances": -1}),
        ("status", ["web"]),  # args must be an object
    ],
)
def test_validate_args_refuses(cmd: str, args: object) -> None:
    assert violation_code(protocol.validate_args, cmd, args) == protocol.BAD_REQUEST


def test_validate_args_accepts_edges() -> None:
    assert protocol.validate_args("logs", {"lines": 0, "app": None})["lines"] == 0
    assert protocol.validate_args("logs", {"lines": 100000, "stream": "err"})["stream"] == "err"
    assert protocol.validate_args("signal", {"signal": 12, "apps": ["web:1"]}) == {
        "signal": 12, "apps": ["web:1"],
    }
    assert protocol.validate_args("scale", {"app": "web", "instances": 0}) == {
        "app": "web", "instances": 0, "wait": True,
    }


def test_unknown_command() -> None:
    assert violation_code(protocol.validate_args, "frobnicate", {}) == protocol.UNKNOWN_COMMAND


def test_table_has_the_contract_commands() -> None:
    assert set(protocol.COMMANDS) == {
        "ping", "version", "status", "start", "stop", "restart", "signal", "logs", "shutdown",
        "reread", "update", "reload", "scale", "dump", "disable", "enable", "reexec",
    }
    assert [c for c in protocol.COMMANDS.values() if c.streams] == [protocol.COMMANDS["logs"]]
    assert [c.name for c in protocol.COMMANDS.values() if c.linger] == ["shutdown"]
    for command in protocol.COMMANDS.values():  # every argument is documented and typed
        for arg in command.args:
            assert arg.doc and arg.type_text()


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"cmd": "ping"}, protocol.BAD_REQUEST),
        ({"v": True, "cmd": "ping"}, protocol.BAD_REQUEST),
        ({"v": "1", "cmd": "ping"}, protocol.BAD_REQUEST),
        ({"v": 2, "cmd": "ping"}, protocol.UNSUPPORTED_VERSION),
        ({"v": 2, "cmd": 7}, protocol.UNSUPPORTED_VERSION),  # version first
        ({"v": 1}, protocol.BAD_REQUEST),
        ({"v": 1, "cmd": ["ping"]}, protocol.BAD_REQUEST),
        ({"v": 1, "cmd": "nope"}, protocol.UNKNOWN_COMMAND),
        ({"v": 1, "cmd": "ping", "args": None}, protocol.BAD_REQUEST),
        ({"v": 1, "cmd": "ping", "args": {"x": 1}}, protocol.BAD_REQUEST),
    ],
)
def test_parse_request_refuses(obj: dict[str, object], code: str) -> None:
    assert violation_code(protocol.parse_request, obj) == code


def test_parse_request() -> None:
    assert protocol.parse_request({"v": 1, "cmd": "ping"}) == ("ping", {})
    assert protocol.parse_request(
        {"v": 1, "cmd": "start", "args": {"apps": ["web"]}, "future": 1}
    ) == ("start", {"apps": ["web"], "wait": True})


# --------------------------------------------------------------------------- replies


def test_replies_round_trip() -> None:
    def wire(obj: dict[str, object]) -> dict[str, object]:
        return protocol.decode_payload(protocol.encode(obj)[4:])

    assert protocol.parse_reply(wire(protocol.ok_reply({"pong": True}))) == (
        {"pong": True}, False, None,
    )
    more = protocol.ok_reply({"lines": []}, more=True)
    assert more["more"] is True
    assert protocol.parse_reply(wire(more)) == ({"lines": []}, True, None)
    assert "more" not in protocol.ok_reply(None)
    err = wire(protocol.error_reply(WireError.UNKNOWN_APP, "no app 'x'", {"app": "x"}))
    assert err == {
        "v": 1, "ok": False,
        "error": {"code": "unknown_app", "message": "no app 'x'", "detail": {"app": "x"}},
    }
    assert protocol.parse_reply(err) == (None, False, ("unknown_app", "no app 'x'", {"app": "x"}))
    # A code this client does not know still reads as an error.
    assert protocol.parse_reply(wire(protocol.error_reply("new_code", "m")))[2] == (
        "new_code", "m", None,
    )


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"ok": True, "result": 1}, protocol.UNSUPPORTED_VERSION),
        ({"v": 2, "ok": True, "result": 1}, protocol.UNSUPPORTED_VERSION),
        ({"v": 1, "ok": True}, protocol.BAD_REQUEST),
        ({"v": 1, "ok": "yes", "result": 1}, protocol.BAD_REQUEST),
        ({"v": 1, "ok": False, "error": "boom"}, protocol.BAD_REQUEST),
    ],
)
def test_parse_reply_refuses(obj: dict[str, object], code: str) -> None:
    assert violation_code(protocol.parse_reply, obj) == code


def test_docs_list_every_command_and_error_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for name in protocol.COMMANDS:
        assert f"`{name}`" in doc, name
    for code in WireError:
        assert f"`{code.value}`" in doc, code
    assert str(protocol.MAX_REQUEST) in doc
    assert str(protocol.MAX_REPLY) in doc
