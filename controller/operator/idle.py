"""Idle GPUs: workloads a policy's `spec.idle` selects whose Prometheus metric stayed below the
threshold for `idleAfter` (docs/crds.md#finopspolicy, `spec.idle`).

What happens then depends on the kind and the policy's `action`:

    endpoints (Deployment, StatefulSet)   scaled to zero at once (`action: Notify`: notice only)
    batch (Job, JobSet, PyTorchJob,       a `GPUIdle` notice (Event + annotation); with `action:
      TFJob, MPIJob, RayJob)              Suspend`, suspended `notifyBefore` later if still idle

A batch workload is never deleted: suspending it (`spec.suspend`, or `spec.runPolicy.suspend` for
the Kubeflow jobs) makes its controller stop the pods and keep the object, and `comptroller wake`
resumes it. Suspension needs the GPUs idle for the whole of `idleAfter` before the notice and the
whole notice period after it (one window, queried at once); a busy moment, or a gap, clears the
notice and a later idle stretch starts over with a fresh one. A workload Kueue admits
(`kueue.x-k8s.io/queue-name`) only gets the notice: Kueue owns its suspension and would undo ours.

The decision is deliberately conservative. A workload is idle only when Prometheus has data
covering the whole window and every sample in it is below the threshold. No data, a gap, a query
error or an unreachable Prometheus all mean "not idle", with the reason logged: stopping busy
work because the monitoring broke would be the worst possible failure.

Deciding (`idle_verdict`, `idle_skip_reason`, `batch_skip_reason`, `effective_action`) is pure
and takes `now`; `sweep_idle` fetches, asks, and hands idle workloads to the effector. In dry-run
the notices and suspensions the effector only reports are remembered in `memory` (by uid), so a
dry run tells the same story, once, that a real one would.
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
from controller.operator.effector import Effector, Outcome, current_replicas, is_suspended, stamp

log = logging.getLogger(__name__)

MAX_POINTS = 240
"""Samples per range query: fine enough to catch a burst, far below Prometheus' 11,000 cap."""
DEFAULT_IDLE_QUERY = 'max(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace", pod=~"$name-.*"})'
"""When a policy gives no query: the busiest GPU of the workload's pods, as NVIDIA's DCGM exporter
labels them in Kubernetes mode (`namespace`, `pod`, `container`; scraped with honor_labels, else
Prometheus renames them `exported_*` and the policy must say so). Every kind's pods are named after
it: `<job>-<hash>`, `<pytorchjob>-worker-0`, `<jobset>-<job>-0-0-<hash>`, `<rayjob>-<hash>-head-...`.
`max`, not `avg`: the workload is idle only when every one of its GPUs is. A namesake whose name
extends this one's (`train-big` for `train`) matches too: with GPUs of its own the workload can only
look busier; without any, it is judged on the namesake's (name jobs apart, or give a query)."""
ENDPOINT_KINDS = frozenset({"Deployment", "StatefulSet"})
BATCH_FINISHED_CONDITIONS = frozenset({"Complete", "Completed", "Succeeded", "Failed"})
"""Condition types that mark a Job, JobSet or Kubeflow job finished when True (as in runs.py)."""
RAY_FINISHED = frozenset({"Complete", "Failed"})


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
    """Why an endpoint is not a candidate right now (None: ask Prometheus)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    reason = _going_or_waking(obj)
    if reason:
        return reason
    if current_replicas(obj) == 0:
        return "already at zero replicas"
    return _grace_reason(annotations, now=now, grace_period=grace_period)


def batch_skip_reason(obj: Mapping[str, Any], *, now: datetime, grace_period: timedelta) -> str | None:
    """Why a batch workload is not a candidate right now (None: ask Prometheus).

    Finished runs hold no GPU (and are the bulk of the Jobs in a cluster: no query for them). A Job
    that a JobSet, a RayJob or another controller runs is judged at that controller, if at all:
    suspending it underneath would be undone, or break its owner; a CronJob's Job is a run of its own.
    """
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    reason = _going_or_waking(obj)
    if reason:
        return reason
    if is_suspended(obj):
        return "suspended"
    if batch_finished(obj):
        return "finished"
    for ref in metadata.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") != "CronJob":
            return f"run by its {ref.get('kind')} {ref.get('name')}"
    return _grace_reason(annotations, now=now, grace_period=grace_period)


def _going_or_waking(obj: Mapping[str, Any]) -> str | None:
    """What rules out any workload: it is being deleted, or someone asked to wake it."""
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return "being deleted"
    if constants.WAKE_ANNOTATION in (metadata.get("annotations") or {}):
        return "a wake is pending"
    return None


def _grace_reason(annotations: Mapping[str, str], *, now: datetime, grace_period: timedelta) -> str | None:
    woken_at = parse_time(annotations.get(constants.WOKEN_AT_ANNOTATION))
    if woken_at is not None and now < woken_at + grace_period:
        until = woken_at + grace_period
        return f"woken at {_iso(woken_at.timestamp())}; grace period until {_iso(until.timestamp())}"
    return None


def batch_finished(obj: Mapping[str, Any]) -> bool:
    """A Job's Complete/Failed, a JobSet's Completed/Failed, a Kubeflow job's Succeeded/Failed
    condition, or a RayJob's `jobDeploymentStatus` Complete/Failed."""
    status = obj.get("status") or {}
    if obj.get("kind") == "RayJob":
        return status.get("jobDeploymentStatus") in RAY_FINISHED
    return any(
        c.get("type") in BATCH_FINISHED_CONDITIONS and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def effective_action(action: str | None, kind: str) -> str:
    """`scale` | `notify` | `suspend`: what the policy's `action` means for one kind.

    Endpoints keep scale-to-zero unless the policy asks for notices only; batch workloads are only
    notified unless the policy opts in to `Suspend` (jobs that checkpoint).
    """
    if kind in ENDPOINT_KINDS:
        return "notify" if action == "Notify" else "scale"
    return "suspend" if action == "Suspend" else "notify"


@dataclass(frozen=True)
class Notice:
    """The idle notice a workload carries (from its annotations)."""

    notified_at: datetime | None
    suspend_at: datetime | None
    suspended_at: datetime | None

    @classmethod
    def of(cls, annotations: Mapping[str, str]) -> Notice:
        return cls(
            notified_at=parse_time(annotations.get(constants.IDLE_NOTIFIED_ANNOTATION)),
            suspend_at=parse_time(annotations.get(constants.IDLE_SUSPEND_AT_ANNOTATION)),
            suspended_at=parse_time(annotations.get(constants.IDLE_SUSPENDED_ANNOTATION)),
        )

    @property
    def given(self) -> bool:
        return self.notified_at is not None or self.suspend_at is not None


def suspend_window(
    notice: Notice, *, idle_after: timedelta, notify_before: timedelta, now: datetime
) -> timedelta:
    """The window a suspension is judged on: `idleAfter` before the notice, and all the time since.

    A busy moment anywhere in it (which the sweeps in between may have missed: the operator was
    down, or the burst fell between two sweeps) keeps the workload running. The notice's stamp is
    in whole seconds and the notice was judged within the second after it: the window starts
    there, never before the stretch the notice itself found covered by data (a window reaching
    past the first samples would clear the notice and give a new one, with a later suspension).
    """
    start = notice.notified_at or (notice.suspend_at - notify_before if notice.suspend_at else now)
    start = min(start + timedelta(seconds=1), now)
    return max(idle_after, now - start + idle_after)


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
    action: str | None = None
    """The policy's `action` (None, `Notify`, `Suspend`); `effective_action` says what it means per kind."""
    notify_before: timedelta = timedelta(minutes=15)


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
    # exactly as admission does; the idle selector narrows that to the workloads it names.
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
                query=idle.prometheus.query or DEFAULT_IDLE_QUERY,
                threshold=idle.prometheus.threshold,
                action=idle.action,
                notify_before=idle.notify_before,
            )
        )
    return rules


