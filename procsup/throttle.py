"""What the control server does about misbehaving peers (layer 1: pure, imports nothing).

A control client that sends garbage in a loop must not be able to flood the daemon log, nor
take the daemon's time from real clients: the fault-injection run of issue 11 had 6,224 log
lines in 20 s from bad requests, and `status` slowed to p99 443 ms. `Throttle` lets the first
few warnings of each kind from each peer uid through per window and counts the rest, for one
summary line when the window ends; `Penalty` bars a process that sent too many bad requests,
so that its connections are refused on sight. Time is an argument, so both are tested with
tables; `control` owns the log, the timers and the sockets.
"""

from __future__ import annotations

#: Lines let through per key per window, and the window's length in seconds.
BURST = 5
WINDOW = 10.0

Key = tuple[str, int]  # (the kind of trouble, e.g. "bad requests"; the peer's uid)


class Throttle:
    """Which log lines about bad clients are written (pure: time is an argument).

    Per key (a kind of trouble and the peer's uid) the first `burst` events of a window of
    `window` seconds are allowed; the window starts with its first event. The rest are counted,
    and `expire(now)` ends the windows that are over, returning (key, suppressed) for those
    that held lines back, for a summary line each.
    """

    def __init__(self, burst: int = BURST, window: float = WINDOW) -> None:
        self.burst = burst
        self.window = window
        self._windows: dict[Key, list[float]] = {}  # key -> [start, allowed, held]

    def allow(self, key: Key, now: float) -> bool:
        """Whether to log this event; call `expire(now)` first so that an old window ends."""
        w = self._windows.get(key)
        if w is None:
            self._windows[key] = [now, 1, 0]
            return True
        if w[1] < self.burst:
            w[1] += 1
            return True
        w[2] += 1
        return False

    def expire(self, now: float) -> list[tuple[Key, int]]:
        """End the windows older than `window`; (key, events held back) of those that held any."""
        over = [k for k, w in self._windows.items() if now - w[0] >= self.window]
        done = [(k, int(self._windows.pop(k)[2])) for k in over]
        return [(k, n) for k, n in done if n]

    def next_end(self) -> float | None:
        """When the earliest window holding lines back ends (None: none does)."""
        ends = [w[0] + self.window for w in self._windows.values() if w[2]]
        return min(ends) if ends else None


#: Bad requests from one process within PENALTY_WINDOW seconds after which its connections are
#: refused on accept until the window ends.
PENALTY_AFTER = 20
PENALTY_WINDOW = 10.0


class Penalty:
    """Which client processes to refuse on sight (pure: time is an argument).

    A process (keyed by pid and uid, from SO_PEERCRED) that sent `after` bad requests within a
    window of `window` seconds (from its first) is `barred` until that window ends: its new
    connections can then be refused without a transport or a task, so a process sending
    garbage in a loop costs the daemon almost nothing and cannot crowd out real clients. A
    real client is a new process each time (`procsup ...`), or one that sends good requests.
    At most `limit` processes are remembered (the oldest windows are forgotten first), so a
    storm of processes cannot grow this without bound.
    """

    def __init__(self, after: int = PENALTY_AFTER, window: float = PENALTY_WINDOW,
                 limit: int = 1024) -> None:
        self.after = after
        self.window = window
        self.limit = limit
        self._seen: dict[tuple[int, int], list[float]] = {}  # (pid, uid) -> [start, count]

    def bad(self, pid: int, uid: int, now: float) -> None:
        """Count one bad request of the process."""
        key = (pid, uid)
        w = self._seen.get(key)
        if w is None or now - w[0] >= self.window:
            self._seen.pop(key, None)
            if len(self._seen) >= self.limit:
                del self._seen[next(iter(self._seen))]  # insertion order: the oldest window
            self._seen[key] = [now, 1]
        else:
            w[1] += 1

    def barred(self, pid: int, uid: int, now: float) -> bool:
        """Whether the process's connections are to be refused now."""
        w = self._seen.get((pid, uid))
        return w is not None and w[1] >= self.after and now - w[0] < self.window
