"""Test app: appends the name of the first signal it receives (TERM, INT, HUP, QUIT, USR1,
USR2) to argv[1], then exits 0. Prints "ready" once its handlers are installed."""

import os
import signal
import sys
import time


def record(signum: int, _frame: object) -> None:
    with open(sys.argv[1], "a") as f:
        f.write(signal.Signals(signum).name + "\n")
    os._exit(0)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2):
    signal.signal(sig, record)
print("ready", flush=True)
while True:
    time.sleep(3600)
