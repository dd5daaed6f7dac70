"""Test app: prints its identity, then idles until SIGTERM (exits 0) or forever."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"started app={os.environ.get('PROCSUP_APP')} instance={os.environ.get('PROCSUP_INSTANCE')}"
      f" of={os.environ.get('PROCSUP_INSTANCES')} pid={os.getpid()}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
