"""Idle scale-to-zero: endpoints a policy's `spec.idle` selects, whose Prometheus metric stayed
below the threshold for `idleAfter`, are scaled to zero (docs/crds.md#finopspolicy, `spec.idle`).

The decision is deliberately conservative. A workload is idle only when Prometheus has data
covering the whole `idleAfter` window and every sample in it is below the threshold. No data, a
gap, a query error or an unreachable Prometheus all mean "not idle", with the reason logged:
scaling down a busy endpoint because the monitoring broke would be the worst possible failure.

Deciding (`idle_verdict`, `idle_skip_reason`) is pure and takes `now`; `sweep_idle` fetches,
asks, and hands idle workloads to the effector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from controller import constants
from controller.engine import Snapshot, matching_policies
from controller.engine.timestamps import parse_time
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry, effective_labels
from controller.k8s.prometheus import Prometheus, PrometheusError
from controller.k8s.workloads import ApiError, Workloads, object_ref
from controller.operator.effector import Effector, Outcome, current_replicas

log = logging.getLogger(__name__)

MAX_POINTS = 240
"""Samples per range query: fine enough to catch a burst, far below Prometheus' 11,000 cap."""


@dataclass(frozen=True)
class IdleVerdict:
    idle: bool
    reason: str

    def __bool__(self) -> bool:
        return self.idle


def query_step(idle_after: timedelta) -> timedelta:
    """The range-query resolution for a window: whole seconds, at least 1 s, at most MAX_POINTS."""
    return timedelta(seconds=max(1, math.ceil(idle_after.total_seconds() / MAX_POINTS)))


def render_query(template: str, *, namespace: str, name: str) -> str:
    """Fill in `$namespace` and `$name` (longest first, so `$namespace` is never read as `$name`)."""
    return template.replace("$namespace", namespace).replace("$name", name)


def idle_verdict(
    samples: Iterable[tuple[float, float]],
    *,
    threshold: float,
    idle_after: timedelta,
    now: datetime,
    step: timedelta,
) -> IdleVerdict:
    """Idle iff the samples cover `[now - idle_after, now]` without gaps and all are < threshold.

    `samples` are `(unix seconds, value)` from every series of the query, in any order. A gap
    longer than two steps means Prometheus had no value then (target down, series stale): that
    stretch is unknown, so the window is not covered.
    """
    points = sorted(samples)
    if not points:
        return IdleVerdict(False, "no data in Prometheus for the query")
    slack = 2 * step.total_seconds()
    start = (now - idle_after).timestamp()
    first, last = points[0][0], points[-1][0]
    if first > start + slack:
        return IdleVerdict(False, f"data only since {_iso(first)}; idleAfter needs it since {_iso(start)}")
    if last < now.timestamp() - slack:
        return IdleVerdict(False, f"no data since {_iso(last)}")
    for (earlier, _), (later, _) in zip(points, points[1:], strict=False):
        if later - earlier > slack:
            return IdleVerdict(False, f"no data between {_iso(earlier)} and {_iso(later)}")
    peak_at, peak = max(points, key=lambda point: point[1] if not math.isnan(point[1]) else math.inf)
    if math.isnan(peak) or peak >= threshold:
        return IdleVerdict(
            False, f"value {peak:g} at {_iso(peak_at)} is not below the threshold {threshold:g}"
        )
    return IdleVerdict(True, f"below {threshold:g} for {_duration(idle_after)} (peak {peak:g})")


def idle_skip_reason(obj: Mapping[str, Any], *, now: datetime, grace_period: timedelta) -> str | None:
    """Why a workload is not a candidate right now (None: ask Prometheus)."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if metadata.get("deletionTimestamp"):
        return "being deleted"
    if constants.WAKE_ANNOTATION in annotations:
        return "a wake is pending"
    if current_replicas(obj) == 0:
        return "already at zero replicas"
    woken_at = parse_time(annotations.get(constants.WOKEN_AT_ANNOTATION))
    if woken_at is not None and now < woken_at + grace_period:
        until = woken_at + grace_period
        return f"woken at {_iso(woken_at.timestamp())}; grace period until {_iso(until.timestamp())}"
    return None


def hpa_scales_to_zero(hpas: Sequence[Mapping[str, Any]]) -> bool:
    """An HPA with minReplicas 0 (HPAScaleToZero) already owns scaling to zero: leave it alone."""
    return any((hpa.get("spec") or {}).get("minReplicas", 1) == 0 for hpa in hpas)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(delta: timedelta) -> str:
    from controller.engine.durations import format_duration

    return format_duration(delta)


# -- the sweep -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleRule:
    """One policy's `spec.idle`, with what the sweep needs already resolved."""

    policy: str
    kinds: tuple[str, ...]
    matches: Callable[[Mapping[str, Any]], bool]
    """Whether a workload is selected: the policy's match and its idle selector."""
    idle_after: timedelta
    prometheus_url: str
    query: str
    threshold: float


