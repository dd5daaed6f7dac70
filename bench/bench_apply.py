"""Config apply: one app's command changed, until that app runs its new command (issue 3).

Every app is one instance of `sleep`; one app's command alternates between `sleep 100001` and
`sleep 100002` from one repetition to the next. Measured:
- update: with --apps (100) apps running, the config file is rewritten with one app's command
  changed, then `procsup update` runs (the venv's console script), the clock read just before
  its spawn. The figure is when the supervisor's new child completed exec() of the new command
  (kernel timestamps, bench/_proc.py ExecWatch). supervisord: the same edit of one [program]
  section, then `supervisorctl update` (it stops the program, removes its group, adds it back).
  procsup runs with watch_config = false here, so that only `update` applies the change.
- save: with --many (1000) apps and watch_config = true, the config is saved as editors do (a
  temporary file in the same directory, fsync'd, renamed over the config); the clock is read
  just before the rename. The figure is again the new command's exec. supervisord does not
  watch its config: no column.
- reread: on the --many config with one app changed (so the plan is not empty), `procsup
  reread` from spawn to exit with its output read; supervisord: `supervisorctl reread` with
  --many [program] sections, if supervisord started them within --sv-start-limit seconds.
- update with --many apps (no target: it shows what the save's figure is made of).
After every change the changed app must be running with the new pid and the new command, and
every other app must have kept its pid; the exec watcher must have seen exactly one new child.
Otherwise the benchmark fails: a supervisor that restarts too much is not measured.

    .venv/bin/python bench/bench_apply.py [--apps 100] [--many 1000] [--reps 20]
        [--reps-many 10] [--sv-start-limit 60]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PROCSUP, SUPERVISORCTL, Results, Session, begin, fmt, median, parser, pct, table
from _proc import ExecWatch, exec_watch, wait_for, wait_quiet
from _subjects import SLEEP, Procsup, Supervisor, Supervisord

Trigger = Callable[[], tuple[int, int | None, str]]
Runs = list[dict[str, float]]


class Fleet:
    """A supervisor running one app per name, each one instance of `sleep`, the commands it
    was last given in its config file, and how to edit that file."""

    def __init__(
        self, session: Session, tag: str, kind: str, n: int, daemon: dict[str, Any] | None = None
    ) -> None:
        self.names = [f"a{i:04d}" for i in range(n)]
        self.commands = {name: list(SLEEP) for name in self.names}
        self.daemon = dict(daemon or {})
        self.flips = 0
        self.sup: Supervisor
        if kind == "procsup":
            self.sup = Procsup(session, tag, self._apps(), daemon=self.daemon)
        else:
            self.sup = Supervisord(session, tag, self._apps())

    @property
    def name(self) -> str:
        return self.sup.name

    def _apps(self) -> dict[str, dict[str, Any]]:
        return {name: {"command": cmd} for name, cmd in self.commands.items()}

    def text(self) -> str:
        if isinstance(self.sup, Procsup):
            return self.sup.config_text(self._apps(), self.daemon)
        assert isinstance(self.sup, Supervisord)
        return self.sup.config_text(self._apps())

    def change(self, app: str) -> list[str]:
        """Give `app` the other command (in memory; write() or save() puts it in the file)."""
        self.flips += 1
        self.commands[app] = ["sleep", str(100001 + self.flips % 2)]
        return self.commands[app]

    def write(self) -> None:
        """Rewrite the config file in place (not timed)."""
        self.sup.conf.write_text(self.text())

    def save(self) -> int:
        """Save the config as editors do: a temporary file in the same directory, fsync'd,
        renamed over the config. Returns time.monotonic_ns() taken just before the rename."""
        tmp = self.sup.conf.with_name(f".{self.sup.conf.name}.tmp")
        with open(tmp, "w") as f:
            f.write(self.text())
            f.flush()
            os.fsync(f.fileno())
        t0 = time.monotonic_ns()
        os.replace(tmp, self.sup.conf)
        return t0

    def ctl(self, command: str) -> list[str]:
        """argv of the control command users run for `command` (update, reread)."""
        if isinstance(self.sup, Procsup):
            return [PROCSUP, "-s", self.sup.socket, command]
        return [SUPERVISORCTL, "-c", str(self.sup.conf), command]

    def pids(self) -> dict[str, tuple[str, int | None]]:
        """app -> (state, pid) as the supervisor reports it (one instance per app)."""
        out: dict[str, tuple[str, int | None]] = {}
        for name, state, pid in self.sup.processes():
            app = name.split(":", 1)[0]
            if app in out:
                raise RuntimeError(f"{self.name}: {app} has more than one instance")
            out[app] = (state, pid)
        return out

    def start(self, watch: ExecWatch, timeout: float) -> dict[str, float]:
        """Launch the daemon; ms from its spawn until every app exec'd, then running."""
        n = len(self.names)
        watch.reset()
        t0 = self.sup.launch()
        watch.ppid = self.sup.pid
        watch.wait(lambda w: len(w.execs) >= n, timeout, f"{self.name}: {n} apps exec'd")
        live = (max(watch.execs.values()) - t0) / 1e6
        left = timeout - (time.monotonic_ns() - t0) / 1e9
        self.sup.wait_serving(max(left, 1))
        self.sup.wait_states("running", n, timeout=max(left, 1), interval=0.2)
        return {"live": live, "running": (time.monotonic_ns() - t0) / 1e6}


