"""Test app: prints "started", waits argv[2] seconds, then — only if it is the first to create
the marker file argv[3], or always if argv[3] is "-" — holds argv[1] MiB of resident memory and
writes the time it finished allocating into the marker. Then it sleeps until killed."""

import os
import sys
import time

mib, delay, marker = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"started pid={os.getpid()}", flush=True)
time.sleep(delay)
try:
    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) if marker != "-" else -2
except FileExistsError:
    fd = -1
if fd != -1:
    hoard = bytearray(mib << 20)
    for i in range(0, len(hoard), 4096):  # touch every page: resident, not just reserved
        hoard[i] = 1
    if fd >= 0:
        os.write(fd, f"{time.time()}\n".encode())
        os.close(fd)
    print(f"holding {mib} MiB", flush=True)
while True:
    time.sleep(3600)
