"""Shared by every test: the signal dispositions the tests' processes start with."""

from __future__ import annotations

import signal

# A runner started in the background by a shell without job control (`bash .ci/run &`) has
# SIGINT and SIGQUIT ignored, and every process it starts inherits that: `logs -f` would not
# stop on Ctrl-C, an app whose stop signal is QUIT would wait for its kill_timeout. The tests
# signal their processes as a terminal or a supervisor started from one would: restore the
# defaults (Python's own SIGINT handler here, the default in the processes started).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
