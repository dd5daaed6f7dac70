"""Cluster mode (issue 4): throughput through daemon-held sockets, spread across instances,
rolling reload time. Loopback only; no supervisord column (supervisord has no cluster mode):
the comparison is against the same servers started without any supervisor.

The server is bench/_cluster_server.py (stdlib asyncio, answers its pid; socket-activated on
fd 3 with READY=1, or binding its own SO_REUSEPORT socket when given a port). Three subjects
run side by side, each on its own port, all started before any load:
- shared: procsupd, one cluster app, `instances = --instances`, `balance = "shared"`;
- reuseport: the same with `balance = "reuseport"` (one daemon-held socket per slot);
- baseline: the same number of servers started directly, each binding its own SO_REUSEPORT
  socket on one port (no supervisor at all);
- plain-shared: the same number of servers started directly on one listening socket this script
  binds and hands each of them as fd 3 (socket activation, no supervisor): what `shared` costs
  without procsup, to tell the shared socket's cost from the daemon's.

1. Throughput: `wrk` (--wrk-threads, --connections) for --seconds against each subject in
   turn, --reps rounds, the order rotated each round, the machine waited quiet before each
   round; median requests/s per subject, and the ratio to the baseline as the median of the
   per-round ratios (each subject against the baseline run of the same round, which cancels the
   machine's drift between rounds; target >= 0.95). Both with
   keep-alive and with `Connection: close` (a new connection per request, which is where the
   kernel's choice of instance happens). Each wrk thread also stops after --max-requests / threads
   answers (a Lua counter), so every load run is bounded in requests and in time.
2. Spread: --requests requests (4 client threads, a new connection each, at most 60 s), the
   pid in each answer counted; each instance's share (target with reuseport: 40-60 % each).
3. Rolling reload: a fourth daemon, --reload-instances instances, `ready = "notify"`.
   Start-up of one instance: the same command spawned the way procsupd spawns it (procsup's
   own `spawn.start` with the activation shell of `sockets.activation_argv`, the socket on a fd
   above 9 moved to fd 3, output to pipes), from the spawn to the READY=1 datagram on a notify
   socket of ours (--startup-reps times, median). Reload, as the daemon performs it: a `reload`
   request sent on the control socket from this process, from the request's send to the reply
   (--reload-reps times, median; the daemon replies once every old instance has exited); every
   pid checked replaced and `running` after each. The start-ups and reloads are interleaved (two
   start-ups before each reload) so that both see the same machine. Target: reload <= 1.1 x
   (instances x start-up). Secondary: the same reload by the CLI, `procsup -s SOCK reload rl`
   from spawn to exit 0, which adds the CLI's own start (the `procsup ping` row).

    .venv/bin/python bench/bench_cluster.py [--seconds 5] [--reps 3] [--requests 10000]
"""

from __future__ import annotations

import collections
import fcntl
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PROCSUP, PYTHON, Results, Session, fmt, header, median, parse, parser, table
from _proc import task_counters, wait_for, wait_quiet
from _subjects import Procsup

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cluster_server.py")

#: wrk stops each thread after this many answers (set per run): the request bound of a load run.
WRK_LUA = """
local n = 0
local limit = tonumber(os.getenv("BENCH_MAX_PER_THREAD"))
function response(status, headers, body)
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_app(port: int, instances: int, balance: str) -> dict[str, Any]:
    return {
        "command": [PYTHON, SERVER],
        "exec_mode": "cluster",
        "instances": instances,
        "listen": [f"tcp://127.0.0.1:{port}"],
        "balance": balance,
        "ready": "notify",
        "ready_timeout": "10s",
    }


def get_pid(port: int, timeout: float = 5) -> int:
    """One request on a new connection; the serving pid."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"bad answer from port {port}: {data[:200]!r}")
    return int(body)


