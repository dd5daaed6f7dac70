"""Test app, one part of a stack: appends what it does to the shared log argv[1] as
"<event> <name>" lines, so a test reads the order in which a stack started and stopped.

    stage.py LOG NAME [--after S] [--exit CODE] [--say TEXT]

"start NAME" at once; after S seconds (default 0) prints TEXT (default "ready") on stdout;
with --exit, then appends "done NAME" and exits CODE; else runs until SIGTERM, appends
"stop NAME", lingers 0.2 s (so that an order of stops is visible) and exits 0."""

import argparse
import os
import signal
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("log")
p.add_argument("name")
p.add_argument("--after", type=float, default=0.0)
p.add_argument("--exit", type=int, default=None)
p.add_argument("--say", default="ready")
a = p.parse_args()


def note(event: str) -> None:
    with open(a.log, "a") as f:
        f.write(f"{event} {a.name}\n")


def stop(_signum: int, _frame: object) -> None:
    note("stop")
    time.sleep(0.2)
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
note("start")
time.sleep(a.after)
print(a.say, flush=True)
if a.exit is not None:
    note("done")
    sys.exit(a.exit)
while True:
    time.sleep(3600)
