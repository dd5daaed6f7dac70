"""`throttle.Throttle`: which warnings about bad clients are logged, replayed as tables."""

from __future__ import annotations

import pytest

from procsup.throttle import Penalty, Throttle

BAD = ("bad requests", 1000)
OTHER = ("bad requests", 0)


@pytest.mark.parametrize(
    ("events", "logged", "summaries"),
    [
        # (time, key) in order -> which were logged, and the summaries expire() gave on the way
        ([(0.0, BAD)] * 3, [True] * 3, []),
        ([(0.0, BAD)] * 7, [True] * 5 + [False] * 2, []),
        # the window ends 10 s after its first event: the held ones are summarised then
        ([(0.0, BAD)] * 7 + [(10.0, BAD)], [True] * 5 + [False] * 2 + [True], [(BAD, 2)]),
        ([(0.0, BAD)] * 7 + [(9.9, BAD)], [True] * 5 + [False] * 3, []),
        # each uid has its own window
        ([(0.0, BAD)] * 6 + [(1.0, OTHER)], [True] * 5 + [False, True], []),
        # a window that held nothing back ends without a summary
        ([(0.0, BAD), (20.0, BAD)], [True, True], []),
    ],
)
def test_throttle(events: list[tuple[float, tuple[str, int]]], logged: list[bool],
                  summaries: list[tuple[tuple[str, int], int]]) -> None:
    t = Throttle(burst=5, window=10.0)
    got, summed = [], []
    for now, key in events:
        summed.extend(t.expire(now))
        got.append(t.allow(key, now))
    assert got == logged
    assert summed == summaries


def test_next_end_is_when_a_summary_is_due() -> None:
    t = Throttle(burst=1, window=10.0)
    assert t.allow(BAD, 3.0)
    assert t.next_end() is None  # nothing held back: no summary to write
    assert not t.allow(BAD, 4.0)
    assert t.next_end() == 13.0
    assert t.expire(12.9) == []
    assert t.expire(13.0) == [(BAD, 1)]
    assert t.next_end() is None


@pytest.mark.parametrize(
    ("bad", "asked", "barred"),
    [
        # (times of bad requests from pid 7), time asked -> barred?
        ([0.0] * 19, 1.0, False),
        ([0.0] * 20, 1.0, True),
        ([0.0] * 20, 9.9, True),
        ([0.0] * 20, 10.0, False),  # the window is over
        ([0.0] * 10 + [10.0] * 10, 10.5, False),  # a new window began at 10.0: 10 in it
        ([0.0] * 10 + [5.0] * 10, 9.0, True),
    ],
)
def test_penalty(bad: list[float], asked: float, barred: bool) -> None:
    p = Penalty(after=20, window=10.0)
    for t in bad:
        p.bad(7, 1000, t)
    assert p.barred(7, 1000, asked) is barred
    assert not p.barred(8, 1000, asked)  # another process
    assert not p.barred(7, 0, asked)  # another user with a reused pid


def test_penalty_remembers_a_bounded_number_of_processes() -> None:
    p = Penalty(after=1, window=10.0, limit=3)
    for pid in range(5):
        p.bad(pid, 0, float(pid))
    assert [p.barred(pid, 0, 5.0) for pid in range(5)] == [False, False, True, True, True]
