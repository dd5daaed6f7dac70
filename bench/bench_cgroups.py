"""cgroup placement: what each way of putting a new instance into its cgroup costs, and what
escapes it (issue 13, item 5; docs/benchmarks.md, "cgroup placement").

Python's subprocess has no CLONE_INTO_CGROUP and procsup runs no Python between fork and exec,
so a new process is placed by one of:
- after: the daemon writes the child's pid to cgroup.procs when Popen returns (the exec is
  done by then); a process the program forks before that write stays outside. `after+kids`
  also moves the children the leader has at that moment (/proc/PID/task/PID/children).
- helper: `sh -c 'echo $$ > cgroup.procs && exec "$@"'`: exact, one more exec.
- self: the daemon moves itself into the run's cgroup around the fork, and back (exact; the
  daemon's threads move too, and its allocations in that window are charged to the run):
  `cgroups.Tree.spawn`, what procsupd uses.

The subject is a small C program (compiled here with `cc`) that takes the monotonic clock
first thing in main(), forks at once (the child calls setsid and sleeps), and prints the clock
and the child's pid: the worst case of a program that forks in the window. Per way it records
- spawn: from before Popen to the daemon's side being done (placed), as procsupd's loop pays it;
- exec: from before Popen to the program's main() (what restart latency is made of);
- escaped: the runs whose forked child is not in the cgroup when placement is done.
The same escape count is then taken for a shell whose first act is a double fork (a
`shell = true` command, or a start script), which is much quicker off the mark than a C
program that the dynamic loader has to prepare first.
It also times a cgroup's life around a run: mkdir, cgroup.kill until `populated 0` (through
the cgroup.events waiter), rmdir; and killpg for comparison.

Needs root (or a delegated cgroup) on a writable cgroup2 hierarchy, and `cc`.

    .venv/bin/python bench/bench_cgroups.py [--iterations 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from procsup import cgroups

C_SUBJECT = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    pid_t child = fork();
    if (child == 0) { setsid(); pause(); return 0; }
    printf("%ld.%09ld %d\n", (long)t.tv_sec, t.tv_nsec, (int)child);
    fflush(stdout);
    pause();
    return 0;
}
"""
HELPER = 'echo $$ > "$0" && exec "$@"'


def in_group(pid: int, group: cgroups.Group, mount: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            path = cgroups.parse_proc_cgroup(f.read())
    except OSError:
        return False
    return path is not None and os.path.join(mount, path.lstrip("/")) == group.path


def run_once(way: str, exe: str, tree: cgroups.Tree) -> dict[str, float | bool]:
    group = tree.create("bench", 0)
    procs = os.path.join(group.path, "cgroup.procs")
    argv = [exe]
    if way == "helper":
        argv = ["/bin/sh", "-c", HELPER, procs, exe]
    t0 = time.monotonic()
    if way == "self":
        proc = tree.spawn(group, lambda: subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                          start_new_session=True))
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    tp = time.monotonic()
    if way.startswith("after"):
        group.place(proc.pid)
        if way == "after+kids":
            group.place_children(proc.pid)
    t1 = time.monotonic()
    assert proc.stdout is not None
    stamp, child = proc.stdout.readline().split()
    escaped = way != "none" and not in_group(int(child), group, tree.hierarchy.mount)
    # clean up: the whole cgroup, and directly what escaped it or was never placed
    os.kill(int(child), signal.SIGKILL)
    if way == "none":
        os.kill(proc.pid, signal.SIGKILL)
    t2 = time.monotonic()
    group.kill()
    events = group.events()
    events.wait(5)
    events.close()
    t3 = time.monotonic()
    group.remove()
    proc.wait()
    proc.stdout.close()
    return {"spawn": t1 - t0, "popen": tp - t0, "exec": float(stamp) - t0, "escaped": escaped,
            "kill": t3 - t2}


SHELL_DOUBLE_FORK = "(setsid sleep 1000 &) ; exec sleep 1000"


