"""Test app: writes a whole line, then a partial line without newline, then exits 0."""

import sys

sys.stdout.write("whole line\npartial tail")
sys.stdout.flush()
