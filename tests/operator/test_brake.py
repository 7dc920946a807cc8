"""The safety brake: rolling-window counting, with time passed in."""

from __future__ import annotations

import pytest

from controller.operator.brake import Brake


@pytest.mark.parametrize(
    ("limit", "attempts_at", "expected"),
    [
        # All in the same instant: exactly `limit` pass.
        (3, [0, 0, 0, 0, 0], [True, True, True, False, False]),
        # The window rolls: an action 60 s after the first frees its slot.
        (2, [0, 10, 59.9, 60, 70, 70.1], [True, True, False, True, True, False]),
        # Spread out evenly at the limit's pace: never held back.
        (2, [0, 30, 60, 90, 120], [True, True, True, True, True]),
        # A limit of one.
        (1, [0, 1, 60, 60], [True, False, True, False]),
    ],
)
def test_try_acquire_allows_at_most_limit_per_window(limit, attempts_at, expected):
    brake = Brake(limit=limit, window=60)
    assert [brake.try_acquire(t) for t in attempts_at] == expected


@pytest.mark.parametrize(
    ("granted_at", "now", "remaining", "next_free_at"),
    [
        ([], 5, 3, 5),
        ([0], 5, 2, 5),
        ([0, 1, 2], 5, 0, 60),
        ([0, 1, 2], 60, 1, 60),
        ([0, 1, 2], 200, 3, 200),
    ],
)
def test_remaining_and_next_free_at(granted_at, now, remaining, next_free_at):
    brake = Brake(limit=3, window=60)
    for t in granted_at:
        assert brake.try_acquire(t)
    assert brake.remaining(now) == remaining
    assert brake.next_free_at(now) == next_free_at


@pytest.mark.parametrize(("limit", "window"), [(0, 60), (-1, 60), (5, 0)])
def test_nonsense_configuration_is_refused(limit, window):
    with pytest.raises(ValueError):
        Brake(limit=limit, window=window)


def test_a_burst_of_1000_drains_at_the_configured_rate():
    brake = Brake(limit=60, window=60)
    pending, t, taken_per_minute = 1000, 0.0, {}
    while pending:
        if brake.try_acquire(t):
            pending -= 1
            minute = int(t // 60)
            taken_per_minute[minute] = taken_per_minute.get(minute, 0) + 1
        else:
            t = brake.next_free_at(t)
    assert max(taken_per_minute.values()) == 60
    assert len(taken_per_minute) == 17  # ceil(1000 / 60)
