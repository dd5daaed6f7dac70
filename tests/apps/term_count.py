"""Test app: a leader; a helper in its process group with a child that calls setsid; and an
orphan (a double fork whose grandchild calls setsid). Every process appends "up PID" to argv[1]
once its handler is installed, and "term PID" for every SIGTERM it receives; it exits a while
after the first (so that a second SIGTERM of the same stop is seen, and counted): the helper
after 0.1 s (its child, outside the group, is re-parented to procsupd then, silently), the
orphan after 0.3 s (its exit makes procsupd look for strays, and find that child: which must
still get the stop's signal), the others after 0.5 s.

    term_count.py LOG
"""

import os
import signal
import sys
import time

LOG = sys.argv[1]
termed: list[float] = []


def note(what: str) -> None:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{what} {os.getpid()}\n".encode())
    os.close(fd)


def on_term(_signum: int, _frame: object) -> None:
    note("term")
    termed.append(time.monotonic())


def live(linger: float = 0.5) -> None:
    signal.signal(signal.SIGTERM, on_term)
    note("up")
    while not termed or time.monotonic() - termed[0] < linger:
        time.sleep(0.02)
    os._exit(0)


if os.fork() == 0:  # the helper, in the leader's group
    if os.fork() == 0:  # its child, in a session of its own
        os.setsid()
        live()
    live(0.1)
if os.fork() == 0:  # the orphan: its parent exits at once
    if os.fork() == 0:
        os.setsid()
        live(0.3)
    os._exit(0)
os.wait()  # the orphan's parent (the helper stays a zombie until the leader exits)
live()
