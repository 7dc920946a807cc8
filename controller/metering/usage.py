"""GPU-hour metering: what a pod has consumed, and the per-budget ledger that makes it exact.

Pure: no client, no clock (`now` is passed in). The kopf side (`accounting.py`) feeds it pod
records from its index and persists what it returns.

What a pod consumes
    GPU-equivalents x the time it holds them on a node: from when it was bound to the node (its
    `PodScheduled` condition; the scheduler allocates a DRA claim just before) until it
    terminates: the latest container `finishedAt` of a Succeeded/Failed pod, or of a deleted pod
    whose containers all terminated; for a deleted pod whose containers the kubelet never reported
    terminated (node lost, kwok), its `deletionTimestamp` once that has passed (the kubelet kills
    at the end of the grace period). A GPU is held while images pull, so a bound pod still
    Pending consumes; an unscheduled one does not. GPU-equivalents are the engine's
    (controller.engine.accelerators): a MIG slice, a shared or fractional GPU, a DRA device each
    count as the share of a GPU they are, on the node the pod runs on.

Where the ledger lives, and why
    One ledger per GPUBudget, in a ConfigMap `comptroller-ledger-<budget>` in Comptroller's own
    namespace, owned by the budget (garbage-collected with it). It is the source of truth; the
    budget's status is a projection of it rewritten on every tick. For the current period it holds
    each running pod's charge so far (`entries`, by pod uid), and `base`: the final charges of pods
    that ended (folded in as they end) and the frozen charges of pods that vanished. Each tick
    *recomputes* every open pod's charge from its timestamps instead of adding a delta, so:

    - a tick that is repeated (crash after computing, conflict on write, two replicas during a
      peering hand-over) recomputes the same numbers: nothing is double counted;
    - a status update that arrives late (a pod seen Running only after it started, or seen
      finished after it stopped) corrects the charge retroactively: nothing is dropped;
    - one write (the ConfigMap, with its resourceVersion as a compare-and-swap) commits the
      total and the per-pod state together: there is no window between two writes to crash in.
      Status, metrics and Events are derived afterwards and redone by the next tick if lost.

    What it persists grows with running pods, teams and days, not with pods over time. A pod that
    ends is folded once: its final charge goes into `base` and, split by UTC day, into `cells`
    (GPU-hours and cost per team and cost center per day, for `comptroller report`), and its uid
    into `folded` so no later tick counts it again. The uid is forgotten once the pod is gone from
    the cluster (so a finished pod that lingers costs its uid, about 40 bytes, until it is
    deleted; nothing a user can write on a pod, such as an annotation, decides that it was
    charged). A pod is in one ledger's `cells` only, its budget's by `first_covering` (`cell_of`),
    so summing the ledgers' cells counts each pod once. Cells are kept for the current and the
    previous calendar month, whatever the budget's period: a running pod's share of a closing period
    goes into them at the roll-over.

    Why not the status itself: the GPUBudget status schema is a user-facing contract and would
    grow by one entry per running pod. Why not a per-pod `metered-until` annotation: one write per
    pod per tick (5,000 pods every 30 s), and a crash between the budget write and the pod write
    double counts an interval.

Pods that end while the operator is down
    A deleted pod disappears, and with it its end time. So once a GPU pod that some budget
    draws on is running, it gets the finalizer `finops.comptroller.dev/metering`, released only
    when every matching budget's committed ledger holds the pod's final (closed) charge
    (`releasable`). Trade-off: while no operator runs, deleted GPU pods stay Terminating (their
    containers are stopped; only the API object remains); scheduling is not blocked. Only GPU
    pods that match a budget get it, and `comptroller operator --release-finalizers` removes it
    from every pod (the chart runs it on uninstall). A pod deleted without the finalizer
    (force-removed, or deleted within moments of starting) is charged up to when the operator
    saw it go (a watch DELETED event), or, if that happened while the operator was down, up to
    the last committed tick: bounded by one interval or the downtime, and logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controller import constants
from controller.engine.accelerators import (
    DEFAULT_EQUIVALENCE,
    KAI_DEVICES,
    KAI_FRACTION,
    KAI_MEMORY,
    UNRESOLVED_CLAIM,
    Choice,
    ClaimLookup,
    Equivalence,
    NodeFacts,
    PodGPUs,
    claim_refs,
    generated_claims,
    pod_gpus,
    resource_filter,
)
from controller.engine.api import Snapshot
from controller.engine.evaluation import projection_key_of
from controller.engine.expiry import expires_at_of
from controller.engine.timestamps import parse_time

SECONDS_PER_HOUR = 3600.0
HISTORY_LENGTH = 12
"""Closed periods kept in a ledger (and so in the budget's status): a year of monthly budgets."""


# -- timestamps ---------------------------------------------------------------------------------


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC, with microseconds only when there are some (as Kubernetes writes it)."""
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- GPUs, in GPU-equivalents ---------------------------------------------------------------------


def _asks(pod: Mapping[str, Any]) -> str:
    """What the GPU-equivalents of a pod depend on besides its node and claims, as compact JSON:
    the resources of its containers, its overhead, its claims and its pins and fraction
    annotations. Kept in the record so a tick can count again once the node is known."""
    spec = pod.get("spec") or {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}

    def containers(group: str) -> list[dict[str, Any]]:
        return [
            {"resources": c.get("resources") or {}, "restartPolicy": c.get("restartPolicy")}
            for c in spec.get(group) or ()
            if isinstance(c, Mapping)
        ]

    trimmed = {
        "spec": {
            "containers": containers("containers"),
            "initContainers": containers("initContainers"),
            "overhead": spec.get("overhead") or {},
            "resourceClaims": spec.get("resourceClaims") or [],
            "nodeSelector": spec.get("nodeSelector") or {},
            "affinity": spec.get("affinity") or {},
        },
        "annotations": {k: v for k, v in annotations.items() if k in FRACTION_ANNOTATIONS},
    }
    return json.dumps(trimmed, sort_keys=True, separators=(",", ":"))


FRACTION_ANNOTATIONS = (KAI_FRACTION, KAI_MEMORY, KAI_DEVICES)


def claim_names(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """The ResourceClaim each of a pod's `resourceClaims` entries is, in order: a named one, or the
    one generated from its template (in the pod's status once the controller-manager made it; ""
    until then)."""
    spec = pod.get("spec") or {}
    generated = generated_claims(pod)
    names = []
    for entry in spec.get("resourceClaims") or ():
        if isinstance(entry, Mapping):
            names.append(str(entry.get("resourceClaimName") or generated.get(entry.get("name")) or ""))
    return tuple(names)


@dataclass(frozen=True)
class Counting:
    """What a tick counts GPU-equivalents with: the table, what it knows of nodes and claims."""

    table: Equivalence = DEFAULT_EQUIVALENCE
    nodes: Mapping[str, NodeFacts] = field(default_factory=dict)
    """Node name -> the facts its labels give."""
    claims: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)
    """(namespace, claim name) -> GPU-equivalents allocated, of claims the scheduler allocated;
    a claim several pods share is divided among the pods it is reserved for."""
    lookup: ClaimLookup | None = None
    """The ResourceClaimTemplates and ResourceClaims known (the engine's `ClaimIndex`), to count
    what a claim not allocated yet asks, as admission does; None: none (each counts 1 GPU)."""


Choices = tuple[tuple[str, Choice], ...]
"""`PodGPUs.choices`: `firstAvailable` requests of more than one DeviceClass, with their claim."""


def count_pod(asks: str, *, namespace: str, node: NodeFacts | None, counting: Counting,
              claims: Iterable[str] = ()) -> tuple[dict[str, float], Choices]:
    """GPU-equivalents by resource (or DeviceClass) of a pod, from its `_asks`, on `node`, and the
    `firstAvailable` choices of its claims not allocated (`PodRecord.choices`).

    DRA: claims the scheduler allocated count what they were allocated; the others what their
    requests ask, resolved by `counting.lookup` (a template's entry counts the claim made from it
    for the pod where that is known; one known to nobody here counts 1 GPU, as at admission)."""
    data = json.loads(asks)
    spec = data["spec"]
    names = tuple(claims)
    generated = {
        ref.entry: name
        for ref, name in zip(claim_refs(spec.get("resourceClaims")), names, strict=False)
        if ref.kind == "ResourceClaimTemplate" and name
    }
    allocated = {name: counting.claims.get((namespace, name)) for name in names if name}
    if any(v is not None for v in allocated.values()):
        # Claims with an allocation are counted from it; the rest as asked (entries and names
        # are in the same order: `claim_names`).
        entries = spec.get("resourceClaims") or []
        asked = [e for e, name in zip(entries, names, strict=False) if allocated.get(name) is None]
        spec = {**spec, "resourceClaims": asked + entries[len(names):]}
    found = pod_gpus(spec, data.get("annotations"), table=counting.table, node=node, namespace=namespace,
                     claims=counting.lookup, generated=generated)
    return by_key_of(found, allocated.values()), found.choices


def by_key_of(found: PodGPUs, allocated: Iterable[Mapping[str, float] | None] = ()) -> dict[str, float]:
    """A pod's GPU-equivalents by resource or DeviceClass: its own, its shared claims', 1 for each
    claim nobody here could resolve, what its allocated claims hold, and the unknown resources."""
    by_key = dict(found.per_pod)
    for shared in found.shared.values():
        for key, value in shared.items():
            by_key[key] = by_key.get(key, 0.0) + value
    if found.unresolved:
        by_key[UNRESOLVED_CLAIM] = by_key.get(UNRESOLVED_CLAIM, 0.0) + found.unresolved
    for value in allocated:
        for key, amount in (value or {}).items():
            by_key[key] = by_key.get(key, 0.0) + amount
    for key, units in found.unknown.items():  # counted only by a `resources` list naming them
        by_key[UNKNOWN_PREFIX + key] = units
    return by_key


UNKNOWN_PREFIX = "?"
"""Marks, in a record's `devices`, an extended resource the table does not know: `*` does not
count it, a `resources` list naming it does (1 GPU a unit), as at admission."""


# -- pods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRecord:
    """What metering needs to know of one GPU pod. Small and comparable: kopf keeps one per pod in
    its index and only replaces it when it changed."""

    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    gpus: float
    """GPU-equivalents held, over the resources the operator counts (`--gpu-resource`); `devices`
    holds them by resource (or DeviceClass), for budgets that count only some."""
    started: datetime | None
    """When it was bound to its node (PodScheduled); None while unscheduled."""
    finished: datetime | None = None
    """When its containers all terminated, if they did."""
    deleted: datetime | None = None
    """Its deletionTimestamp (deletion requested + grace period), if it is being deleted."""
    node: str = ""
    instance_type: str = ""
    """From the pod's own node selector or required affinity; else resolved from its node."""
    workload: str = ""
    """`Kind/name` of its controller (ReplicaSets reported as their Deployment), else `Pod/name`."""
    finalizer: bool = False
    """It carries our metering finalizer."""
    devices: Mapping[str, float] | None = None
    """GPU-equivalents per resource or DeviceClass (None: unknown, all `gpus`)."""
    asks: str = ""
    """What its GPU-equivalents depend on (`_asks`), to count them again once its node or claims
    are known."""
    claims: tuple[str, ...] = ()
    """Its DRA ResourceClaims."""
    gated: bool = False
    """It waits SchedulingGated for a queueing budget (controller.metering.queue)."""
    priority: int = 0
    """`spec.priority` (its PriorityClass's value, set at admission): queues release high first."""
    created: datetime | None = None
    gang: str = ""
    """The pods released together: one Job, JobSet, Kubeflow job, RayCluster or LeaderWorkerSet
    group; "" for a pod that goes alone (a Deployment's, a bare one)."""
    expires: datetime | None = None
    """Its expiry, which bounds what it may use (a queue reserves up to it): `expires_at`, or the
    key the policies matching it use (`pod_record`'s `policies`), as admission projects it."""
    choices: Choices = ()
    """`firstAvailable` requests of its claims not allocated yet whose alternatives are of more than
    one DeviceClass (the engine's `PodGPUs.choices`): `devices` counts each as its largest
    alternative; a `resources` list not counting that one's class counts the largest it does."""

    def gpus_of(self, resources: Iterable[str] | None) -> float:
        """GPU-equivalents held of `resources` (None: every resource the operator counts)."""
        if resources is None or self.devices is None:
            return self.gpus
        return _gpus_of(self.devices, tuple(resources), self.choices)

    def end(self, now: datetime) -> datetime | None:
        """When it stopped consuming, as far as known at `now` (None: still running)."""
        if self.finished is not None:
            return self.finished
        if self.deleted is not None and self.deleted <= now:
            return self.deleted
        return None

    def running(self, now: datetime) -> bool:
        if self.started is None or self.started > now:
            return False
        end = self.end(now)
        return end is None or end > now

    def gpu_hours(
        self, start: datetime, end: datetime, *, now: datetime, resources: Iterable[str] | None = None
    ) -> float:
        """GPU-hours consumed within [start, end), as known at `now` (of `resources`, if given)."""
        gpus = self.gpus_of(resources)
        if self.started is None or gpus <= 0:
            return 0.0
        stop = self.end(now) or now
        lo = max(self.started, start)
        hi = min(stop, end, now)
        if hi <= lo:
            return 0.0
        return gpus * (hi - lo).total_seconds() / SECONDS_PER_HOUR


def _instance_type(spec: Mapping[str, Any], keys: Sequence[str]) -> str:
    selector = spec.get("nodeSelector") or {}
    for key in keys:
        if selector.get(key):
            return str(selector[key])
    # A required node affinity that pins exactly one value of a key also names the type.
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in affinity.get("nodeSelectorTerms") or ():
        for expression in term.get("matchExpressions") or ():
            values = expression.get("values") or ()
            if expression.get("key") in keys and expression.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return ""


def _workload(metadata: Mapping[str, Any]) -> str:
    for owner in metadata.get("ownerReferences") or ():
        if not owner.get("controller"):
            continue
        kind, name = owner.get("kind", ""), owner.get("name", "")
        if kind == "ReplicaSet" and "-" in name:
            # Deployment-owned ReplicaSets are named <deployment>-<pod-template-hash>.
            return f"Deployment/{name.rsplit('-', 1)[0]}"
        if kind == "Job" and "-" in name and name.rsplit("-", 1)[1].isdigit():
            # CronJob-owned Jobs are named <cronjob>-<scheduled minute>.
            return f"CronJob/{name.rsplit('-', 1)[0]}"
        return f"{kind}/{name}"
    return f"Pod/{metadata.get('name', '')}"


def _container_times(status: Mapping[str, Any]) -> tuple[list[datetime], list[datetime], bool]:
    """(start times, finish times of app containers, whether every app container terminated)."""
    starts: list[datetime] = []
    finishes: list[datetime] = []
    app_statuses = status.get("containerStatuses") or ()
    all_terminated = bool(app_statuses)
    for group, is_app in (("initContainerStatuses", False), ("containerStatuses", True)):
        for container in status.get(group) or ():
            state = container.get("state") or {}
            terminated = state.get("terminated")
            running = state.get("running")
            for started in ((running or {}).get("startedAt"), (terminated or {}).get("startedAt")):
                parsed = parse_time(started)
                if parsed is not None:
                    starts.append(parsed)
            if is_app:
                finished = parse_time((terminated or {}).get("finishedAt"))
                if terminated is not None and finished is not None:
                    finishes.append(finished)
                else:
                    all_terminated = False
    return starts, finishes, all_terminated


def pod_gpu_total(devices: Mapping[str, float], resources: Iterable[str], choices: Choices = ()) -> float:
    """GPU-equivalents of `devices` (and `choices`) that `resources` counts."""
    return _gpus_of(devices, tuple(resources), choices)


def _gpus_of(devices: Mapping[str, float], resources: tuple[str, ...], choices: Choices = ()) -> float:
    counts = resource_filter(resources)
    total = 0.0
    for key, value in devices.items():
        if key.startswith(UNKNOWN_PREFIX):
            if counts is not None and counts(key[len(UNKNOWN_PREFIX):]):
                total += value
        elif key == UNRESOLVED_CLAIM or counts is None or counts(key):  # every budget counts it
            total += value
    if counts is not None:  # as `PodGPUs.total`: a list not counting a choice's largest class
        for _, choice in choices:
            total += choice.beyond(counts)
    return total


def _scheduled(status: Mapping[str, Any]) -> datetime | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == "PodScheduled":
            if condition.get("status") == "True":
                return parse_time(condition.get("lastTransitionTime"))
            return None
    return None


def pod_record(
    pod: Mapping[str, Any],
    *,
    gpu_resources: Iterable[str] = constants.DEFAULT_GPU_RESOURCES,
    instance_type_keys: Sequence[str] = (),
    counting: Counting | None = None,
    policies: Snapshot | None = None,
) -> PodRecord | None:
    """The metering view of a pod object, or None when it asks for no GPU in any form.

    `policies`: the snapshot whose matching policies say under which key the pod's expiry is read
    (`projection_key_of`, as admission projects it); None: the default `expires_at`."""
    spec = pod.get("spec") or {}
    metadata = pod.get("metadata") or {}
    counting = counting or Counting()
    namespace = str(metadata.get("namespace", ""))
    found = pod_gpus(spec, metadata.get("annotations"), table=counting.table, namespace=namespace,
                     claims=counting.lookup, generated=generated_claims(pod))
    if not found.per_pod and not found.shared and not found.unresolved and not found.unknown:
        return None
    asks = _asks(pod)
    claims = claim_names(pod)
    node_name = str(spec.get("nodeName") or "")
    facts = counting.nodes.get(node_name)
    if facts is None and not any(claims):  # counted as the check above did: no second pass
        devices, choices = by_key_of(found), found.choices
    else:
        devices, choices = count_pod(asks, namespace=namespace, node=facts, counting=counting, claims=claims)
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    starts, finishes, all_terminated = _container_times(status)

    # Bound to a node: it holds its GPUs from then on, pulling images included. A pod that ran
    # without the condition (a status rewritten by hand) falls back to its first container start.
    started = _scheduled(status) if node_name else None
    if started is None and phase != "Pending":
        started = min(starts) if starts else parse_time(status.get("startTime"))

    finished: datetime | None = None
    if phase in ("Succeeded", "Failed") or (metadata.get("deletionTimestamp") and all_terminated):
        if finishes:
            finished = max(finishes)
        else:
            # A terminal pod whose containers never reported a finish (evicted, rejected):
            # the latest condition transition is when it stopped being ready.
            transitions = [parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or ()]
            known = [t for t in transitions if t is not None]
            finished = max(known) if known else started
        if started is not None and finished is not None and finished < started:
            finished = started

    return PodRecord(
        uid=str(metadata.get("uid", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        labels=dict(metadata.get("labels") or {}),
        gpus=_gpus_of(devices, tuple(gpu_resources), choices),
        started=started,
        finished=finished,
        deleted=parse_time(metadata.get("deletionTimestamp")),
        node=str(spec.get("nodeName") or ""),
        instance_type=_instance_type(spec, instance_type_keys),
        workload=_workload(metadata),
        finalizer=constants.METERING_FINALIZER in (metadata.get("finalizers") or ()),
        devices=devices,
        asks=asks,
        claims=claims,
        gated=any(
            isinstance(g, Mapping) and g.get("name") == constants.BUDGET_GATE
            for g in spec.get("schedulingGates") or ()
        ),
        priority=int(spec.get("priority") or 0) if isinstance(spec.get("priority"), int) else 0,
        created=parse_time(metadata.get("creationTimestamp")),
        gang=gang_of(metadata),
        expires=expires_at_of(pod, key=_expiry_key(pod, policies))[0],
        choices=choices,
    )


def _expiry_key(pod: Mapping[str, Any], policies: Snapshot | None) -> str:
    if policies is None:
        return constants.DEFAULT_EXPIRY_KEY
    if pod.get("kind") != "Pod":  # items of a list come without their kind
        pod = {**pod, "apiVersion": "v1", "kind": "Pod"}
    return projection_key_of(pod, snapshot=policies)


GANG_LABELS = (
    ("jobset.sigs.k8s.io/jobset-name", "JobSet"),
    ("leaderworkerset.sigs.k8s.io/name", "LeaderWorkerSet"),
    ("ray.io/cluster", "RayCluster"),
)
LWS_GROUP_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
GANG_OWNERS = frozenset({"Job", "PyTorchJob", "TFJob", "MPIJob", "RayCluster", "JobSet", "LeaderWorkerSet"})


def gang_of(metadata: Mapping[str, Any]) -> str:
    """The gang a pod belongs to (see PodRecord.gang): by the labels the JobSet, LeaderWorkerSet
    (one gang per group) and KubeRay controllers put on their pods, else its controller if that is
    a job kind. Released together, so a distributed job never half-starts."""
    labels = metadata.get("labels") or {}
    namespace = metadata.get("namespace", "")
    for label, kind in GANG_LABELS:
        if labels.get(label):
            group = labels.get(LWS_GROUP_LABEL) if kind == "LeaderWorkerSet" else None
            return f"{kind}/{namespace}/{labels[label]}" + (f"/{group}" if group else "")
    for owner in metadata.get("ownerReferences") or ():
        if owner.get("controller") and owner.get("kind") in GANG_OWNERS:
            return f"{owner['kind']}/{namespace}/{owner.get('name', '')}"
    return ""


def needs_finalizer(pod: PodRecord, *, matched: bool, now: datetime) -> bool:
    """Add the metering finalizer: a running GPU pod some budget draws on, not yet being deleted."""
    return matched and not pod.finalizer and pod.deleted is None and pod.running(now)


# -- ledgers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A running pod's charge to a budget in the current period, as of the last tick."""

    gpu_hours: float
    cost: float


Cells = Mapping[str, Mapping[str, tuple[float, float]]]
"""Group (`<team>/<cost center>`, label values) -> UTC day (`YYYY-MM-DD`) -> (GPU-hours, cost)."""


def group_key(labels: Mapping[str, str], keys: Sequence[str] = constants.DEFAULT_GROUP_LABELS) -> str:
    """The cells group of a pod: its team and cost-center label values, `/`-joined (label values
    cannot contain `/`); "" for a missing label."""
    return "/".join(str(labels.get(key) or "") for key in keys)


LEDGER_FORMAT = 2
"""The ledger layout this operator writes: 2 records it. Ledgers without a `format` key were written
before it was (rows for every pod of the period, or folded as 2 does); both are read."""


class NewerLedgerFormat(ValueError):
    """A ledger written by a newer Comptroller: this one must neither meter nor overwrite it."""


@dataclass(frozen=True)
class Ledger:
    """One budget's metering state for its current period (see the module docstring)."""

    budget_uid: str
    period_start: datetime
    period_end: datetime
    metered_at: datetime | None = None
    base_gpu_hours: float = 0.0
    """Final charges of pods that ended, and frozen charges of pods no longer visible."""
    base_cost: float = 0.0
    entries: Mapping[str, Entry] = field(default_factory=dict)
    """Running pods' charges so far, by uid."""
    thresholds: tuple[int, ...] = ()
    """Alert thresholds (percent) already reached, and announced, this period."""
    history: tuple[Mapping[str, Any], ...] = ()
    """Closed periods, oldest first: {start, end, usedGPUHours, estimatedCost}."""
    folded: frozenset[str] = frozenset()
    """Uids of ended pods whose final charge is in `base`, while they may still be seen."""
    cells: Cells = field(default_factory=dict)
    """Charges by group and day, of the pods whose cells this budget holds (`first_covering`): of those
    that ended, and the running ones' shares of closed periods."""
    group_labels: tuple[str, ...] = constants.DEFAULT_GROUP_LABELS
    """The label keys `cells` groups by."""
    cells_from: datetime | None = None
    """Where the running pods' cells start: their shares before it are in `cells` already (a
    period switched to a longer one begins before them). None: the period's start."""

    @property
    def cells_start(self) -> datetime:
        return max(self.cells_from, self.period_start) if self.cells_from else self.period_start

    @property
    def used_gpu_hours(self) -> float:
        return self.base_gpu_hours + sum(e.gpu_hours for e in self.entries.values())

    @property
    def cost(self) -> float:
        return self.base_cost + sum(e.cost for e in self.entries.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "budgetUID": self.budget_uid,
            "period": {"start": format_time(self.period_start), "end": format_time(self.period_end)},
            "meteredAt": format_time(self.metered_at) if self.metered_at else None,
            "base": [self.base_gpu_hours, self.base_cost],
            # Compact rows: uid -> [GPU-hours, cost]; only running pods. Each tick recomputes them
            # from timestamps (a stored row is read only for a pod that vanished unseen), so rounding
            # to a millionth never accumulates; base and cells, which do, keep every digit.
            "entries": {uid: [round(e.gpu_hours, 6), round(e.cost, 6)] for uid, e in self.entries.items()},
            "folded": sorted(self.folded),
            "groupLabels": list(self.group_labels),
            **({"cellsFrom": format_time(self.cells_from)} if self.cells_from else {}),
            "cells": {group: {day: list(value) for day, value in sorted(days.items())}
                      for group, days in sorted(self.cells.items())},
            "thresholds": list(self.thresholds),
            "history": list(self.history),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        layout = data.get("format", 1)
        if type(layout) is not int:
            raise ValueError(f"ledger format {layout!r} is not a number")
        if layout > LEDGER_FORMAT:
            raise NewerLedgerFormat(
                f"written in ledger format {layout!r}, by a newer Comptroller (this one reads up to "
                f"{LEDGER_FORMAT})"
            )
        period = data.get("period") or {}
        start, end = parse_time(period.get("start")), parse_time(period.get("end"))
        if start is None or end is None:
            raise ValueError("ledger has no period")
        base = data.get("base") or [0.0, 0.0]
        base_hours, base_cost = float(base[0]), float(base[1])
        entries: dict[str, Entry] = {}
        folded = set(str(uid) for uid in data.get("folded") or ())
        for uid, row in (data.get("entries") or {}).items():
            if len(row) > 2 and row[2]:
                # A ledger written before pods were folded as they end: a closed row is final.
                base_hours, base_cost = base_hours + float(row[0]), base_cost + float(row[1])
                folded.add(uid)
            else:
                entries[uid] = Entry(float(row[0]), float(row[1]))
        return cls(
            budget_uid=str(data.get("budgetUID", "")),
            period_start=start,
            period_end=end,
            metered_at=parse_time(data.get("meteredAt")),
            base_gpu_hours=base_hours,
            base_cost=base_cost,
            entries=entries,
            thresholds=tuple(int(t) for t in data.get("thresholds") or ()),
            history=tuple(data.get("history") or ()),
            folded=frozenset(folded),
            cells={
                str(group): {str(day): (float(value[0]), float(value[1])) for day, value in days.items()}
                for group, days in (data.get("cells") or {}).items()
            },
            group_labels=tuple(data.get("groupLabels") or constants.DEFAULT_GROUP_LABELS),
            cells_from=parse_time(data.get("cellsFrom")),
        )


def new_ledger(*, budget_uid: str, period: tuple[datetime, datetime],
               group_labels: Sequence[str] = constants.DEFAULT_GROUP_LABELS) -> Ledger:
    return Ledger(budget_uid=budget_uid, period_start=period[0], period_end=period[1],
                  group_labels=tuple(group_labels))


def price_for(prices: Mapping[str, Any] | None, instance_type: str) -> float:
    """Price of one GPU-hour on `instance_type`: its own entry, else `default`, else 0."""
    if not prices:
        return 0.0
    value = prices.get(instance_type) if instance_type else None
    if value is None:
        value = prices.get("default", 0.0)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def days_of(start: datetime, end: datetime) -> Iterator[tuple[str, float]]:
    """(UTC day, seconds of [start, end) within it), day by day."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), UTC)
        stop = min(midnight, end)
        yield start.date().isoformat(), (stop - start).total_seconds()
        start = stop


def add_to_cells(cells: dict[str, dict[str, tuple[float, float]]], group: str, pod: PodRecord, *,
                 start: datetime, end: datetime, now: datetime, price: float,
                 resources: Iterable[str] | None) -> None:
    """Add what `pod` consumed within [start, end) to `cells[group]`, split by UTC day."""
    gpus = pod.gpus_of(resources)
    if pod.started is None or gpus <= 0:
        return
    lo, hi = max(pod.started, start), min(pod.end(now) or now, end, now)
    if hi <= lo:
        return
    days = cells.setdefault(group, {})
    for day, seconds in days_of(lo, hi):
        hours = gpus * seconds / SECONDS_PER_HOUR
        old_hours, old_cost = days.get(day, (0.0, 0.0))
        days[day] = (old_hours + hours, old_cost + hours * price)


def cells_kept_from(at: datetime) -> str:
    """The first day whose cells are kept at `at`: the first of the previous calendar month."""
    first = at.astimezone(UTC).date().replace(day=1)
    return (first - timedelta(days=1)).replace(day=1).isoformat()


def _writable_cells(cells: Cells, *, kept_from: str) -> dict[str, dict[str, tuple[float, float]]]:
    out = {group: {d: v for d, v in days.items() if d >= kept_from} for group, days in cells.items()}
    return {group: days for group, days in out.items() if days}


CellOf = Callable[[PodRecord], str | None]
"""A pod's cells group in this ledger, or None when another budget holds its cells."""


def meter(
    ledger: Ledger,
    pods: Iterable[PodRecord],
    *,
    now: datetime,
    prices: Mapping[str, Any] | None = None,
    resources: Iterable[str] | None = None,
    cell_of: CellOf | None = None,
    present: Collection[str] | None = None,
) -> Ledger:
    """The ledger recomputed at `now` from the pods that currently match the budget.

    Every open pod's charge is recomputed from its timestamps, clipped to the period; a pod that
    ended is folded (its final charge into `base` and, by `cell_of`, into `cells`); pods that were
    charged before but are no longer visible keep their last charge, frozen into `base`. Does not
    roll the period over (see `roll_over`); `now` past the period end meters up to it.
    `resources` limits which GPU resources count (a budget's `spec.resources`). `present`: uids
    of every pod still in view, matching or not (default: `pods`); a folded uid is kept while
    its pod is.
    """
    resources = tuple(resources) if resources is not None else None
    window_end = min(now, ledger.period_end)
    entries: dict[str, Entry] = {}
    folded = set(ledger.folded)
    cells = _writable_cells(ledger.cells, kept_from=cells_kept_from(window_end))
    base_hours, base_cost = ledger.base_gpu_hours, ledger.base_cost
    seen: set[str] = set()
    for pod in pods:
        seen.add(pod.uid)
        end = pod.end(now)
        closed = end is not None and end <= window_end  # one that ends after the period runs on in it
        if pod.uid in ledger.folded:
            continue
        hours = pod.gpu_hours(ledger.period_start, window_end, now=now, resources=resources)
        if hours <= 0 and pod.uid not in ledger.entries and not (closed and pod.finalizer):
            continue  # not yet running, or ran only before this period: nothing to remember
        price = price_for(prices, pod.instance_type)
        if not closed:
            entries[pod.uid] = Entry(hours, hours * price)
            continue
        base_hours += hours
        base_cost += hours * price
        folded.add(pod.uid)
        group = cell_of(pod) if cell_of is not None else None
        if group is not None:
            add_to_cells(cells, group, pod, start=ledger.cells_start, end=window_end, now=now, price=price,
                         resources=resources)
    for uid, entry in ledger.entries.items():
        if uid not in entries and uid not in folded:
            base_hours += entry.gpu_hours
            base_cost += entry.cost
    keep = seen if present is None else present
    return replace(
        ledger,
        metered_at=window_end,
        base_gpu_hours=base_hours,
        base_cost=base_cost,
        entries=entries,
        folded=frozenset(uid for uid in folded if uid in keep or uid in seen),
        cells=cells,
    )


def roll_over(
    ledger: Ledger,
    *,
    period: tuple[datetime, datetime],
    pods: Iterable[PodRecord] = (),
    prices: Mapping[str, Any] | None = None,
    resources: Iterable[str] | None = None,
    cell_of: CellOf | None = None,
) -> Ledger:
    """Close the ledger's period into its history and start `period` from zero.

    Meter up to the old period's end first (`meter(ledger, pods, now=ledger.period_end)`). The
    running pods' shares up to the new period's start go into `cells`: the closing period's and,
    when no operator ran across whole periods, those of the periods nobody metered (their later
    shares are folded when they end); the folded uids and the cells carry over.
    """
    closed = {
        "start": format_time(ledger.period_start),
        "end": format_time(ledger.period_end),
        "usedGPUHours": round(ledger.used_gpu_hours, 6),
        "estimatedCost": round(ledger.cost, 2),
    }
    history = (*ledger.history, closed)[-HISTORY_LENGTH:]
    cells = _writable_cells(ledger.cells, kept_from=cells_kept_from(period[0]))
    if cell_of is not None:
        resources = tuple(resources) if resources is not None else None
        for pod in pods:
            # Every pod not folded yet: those that started while nobody metered too.
            group = cell_of(pod) if pod.uid not in ledger.folded else None
            if group is not None:
                add_to_cells(cells, group, pod, start=ledger.cells_start, end=period[0], now=period[0],
                             price=price_for(prices, pod.instance_type), resources=resources)
    return Ledger(
        budget_uid=ledger.budget_uid,
        period_start=period[0],
        period_end=period[1],
        metered_at=period[0],
        history=history,
        folded=ledger.folded,
        cells=cells,
        group_labels=ledger.group_labels,
        # A period switched to a longer one starts before what the cells hold already.
        cells_from=ledger.cells_start if ledger.cells_start > period[0] else None,
    )


def releasable(pod: PodRecord, ledgers: Sequence[Ledger | None], *, now: datetime) -> bool:
    """Whether the metering finalizer can go: the pod has ended and every budget it matches
    (`ledgers`, None for a budget whose ledger is not committed yet) holds its final charge."""
    end = pod.end(now)
    if end is None:
        return False
    for ledger in ledgers:
        if ledger is None:
            return False
        # A pod that ended before this period began has nothing to charge here.
        before = pod.uid not in ledger.entries and end <= ledger.period_start
        if pod.uid not in ledger.folded and not before:
            return False
    return True
