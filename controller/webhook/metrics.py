"""The webhook's Prometheus metrics (README.md, "Metrics and alerts"), on a registry owned by one
app instance so tests and several apps in one process never collide on the global registry."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from controller.metric_labels import TeamLabels

# Admission latency lives in single milliseconds; the default buckets start at 5 ms.
DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.5, 1.0, 3.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = "comptroller_admission_requests"
REQUESTS_HELP = (
    "Admission requests answered, by operation, workload kind and decision "
    "(validate: allowed|warned|audited|denied|skipped; mutate: mutated|unchanged|skipped; either: error)."
)
REQUEST_LABELS = ["operation", "kind", "decision"]
DURATION = "comptroller_admission_duration_seconds"
DURATION_HELP = "Time spent answering an admission request, from its body received to the response built."
VIOLATIONS = "comptroller_admission_violations_total"
VIOLATIONS_HELP = (
    "Policy violations found in admission requests (Enforce, Warn and Audit alike), by policy, rule and "
    "team (bounded: unlisted teams beyond a few are `other`)."
)


class WebhookMetrics:
    """Counters and the latency histogram of one webhook app."""

    def __init__(self, registry: CollectorRegistry | None = None, *, teams: TeamLabels | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.admissions = AdmissionTally()
        self.registry.register(self.admissions)
        self.teams = teams or TeamLabels()
        self.violations = Counter(
            VIOLATIONS, VIOLATIONS_HELP, ["policy", "rule", "team"], registry=self.registry
        )

    def count_violations(self, violations: Iterable, *, team: str, snapshot: Any = None) -> None:
        """Count one admission request's violations; `snapshot` (its policies and budgets) bounds
        the `team` label (controller.metric_labels)."""
        label = None
        for violation in violations:
            if label is None:
                label = self.teams.label(team or "", snapshot)
            self.violations.labels(violation.policy, violation.rule, label).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class AdmissionTally:
    """`comptroller_admission_requests_total` and `comptroller_admission_duration_seconds`, kept as
    plain numbers and handed to prometheus_client as metric families when scraped.

    They change on every admission request, always on the event loop's thread (the admission
    handlers and /metrics both run there), so they need none of the locks a prometheus_client
    Counter and Histogram take: three per request, which cost more than the rest of the
    bookkeeping on the API server's critical path.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}
        """Per webhook, requests per latency bucket (not cumulative); the last one is +Inf."""
        self.seconds: dict[str, float] = {}
        self.created: dict[tuple[str, ...], float] = {}
        """When each series first counted, exported as `_created` like prometheus_client does."""

    def count(self, operation: str, kind: str, decision: str, webhook: str, seconds: float) -> None:
        """One admission request answered, and how long it took."""
        key = (operation, kind, decision)
        counted = self.requests.get(key)
        if counted is None:
            counted = 0
            self.created[key] = time.time()
        self.requests[key] = counted + 1
        buckets = self.buckets.get(webhook)
        if buckets is None:
            buckets = self.buckets[webhook] = [0] * (len(DURATION_BUCKETS) + 1)
            self.seconds[webhook] = 0.0
            self.created[(webhook,)] = time.time()
        buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1  # the first bound with seconds <= le
        self.seconds[webhook] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=REQUEST_LABELS)
        for labels, count in self.requests.items():
            requests.add_metric(labels, count, created=self.created[labels])
        yield requests
        duration = HistogramMetricFamily(DURATION, DURATION_HELP, labels=["webhook"])
        bounds = [*map(floatToGoString, DURATION_BUCKETS), "+Inf"]
        for webhook, counts in self.buckets.items():
            duration.add_metric(
                [webhook], list(zip(bounds, accumulate(counts), strict=True)), sum_value=self.seconds[webhook]
            )
            # HistogramMetricFamily has no `created`; a Histogram exports this sample beside _sum.
            created = self.created[(webhook,)]
            duration.samples.append(Sample(f"{DURATION}_created", {"webhook": webhook}, created))
        yield duration

    def describe(self) -> Iterator[Metric]:
        """The names, so the registry refuses another metric by the same name."""
        yield CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=REQUEST_LABELS)
        yield HistogramMetricFamily(DURATION, DURATION_HELP, labels=["webhook"])
