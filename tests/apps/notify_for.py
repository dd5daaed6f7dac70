"""Test app: tries to speak for another instance over $NOTIFY_SOCKET. Waits for argv[1] to
hold the other instance's pid, then sends READY=1 and STATUS= naming that pid as MAINPID: from
a child in its own process group, from a child that left the group (setsid), and from itself;
then STOPPING=1 and finally STATUS=done, both from itself. Datagrams are handled in order, so
once "done" shows, everything before it was handled. The children stay alive (a message is
attributed by its sender's live pid) until this process is gone (their stdin reaches EOF)."""

import os
import socket
import subprocess
import sys
import time

path = os.environ["NOTIFY_SOCKET"]
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
with open(sys.argv[1]) as f:
    target = f.read().strip()
claim = f"READY=1\nMAINPID={target}\nSTATUS=speaking for {target}"
child = ("import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
         "s.sendto(sys.argv[2].encode(), sys.argv[1]); print('sent', flush=True); "
         "sys.stdin.read()")
children = []
for how, new_session in (("child", False), ("setsid", True)):
    p = subprocess.Popen([sys.executable, "-c", child, path, f"{claim} ({how})"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         start_new_session=new_session)
    assert p.stdout is not None and p.stdout.readline() == b"sent\n"
    children.append(p)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for message in (claim, "STOPPING=1", "STATUS=done"):
    sock.sendto(message.encode(), path)
print("sent all", flush=True)
while True:
    time.sleep(3600)
