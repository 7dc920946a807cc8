"""Durations as policies write them: `72h`, `30m`, `1h30m`, `7d`, `90s`.

Go's `time.ParseDuration` has no days and accepts fractions; policy authors think in days and
whole units, so this accepts `<n>d<n>h<n>m<n>s` with each unit at most once, largest first.
"""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")

ACCEPTED = "a duration such as 72h, 30m, 1h30m or 7d (units d, h, m, s, largest first)"


def parse_duration(value: str) -> timedelta:
    """`"1h30m"` -> `timedelta(hours=1, minutes=30)`; ValueError saying what is accepted otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"expected {ACCEPTED}, got {value!r}")
    text = value.strip()
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{value!r} is not {ACCEPTED}")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if duration <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero")
    return duration


def format_duration(duration: timedelta) -> str:
    """The inverse of `parse_duration`, largest units first, whole seconds: `1d2h`, `45m`, `0s`."""
    total = max(int(duration.total_seconds()), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s"))
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    return text or "0s"
