"""parse_time: the one reader of RFC 3339 stamps (metadata, status, ledgers, woken-at, --now)."""

from datetime import UTC, datetime, timedelta

import pytest

from controller.engine.timestamps import parse_time

NOON = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-10T12:00:00Z", NOON),
        ("2026-11-10T12:00:00z", NOON),
        (" 2026-11-10T12:00:00Z\n", NOON),
        ("2026-11-10T13:00:00+01:00", NOON),
        ("2026-11-10T07:00:00-05:00", NOON),
        ("2026-11-10T12:00:00", NOON),  # no offset: UTC, never the machine's local time
        ("2026-11-10T12:00:00.250000Z", NOON + timedelta(milliseconds=250)),
        ("2026-11-10", NOON - timedelta(hours=12)),
        ("", None),
        (None, None),
        (1795456800, None),
        ("not a time", None),
        ("2026-13-01T00:00:00Z", None),
    ],
)
def test_parse_time(value, expected):
    parsed = parse_time(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC

