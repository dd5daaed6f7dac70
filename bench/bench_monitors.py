"""App monitors (issue 6): the cost of the `max_memory_restart` check with 1000 instances, and
whether watching 10,000 files stalls the daemon. No supervisord column (supervisord has
neither): each figure stands beside the same daemon without the monitor.

1. Memory check. procsupd with one app of --instances (1000) instances of `sleep 3600`, run
   twice, one daemon at a time: (a) without `max_memory_restart`, (b) with
   `max_memory_restart = "1G"` (never reached, so nothing is ever recycled). Once every instance
   is `running` and --settle seconds more have passed, with no request made to the daemon:
   its CPU time (the sum of /proc/<pid>/task/*/schedstat run time, and utime + stime of
   /proc/<pid>/stat in clock ticks) and its voluntary context switches summed over every
   thread (each one a thread going to sleep, i.e. a wake-up ended) over --seconds (30) of
   idle. The per-check cost is (b - a) / the number of checks in the window, the checks being
   `procsup.monitors.MEMORY_INTERVAL` (2 s) apart plus the duration of one check. Cross-check:
   `procsup.metrics.tree_rss` on the daemon's 1000 instance pids called in this process
   (median of 10), the work the daemon's worker thread does per check.
2. Watch of 10,000 files: a tree of 100 directories x 100 files, one app (`sleep 3600`) with
   `watch = [tree]`; the baseline is the same daemon and app without `watch`, run before it
   (one daemon at a time). `ping` round trips are timed in this process with procsup's
   `Client` (a request on a new connection each, no CLI start-up), one every 20 ms:
   (a) from the daemon's launch while it starts and adds the watch (until --startup-seconds
       have passed and every inotify watch is in place: counted in /proc/<pid>/fdinfo);
   (b) while a "git checkout"-like burst (another process: unlink and re-create every file
       with new content, as fast as it can) rewrites all 10,000 files, and after it until the
       app has restarted and --after seconds have passed, --bursts times. Between pings a
       `status` request tells the app's pid and restart count: the time from the burst's last
       write to the new process's spawn (status reply time - its uptime), and the restarts
       per burst (must be 1). The status requests' own times are reported too (max).
   The burst's speed is the machine's (ext4 under /tmp here): the faster it writes, the more
   events per second the daemon must take in, so each burst's duration is reported.

    .venv/bin/python bench/bench_monitors.py [--instances 1000] [--seconds 30] [--bursts 3]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PYTHON, Results, Session, fmt, header, median, parse, parser, pct, table
from _proc import task_counters, wait_quiet
from _subjects import Procsup

SLEEP = ["sleep", "3600"]
PERIOD = 0.02  # one ping every 20 ms
DIRS, FILES = 100, 100

#: The burst: waits for "go" on stdin (so that its start-up is not in the burst), then
#: unlinks and re-creates every file as `git checkout` does, and prints when it began and
#: ended (CLOCK_MONOTONIC, the clock of this process's time.monotonic()).
WRITER = """
import os, sys, time
root, tag = sys.argv[1], sys.argv[2].encode()
names = [os.path.join(root, f"d{d:03}", f"f{f:03}.txt") for d in range({dirs})
         for f in range({files})]
body = b"x" * 200 + b"\\n"
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.monotonic()
for n in names:
    os.unlink(n)
    fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, tag + body)
    os.close(fd)
t1 = time.monotonic()
print(t0, t1, flush=True)
""".replace("{dirs}", str(DIRS)).replace("{files}", str(FILES))


def make_tree(root: str) -> None:
    for d in range(DIRS):
        os.makedirs(os.path.join(root, f"d{d:03}"))
        for f in range(FILES):
            with open(os.path.join(root, f"d{d:03}", f"f{f:03}.txt"), "wb") as fh:
                fh.write(b"0" + b"x" * 200 + b"\n")


def warm_up(s: Session, tree: str) -> None:
    """One burst before any measure: the first rewrite of fresh files is slower (ext4 allocates
    and writes back what make_tree wrote), which would fall on the baseline alone."""
    w = subprocess.Popen([PYTHON, "-c", WRITER, tree, "warm"], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True, env=s.env)
    w.communicate("go\n", timeout=120)
    subprocess.run(["sync"], check=False)


def inotify_watches(pid: int) -> int:
    """Inotify watches the process holds, over all its inotify descriptors."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                n += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return n


def process_count() -> int:
    return sum(1 for n in os.listdir("/proc") if n.isdigit())


# ---------------------------------------------------------------------------------- 1. memory


