"""Test app: sends READY=1 and STATUS=own on $NOTIFY_SOCKET once the file argv[1] exists;
idles before and after."""

import os
import socket
import sys
import time

while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1\nSTATUS=own", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(3600)
