"""Reading the RFC 3339 timestamps Kubernetes and Comptroller write (`2026-11-23T18:00:00Z`).

One lenient reader for every stamp the controller takes back in: object metadata and status
(`creationTimestamp`, `startTime`, `finishedAt`), budget periods, ledgers, the `woken-at`
annotation and `comptroller check --now`. Pure parsing; no clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime (None for missing or unparsable values).

    A stamp without an offset is taken as UTC, as the API server means it, never as local time.
    """
    if not value or not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
