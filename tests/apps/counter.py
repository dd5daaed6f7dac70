"""Test app: prints numbered lines ("n=000001 xxx..." of argv[2] bytes with the newline), one
every argv[1] seconds, forever; each line is one write(2), so a reader can tell exactly which
lines reached a file."""

import os
import sys
import time

interval, size = float(sys.argv[1]), int(sys.argv[2])
n = 0
while True:
    head = b"n=%06d " % n
    os.write(1, head + b"x" * (size - len(head) - 1) + b"\n")
    n += 1
    time.sleep(interval)
