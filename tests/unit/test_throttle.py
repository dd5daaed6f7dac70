"""`throttle.Throttle`: which warnings about bad clients are logged, replayed as tables."""

from __future__ import annotations

import pytest

from procsup.throttle import Throttle

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