def memory_case(s: Session, tag: str, n: int, limit: str | None, *, seconds: float,
                settle: float, probe: Callable[[list[int]], None] | None = None
                ) -> dict[str, Any]:
    """Run the daemon, measure it idle over `seconds`, then call `probe(instance pids)` while
    it still runs, and stop it."""
    app: dict[str, Any] = {"command": SLEEP, "instances": n}
    if limit is not None:
        app["max_memory_restart"] = limit
    d = Procsup(s, tag, {"s": app})
    d.launch()
    d.wait_serving()
    d.wait_states("running", n, timeout=120, interval=0.25)
    time.sleep(settle)
    busy = wait_quiet()
    table_size = process_count()
    b = task_counters(d.pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    a = task_counters(d.pid)
    elapsed = time.monotonic() - t0
    rows = d.call("status")["instances"]
    assert all(r["state"] == "running" and r["restarts"] == 0 for r in rows), "an instance moved"
    out = {
        "elapsed_s": elapsed,
        "cpu_ms": (a["cpu_ns"] - b["cpu_ns"]) / 1e6,
        "cpu_ticks": a["cpu_ticks"] - b["cpu_ticks"],
        "voluntary": a["voluntary"] - b["voluntary"],
        "switches": a["switches"] - b["switches"],
        "threads": a["threads"],
        "processes_on_machine": table_size,
        "quiet_busy": busy,
    }
    if probe is not None:
        wait_quiet(10)
        probe([int(r["pid"]) for r in rows])
    d.stop(timeout=60)
    return out


def direct_tree_rss(leaders: list[int], reps: int = 10) -> list[float]:
    from procsup import metrics

    times = []
    metrics.tree_rss(set(leaders))  # warm: imports, page cache
    for _ in range(reps):
        t0 = time.perf_counter()
        rss = metrics.tree_rss(set(leaders))
        times.append(time.perf_counter() - t0)
        assert sum(1 for v in rss.values() if v > 0) == len(leaders), "a leader read 0"
    return times


# ---------------------------------------------------------------------------------- 2. watch


@dataclass
class Sample:
    t: float  # when the ping was sent (time.monotonic())
    ping: float | None  # seconds; None: failed
    status: float | None = None  # seconds of the status request that followed, if any
    pid: int | None = None
    restarts: int | None = None
    uptime: float | None = None
    t_reply: float = 0.0


@dataclass
class Sampler:
    """Pings the daemon every PERIOD seconds (and asks its status when `with_status`)."""

    socket: str
    with_status: bool
    samples: list[Sample] = field(default_factory=list)

    def run(self, done: Callable[[Sample | None], bool], limit: float) -> None:
        from procsup.client import Client, Unreachable
        from procsup.errors import RemoteError

        client = Client(self.socket, timeout=10)
        deadline = time.monotonic() + limit
        tick = time.monotonic()
        last: Sample | None = None
        while not done(last):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sampling {self.socket}: not done after {limit:g}s")
            t0 = time.monotonic()
            try:
                client.call("ping")
                sample = Sample(t0, time.monotonic() - t0)
            except (Unreachable, RemoteError):
                sample = Sample(t0, None)
            if self.with_status and sample.ping is not None:
                t1 = time.monotonic()
                try:
                    rows = client.call("status", apps=["w"])["instances"]  # type: ignore[index]
                    sample.t_reply = time.monotonic()
                    sample.status = sample.t_reply - t1
                    sample.pid, sample.restarts = rows[0]["pid"], rows[0]["restarts"]
                    sample.uptime = rows[0]["uptime"]
                except (Unreachable, RemoteError):
                    pass
            self.samples.append(sample)
            last = sample
            tick += PERIOD
            now = time.monotonic()
            if tick > now:
                time.sleep(tick - now)
            else:
                tick = now  # a late answer: the next ping at once, ticks missed are not made up


def latencies(samples: list[Sample], t_from: float, t_to: float) -> list[float]:
    return [x.ping for x in samples if t_from <= x.t <= t_to and x.ping is not None]


def lat_stats(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "median_ms": 1000 * median(xs), "p99_ms": 1000 * pct(xs, 99),
            "max_ms": 1000 * max(xs)}


def startup_phase(d: Procsup, want_watches: int, seconds: float) -> dict[str, Any]:
    """Launch `d` and ping it every 20 ms until `seconds` have passed and it holds
    `want_watches` inotify watches, plus 1 s."""
    sampler = Sampler(d.socket, with_status=False)
    t_launch = d.launch() / 1e9
    state: dict[str, float] = {}

    def done(last: Sample | None) -> bool:
        now = time.monotonic()
        if last is not None and last.ping is not None:
            state.setdefault("serving", last.t)
        if "watched" not in state and inotify_watches(d.pid) >= want_watches:
            state["watched"] = now
        return "watched" in state and now - t_launch >= max(seconds, state["watched"] - t_launch
                                                            + 1)

    sampler.run(done, 60)
    serving = state["serving"]
    lat = latencies(sampler.samples, serving, float("inf"))
    return {"launch_to_serving_s": serving - t_launch,
            "launch_to_watched_s": state["watched"] - t_launch,
            "failed_after_serving": sum(1 for x in sampler.samples
                                        if x.t >= serving and x.ping is None),
            **lat_stats(lat), "ms": [1000 * x for x in lat]}


def burst_phase(s: Session, d: Procsup, tree: str, rnd: int, *, watched: bool,
                after: float) -> dict[str, Any]:
    """One burst rewriting every file; pings and status every 20 ms from 0.5 s before it until
    (watched) the app restarted and `after` seconds passed, (not watched) `after` seconds
    after the burst."""
    rows = d.call("status", apps=["w"])["instances"]
    pid0, restarts0 = rows[0]["pid"], rows[0]["restarts"]
    writer = subprocess.Popen([PYTHON, "-c", WRITER, tree, str(rnd)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=s.env)
    assert writer.stdin is not None and writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    wait_quiet(5)
    cpu0 = task_counters(d.pid)["cpu_ns"]
    sampler = Sampler(d.socket, with_status=True)
    t_pre = time.monotonic()
    sampler.run(lambda last: time.monotonic() - t_pre >= 0.5, 10)
    writer.stdin.write("go\n")
    writer.stdin.flush()
    state: dict[str, float] = {}

    def done(last: Sample | None) -> bool:
        now = time.monotonic()
        if "end" not in state and writer.poll() is not None:
            state["end"] = now
        if last is not None and last.pid not in (None, pid0) and "restart_seen" not in state:
            state["restart_seen"] = last.t_reply
        if not watched:
            return "end" in state and now - state["end"] >= after
        return "restart_seen" in state and now - state["restart_seen"] >= after

    sampler.run(done, 60)
    cpu_ms = (task_counters(d.pid)["cpu_ns"] - cpu0) / 1e6
    out_text = writer.stdout.read()
    writer.wait(10)
    t_start, t_end = (float(x) for x in out_text.split())
    samples = sampler.samples
    final = d.call("status", apps=["w"])["instances"][0]
    pids: list[int] = []
    for x in samples:
        if x.pid is not None and (not pids or pids[-1] != x.pid):
            pids.append(x.pid)
    res: dict[str, Any] = {
        "burst_s": t_end - t_start,
        "daemon_cpu_ms": cpu_ms,
        "idle": lat_stats(latencies(samples, t_pre, t_start)),
        "during": lat_stats(latencies(samples, t_start, t_end)),
        "after": lat_stats(latencies(samples, t_end, float("inf"))),
        "status_max_ms": 1000 * max(x.status for x in samples if x.status is not None),
        "failed": sum(1 for x in samples if x.ping is None),
        "restarts": final["restarts"] - restarts0,
        "pids_seen": len(pids),
        "ms": [[round(x.t - t_start, 4), None if x.ping is None else round(1000 * x.ping, 3)]
               for x in samples],
    }
    if watched:
        first = next(x for x in samples if x.pid not in (None, pid0))
        assert first.uptime is not None
        res["end_to_spawn_s"] = first.t_reply - first.uptime - t_end
        res["end_to_seen_s"] = first.t_reply - t_end
    return res


def watch_case(s: Session, tag: str, tree: str, *, watched: bool, args: Any,
               want_watches: int) -> dict[str, Any]:
    app: dict[str, Any] = {"command": SLEEP}
    if watched:
        app["watch"] = [tree]
    d = Procsup(s, tag, {"w": app})
    wait_quiet()
    start = startup_phase(d, want_watches, args.startup_seconds)
    d.wait_states("running", 1, timeout=30)
    bursts = [burst_phase(s, d, tree, 1000 * (tag == "watch") + k, watched=watched,
                          after=args.after)
              for k in range(args.bursts)]
    watches = inotify_watches(d.pid)
    d.stop(timeout=30)
    log = d.stderr.read_text(errors="replace")
    try:
        log += (d.log_dir / "procsupd.log").read_text(errors="replace")
    except OSError:
        pass
    return {"startup": start, "bursts": bursts, "inotify_watches": watches,
            "max_queued_events": int(Path("/proc/sys/fs/inotify/max_queued_events").read_text()),
            "overflow_lines": [line for line in log.splitlines() if "overflow" in line.lower()],
            "watch_log_lines": [line for line in log.splitlines() if "watch" in line][:20]}


# ---------------------------------------------------------------------------------- main


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30, help="idle window of the memory check")
    p.add_argument("--settle", type=float, default=5, help="seconds after all instances run")
    p.add_argument("--startup-seconds", type=float, default=5,
                   help="ping the watching daemon at least this long from its launch")
    p.add_argument("--bursts", type=int, default=3, help="bursts per daemon")
    p.add_argument("--after", type=float, default=3, help="seconds sampled after the restart")
    p.add_argument("--skip", choices=["memory", "watch"], help="leave one part out")
    args = parse(p)
    from procsup import monitors

    if args.quick:
        args.seconds, args.settle = min(args.seconds, 10), min(args.settle, 2)
        args.bursts, args.after = min(args.bursts, 1), min(args.after, 2)
    n = args.instances
    interval = monitors.MEMORY_INTERVAL
    header(f"monitors: memory check with {n} instances, watch of {DIRS * FILES} files")
    res = Results("monitors")
    budget = args.budget or 300 + 2 * args.seconds + 40 * args.bursts
    mem: dict[str, dict[str, Any]] = {}
    watch: dict[str, dict[str, Any]] = {}
    direct: list[float] = []
    with Session("monitors", budget) as s:
        if args.skip != "memory":
            mem["none"] = memory_case(s, "mem-none", n, None, seconds=args.seconds,
                                      settle=args.settle)
            mem["1G"] = memory_case(s, "mem-1g", n, "1G", seconds=args.seconds,
                                    settle=args.settle,
                                    probe=lambda pids: direct.extend(direct_tree_rss(pids)))
            mem["direct"] = {"processes_on_machine": process_count(),
                             "ms": [1000 * x for x in direct]}
        if args.skip != "watch":
            tree = str(s.path("tree", "x").parent)
            make_tree(tree)
            warm_up(s, tree)
            watch["none"] = watch_case(s, "nowatch", tree, watched=False, args=args, want_watches=1)
            base = watch["none"]["inotify_watches"]  # the config's directory
            watch["watch"] = watch_case(s, "watch", tree, watched=True, args=args,
                                        want_watches=base + DIRS + 1)
    if mem:
        report_memory(res, mem, direct, n, interval)
    if watch:
        report_watch(res, watch)
    res.details = {"memory": mem, "watch": watch, "memory_interval_s": interval}
    print()
    print(res.summary())
    res.save(args.json)


def report_memory(res: Results, mem: dict[str, dict[str, Any]], direct: list[float], n: int,
                  interval: float) -> None:
    tck = os.sysconf("SC_CLK_TCK")
    rows = []
    for name in ("none", "1G"):
        m = mem[name]
        e = m["elapsed_s"]
        m["cpu_pct"] = m["cpu_ms"] / 10 / e
        m["cpu_pct_ticks"] = m["cpu_ticks"] / tck * 100 / e
        m["voluntary_per_s"] = m["voluntary"] / e
        m["switches_per_s"] = m["switches"] / e
        rows.append([f"max_memory_restart {'unset' if name == 'none' else '= 1G'}",
                     f"{e:.1f}", f"{m['cpu_ms']:.1f}", f"{m['cpu_pct']:.4f}",
                     f"{m['cpu_pct_ticks']:.3f}", f"{m['voluntary_per_s']:.2f}",
                     f"{m['switches_per_s']:.2f}", m["threads"], m["processes_on_machine"]])
    print(table(["procsupd, " + str(n) + " instances, idle", "window s", "CPU ms",
                 "CPU % (schedstat)", "CPU % (ticks)", "vol. wake-ups/s", "switches/s",
                 "threads", "processes"], rows))
    a, b = mem["none"], mem["1G"]
    t_direct = median(direct) if direct else 0.0
    checks = b["elapsed_s"] / (interval + t_direct)
    per_check = (b["cpu_ms"] - a["cpu_ms"]) / checks
    mem["per_check"] = {"checks": checks, "cpu_ms": per_check,
                        "direct_median_ms": 1000 * t_direct}
    print(f"   {checks:.1f} checks in the window ({interval:g} s apart + {t_direct * 1000:.1f} ms"
          f" each): {per_check:.2f} ms of daemon CPU per check; tree_rss on {n} pids in this"
          f" process: median {1000 * t_direct:.2f} ms, min {1000 * min(direct):.2f},"
          f" max {1000 * max(direct):.2f} (10 calls)")
    res.add(f"idle CPU, {n} instances, no max_memory_restart", "% core", a["cpu_pct"], None,
            target="0 (costs nothing)", met=a["cpu_pct"] < 0.01)
    res.add(f"idle wake-ups, {n} instances, no max_memory_restart", "per s",
            a["voluntary_per_s"], None, target="0", met=a["voluntary_per_s"] < 0.1)
    res.add(f"idle CPU, {n} instances, max_memory_restart = 1G", "% core", b["cpu_pct"], None)
    res.add(f"idle wake-ups, {n} instances, max_memory_restart = 1G", "per s",
            b["voluntary_per_s"], None)
    res.add(f"memory check of {n} instances, daemon CPU per check", "ms", per_check, None)
    res.add(f"tree_rss of {n} instances, in-process, median of 10", "ms", 1000 * t_direct, None)


def report_watch(res: Results, watch: dict[str, dict[str, Any]]) -> None:
    rows = []
    for name, w in watch.items():
        st = w["startup"]
        rows.append([f"{name}: start-up (launch -> watched + 1 s)", st["n"],
                     fmt(st["median_ms"]), fmt(st["p99_ms"]), fmt(st["max_ms"]),
                     f"serving {1000 * st['launch_to_serving_s']:.0f} ms, watched "
                     f"{1000 * st['launch_to_watched_s']:.0f} ms"])
        for k, b in enumerate(w["bursts"]):
            for phase in ("idle", "during", "after"):
                x = b[phase]
                note = ""
                if phase == "during":
                    note = (f"burst {1000 * b['burst_s']:.0f} ms, "
                            f"daemon CPU {b['daemon_cpu_ms']:.0f} ms, "
                            f"status max {b['status_max_ms']:.0f} ms")
                elif phase == "after" and "end_to_spawn_s" in b:
                    note = (f"restart {1000 * b['end_to_spawn_s']:.0f} ms after the burst, "
                            f"restarts {b['restarts']}")
                rows.append([f"{name}: burst {k + 1}, {phase}", x["n"], fmt(x["median_ms"]),
                             fmt(x["p99_ms"]), fmt(x["max_ms"]), note])
    print(table(["ping ms (in-process Client)", "n", "median", "p99", "max", ""], rows))
    for name, w in watch.items():
        print(f"   {name}: inotify watches {w['inotify_watches']}, daemon log lines about an"
              f" inotify queue overflow: {len(w['overflow_lines'])}"
              f" (max_queued_events {w['max_queued_events']})")
        for line in w["overflow_lines"][:6]:
            print(f"      {line}")
    ws, nw = watch["watch"], watch["none"]
    res.add("ping max, watching daemon's start-up (10,000 files)", "ms",
            ws["startup"]["max_ms"], None, target="<= 100 ms (no stall)",
            met=ws["startup"]["max_ms"] <= 100)
    res.add("ping p99, watching daemon's start-up", "ms", ws["startup"]["p99_ms"], None)
    res.add("ping max, start-up without watch (baseline)", "ms", nw["startup"]["max_ms"], None)

    def worst(w: dict[str, Any], key: str) -> float:
        return float(max(b[p][key] for b in w["bursts"] for p in ("during", "after")
                         if b[p]["n"]))

    res.add("ping max, burst rewriting 10,000 watched files (+ after)", "ms",
            worst(ws, "max_ms"), None, target="<= 100 ms (no stall)",
            met=worst(ws, "max_ms") <= 100)
    res.add("ping p99 (worst burst), watched", "ms", worst(ws, "p99_ms"), None)
    res.add("ping max, same burst, no watch (baseline)", "ms", worst(nw, "max_ms"), None)
    res.add("ping p99 (worst burst), no watch (baseline)", "ms", worst(nw, "p99_ms"), None)
    res.add("status request max, around the bursts, watched", "ms",
            max(b["status_max_ms"] for b in ws["bursts"]), None)
    res.add("status request max, around the bursts, no watch (baseline)", "ms",
            max(b["status_max_ms"] for b in nw["bursts"]), None)
    spawn = [b["end_to_spawn_s"] for b in ws["bursts"]]
    res.add("burst end -> app restarted (new process), worst", "s", max(spawn), None,
            target="<= 2 s", met=max(spawn) <= 2)
    restarts = [b["restarts"] for b in ws["bursts"]]
    res.add("restarts per burst (worst)", "count", float(max(restarts)), None, target="1",
            met=all(r == 1 for r in restarts))


if __name__ == "__main__":
    main()
