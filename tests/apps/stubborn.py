"""Test app: a leader and a grandchild that both ignore SIGTERM; writes the grandchild's pid to
argv[1] so the test can check it is gone after `stop`."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    child = os.fork()
    if child == 0:  # grandchild: ignores SIGTERM, stays in the group
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        while True:
            time.sleep(3600)
    os._exit(0)  # the intermediate child exits: the grandchild is orphaned but keeps the pgid
os.waitpid(pid, 0)
print("stubborn ready", flush=True)
while True:
    time.sleep(3600)