def wrk(port: int, *, seconds: float, threads: int, conns: int, close: bool, limit: int,
        lua: str) -> float:
    """Requests/s of one wrk run; fails on any socket error or non-2xx answer."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "-s", lua]
    if close:
        argv += ["-H", "Connection: close"]
    env = {**os.environ, "BENCH_MAX_PER_THREAD": str(max(1, limit // threads))}
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30, env=env, check=True).stdout
    if "Non-2xx" in out or re.search(r"Socket errors: connect [1-9]|read [1-9]|timeout [1-9]",
                                     out):
        raise RuntimeError(f"wrk saw errors on port {port}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1))


def spread(port: int, n: int, threads: int = 4, limit: float = 60) -> collections.Counter[int]:
    """n requests, each on a new connection, from `threads` threads; answers per pid."""
    counts: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + limit
    errors: list[BaseException] = []

    def work(k: int) -> None:
        mine: collections.Counter[int] = collections.Counter()
        try:
            for _ in range(k):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"spread on port {port}: out of {limit:g}s")
                mine[get_pid(port)] += 1
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        with lock:
            counts.update(mine)

    ts = [threading.Thread(target=work, args=(n // threads + (i < n % threads),))
          for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return counts


def activated(s: Session, sock: socket.socket, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the server the way procsupd starts a cluster instance: procsup's own spawn (a new
    session, close_fds, output to pipes) of `sockets.activation_argv`, whose shell moves the
    socket from a fd above 9 (where the daemon's sockets are) to fd 3 and execs the server.
    The pipes' read ends are closed at once: the server writes nothing."""
    from procsup import sockets, spawn  # after parse(): the --commit revision when given

    high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
    r, w = os.pipe()
    try:
        argv, extra = sockets.activation_argv([PYTHON, SERVER], [high], "x")
        return spawn.start(spawn.Launch(argv=argv, env={**s.env, **env, **extra}, stdout=w,
                                        stderr=w, pass_fds=(high,)))
    finally:
        for fd in (high, r, w):
            os.close(fd)


def wait_all_serve(port: int, procs: list[subprocess.Popen[bytes]], what: str) -> None:
    want = {p.pid for p in procs}
    seen: set[int] = set()

    def all_serve() -> bool:
        try:
            seen.add(get_pid(port, 1))
        except OSError:
            pass
        return want <= seen

    wait_for(all_serve, 20, what, 0.01)


def start_baseline(s: Session, port: int, n: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([PYTHON, SERVER, str(port)], env=s.env, start_new_session=True,
                              stdin=subprocess.DEVNULL) for _ in range(n)]
    wait_all_serve(port, procs, "the baseline servers")
    return procs


def start_plain_shared(s: Session, sock: socket.socket, n: int) -> list[subprocess.Popen[bytes]]:
    """n servers on the one listening socket `sock`, socket-activated, no supervisor."""
    procs = [activated(s, sock, {}) for _ in range(n)]
    wait_all_serve(sock.getsockname()[1], procs, "the plain-shared servers")
    return procs


def instance_pids(d: Procsup, app: str) -> list[int]:
    rows = d.processes()
    assert all(r[1] == "running" for r in rows), rows
    return sorted(r[2] for r in rows if r[0].startswith(app + ":") and r[2])


