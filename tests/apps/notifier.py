"""Test app: sends READY=1 and STATUS= to $NOTIFY_SOCKET, then WATCHDOG=1 every 0.1 s for
argv[1] seconds (default forever), then goes silent (but keeps running)."""

import os
import socket
import sys
import time

beats_for = float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
path = os.environ["NOTIFY_SOCKET"]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"READY=1\nSTATUS=beating", path)
start = time.monotonic()
while time.monotonic() - start < beats_for:
    sock.sendto(b"WATCHDOG=1", path)
    time.sleep(0.1)
sock.sendto(b"STATUS=silent", path)
while True:
    time.sleep(3600)
