"""Test app: prints the environment as sorted KEY=VALUE lines, then idles."""

import os
import time

for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
print(f"UMASK={os.umask(0):03o} UID={os.getuid()} GID={os.getgid()} GROUPS="
      f"{','.join(map(str, sorted(os.getgroups())))} CWD={os.getcwd()}", flush=True)
while True:
    time.sleep(3600)