def run_cmd(argv: list[str], env: dict[str, str], expect: str) -> tuple[int, int, str]:
    """Run a control command; (start ns, end ns, stdout). Fails unless it exits 0 and its
    output names `expect` (the changed app: the plan was not empty)."""
    t0 = time.monotonic_ns()
    r = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    t1 = time.monotonic_ns()
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0 or expect not in out:
        raise RuntimeError(
            f"{argv[0]} {argv[-1]} exited {r.returncode} without naming {expect}:\n{out}\n"
            f"{r.stderr.decode(errors='replace')}"
        )
    return t0, t1, out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def one_change(fleet: Fleet, watch: ExecWatch, app: str, trigger: Trigger) -> dict[str, float]:
    """`trigger` applies a config in which `app` got a new command; returns ms from its start
    to the old process's exit, the new one's exec and (for a command) the command's exit.
    Checks that exactly `app` was restarted, onto its new command."""
    sup = fleet.sup
    new_cmd = fleet.commands[app]
    before = fleet.pids()
    old_state, old_pid = before[app]
    if old_state != "running" or old_pid is None:
        raise RuntimeError(f"{fleet.name}: {app} is {old_state} before the change")
    watch.reset()
    watch.ppid = sup.pid
    watch.track_exits.add(old_pid)
    t0, t_end, _ = trigger()
    watch.wait(lambda w: bool(w.execs), 30, f"{fleet.name}: {app} exec'd anew")
    new_pid, t_exec = min(watch.execs.items(), key=lambda kv: kv[1])
    got = cmdline(new_pid)
    if got != new_cmd:
        raise RuntimeError(f"{fleet.name}: new child {new_pid} runs {got}, expected {new_cmd}")

    def settled() -> bool:
        sup._check_alive()
        state, pid = fleet.pids()[app]
        return state == "running" and pid == new_pid

    wait_for(settled, 30, f"{fleet.name}: {app} running as {new_pid}", 0.1)
    watch.settle(0.2)  # any other fork or exec would show up by now
    after = fleet.pids()
    moved = {
        a: (before[a], after.get(a))
        for a in before
        if a != app and (after.get(a) != before[a] or before[a][0] != "running")
    }
    extra = set(watch.forks) - {new_pid}
    if moved or extra or set(after) != set(before):
        raise RuntimeError(
            f"{fleet.name}: changing {app} disturbed other apps: "
            f"{len(moved)} changed pid or state ({dict(list(moved.items())[:5])}), "
            f"{len(extra)} other children forked, apps {sorted(set(after) ^ set(before))[:5]}"
        )
    out = {"exec": (t_exec - t0) / 1e6}
    if old_pid in watch.exits:
        out["old_exit"] = (watch.exits[old_pid] - t0) / 1e6
    if t_end is not None:
        out["command"] = (t_end - t0) / 1e6
    return out


