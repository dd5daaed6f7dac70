"""Stacks (issue 12): how long a stack with dependencies takes to start beyond the readiness
times on its longest path, and what dependencies cost `reread`.

Start: --width chains of --depth apps (100 apps in chains 10 deep by default); app `c<w>d<d>`
is one instance of `sleep` with `ready = "started"` and `min_uptime` --ready-ms, and depends on
`c<w>d<d-1>` ("ready"). procsupd -n starts them all; the kernel's exec timestamps (bench/_proc.py
ExecWatch) give each app's exec, and `status` which pid is which app. The readiness time of an
app is its min_uptime, so the sum on the longest path is depth x ready-ms; the stack has started
when the last app of the deepest layer is ready (its exec + ready-ms). The figure is that time,
from the first app's exec, minus the sum: what the dependency machinery adds (the gate noticing a
dependency running, and the next spawn), over depth - 1 links. Target: at most 50 ms. A single
chain of --depth apps is measured first, the same way: the links alone, without the spawns of
a whole layer one after the other.

Reread: --many apps (1000) of `sleep`, as --many / --depth chains of --depth, or with no
`depends_on` at all (the same apps), one app's command changed; `procsup reread` from spawn to
exit, --reps times each, alternating. With --before REV (default e5f5b55, the last revision
before dependencies existed), a third daemon and its CLI run that revision of procsup/ on the
config without `depends_on` (it refuses the key), in the same alternation: the reread of the
day the issue was filed. Target: with dependencies within 10 % of that (`--before ''` compares
with today's code without dependencies instead).

    .venv/bin/python bench/bench_stack.py [--width 10] [--depth 10] [--ready-ms 200]
        [--runs 5] [--many 1000] [--reps 10] [--before REV]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PROCSUP, Results, Session, begin, extract, fmt, median, parser, pct
from _proc import exec_watch, wait_quiet
from _subjects import SLEEP, Procsup


def chains(width: int, depth: int, ready_ms: int, deps: bool = True) -> dict[str, dict[str, Any]]:
    apps: dict[str, dict[str, Any]] = {}
    for w in range(width):
        for d in range(depth):
            app: dict[str, Any] = {"command": list(SLEEP), "min_uptime": f"{ready_ms}ms",
                                   "out_file": False, "error_file": False}
            if deps and d:
                app["depends_on"] = [f"c{w}d{d - 1}"]
            apps[f"c{w}d{d}"] = app
    return apps


def one_start(s: Session, run: int, width: int, depth: int, ready_ms: int) -> dict[str, float]:
    n = width * depth
    ps = Procsup(s, f"start{width}x{depth}-{run}", chains(width, depth, ready_ms))
    with exec_watch() as watch:
        ps.launch()
        watch.ppid = ps.pid
        ps.wait_serving(timeout=60)
        ps.wait_states("running", n, timeout=120)
        pids = {r["pid"]: r["app"] for r in ps.call("status")["instances"]}
        # (the daemon's other children, if any, are not apps: wait for the apps' own execs)
        watch.wait(lambda w: set(pids) <= set(w.execs), 30, f"{n} instances exec'd")
        execs, forks = dict(watch.execs), dict(watch.forks)
    ps.stop(timeout=60)
    at = {pids[pid]: ns / 1e6 for pid, ns in execs.items() if pid in pids}
    forked = {pids[pid]: ns / 1e6 for pid, ns in forks.items() if pid in pids}
    first = min(at.values())
    done = max(at[f"c{w}d{depth - 1}"] for w in range(width)) + ready_ms
    links = [at[f"c{w}d{d + 1}"] - at[f"c{w}d{d}"] - ready_ms
             for w in range(width) for d in range(depth - 1)]
    # Never before its dependency was ready: min_uptime counts from the spawn (once the exec is
    # committed, which lies between the fork and the exec's end that `at` holds).
    early = [at[f"c{w}d{d + 1}"] - forked.get(f"c{w}d{d}", at[f"c{w}d{d}"]) - ready_ms
             for w in range(width) for d in range(depth - 1)]
    if min(early) < 0:
        raise RuntimeError(f"an app exec'd before its dependency was ready: {min(early):.1f} ms")
    return {"stack": done - first, "overhead": done - first - depth * ready_ms,
            "link_median": median(links), "link_max": max(links)}


def reread_setup(
    s: Session, tag: str, apps: dict[str, dict[str, Any]], source: str = ""
) -> Procsup | None:
    """A daemon running `apps` (with the procsup/ of `source`, a directory, if given), its
    config file then saved with one app's command changed (watch_config off, so only `reread`
    reads it); None if this revision refuses the config."""
    ps = Procsup(s, tag, apps, daemon={"watch_config": False})
    if source:
        ps.env["PYTHONPATH"] = os.pathsep.join(
            x for x in (source, ps.env.get("PYTHONPATH")) if x)
    ps.launch()
    try:
        ps.wait_serving(timeout=60)
    except Exception:
        print(f"   {tag}: procsupd did not start (this revision refuses the config?); skipped")
        ps.stop(timeout=30)
        return None
    ps.wait_states("running", len(apps), timeout=120)
    changed = dict(apps)
    first = next(iter(apps))
    changed[first] = {**apps[first], "command": [*SLEEP[:-1], "100003"]}
    ps.conf.write_text(ps.config_text(changed, {"watch_config": False}))
    return ps


def reread_once(ps: Procsup) -> float:
    """One `procsup reread` against `ps`, by the CLI of the daemon's own revision."""
    t0 = time.monotonic()
    r = subprocess.run([PROCSUP, "-s", ps.socket, "reread"], check=False, capture_output=True,
                       text=True, env=ps.env)
    took = (time.monotonic() - t0) * 1000
    if r.returncode != 0 or "restart" not in r.stdout:
        raise RuntimeError(f"reread failed: {r.stdout}{r.stderr}")
    return took


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--width", type=int, default=10)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--ready-ms", type=int, default=200)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--many", type=int, default=1000)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--skip", choices=("start", "reread"), default=None)
    p.add_argument("--before", default="e5f5b55", metavar="REV",
                   help="the revision whose reread without dependencies is the reference "
                   "('' for none)")
    args = begin(p, "stacks: {width} chains {depth} deep; reread of {many} apps",
                 quick={"runs": 2, "reps": 4}, supervisord=False)
    res = Results("stack")
    with Session("stack", args.budget or 1200) as s:
        if args.skip != "start":
            # one chain first: the gate's own cost per link, without a layer's spawns in a row
            for width in sorted({1, args.width}):
                runs = []
                for run in range(args.runs):
                    wait_quiet()
                    runs.append(one_start(s, run, width, args.depth, args.ready_ms))
                    print(f"   {width} x {args.depth}, run {run}: stack {runs[-1]['stack']:.1f} "
                          f"ms, overhead {runs[-1]['overhead']:.1f} ms, link median "
                          f"{runs[-1]['link_median']:.2f} max {runs[-1]['link_max']:.2f} ms")
                over = median([r["overhead"] for r in runs])
                res.add(f"stack start beyond the longest path's readiness ({args.depth} deep, "
                        f"{width * args.depth} apps)", "ms", over, None,
                        target="<= 50 ms", met=over <= 50)
                res.details[f"start {width}x{args.depth}"] = runs
        if args.skip != "reread":
            width = max(1, args.many // args.depth)
            with_deps = chains(width, args.depth, 200)
            without = chains(width, args.depth, 200, deps=False)
            before = extract(args.before) if args.before else None
            subjects = [reread_setup(s, "reread-deps", with_deps),
                        reread_setup(s, "reread-plain", without)]
            if before is not None:
                subjects.append(reread_setup(s, "reread-before", without, before[1]))
            times: list[list[float]] = [[] for _ in subjects]
            for _ in range(args.reps):  # alternating, so that the machine's noise is shared
                for k, ps in enumerate(subjects):
                    if ps is not None:
                        wait_quiet()
                        times[k].append(reread_once(ps))
            for ps in subjects:
                if ps is not None:
                    ps.stop(timeout=60)
            names = ("with", "without", "before")[:len(subjects)]
            got = {name: t for name, t, ps in zip(names, times, subjects, strict=True)
                   if ps is not None and t}
            a, b, c = got.get("with"), got.get("without"), got.get("before")
            ref = c if before is not None else b
            if b is not None:
                res.add(f"reread, {len(without)} apps without depends_on", "ms", median(b), None)
                print(f"   without: median {fmt(median(b))} p90 {fmt(pct(b, 90))} ms")
            if c is not None and before is not None:
                res.add(f"reread, {len(without)} apps without depends_on, at {before[0]} (before "
                        "dependencies)", "ms", median(c), None)
                print(f"   before:  median {fmt(median(c))} p90 {fmt(pct(c, 90))} ms "
                      f"({before[0]})")
            if a is not None:
                what = f"{before[0]} without" if before is not None else "without"
                res.add(f"reread, {len(with_deps)} apps in chains of {args.depth}", "ms",
                        median(a), None, target=f"within 10 % of {what}",
                        met=ref is not None and median(a) <= 1.1 * median(ref))
                print(f"   with:    median {fmt(median(a))} p90 {fmt(pct(a, 90))} ms")
            res.details["reread"] = got
    print(res.summary())
    res.save(args.json)


if __name__ == "__main__":
    main()
