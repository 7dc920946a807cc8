from datetime import timedelta

import pytest

from controller.engine.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72h", timedelta(hours=72)),
        ("30m", timedelta(minutes=30)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("90s", timedelta(seconds=90)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1.5h", "30m1h", "1w", "-1h", "0m", "72", "1 h", "1H"])
def test_parse_duration_rejects_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="72h, 30m, 1h30m or 7d|longer than zero"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [(timedelta(hours=72), "3d"), (timedelta(hours=1, minutes=30), "1h30m"), (timedelta(0), "0s")],
)
def test_format_duration_round_trips(delta, text):
    assert format_duration(delta) == text
    if delta:
        assert parse_duration(text) == delta