def update_reps(fleets: list[Fleet], watch: ExecWatch, reps: int) -> dict[str, Runs]:
    """`reps` changes through the update command, alternating which fleet goes first."""
    data: dict[str, Runs] = {f.name: [] for f in fleets}
    for r in range(reps):
        order = fleets if r % 2 == 0 else fleets[::-1]
        for fleet in order:
            app = fleet.names[len(fleet.names) // 2]
            fleet.change(app)
            fleet.write()
            busy = wait_quiet(10)

            def trigger(fleet: Fleet = fleet, app: str = app) -> tuple[int, int | None, str]:
                return run_cmd(fleet.ctl("update"), fleet.sup.session.env, app)

            out = one_change(fleet, watch, app, trigger)
            out["busy_before"] = busy
            data[fleet.name].append(out)
    return data


def save_reps(fleet: Fleet, watch: ExecWatch, reps: int) -> Runs:
    out = []
    for _ in range(reps):
        app = fleet.names[len(fleet.names) // 2]
        fleet.change(app)
        busy = wait_quiet(10)
        d = one_change(fleet, watch, app, lambda: (fleet.save(), None, ""))
        d["busy_before"] = busy
        out.append(d)
    return out


def reread_reps(fleets: list[Fleet], reps: int) -> dict[str, list[float]]:
    """Each fleet's file holds one changed app, not applied; `reread` `reps` times each."""
    times: dict[str, list[float]] = {f.name: [] for f in fleets}
    before = {f.name: f.pids() for f in fleets}
    for f in fleets:  # warm the page cache and the daemon
        run_cmd(f.ctl("reread"), f.sup.session.env, f.names[len(f.names) // 2])
    for r in range(reps):
        wait_quiet(5)
        for f in fleets if r % 2 == 0 else fleets[::-1]:
            t0, t1, _ = run_cmd(f.ctl("reread"), f.sup.session.env, f.names[len(f.names) // 2])
            times[f.name].append((t1 - t0) / 1e6)
    for f in fleets:
        if f.pids() != before[f.name]:
            raise RuntimeError(f"{f.name}: reread changed the running processes")
    return times


def stats(xs: list[float]) -> list[str]:
    return [str(len(xs)), fmt(min(xs)), fmt(median(xs)), fmt(pct(xs, 90)), fmt(max(xs))]


def column(runs: Runs, key: str) -> list[float]:
    return [r[key] for r in runs if key in r]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--apps", type=int, default=100, help="apps for the update measure")
    p.add_argument("--many", type=int, default=1000, help="apps for the save and reread measures")
    p.add_argument("--reps", type=int, default=20, help="repetitions of update and reread")
    p.add_argument("--reps-many", type=int, default=10, help="repetitions of save")
    p.add_argument(
        "--sv-start-limit",
        type=float,
        default=60,
        metavar="SECONDS",
        help="skip supervisord with --many programs if it takes longer to run them all",
    )
    args = begin(
        p, "config apply: one app changed among {apps} (update) and {many} (save)",
        quick={"reps": 5, "reps_many": 4},
    )
    res = Results("apply")
    budget = args.budget or 600 + args.reps * 20 + args.reps_many * 10 + args.sv_start_limit
    det: dict[str, Any] = {}
    with Session("apply", budget) as s, exec_watch() as watch:
        method = watch.method
        # 1. update with --apps apps, both side by side.
        small = [
            Fleet(s, "ps-update", "procsup", args.apps, {"watch_config": False}),
            Fleet(s, "sv-update", "supervisord", args.apps),
        ]
        det["start_small"] = {f.name: f.start(watch, 120) for f in small}
        det["update"] = update_reps(small, watch, args.reps)
        det["stop_small_ms"] = {f.name: (f.sup.stop(60) or 0) * 1000 for f in small}

        # 2. --many apps: procsup, then supervisord if it gets them running in time.
        ps = Fleet(s, "ps-many", "procsup", args.many, {"watch_config": False})
        det["start_many"] = {"procsup": ps.start(watch, 120)}
        many = [ps]
        sv = Fleet(s, "sv-many", "supervisord", args.many)
        try:
            det["start_many"]["supervisord"] = sv.start(watch, args.sv_start_limit)
            many.append(sv)
        except TimeoutError as exc:
            det["supervisord_many_skipped"] = str(exc)
            print(f"   supervisord with {args.many} programs: {exc}; no supervisord column")
            sv.sup.stop(60)
        for f in many:
            f.change(f.names[len(f.names) // 2])
            f.write()
        det["reread"] = reread_reps(many, args.reps)
        det["update_many"] = update_reps(many, watch, max(3, args.reps_many // 2))
        if sv in many:
            det["stop_many_ms"] = {"supervisord": (sv.sup.stop(120) or 0) * 1000}

        # 3. the save, watched: turn watch_config on (an update whose plan is empty).
        ps.daemon["watch_config"] = True
        ps.write()
        subprocess.run(ps.ctl("update"), env=s.env, check=True, capture_output=True, timeout=60)
        time.sleep(0.5)  # the watchdog thread is up well before this
        det["save"] = save_reps(ps, watch, args.reps_many)
        det.setdefault("stop_many_ms", {})["procsup"] = (ps.sup.stop(120) or 0) * 1000

    print(f"   (exec times: {method})")
    busy = [r["busy_before"] for runs in det["update"].values() for r in runs]
    busy += [r["busy_before"] for r in det["save"]]
    print(f"   (machine busy before each change, fraction of all CPUs: max {max(busy):.2f})")
    rows = []
    for label, runs in [
        *[(f"update, {args.apps} apps: {k}", v) for k, v in det["update"].items()],
        *[(f"update, {args.many} apps: {k}", v) for k, v in det["update_many"].items()],
        (f"save, {args.many} apps: procsup", det["save"]),
    ]:
        for key in ("old_exit", "exec", "command"):
            if xs := column(runs, key):
                rows.append([f"{label}: {key}", *stats(xs)])
    for k, xs in det["reread"].items():
        rows.append([f"reread, {args.many} apps: {k}", *stats(xs)])
    print(table(["ms from the command's start (save: the rename)", "n", "min", "median",
                 "p90", "max"], rows))
    start_rows = [
        [f"{k}: {n} apps", fmt(v["live"]), fmt(v["running"])]
        for n, d in ((args.apps, det["start_small"]), (args.many, det["start_many"]))
        for k, v in d.items()
    ]
    print(table(["start-up, ms from the daemon's spawn", "all exec'd", "all running"],
                start_rows))
    for n, d in ((args.apps, det["stop_small_ms"]), (args.many, det["stop_many_ms"])):
        for k, v in d.items():
            print(f"   stop the daemon, {k}, {n} apps: {fmt(v)} ms")

    upd = det["update"]
    pu, su = column(upd["procsup"], "exec"), column(upd["supervisord"], "exec")
    target_update = args.apps == 100
    res.add(
        f"update, 1 of {args.apps} apps changed: new command exec'd, median",
        "ms",
        median(pu),
        median(su),
        target="<= 150 ms" if target_update else "",
        met=median(pu) <= 150 if target_update else None,
    )
    res.add(f"update, 1 of {args.apps} apps: p90", "ms", pct(pu, 90), pct(su, 90))
    sv_many = "supervisord" in det["reread"]
    um = det["update_many"]
    res.add(
        f"update, 1 of {args.many} apps changed: new command exec'd, median",
        "ms",
        median(column(um["procsup"], "exec")),
        median(column(um["supervisord"], "exec")) if sv_many else None,
    )
    sv_ = column(det["save"], "exec")
    target_many = args.many == 1000
    res.add(
        f"save (watch_config), 1 of {args.many} apps: new command exec'd, median",
        "ms",
        median(sv_),
        None,
        target="<= 500 ms" if target_many else "",
        met=median(sv_) <= 500 if target_many else None,
    )
    res.add(f"save (watch_config), 1 of {args.many} apps: p90", "ms", pct(sv_, 90), None)
    rr = det["reread"]
    res.add(
        f"reread, {args.many} apps, 1 changed, median",
        "ms",
        median(rr["procsup"]),
        median(rr["supervisord"]) if sv_many else None,
        target="<= 300 ms" if target_many else "",
        met=median(rr["procsup"]) <= 300 if target_many else None,
    )
    res.add(
        f"reread, {args.many} apps: p90",
        "ms",
        pct(rr["procsup"], 90),
        pct(rr["supervisord"], 90) if sv_many else None,
    )
    res.details = det
    print()
    print(res.summary())
    if not sv_many:
        print(f"supervisord could not run {args.many} programs within {args.sv_start_limit:g} s")
    print("save: no supervisord column (supervisord does not watch its config file)")
    res.save(args.json)


if __name__ == "__main__":
    main()
