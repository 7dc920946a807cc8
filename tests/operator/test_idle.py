"""Idle decisions: coverage of the window, the threshold, skips; no cluster, no Prometheus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller import constants
from controller.operator.idle import (
    hpa_scales_to_zero,
    idle_skip_reason,
    idle_verdict,
    query_step,
    render_query,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
T = NOW.timestamp()
WINDOW = timedelta(minutes=30)
STEP = timedelta(seconds=15)


def every_step(value_at, *, since=T - 1800, until=T, step=15):
    """Samples every `step` seconds over [since, until], valued by `value_at(t)`."""
    points, t = [], since
    while t <= until:
        points.append((t, value_at(t)))
        t += step
    return points


@pytest.mark.parametrize(
    ("samples", "idle", "reason_has"),
    [
        pytest.param(every_step(lambda t: 2.0), True, "below 5 for 30m", id="low-all-window"),
        pytest.param(every_step(lambda t: 60.0), False, "not below the threshold", id="busy"),
        pytest.param(every_step(lambda t: 5.0), False, "not below", id="exactly-at-threshold"),
        pytest.param(every_step(lambda t: 90.0 if t == T - 900 else 1.0), False, "not below", id="one-spike"),
        pytest.param([], False, "no data", id="no-data"),
        pytest.param(every_step(lambda t: 1.0, since=T - 600), False, "data only since", id="young-series"),
        pytest.param(every_step(lambda t: 1.0, until=T - 300), False, "no data since", id="stale"),
        pytest.param(
            every_step(lambda t: 1.0, until=T - 1000) + every_step(lambda t: 1.0, since=T - 800),
            False,
            "no data between",
            id="gap-in-the-middle",
        ),
        pytest.param(every_step(lambda t: float("nan")), False, "not below", id="nan-is-not-idle"),
        # Slack of two steps at either end: Prometheus' step alignment never flips the verdict.
        pytest.param(
            every_step(lambda t: 1.0, since=T - 1772, until=T - 28, step=16), True, "below", id="slack"
        ),
        # Several series (one per pod): all must be low.
        pytest.param(
            every_step(lambda t: 1.0) + every_step(lambda t: 40.0), False, "not below", id="one-busy-pod"
        ),
        pytest.param(
            every_step(lambda t: 1.0) + every_step(lambda t: 3.0), True, "peak 3", id="two-idle-pods"
        ),
    ],
)
def test_idle_verdict(samples, idle, reason_has):
    verdict = idle_verdict(samples, threshold=5, idle_after=WINDOW, now=NOW, step=STEP)
    assert bool(verdict) is idle
    assert reason_has in verdict.reason


def test_idle_verdict_ignores_sample_order():
    samples = every_step(lambda t: 1.0)
    assert idle_verdict(reversed(samples), threshold=5, idle_after=WINDOW, now=NOW, step=STEP)


@pytest.mark.parametrize(
    ("idle_after", "step"),
    [
        (timedelta(seconds=10), 1),
        (timedelta(minutes=30), 8),
        (timedelta(hours=4), 60),
        (timedelta(days=2), 720),
    ],
)
def test_query_step_bounds_the_number_of_points(idle_after, step):
    assert query_step(idle_after) == timedelta(seconds=step)
    assert idle_after / query_step(idle_after) <= 240


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            'avg(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace", pod=~"$name-.*"})',
            'avg(DCGM_FI_DEV_GPU_UTIL{namespace="ml-dev", pod=~"llm-.*"})',
        ),
        ("up{job='$name'}", "up{job='llm'}"),
        ("no_placeholders", "no_placeholders"),
    ],
)
def test_render_query(template, expected):
    assert render_query(template, namespace="ml-dev", name="llm") == expected


def deployment(*, replicas=2, annotations=None, deleting=False):
    metadata = {"name": "llm", "namespace": "ml-dev", "annotations": annotations or {}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-22T11:00:00Z"
    return {"kind": "Deployment", "metadata": metadata, "spec": {"replicas": replicas}}


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (deployment(), None),
        (deployment(replicas=0), "already at zero"),
        (deployment(deleting=True), "being deleted"),
        (deployment(annotations={constants.WAKE_ANNOTATION: ""}), "wake is pending"),
        (
            deployment(annotations={constants.WOKEN_AT_ANNOTATION: "2026-11-22T11:30:00Z"}),
            "grace period until",
        ),
        (deployment(annotations={constants.WOKEN_AT_ANNOTATION: "2026-11-22T10:59:59Z"}), None),
        (deployment(annotations={constants.WOKEN_AT_ANNOTATION: "garbage"}), None),
        ({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {}}, None),  # replicas unset = 1
    ],
)
def test_idle_skip_reason(obj, reason):
    got = idle_skip_reason(obj, now=NOW, grace_period=timedelta(hours=1))
    if reason is None:
        assert got is None
    else:
        assert reason in got


@pytest.mark.parametrize(
    ("hpas", "expected"),
    [
        ([], False),
        ([{"spec": {"minReplicas": 2}}], False),
        ([{"spec": {}}], False),
        ([{"spec": {"minReplicas": 0}}], True),
    ],
)
def test_hpa_scales_to_zero(hpas, expected):
    assert hpa_scales_to_zero(hpas) is expected