def startup_once(
    s: Session, sock: socket.socket, notify: socket.socket, path: str
) -> tuple[float, float]:
    """Spawn one instance as procsupd does (`activated`) and return seconds from the spawn to
    its READY=1, and from its SIGTERM to its exit."""
    t0 = time.monotonic()
    p = activated(s, sock, {"NOTIFY_SOCKET": path})
    try:
        notify.settimeout(10)
        while True:
            msg = notify.recv(4096)
            if b"READY=1" in msg:
                ready = time.monotonic() - t0
                break
    finally:
        t1 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    return ready, time.monotonic() - t1


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    return time.monotonic() - t0, r


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    p.add_argument("--reps", type=int, default=3, help="wrk rounds over the subjects")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--max-requests", type=int, default=2_000_000, help="per wrk run")
    p.add_argument("--requests", type=int, default=10_000, help="for the spread")
    p.add_argument("--reload-instances", type=int, default=4)
    p.add_argument("--startup-reps", type=int, default=10)
    p.add_argument("--reload-reps", type=int, default=5)
    args = parse(p)
    # imported before any timing (`activated` uses them): the first start-up measures no import
    for module in ("procsup.sockets", "procsup.spawn"):
        importlib.import_module(module)
    from procsup.client import Client
    if args.quick:
        args.seconds, args.reps = min(args.seconds, 2), min(args.reps, 1)
        args.startup_reps, args.reload_reps = min(args.startup_reps, 3), min(args.reload_reps, 2)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    header("cluster mode: throughput, spread, rolling reload")
    res = Results("cluster")
    budget = args.budget or 240 + args.reps * 8 * (args.seconds + 2) + args.reload_reps * 20
    n = args.instances
    with Session("cluster", budget) as s:
        lua = str(s.path("count.lua"))
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        plain = socket.socket()
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        plain.bind(("127.0.0.1", 0))
        plain.listen(1024)
        ports = {"shared": free_port(), "reuseport": free_port(),
                 "plain-shared": plain.getsockname()[1], "baseline": free_port()}
        daemons = {b: Procsup(s, b, {"web": cluster_app(ports[b], n, b)})
                   for b in ("shared", "reuseport")}
        for d in daemons.values():
            d.launch()
            d.wait_serving()
            d.wait_states("running", n, timeout=30)
        baseline = start_baseline(s, ports["baseline"], n)
        plain_procs = start_plain_shared(s, plain, n)
        pids = {b: instance_pids(d, "web") for b, d in daemons.items()}
        pids["baseline"] = sorted(x.pid for x in baseline)
        pids["plain-shared"] = sorted(x.pid for x in plain_procs)
        subjects = list(ports)

        # 1. throughput
        rps: dict[str, dict[str, list[float]]] = {m: {x: [] for x in subjects}
                                                  for m in ("keep-alive", "close")}
        busy = []
        cpu0 = {b: task_counters(d.pid)["cpu_ns"] for b, d in daemons.items()}
        for rnd in range(args.reps):
            order = subjects[rnd % len(subjects):] + subjects[:rnd % len(subjects)]
            for mode in rps:
                busy.append(wait_quiet())
                for x in order:
                    rps[mode][x].append(wrk(ports[x], seconds=args.seconds,
                                            threads=args.wrk_threads, conns=args.connections,
                                            close=mode == "close", limit=args.max_requests,
                                            lua=lua))
        rows = []
        for mode, by in rps.items():
            for x in subjects:
                med = median(by[x])
                # per round against that round's baseline run: the drift between rounds cancels
                r = median([v / b for v, b in zip(by[x], by["baseline"], strict=True)])
                rows.append([f"{x}, {mode}", " ".join(f"{v:.0f}" for v in by[x]), f"{med:.0f}",
                             f"{r:.3f}"])
                if x in daemons:
                    res.add(f"rps via cluster {x} / baseline, {n} instances, {mode}",
                            "x baseline", r, None, target=">= 0.95", met=r >= 0.95)
                elif x != "baseline":
                    res.add(f"rps, {n} servers on one socket without a supervisor / baseline, "
                            f"{mode}", "x baseline", r, None)
        print(table(["requests/s (wrk)", "runs", "median", "x baseline (median per round)"],
                    rows))
        # The daemon is not in the data path: its CPU time over all the load runs says so.
        daemon_cpu = {b: (task_counters(d.pid)["cpu_ns"] - cpu0[b]) / 1e6
                      for b, d in daemons.items()}
        print("procsupd CPU during all load runs (ms): "
              + ", ".join(f"{b} {v:.1f}" for b, v in daemon_cpu.items()))
        res.details["daemon_cpu_ms"] = daemon_cpu
        res.details["rps"] = rps
        res.details["quiet_busy"] = busy

        # 2. spread
        shares: dict[str, dict[int, float]] = {}
        for x in subjects:
            counts = spread(ports[x], args.requests)
            unknown = set(counts) - set(pids[x])
            if unknown:
                raise RuntimeError(f"{x}: answers from pids not among the instances: {unknown}")
            shares[x] = {pid: 100 * counts[pid] / args.requests for pid in pids[x]}
        print(table(["share of requests (%)", *[f"instance {i}" for i in range(n)]],
                    [[x, *[f"{v:.1f}" for v in shares[x].values()]] for x in subjects]))
        res.details["shares"] = {x: list(v.values()) for x, v in shares.items()}
        lo, hi = 100 / n - 10, 100 / n + 10
        for x in ("reuseport", "shared", "plain-shared"):
            v = list(shares[x].values())
            for which, y in (("least", min(v)), ("most", max(v))):
                res.add(f"{x}: share of {args.requests} new connections, {which} busy of {n}",
                        "%", y, None, target=f"{lo:g}-{hi:g} %" if x == "reuseport" else "",
                        met=lo <= y <= hi if x == "reuseport" else None)
        for d in daemons.values():
            d.stop()
        for b in baseline + plain_procs:
            b.send_signal(signal.SIGTERM)
            b.wait(10)
        plain.close()

        # 3. rolling reload
        k = args.reload_instances
        rl = Procsup(s, "reload", {"rl": cluster_app(free_port(), k, "shared")})
        rl.launch()
        rl.wait_serving()
        rl.wait_states("running", k, timeout=30)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(128)
        npath = str(s.path("notify.sock"))
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.bind(npath)
        starts: list[float] = []
        stops: list[float] = []

        def startups(count: int) -> None:
            for _ in range(count):
                wait_quiet()
                up, down = startup_once(s, lsock, nsock, npath)
                starts.append(up)
                stops.append(down)

        def check_replaced(before: list[int]) -> None:
            after = instance_pids(rl, "rl")
            if len(after) != k or set(after) & set(before):
                raise RuntimeError(f"reload left {before} -> {after}")

        client = Client(rl.socket, timeout=120)
        reloads: list[float] = []
        per = max(1, -(-args.startup_reps // args.reload_reps))  # start-ups before each reload
        for _ in range(args.reload_reps):  # interleaved: both see the same machine
            startups(per)
            wait_quiet()
            before = instance_pids(rl, "rl")
            t0 = time.monotonic()
            reply = client.call("reload", apps=["rl"], wait=True)
            reloads.append(time.monotonic() - t0)
            if not isinstance(reply, dict) or reply.get("failed") or reply.get("error"):
                raise RuntimeError(f"reload failed: {reply}")
            check_replaced(before)
        lsock.close()
        nsock.close()
        cli: list[float] = []
        for _ in range(5):
            cli.append(timed([PROCSUP, "-s", rl.socket, "ping"], s.env)[0])
        cli_reloads = []
        for _ in range(args.reload_reps):
            wait_quiet()
            before = instance_pids(rl, "rl")
            dt, done = timed([PROCSUP, "-s", rl.socket, "reload", "rl"], s.env)
            if done.returncode != 0:
                raise RuntimeError(f"reload failed: {done.stdout}{done.stderr}")
            check_replaced(before)
            cli_reloads.append(dt)
        ms: Callable[[list[float]], list[str]] = lambda xs: [  # noqa: E731
            str(len(xs)), fmt(1000 * min(xs)), fmt(1000 * median(xs)), fmt(1000 * max(xs))]
        print(table(["ms", "n", "min", "median", "max"], [
            ["start-up of one instance (spawn -> READY=1)", *ms(starts)],
            [f"reload of {k} instances (request -> reply, control socket)", *ms(reloads)],
            [f"procsup reload, {k} instances (CLI spawn -> exit)", *ms(cli_reloads)],
            ["stop of one instance (SIGTERM -> exit), for reference", *ms(stops)],
            ["procsup ping (CLI floor)", *ms(cli)],
        ]))
        st, rd, rc = median(starts), median(reloads), median(cli_reloads)
        res.details.update(startup_s=starts, stop_s=stops, reload_s=reloads,
                           cli_reload_s=cli_reloads, cli_ping_s=cli)
        res.add("start-up of one instance, spawn -> READY=1, median", "ms", 1000 * st, None)
        res.add(f"rolling reload of {k} instances (notify), request -> reply, median", "ms",
                1000 * rd, None)
        res.add(f"reload / ({k} x start-up)", "ratio", rd / (k * st), None,
                target="<= 1.10", met=rd <= 1.1 * k * st)
        res.add(f"procsup reload CLI, {k} instances, spawn -> exit, median", "ms", 1000 * rc,
                None)
        res.add(f"CLI reload / ({k} x start-up)", "ratio", rc / (k * st), None)
    print(res.summary())
    res.save(args.json)


if __name__ == "__main__":
    main()