def shell_escapes(way: str, tree: cgroups.Tree, n: int, token: str) -> int:
    """Runs of `sh -c SHELL_DOUBLE_FORK` (a shell's first act is the double fork) whose
    grandchild is outside the cgroup once placement is done."""
    escaped = 0
    env = {**os.environ, "BENCH_CGROUPS": token}
    for i in range(n):
        group = tree.create("sh", i)

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(["/bin/sh", "-c", SHELL_DOUBLE_FORK], env=env,
                                    start_new_session=True)

        if way == "self":
            proc = tree.spawn(group, start)
        else:
            proc = start()
            group.place(proc.pid)
            if way == "after+kids":
                group.place_children(proc.pid)
        deadline = time.monotonic() + 0.2  # the grandchild is there within ms
        while len(group.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        escaped += len(group.pids()) < 2
        group.kill()
        events = group.events()
        events.wait(5)
        events.close()
        group.remove()
        proc.wait()
        kill_marked(token)
    return escaped


def kill_marked(token: str) -> None:
    """SIGKILL what escaped (it carries BENCH_CGROUPS=<token> in its environment)."""
    mark = f"BENCH_CGROUPS={token}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    os.kill(int(name), signal.SIGKILL)
        except OSError:
            pass


def migration_after_pause(tree: cgroups.Tree, runs: int = 15) -> dict[str, float]:
    """ms to enter an empty cgroup (and to leave it) after `idle` seconds without a migration:
    the first write after a pause waits for an RCU grace period (the threadgroup lock)."""
    out = {}
    for idle in (0.0, 0.05, 0.2):
        enter, leave = [], []
        for i in range(runs):
            group = tree.create("pause", i)
            time.sleep(idle)
            t0 = time.monotonic()
            group.place(os.getpid())
            t1 = time.monotonic()
            cgroups.Group(tree.home).place(os.getpid())
            enter.append((t1 - t0) * 1000)
            leave.append((time.monotonic() - t1) * 1000)
            group.remove()
        out[f"enter after {idle}s"] = statistics.median(enter)
        out[f"leave after {idle}s"] = statistics.median(leave)
    return out


def lifecycle_costs(tree: cgroups.Tree, n: int) -> dict[str, float]:
    mk, kill, rm, killpg = [], [], [], []
    for _ in range(n):
        t0 = time.monotonic()
        group = tree.create("life", 0)
        mk.append(time.monotonic() - t0)
        proc = subprocess.Popen(["sleep", "100"], start_new_session=True)
        group.place(proc.pid)
        t0 = time.monotonic()
        group.kill()
        events = group.events()
        events.wait(5)
        events.close()
        kill.append(time.monotonic() - t0)
        t0 = time.monotonic()
        group.remove()
        rm.append(time.monotonic() - t0)
        proc.wait()
        proc = subprocess.Popen(["sleep", "100"], start_new_session=True)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        while True:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.0001)
        killpg.append(time.monotonic() - t0)
        proc.wait()
    return {"mkdir": statistics.median(mk), "cgroup.kill to populated 0": statistics.median(kill),
            "rmdir": statistics.median(rm), "killpg to group gone": statistics.median(killpg)}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="50 iterations")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    n = 50 if args.quick else args.iterations
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("bench_cgroups: skipped: no C compiler (cc) for the subject program")
        return 0
    hierarchy = cgroups.find()
    try:
        tree = cgroups.open_tree(f"bench-{os.getpid()}", move_self=False)
    except cgroups.CgroupError as exc:
        print(f"bench_cgroups: skipped: {exc.reason}")
        return 0
    assert hierarchy is not None
    # procsupd has threads of its own (config loader, file watches): so does this process.
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "subject.c"), os.path.join(tmp, "subject")
        with open(src, "w") as f:
            f.write(C_SUBJECT)
        subprocess.run([cc, "-O2", "-o", exe, src], check=True)
        try:
            ways = ["none", "after", "after+kids", "helper", "self"]
            runs: dict[str, list[dict[str, float | bool]]] = {w: [] for w in ways}
            for _ in range(n):  # interleaved, so a noisy moment hits every way alike
                for way in ways:
                    runs[way].append(run_once(way, exe, tree))
            print(f"cgroup placement, {n} runs each (ms; escaped = the forked child outside)")
            print(f"{'way':<12}{'popen p50':>10}{'spawn p50':>10}{'p90':>8}{'exec p50':>10}"
                  f"{'p90':>8}{'escaped':>9}")
            for way in ways:
                spawn = [float(r["spawn"]) * 1000 for r in runs[way]]
                exe_t = [float(r["exec"]) * 1000 for r in runs[way]]
                esc = sum(bool(r["escaped"]) for r in runs[way])
                popen = [float(r["popen"]) * 1000 for r in runs[way]]
                results[way] = {"popen_p50": statistics.median(popen),
                                "spawn_p50": statistics.median(spawn),
                                "spawn_p90": pct(spawn, 0.9),
                                "exec_p50": statistics.median(exe_t),
                                "exec_p90": pct(exe_t, 0.9), "escaped": esc, "runs": n}
                print(f"{way:<12}{results[way]['popen_p50']:>10.3f}"
                      f"{results[way]['spawn_p50']:>10.3f}"
                      f"{results[way]['spawn_p90']:>8.3f}{results[way]['exec_p50']:>10.3f}"
                      f"{results[way]['exec_p90']:>8.3f}{esc:>6}/{n}")
            m = max(20, n // 2)
            shell = {w: shell_escapes(w, tree, m, f"{os.getpid()}") for w in
                     ("after", "after+kids", "self")}
            results["shell_escaped"] = {**shell, "runs": m}
            print(f"sh -c '{SHELL_DOUBLE_FORK}', {m} runs: grandchild outside the cgroup: "
                  + ", ".join(f"{w} {e}/{m}" for w, e in shell.items()))
            pause = migration_after_pause(tree)
            results["migration_after_pause"] = pause
            print("a migration after a pause (ms, median): " + ", ".join(
                f"{k} {v:.3f}" for k, v in pause.items()))
            life = lifecycle_costs(tree, max(20, n // 5))
            results["lifecycle"] = life
            print("a cgroup's life (ms, median): " + ", ".join(
                f"{k} {v * 1000:.3f}" for k, v in life.items()))
        finally:
            stop.set()
            tree.clear()
            tree.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

