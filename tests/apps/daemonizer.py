"""A program that leaves processes outside its process group, as daemonizing servers do.

    daemonizer.py MODE PIDS_FILE [--clear-env] [--pidfile PATH]

MODE:
  fork-exit   fork; the child calls setsid and lives on; the parent exits 0 (memcached -d,
              redis --daemonize yes, nginx without `daemon off`)
  double      fork; the child calls setsid, forks again and exits; the grandchild lives on
  setsid      the program stays in the foreground and starts a child that calls setsid (a
              grandchild that leaves the group, as some wrappers do)
  setpgid     the same with a child that makes a process group of its own (setpgid), in
              the program's session

The process that lives on appends its pid to PIDS_FILE (one line), writes it to --pidfile
if given, and sleeps; the program exits (fork-exit, double) only after that, so the process
it leaves is established when it exits. With --clear-env that process then execs `sleep`
with an empty environment, as nginx and redis lose theirs when they rewrite it for the
process title.
"""

from __future__ import annotations

import os
import sys
import time


def live_on(pids_file: str, clear: bool, pidfile: str | None, done: int) -> None:
    with open(pids_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    if pidfile:
        tmp = pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(tmp, pidfile)
    os.write(done, b"x")
    os.close(done)
    if clear:
        os.execve("/bin/sleep", ["sleep", "1000"], {})
    while True:
        time.sleep(1000)


def main() -> None:
    mode, pids_file = sys.argv[1], sys.argv[2]
    clear = "--clear-env" in sys.argv
    pidfile = sys.argv[sys.argv.index("--pidfile") + 1] if "--pidfile" in sys.argv else None
    r, w = os.pipe()
    if mode == "fork-exit":
        if os.fork() == 0:
            os.setsid()
            live_on(pids_file, clear, pidfile, w)
        os.read(r, 1)
        os._exit(0)
    if mode == "double":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                live_on(pids_file, clear, pidfile, w)
            os._exit(0)
        os.read(r, 1)
        os._exit(0)
    if mode in ("setsid", "setpgid"):
        if os.fork() == 0:
            if mode == "setsid":
                os.setsid()
            else:
                os.setpgid(0, 0)
            live_on(pids_file, clear, pidfile, w)
        os.read(r, 1)
        print("in the foreground", flush=True)
        while True:
            time.sleep(1000)
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