def api_group_of(kind: str) -> str:
    """The API group the idle loop lists a kind in (endpoints are `apps`)."""
    if kind in constants.SUSPENDABLE_KINDS:
        return constants.SUSPENDABLE_KINDS[kind][0]
    return "apps"


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
    on_suspended: Callable[[Outcome], None] | None = None,
    prometheus_for: Callable[..., Prometheus] = Prometheus,
    memory: dict[str, dict[str, str]] | None = None,
) -> list[Outcome]:
    """One pass: every workload an idle rule selects, judged and, when idle, acted on.

    `memory` (dry-run): the annotations the effector would have written, by uid, kept by the caller
    from one sweep to the next; entries of workloads no longer listed are dropped.
    """
    outcomes: list[Outcome] = []
    seen: set[str] = set()  # a workload two policies select is judged once, by the first
    listed: set[str] = set()
    clients: dict[str, Prometheus] = {}
    for rule in rules:
        url = prometheus_url_override or rule.prometheus_url
        if url not in clients:
            clients[url] = prometheus_for(url, timeout=prometheus_timeout)
        judge = _Judge(
            rule=rule,
            prometheus=clients[url],
            workloads=workloads,
            effector=effector,
            now=now,
            grace_period=grace_period,
            memory=memory,
        )
        for kind in rule.kinds:
            resource = workloads.resolve(kind, group=api_group_of(kind))
            if resource is None:
                log.debug("idle: %s is not served by this cluster; policy %s skips it", kind, rule.policy)
                continue
            try:
                objects = workloads.list_objects(resource)
            except ApiError as exc:
                log.warning("idle: cannot list %s: %s", kind, exc)
                continue
            for obj in objects:
                uid = obj["metadata"].get("uid", object_ref(obj))
                listed.add(uid)
                if uid in seen or not rule.matches(obj):
                    continue
                seen.add(uid)
                outcome = judge(obj, uid=uid)
                if outcome is None:
                    continue
                outcomes.append(outcome)
                if outcome.done and outcome.action == "scale" and on_scaled is not None:
                    on_scaled(outcome)
                if outcome.done and outcome.action == "suspend" and on_suspended is not None:
                    on_suspended(outcome)
    if memory is not None:
        for uid in set(memory) - listed:
            del memory[uid]
    return outcomes


