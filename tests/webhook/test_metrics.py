"""The admission tally exports exactly what prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from controller.webhook.metrics import (
    DURATION,
    DURATION_BUCKETS,
    DURATION_HELP,
    REQUESTS,
    REQUESTS_HELP,
    AdmissionTally,
)

requests = st.lists(
    st.tuples(
        st.sampled_from(["CREATE", "UPDATE"]),
        st.sampled_from(["Pod", "Deployment"]),
        st.sampled_from(["allowed", "denied", "error"]),
        st.sampled_from(["validate", "mutate"]),
        # Bucket bounds themselves, and values around them, as well as anything else.
        st.one_of(st.sampled_from(DURATION_BUCKETS), st.floats(0, 10, allow_nan=False)),
    ),
    max_size=40,
)


def _lines(registry: CollectorRegistry) -> set[str]:
    """The exposition, with `_created` timestamps (when a series first counted) left out."""
    lines = generate_latest(registry).decode().splitlines()
    return {line.rpartition(" ")[0] if "_created" in line else line for line in lines}


@settings(max_examples=200, deadline=None)
@given(requests)
def test_the_tally_exports_what_prometheus_client_would(observed):
    ours = CollectorRegistry()
    tally = AdmissionTally()
    ours.register(tally)
    reference = CollectorRegistry()
    counter = Counter(REQUESTS, REQUESTS_HELP, ["operation", "kind", "decision"], registry=reference)
    histogram = Histogram(DURATION, DURATION_HELP, ["webhook"], buckets=DURATION_BUCKETS, registry=reference)
    for operation, kind, decision, webhook, seconds in observed:
        tally.count(operation, kind, decision, webhook, seconds)
        counter.labels(operation, kind, decision).inc()
        histogram.labels(webhook).observe(seconds)
    assert _lines(ours) == _lines(reference)


def test_a_latency_on_a_bound_counts_in_that_bucket():
    tally = AdmissionTally()
    tally.count("CREATE", "Pod", "allowed", "validate", 0.001)
    registry = CollectorRegistry()
    registry.register(tally)
    text = generate_latest(registry).decode()
    assert f'{DURATION}_bucket{{le="0.0005",webhook="validate"}} 0.0' in text
    assert f'{DURATION}_bucket{{le="0.001",webhook="validate"}} 1.0' in text