def idle_rules(
    policies: Iterable[Any],
    *,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: frozenset[str] = constants.ALWAYS_EXCLUDED_NAMESPACES,
    kinds: KindRegistry | None = None,
) -> list[IdleRule]:
    """One rule per policy with an `idle` section that says how to measure (`prometheus`)."""
    kinds = kinds or BUILTIN_KINDS
    # The engine says which policies select a workload (with their own GPU resources for gpuOnly),
    # exactly as admission does; the idle selector narrows that to the endpoints it names.
    snapshot = Snapshot(
        policies=tuple(p for p in policies if p.spec.idle is not None),
        namespace_labels=namespace_labels or {},
        kinds=kinds,
        excluded_namespaces=frozenset(excluded_namespaces),
    )
    rules = []
    for policy in snapshot.policies:
        idle = policy.spec.idle
        if idle is None:
            continue
        if idle.prometheus is None:
            log.warning(
                "idle: policy %s has an idle section without prometheus; nothing to measure", policy.name
            )
            continue

        def matches(obj: Mapping[str, Any], *, policy: Any = policy, selector: Any = idle.selector) -> bool:
            if not selector.compiled.matches(effective_labels(obj, kinds)):
                return False
            return any(m.policy is policy for m in matching_policies(obj, snapshot=snapshot))

        rules.append(
            IdleRule(
                policy=policy.name,
                kinds=tuple(idle.kinds),
                matches=matches,
                idle_after=idle.idle_after,
                prometheus_url=idle.prometheus.url,
                query=idle.prometheus.query,
                threshold=idle.prometheus.threshold,
            )
        )
    return rules


def sweep_idle(
    *,
    rules: Sequence[IdleRule],
    workloads: Workloads,
    effector: Effector,
    now: datetime,
    grace_period: timedelta,
    prometheus_timeout: float = 5.0,
    prometheus_url_override: str | None = None,
    on_scaled: Callable[[Outcome], None] | None = None,
    prometheus_for: Callable[..., Prometheus] = Prometheus,
) -> list[Outcome]:
    """One pass: every workload an idle rule selects, judged and, when idle, scaled to zero."""
    outcomes: list[Outcome] = []
    seen: set[str] = set()  # a workload two policies select is judged once, by the first
    clients: dict[str, Prometheus] = {}
    for rule in rules:
        url = prometheus_url_override or rule.prometheus_url
        if url not in clients:
            clients[url] = prometheus_for(url, timeout=prometheus_timeout)
        prometheus = clients[url]
        step = query_step(rule.idle_after)
        for kind in rule.kinds:
            resource = workloads.resolve(kind)
            if resource is None:
                continue
            try:
                objects = workloads.list_objects(resource)
            except ApiError as exc:
                log.warning("idle: cannot list %s: %s", kind, exc)
                continue
            for obj in objects:
                uid = obj["metadata"].get("uid", object_ref(obj))
                if uid in seen or not rule.matches(obj):
                    continue
                seen.add(uid)
                outcome = _judge(
                    obj,
                    rule=rule,
                    prometheus=prometheus,
                    step=step,
                    workloads=workloads,
                    effector=effector,
                    now=now,
                    grace_period=grace_period,
                )
                if outcome is not None:
                    outcomes.append(outcome)
                    if outcome.done and on_scaled is not None:
                        on_scaled(outcome)
    return outcomes


def _judge(
    obj: dict[str, Any],
    *,
    rule: IdleRule,
    prometheus: Prometheus,
    step: timedelta,
    workloads: Workloads,
    effector: Effector,
    now: datetime,
    grace_period: timedelta,
) -> Outcome | None:
    target = object_ref(obj)
    skip = idle_skip_reason(obj, now=now, grace_period=grace_period)
    if skip:
        log.debug("idle: %s skipped: %s", target, skip)
        return None
    metadata = obj["metadata"]
    query = render_query(rule.query, namespace=metadata["namespace"], name=metadata["name"])
    try:
        series = prometheus.query_range(
            query, start=now - rule.idle_after, end=now, step_seconds=step.total_seconds()
        )
    except PrometheusError as exc:
        log.warning("idle: %s is not idle: %s (policy %s)", target, exc, rule.policy)
        return None
    verdict = idle_verdict(
        (s for one in series for s in one.samples),
        threshold=rule.threshold,
        idle_after=rule.idle_after,
        now=now,
        step=step,
    )
    if not verdict:
        log.info("idle: %s is not idle: %s (policy %s)", target, verdict.reason, rule.policy)
        return None
    try:
        hpas = workloads.hpas_targeting(metadata["namespace"], kind=obj["kind"], name=metadata["name"])
    except ApiError as exc:
        log.warning("idle: %s: cannot check for an HPA (%s); not scaling it", target, exc)
        return None
    if hpa_scales_to_zero(hpas):
        log.info("idle: %s left alone: its HPA has minReplicas 0 and scales it to zero itself", target)
        return None
    try:
        return effector.scale_to_zero(
            obj, reason=f"its metric stayed {verdict.reason}, policy {rule.policy}", now=now
        )
    except ApiError as exc:
        # 409: changed since we read it; the next sweep decides again on fresh data.
        log.warning("idle: could not scale %s to zero: %s", target, exc)
        return None