@dataclass
class _Judge:
    """Judges the workloads of one rule: measures, decides, and hands the decision to the effector."""

    rule: IdleRule
    prometheus: Prometheus
    workloads: Workloads
    effector: Effector
    now: datetime
    grace_period: timedelta
    memory: dict[str, dict[str, str]] | None

    def __call__(self, obj: dict[str, Any], *, uid: str) -> Outcome | None:
        action = effective_action(self.rule.action, obj["kind"])
        if action == "scale":
            return self._scale(obj)
        return self._notice(obj, uid=uid, action=action)

    def _measure(self, obj: Mapping[str, Any], window: timedelta) -> IdleVerdict | None:
        """The verdict on `window` up to now; None when Prometheus could not answer."""
        metadata = obj["metadata"]
        query = render_query(self.rule.query, namespace=metadata["namespace"], name=metadata["name"])
        step = query_step(window)
        try:
            series = self.prometheus.query_range(
                query, start=self.now - window, end=self.now, step_seconds=step.total_seconds()
            )
        except PrometheusError as exc:
            log.warning("idle: %s is not idle: %s (policy %s)", object_ref(obj), exc, self.rule.policy)
            return None
        return idle_verdict(
            (s for one in series for s in one.samples),
            threshold=self.rule.threshold,
            idle_after=window,
            now=self.now,
            step=step,
        )

    # -- endpoints: scale to zero ------------------------------------------------------------------

    def _scale(self, obj: dict[str, Any]) -> Outcome | None:
        target = object_ref(obj)
        skip = idle_skip_reason(obj, now=self.now, grace_period=self.grace_period)
        if skip:
            log.debug("idle: %s skipped: %s", target, skip)
            return None
        verdict = self._measure(obj, self.rule.idle_after)
        if verdict is None:
            return None
        if not verdict:
            log.info("idle: %s is not idle: %s (policy %s)", target, verdict.reason, self.rule.policy)
            return None
        metadata = obj["metadata"]
        try:
            hpas = self.workloads.hpas_targeting(
                metadata["namespace"], kind=obj["kind"], name=metadata["name"]
            )
        except ApiError as exc:
            log.warning("idle: %s: cannot check for an HPA (%s); not scaling it", target, exc)
            return None
        if hpa_scales_to_zero(hpas):
            log.info("idle: %s left alone: its HPA has minReplicas 0 and scales it to zero itself", target)
            return None
        try:
            return self.effector.scale_to_zero(
                obj, reason=f"its metric stayed {verdict.reason}, policy {self.rule.policy}", now=self.now
            )
        except ApiError as exc:
            # 409: changed since we read it; the next sweep decides again on fresh data.
            log.warning("idle: could not scale %s to zero: %s", target, exc)
            return None

    # -- notices, and suspension of batch workloads -----------------------------------------------

    def _notice(self, obj: dict[str, Any], *, uid: str, action: str) -> Outcome | None:
        target = object_ref(obj)
        endpoint = obj["kind"] in ENDPOINT_KINDS
        skip_reason = idle_skip_reason if endpoint else batch_skip_reason
        skip = skip_reason(obj, now=self.now, grace_period=self.grace_period)
        if skip:
            log.debug("idle: %s skipped: %s", target, skip)
            return None
        remembered = self.memory.get(uid, {}) if self.memory is not None else {}
        if constants.IDLE_SUSPENDED_ANNOTATION in remembered:
            log.debug("idle: %s skipped: suspended (dry-run)", target)
            return None
        annotations = {**((obj["metadata"].get("annotations")) or {}), **remembered}
        notice = Notice.of(annotations)
        if notice.suspended_at is not None:
            # Ours, yet running: resumed by hand (not by wake). Start over, with a fresh notice.
            return self._clear(obj, uid=uid, why="it was resumed by hand after the idle loop suspended it")
        suspending = action == "suspend" and notice.suspend_at is not None
        window = self.rule.idle_after
        if suspending:
            window = suspend_window(
                notice, idle_after=self.rule.idle_after, notify_before=self.rule.notify_before, now=self.now
            )
        verdict = self._measure(obj, window)
        if verdict is None:
            return None  # Prometheus did not answer: nothing is known, nothing changes
        if not verdict:
            log.info("idle: %s is not idle: %s (policy %s)", target, verdict.reason, self.rule.policy)
            if notice.given:
                return self._clear(obj, uid=uid, why=f"its GPUs are not idle any more: {verdict.reason}")
            return None
        why = f"its GPUs stayed {verdict.reason}"
        note = ""
        if action == "suspend" and _kueue_managed(obj):
            action = "notify"
            note = "Kueue manages its suspension (deactivate its Workload to stop it)"
        try:
            if action == "notify":
                if notice.notified_at is not None and notice.suspend_at is None:
                    return None  # notified once for this idle stretch
                outcome = self.effector.notify_idle(
                    obj, reason=why, policy=self.rule.policy, suspend_at=None, note=note, now=self.now
                )
                self._remember(
                    uid, outcome, {constants.IDLE_NOTIFIED_ANNOTATION: stamp(self.now)}, reset=True
                )
                return outcome
            if notice.suspend_at is None:
                suspend_at = self.now + self.rule.notify_before
                outcome = self.effector.notify_idle(
                    obj, reason=why, policy=self.rule.policy, suspend_at=suspend_at, now=self.now
                )
                self._remember(
                    uid,
                    outcome,
                    {
                        constants.IDLE_NOTIFIED_ANNOTATION: stamp(self.now),
                        constants.IDLE_SUSPEND_AT_ANNOTATION: stamp(suspend_at),
                    },
                    reset=True,
                )
                return outcome
            if self.now < notice.suspend_at:
                log.info(
                    "idle: %s stays idle; it is suspended at %s unless its GPUs get busy (policy %s)",
                    target,
                    stamp(notice.suspend_at),
                    self.rule.policy,
                )
                return None
            outcome = self.effector.suspend_idle(obj, reason=why, policy=self.rule.policy, now=self.now)
            self._remember(uid, outcome, {constants.IDLE_SUSPENDED_ANNOTATION: stamp(self.now)})
            return outcome
        except (ApiError, LookupError) as exc:
            # 409: changed since we read it; the next sweep decides again on fresh data.
            log.warning("idle: could not act on %s: %s", target, exc)
            return None

    def _clear(self, obj: dict[str, Any], *, uid: str, why: str) -> Outcome | None:
        if self.memory is not None:
            self.memory.pop(uid, None)
        try:
            return self.effector.clear_idle_notice(obj, why=why)
        except (ApiError, LookupError) as exc:
            log.warning("idle: could not clear the idle notice of %s: %s", object_ref(obj), exc)
            return None

    def _remember(
        self, uid: str, outcome: Outcome, annotations: dict[str, str], *, reset: bool = False
    ) -> None:
        if self.memory is None or not outcome.dry_run:
            return
        if reset:
            self.memory[uid] = dict(annotations)
        else:
            self.memory.setdefault(uid, {}).update(annotations)


def _kueue_managed(obj: Mapping[str, Any]) -> bool:
    return constants.KUEUE_QUEUE_LABEL in ((obj.get("metadata") or {}).get("labels") or {})
