"""`listening`: the listening sockets of a process group, from /proc: the parsers on the
kernel's text, and `held` on a real child in its own process group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from procsup import listening

_TAIL = b" 00000000:00000000 00:00000000 00000000  1000        0 "  # queues, timers, uid
TCP = b"\n".join([
    b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  inode",
    b"   0: 0100007F:1F91 00000000:0000 0A" + _TAIL + b"4242 1 0 100 0 0 10 0",
    b"   1: 0100007F:1F91 0100007F:D2A4 01" + _TAIL + b"4243 1 0 20 4 30 10 -1",
    b"   2: 00000000:0050 00000000:0000 0A" + _TAIL + b"17 1 0 100 0 0 10 0",
    b"   3: garbage", b""])
_ANY6 = b"0" * 32
TCP6 = b"\n".join([
    b"  sl  local_address                         remote_address                        st ...",
    b"   0: " + _ANY6 + b":1F90 " + _ANY6 + b":0000 0A" + _TAIL + b"555 1 0 100 0 0 10 0",
    b"   1: " + b"0" * 24 + b"01000000:0016 " + _ANY6 + b":0000 0A" + _TAIL + b"556 1 0 1",
    b""])
UNIX = b"""\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 900 /run/app.sock
0000000000000000: 00000002 00000000 00010000 0001 01 901 @abstract name
0000000000000000: 00000003 00000000 00000000 0001 03 902 /run/app.sock
0000000000000000: 00000002 00000000 00010000 0001 01 903
0000000000000000: 00000002 00000000 00000000 0002 01 904 /run/dgram.sock
0000000000000000: 00000002 00000000 00010000 0005 01 905 /run/seq path with spaces
"""


def test_parse_inet_lists_listening_sockets_only() -> None:
    # little-endian words: 0100007F is 127.0.0.1 (on the machines this runs on)
    if sys.byteorder == "little":
        assert listening.parse_inet(TCP, v6=False) == [(4242, "127.0.0.1:8081"),
                                                      (17, "0.0.0.0:80")]
        assert listening.parse_inet(TCP6, v6=True) == [(555, "[::]:8080"), (556, "[::1]:22")]


def test_parse_unix_lists_named_listening_stream_sockets() -> None:
    assert listening.parse_unix(UNIX) == [
        (900, "unix:/run/app.sock"), (901, "unix:@abstract name"),
        (905, "unix:/run/seq path with spaces")]


def test_held_by_a_real_process_group(tmp_path: Path) -> None:
    """A child in a group of its own listens on TCP and a Unix socket and has a grandchild
    that listens on another port; a connected client socket is not counted."""
    sock = tmp_path / "s.sock"
    code = f"""
import os, socket, sys, time
a = socket.socket(); a.bind(("127.0.0.1", 0)); a.listen()
u = socket.socket(socket.AF_UNIX); u.bind({str(sock)!r}); u.listen()
c = socket.create_connection(a.getsockname())
if os.fork() == 0:
    b = socket.socket(socket.AF_INET6); b.bind(("::1", 0)); b.listen()
    os.write(1, b"%d\\n" % b.getsockname()[1]); time.sleep(60); os._exit(0)
os.write(1, b"%d\\n" % a.getsockname()[1])
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            process_group=0, text=True)
    try:
        assert proc.stdout is not None
        ports = sorted(int(proc.stdout.readline()) for _ in range(2))
        deadline = time.monotonic() + 10
        while (found := listening.held(proc.pid)) is not None and len(found) < 3:
            assert time.monotonic() < deadline, found
            time.sleep(0.02)
        assert found is not None
        tcp = [a for a in found if not a.startswith("unix:")]
        assert sorted(int(a.rsplit(":", 1)[1]) for a in tcp) == ports
        assert any(a.startswith("127.0.0.1:") for a in tcp) and any(
            a.startswith("[::1]:") for a in tcp)
        assert f"unix:{sock}" in found and len(found) == 3
        assert listening.held(os.getpgid(0)) is not None  # our own group: readable
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    # gone, once the grandchild (SIGKILLed too, but not waited for) has died: holds nothing
    deadline = time.monotonic() + 10
    while (left := listening.held(proc.pid)) != ():
        assert time.monotonic() < deadline, left
        time.sleep(0.02)
