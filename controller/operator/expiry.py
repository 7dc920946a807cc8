"""Expiry: workloads whose `expires_at` has passed are terminated at their top-level owner
(docs/crds.md#finopspolicy, `spec.expiry`), with an `ExpiringSoon` Event `notifyBefore` ahead.

Only workloads that a policy with an `expiry` section matches are touched, never in an excluded
namespace (kube-system, Comptroller's own), never one a FinOpsException exempts from `expiry`.
When several policies match, the earliest `expires_at` they read wins (each policy may name its
own key). A Pod owned by a ReplicaSet owned by a Deployment is acted on at the Deployment: deleting
the Pod would only make the ReplicaSet start another. A controller of a kind we do not manage (an
operator's CR) is left alone with a log line: whatever we did below it would be undone.

Deciding is pure (`expiry_terms`, `top_level_owner`, `expiry_step`); `ExpirySweeper.sweep` lists
the cluster a page at a time, asks, and has the effector act, oldest expiry first, within the
brake's rate. Work the brake holds back stays due and is picked up by the next sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from controller import constants
from controller.engine import Snapshot, matching_policies
from controller.engine.expiry import expires_at_of, format_annotation
from controller.engine.timestamps import parse_time
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry
from controller.k8s.workloads import ApiError, Workloads, object_ref
from controller.operator.brake import Brake
from controller.operator.effector import Effector, Outcome, current_replicas, termination_of

log = logging.getLogger(__name__)

Step = Literal["notify", "terminate"]


@dataclass(frozen=True)
class ExpiryTerms:
    """When a workload expires and under which policy."""

    expires_at: datetime
    notify_before: timedelta
    policy: str


# -- pure decisions --------------------------------------------------------------------------------


def expiry_snapshot(
    policies: Iterable[Any],
    *,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: frozenset[str] = constants.ALWAYS_EXCLUDED_NAMESPACES,
    exceptions: Sequence[Any] = (),
    kinds: KindRegistry | None = None,
) -> Snapshot:
    """What the engine matches with: the policies with an `expiry` section, and the rest as given."""
    return Snapshot(
        policies=tuple(p for p in policies if p.spec.expiry is not None),
        exceptions=tuple(exceptions),
        namespace_labels=namespace_labels or {},
        kinds=kinds,
        excluded_namespaces=frozenset(excluded_namespaces),
    )


def expiry_terms(
    manifest: Mapping[str, Any],
    policies: Iterable[Any] = (),
    *,
    now: datetime,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: frozenset[str] = constants.ALWAYS_EXCLUDED_NAMESPACES,
    exceptions: Sequence[Any] = (),
    kinds: KindRegistry | None = None,
    snapshot: Snapshot | None = None,
) -> ExpiryTerms | None:
    """The earliest expiry that a matching policy's `expiry` section gives this workload (or None).

    Which policies match, with how many GPUs (each policy's own `gpu.resources`) and under which
    exceptions, is the engine's answer (`matching_policies`), the same admission uses. An
    unparseable `expires_at` is no expiry at all here: terminating on a guess is worse than not
    terminating; the admission webhook and the audit report the bad value instead. A sweep passes
    one `snapshot` for all workloads; otherwise it is built from the other arguments.
    """
    if snapshot is None:
        snapshot = expiry_snapshot(
            policies,
            namespace_labels=namespace_labels,
            excluded_namespaces=excluded_namespaces,
            exceptions=exceptions,
            kinds=kinds,
        )
    kinds = snapshot.kinds or BUILTIN_KINDS
    best: ExpiryTerms | None = None
    for match in matching_policies(manifest, snapshot=snapshot, now=now):
        expiry = match.policy.spec.expiry
        if expiry is None or "expiry" in match.waived:
            continue
        expires_at, _error = expires_at_of(manifest, key=expiry.key, kinds=kinds)
        if expires_at is None:
            continue
        if best is None or expires_at < best.expires_at:
            best = ExpiryTerms(expires_at, expiry.notify_before, match.policy.name)
    return best


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with `controller: true`, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def top_level_owner(
    obj: Mapping[str, Any], owners: Mapping[str, Mapping[str, Any]], *, kinds: KindRegistry | None = None
) -> tuple[Mapping[str, Any] | None, str]:
    """Walk controller references up through `owners` (uid -> object of a kind we manage).

    Returns `(top, "")`, or `(None, why)` when the chain ends at a controller not in `owners`:
    one of a kind we do not manage, or (`why` starting with "not listed") one created after the
    sweep listed controllers, which the next sweep will see.
    """
    seen: set[str] = set()
    current = obj
    while (ref := controller_of(current)) is not None:
        uid = ref.get("uid", "")
        if uid in seen:  # a cycle cannot happen in a sane cluster; do not loop if it does
            break
        seen.add(uid)
        owner = owners.get(uid)
        if owner is None:
            controller = f"{ref.get('kind')}/{ref.get('name')}"
            if (kinds or BUILTIN_KINDS).lookup(
                {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind")}
            ):
                return None, f"not listed yet: its controller {controller} is newer than this sweep's listing"
            return None, f"controlled by {controller}, which Comptroller does not manage"
        current = owner
    return current, ""


def already_terminated(obj: Mapping[str, Any]) -> bool:
    """Whether the expired workload already costs nothing (by us or by hand)."""
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return True
    how = termination_of(obj.get("kind", ""))
    spec = obj.get("spec") or {}
    if how == "scale":
        return current_replicas(obj) == 0
    if how == "suspend":
        return bool(spec.get("suspend"))
    if how == "park":
        node_selector = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
        return constants.EXPIRED_ANNOTATION in node_selector
    return False


def expiry_step(
    owner: Mapping[str, Any], terms: ExpiryTerms, *, now: datetime, grace_period: timedelta
) -> Step | None:
    """What is due for a top-level workload now: notify, terminate, or nothing."""
    annotations = (owner.get("metadata") or {}).get("annotations") or {}
    if now >= terms.expires_at:
        if already_terminated(owner):
            return None
        woken_at = parse_time(annotations.get(constants.WOKEN_AT_ANNOTATION))
        # Woken by hand after expiring: honour the grace period before terminating it again.
        if woken_at is not None and woken_at >= terms.expires_at and now < woken_at + grace_period:
            return None
        return "terminate"
    if now >= terms.expires_at - terms.notify_before:
        if annotations.get(constants.EXPIRING_SOON_NOTIFIED_ANNOTATION) != format_annotation(
            terms.expires_at
        ):
            return "notify"
    return None


_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "annotations", "deletionTimestamp")


def _slim(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """What acting on a Pod needs. A burst of expired pods is held until acted on; a whole pod
    (spec, status, managedFields) is ten times this, and pods are the bulk of any cluster."""
    if obj.get("kind") != "Pod":
        return obj
    metadata = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": "Pod",
        "metadata": {key: metadata[key] for key in _KEPT_METADATA if key in metadata},
    }


@dataclass(frozen=True)
class Due:
    """One action the sweep wants taken on a top-level workload."""

    step: Step
    target: Mapping[str, Any]
    terms: ExpiryTerms


def plan_expiry(
    objects: Iterable[Mapping[str, Any]],
    policies: Sequence[Any],
    *,
    owners: Mapping[str, Mapping[str, Any]],
    now: datetime,
    grace_period: timedelta,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: frozenset[str] = constants.ALWAYS_EXCLUDED_NAMESPACES,
    exceptions: Sequence[Any] = (),
    kinds: KindRegistry | None = None,
    on_unmanaged: Callable[[Mapping[str, Any], str], None] | None = None,
) -> list[Due]:
    """Everything due, one entry per top-level workload, terminations first, oldest expiry first."""
    earliest: dict[str, tuple[Mapping[str, Any], ExpiryTerms]] = {}
    snapshot = expiry_snapshot(
        policies,
        namespace_labels=namespace_labels,
        excluded_namespaces=excluded_namespaces,
        exceptions=exceptions,
        kinds=kinds,
    )
    for obj in objects:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        terms = expiry_terms(obj, now=now, snapshot=snapshot)
        if terms is None:
            continue
        top, why = top_level_owner(obj, owners, kinds=kinds)
        if top is None:
            if on_unmanaged is not None:
                on_unmanaged(obj, why)
            continue
        if (top.get("metadata") or {}).get("namespace") in excluded_namespaces:
            continue
        uid = (top.get("metadata") or {}).get("uid") or object_ref(top)
        known = earliest.get(uid)
        if known is None or terms.expires_at < known[1].expires_at:
            earliest[uid] = (_slim(top), terms)
    due = []
    for top, terms in earliest.values():
        step = expiry_step(top, terms, now=now, grace_period=grace_period)
        if step is not None:
            due.append(Due(step, top, terms))
    due.sort(key=lambda d: (d.step != "terminate", d.terms.expires_at, object_ref(d.target)))
    return due


# -- the sweep -------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    notified: int = 0
    terminated: int = 0
    held_back: int = 0
    failed: int = 0
    outcomes: list[Outcome] | None = None


class ExpirySweeper:
    """Lists workloads, plans, and acts through the effector within the brake. One per operator."""

    def __init__(
        self,
        *,
        workloads: Workloads,
        effector: Effector,
        brake: Brake,
        kinds: KindRegistry | None = None,
        grace_period: timedelta = timedelta(hours=1),
        monotonic: Callable[[], float] = time.monotonic,
        on_terminated: Callable[[Outcome], None] | None = None,
        parallelism: int = 8,
    ) -> None:
        self.workloads = workloads
        self.parallelism = parallelism
        self.effector = effector
        self.brake = brake
        self.kinds = kinds or BUILTIN_KINDS
        self.grace_period = grace_period
        self.monotonic = monotonic
        self.on_terminated = on_terminated
        # Dry-run writes nothing, so it remembers here what it already reported, to say it once.
        self._reported: set[tuple[str, str, datetime]] = set()
        self._unmanaged_logged: set[str] = set()

    def _list(self, *, pod_specs: bool) -> tuple[dict[str, dict[str, Any]], Iterable[dict[str, Any]]]:
        """Controllers indexed by uid (owners), and an iterable over every workload.

        Pods are streamed page by page and never held all at once: only controllers, which are
        far fewer, stay in memory for the owner walk. A Pod's expiry and labels are metadata,
        so pods are listed as metadata only unless a policy needs their spec (`gpuOnly`).
        """
        owners: dict[str, dict[str, Any]] = {}
        pods = None
        for spec in self.kinds:
            resource = self.workloads.resolve(spec.kind, group=spec.group)
            if resource is None:
                continue
            if spec.kind == "Pod":
                pods = resource
                continue
            try:
                for obj in self.workloads.iter_objects(resource):
                    owners[obj["metadata"]["uid"]] = obj
            except ApiError as exc:
                log.warning("expiry: cannot list %s: %s", spec.kind, exc)

        def every() -> Iterable[dict[str, Any]]:
            yield from owners.values()
            if pods is not None:
                yield from self.workloads.iter_objects(pods, metadata_only=not pod_specs)

        return owners, every()

    def _act(self, item: Due, *, now: datetime) -> Outcome | None:
        try:
            if item.step == "notify":
                return self.effector.notify_expiring(
                    item.target, expires_at=item.terms.expires_at, policy=item.terms.policy, now=now
                )
            return self.effector.terminate(
                item.target, expires_at=item.terms.expires_at, policy=item.terms.policy, now=now
            )
        except (ApiError, LookupError) as exc:
            # 409 means it changed under us; anything else is retried by the next sweep too.
            log.warning("expiry: could not %s %s: %s", item.step, object_ref(item.target), exc)
            return None

    def _unmanaged(self, obj: Mapping[str, Any], why: str) -> None:
        ref = object_ref(obj)
        if why.startswith("not listed"):
            log.debug("expiry: %s: %s", ref, why)
        elif ref not in self._unmanaged_logged:
            self._unmanaged_logged.add(ref)
            log.info("expiry: %s has expired but is left alone: %s", ref, why)

    def sweep(
        self,
        *,
        policies: Sequence[Any],
        now: datetime,
        namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
        excluded_namespaces: frozenset[str] = constants.ALWAYS_EXCLUDED_NAMESPACES,
        exceptions: Sequence[Any] = (),
    ) -> SweepReport:
        report = SweepReport(outcomes=[])
        policies = [p for p in policies if p.spec.expiry is not None]
        if not policies:
            return report
        owners, objects = self._list(pod_specs=any(p.spec.match.gpu_only for p in policies))
        due = plan_expiry(
            objects,
            policies,
            owners=owners,
            now=now,
            grace_period=self.grace_period,
            namespace_labels=namespace_labels,
            excluded_namespaces=excluded_namespaces,
            exceptions=exceptions,
            kinds=self.kinds,
            on_unmanaged=self._unmanaged,
        )
        held_back_next = None
        approved: list[tuple[Due, tuple[str, str, datetime]]] = []
        for item in due:
            memo = (item.target["metadata"].get("uid", ""), item.step, item.terms.expires_at)
            if self.effector.dry_run and memo in self._reported:
                continue
            if item.step == "terminate" and not self.brake.try_acquire(self.monotonic()):
                report.held_back += 1
                held_back_next = self.brake.next_free_at(self.monotonic())
                continue
            approved.append((item, memo))
        # Each action is one or two API calls; a few in flight at once drain a burst in seconds
        # instead of minutes, and still spare the API server (the brake bounds the total anyway).
        with ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="expiry") as pool:
            results = list(pool.map(lambda pair: self._act(pair[0], now=now), approved))
        for (item, memo), outcome in zip(approved, results, strict=True):
            if outcome is None:
                report.failed += 1
                continue
            if item.step == "notify":
                report.notified += 1
            else:
                report.terminated += 1
                if outcome.done and self.on_terminated is not None:
                    self.on_terminated(outcome)
            report.outcomes.append(outcome)
            if self.effector.dry_run:
                self._reported.add(memo)
        if report.held_back:
            wait = max(held_back_next - self.monotonic(), 0) if held_back_next else 0
            log.warning(
                "expiry: the brake (%d terminations per %gs) holds back %d expired workloads; "
                "the next may go in %.0fs",
                self.brake.limit,
                self.brake.window,
                report.held_back,
                wait,
            )
        return report
