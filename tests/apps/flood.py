"""Test app: writes 100-byte lines to stdout as fast as it can, forever."""

import sys

line = b"x" * 99 + b"\n"
block = line * 1000
out = sys.stdout.buffer
while True:
    out.write(block)
