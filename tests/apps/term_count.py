"""Test app: a leader, a child that calls setsid and lives beside it, and an orphan (a double
fork whose grandchild calls setsid): every process appends "up PID" to argv[1] once its
handler is installed, and "term PID" for every SIGTERM it receives; it exits 0.5 s after the
first (so that a second SIGTERM of the same stop is seen, and counted).

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


def live() -> None:
    signal.signal(signal.SIGTERM, on_term)
    note("up")
    while not termed or time.monotonic() - termed[0] < 0.5:
        time.sleep(0.02)
    os._exit(0)


if os.fork() == 0:  # beside the leader, in a session of its own
    os.setsid()
    live()
if os.fork() == 0:  # the orphan: its parent exits at once
    if os.fork() == 0:
        os.setsid()
        live()
    os._exit(0)
os.wait()  # the orphan's parent
live()
