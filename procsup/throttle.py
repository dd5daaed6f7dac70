"""Which warnings about misbehaving peers get logged (layer 1: pure, imports nothing).

A control client that sends garbage in a loop must not be able to flood the daemon log: the
fault-injection run of issue 11 had 6,224 lines in 20 s from bad requests. `Throttle` lets the
first few events of each kind from each peer uid through per window and counts the rest, for
one summary line when the window ends. Time is an argument, so it is tested with tables;
`control` owns the log and the timers.
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
