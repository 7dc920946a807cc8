"""GPU-hour budgets: calendar periods, which workloads draw on a budget, and what still fits.

The operator meters usage into `GPUBudget.status`; the engine only reads it (as `BudgetState`).
Both use `period_bounds` so the admission check and the metering agree on when a period ends.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.engine.timestamps import parse_time


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The calendar period (UTC) containing `now`: a day, an ISO week (from Monday), or a month."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "Daily":
        return day, day + timedelta(days=1)
    if period == "Weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "Monthly":
        start = day.replace(day=1)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        end = start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"unknown budget period {period!r}; use Daily, Weekly or Monthly")


def current_usage(budget: Any, now: datetime) -> tuple[float, datetime]:
    """`(GPU-hours used this period, end of the period)` at `now`.

    A status whose period ended before `now` describes a closed period the operator has not rolled
    over yet: the new period starts from zero, so stale usage never blocks admissions.
    """
    _, end = period_bounds(budget.spec.period, now)
    state = budget.state
    recorded_end = parse_time(state.period_end)
    if recorded_end is not None and recorded_end <= now:
        return 0.0, end
    return float(state.used_gpu_hours), recorded_end or end


def hours_left(until: datetime | None, now: datetime, period_end: datetime) -> float:
    """Hours a workload may still run in this period: until its expires_at, else (none, or one
    already past, which nothing may act on) until the period ends."""
    end = min(until, period_end) if until is not None and until > now else period_end
    return hours_between(now, end)


def hours_between(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0) / 3600.0


def max_gpus_for(remaining: float, hours: float) -> int:
    """The most GPUs that run for `hours` within `remaining` GPU-hours."""
    if hours <= 0:
        return 0
    return max(int(math.floor(remaining / hours + 1e-9)), 0)
