"""Test app: writes numbered lines ("n=000001 ...\n"), each in two write(2)s with a short pause
between the halves, for ever: whoever reads the pipe often sees half a line, and a file that
holds every line once, whole and in order, shows that none was lost, duplicated or split."""

import os
import time

n = 0
while True:
    head = b"n=%06d " % n
    os.write(1, head + b"a" * 20)
    time.sleep(0.002)
    os.write(1, b"b" * 20 + b"\n")
    n += 1
    if n % 10 == 0:
        time.sleep(0.001)
