"""Test app: exits with code argv[1] (default 1) after argv[2] seconds (default 0)."""

import sys
import time

code = int(sys.argv[1]) if len(sys.argv) > 1 else 1
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
print(f"crashing with {code}", flush=True)
sys.exit(code)
