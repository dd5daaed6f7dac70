"""A Python job runner stand-in: prints, then idles until SIGTERM."""

import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("job runner ready", flush=True)
while True:
    time.sleep(3600)
