"""Test app: writes a few lines, then after DELAY seconds the line TEXT on STREAM ("out" or
"err"), then idles until SIGTERM (exits 0). argv: STREAM DELAY TEXT."""

import signal
import sys
import time

stream = sys.stdout if sys.argv[1] == "out" else sys.stderr
delay, text = float(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("booting", file=sys.stdout, flush=True)
print("still booting", file=sys.stderr, flush=True)
time.sleep(delay)
print(text, file=stream, flush=True)
while True:
    time.sleep(3600)
