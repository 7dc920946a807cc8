"""The safety brake: a rolling-window rate limit on destructive actions.

A misconfigured policy (a typo in `expiry.key`, a clock jump, a date-format change) can make a
whole cluster look expired at once. The brake caps how many terminations the operator performs in
any rolling minute, so such a mistake costs a few workloads and a loud log line, not a cluster.
Work the brake holds back is not lost: it is still due at the next sweep.

Pure: the caller passes a monotonic `now` (seconds), so the brake is tested without sleeping.
"""

from __future__ import annotations

from collections import deque


class Brake:
    """At most `limit` actions in any window of `window` seconds."""

    def __init__(self, *, limit: int, window: float = 60.0) -> None:
        if limit < 1:
            raise ValueError(f"the brake's limit must be at least 1 action per window, got {limit}")
        if window <= 0:
            raise ValueError(f"the brake's window must be positive, got {window}")
        self.limit = limit
        self.window = window
        self._granted: deque[float] = deque()

    def _forget_before(self, now: float) -> None:
        while self._granted and self._granted[0] <= now - self.window:
            self._granted.popleft()

    def remaining(self, now: float) -> int:
        """How many actions may still be taken right now."""
        self._forget_before(now)
        return self.limit - len(self._granted)

    def try_acquire(self, now: float) -> bool:
        """Take one action's worth of budget if there is any; False means: hold back."""
        if self.remaining(now) <= 0:
            return False
        self._granted.append(now)
        return True

    def next_free_at(self, now: float) -> float:
        """When the next action will be allowed (`now` if one is allowed already)."""
        if self.remaining(now) > 0:
            return now
        return self._granted[0] + self.window
