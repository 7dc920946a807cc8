"""The webhook's Prometheus metrics (SPEC section 8), on a registry owned by one app instance so
tests and several apps in one process never collide on the global registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Admission latency lives in single milliseconds; the default buckets start at 5 ms.
DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.5, 1.0, 3.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class WebhookMetrics:
    """Counters and the latency histogram of one webhook app."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "comptroller_admission_requests_total",
            "Admission requests answered, by operation, workload kind and decision "
            "(validate: allowed|warned|audited|denied|skipped; mutate: mutated|unchanged|skipped; "
            "either: error).",
            ["operation", "kind", "decision"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "comptroller_admission_duration_seconds",
            "Time spent answering an admission request, from its body received to the response built.",
            ["webhook"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.violations = Counter(
            "comptroller_policy_violations_total",
            "Policy violations found at admission (Enforce, Warn and Audit alike), by policy, rule and team.",
            ["policy", "rule", "team"],
            registry=self.registry,
        )

        # Label children by label values: `labels()` validates and locks on every call, which
        # costs more than the increment itself on the admission path.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def count_request(self, *, operation: str, kind: str, decision: str, webhook: str, seconds: float) -> None:
        """One admission request answered, and how long it took."""
        self._child(self.requests, operation, kind, decision).inc()
        self._child(self.duration, webhook).observe(seconds)

    def count_violations(self, violations: Iterable, *, team: str) -> None:
        for violation in violations:
            self._child(self.violations, violation.policy, violation.rule, team or "").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
