"""GPU-hour metering: what a pod has consumed, and the per-budget ledger that makes it exact.

Pure: no client, no clock (`now` is passed in). The kopf side (`accounting.py`) feeds it pod
records from its index and persists what it returns.

What a pod consumes
    GPUs x the time it holds them on a node: from its first container start (init containers
    included) until it terminates: the latest container `finishedAt` of a Succeeded/Failed pod,
    or of a deleted pod whose containers all terminated; for a deleted pod whose containers the
    kubelet never reported terminated (node lost, kwok), its `deletionTimestamp` once that has
    passed (the kubelet kills at the end of the grace period). Pending pods consume nothing.
    GPUs are the scheduler's effective request (`pod_gpus`).

Where the ledger lives, and why
    One ledger per GPUBudget, in a ConfigMap `comptroller-ledger-<budget>` in Comptroller's own
    namespace, owned by the budget (garbage-collected with it). It is the source of truth; the
    budget's status is a projection of it rewritten on every tick. The ledger holds, for the
    current period, each still-existing pod's charge so far (`entries`, by pod uid) plus the
    frozen charges of pods that are gone (`base`). Each tick *recomputes* every visible pod's
    charge from its timestamps instead of adding a delta, so:

    - a tick that is repeated (crash after computing, conflict on write, two replicas during a
      peering hand-over) recomputes the same numbers: nothing is double counted;
    - a status update that arrives late (a pod seen Running only after it started, or seen
      finished after it stopped) corrects the charge retroactively: nothing is dropped;
    - one write (the ConfigMap, with its resourceVersion as a compare-and-swap) commits the
      total and the per-pod state together: there is no window between two writes to crash in.
      Status, metrics and Events are derived afterwards and redone by the next tick if lost.

    Why not the status itself: the GPUBudget status schema is a user-facing contract and would
    grow by one entry per pod. Why not a per-pod `metered-until` annotation: one write per pod per
    tick (5,000 pods every 30 s), and a crash between the budget write and the pod write double
    counts an interval.

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from controller import constants
from controller.engine.timestamps import parse_time
from controller.engine.workloads import effective_request, quantity

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


# -- GPUs, as the scheduler counts them ------------------------------------------------------------


def pod_devices(spec: Mapping[str, Any], resources: Iterable[str]) -> dict[str, int]:
    """Per resource, the scheduler's effective request (the engine's KEP-753 rules) plus the pod
    overhead, which the scheduler adds too. Resources the pod does not request are left out."""
    overhead = spec.get("overhead") or {}
    devices = {}
    for resource in resources:
        count = effective_request(spec, resource) + quantity(overhead.get(resource))
        if count > 0:
            devices[resource] = count
    return devices


ACCELERATOR_PREFIXES = ("nvidia.com/", "amd.com/", "gpu.intel.com/", "habana.ai/", "aws.amazon.com/neuron")
"""Extended resources recorded for every GPU pod whatever `--gpu-resource` says, so a budget that
counts one of them (`spec.resources: [amd.com/gpu]`) is charged without restarting the operator."""


def accelerator_resources(spec: Mapping[str, Any]) -> set[str]:
    """The accelerator resources a pod's containers, init containers and overhead name."""
    names: set[str] = set()
    lists = [spec.get("overhead") or ()]
    for containers in ("containers", "initContainers"):
        for container in spec.get(containers) or ():
            resources = (container.get("resources") if isinstance(container, Mapping) else None) or {}
            lists += [resources.get("requests") or (), resources.get("limits") or ()]
    for names_of in lists:
        names.update(n for n in names_of if isinstance(n, str) and n.startswith(ACCELERATOR_PREFIXES))
    return names


def pod_gpus(spec: Mapping[str, Any], resources: Iterable[str] = constants.DEFAULT_GPU_RESOURCES) -> int:
    """GPUs one pod holds, summed over the resources counted as GPUs."""
    return sum(pod_devices(spec, resources).values())


# -- pods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRecord:
    """What metering needs to know of one GPU pod. Small and comparable: kopf keeps one per pod in
    its index and only replaces it when it changed."""

    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    gpus: int
    """GPUs held, over the resources the operator counts (`--gpu-resource`); `devices` also holds
    the other accelerator resources the pod asks for, for budgets that name them."""
    started: datetime | None
    """When it began to run on its node (first container start); None while Pending."""
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
    devices: Mapping[str, int] | None = None
    """GPUs per resource, for budgets that count only some of them (None: unknown, all `gpus`)."""

    def gpus_of(self, resources: Iterable[str] | None) -> int:
        """GPUs held of `resources` (None: every resource the operator counts)."""
        if resources is None or self.devices is None:
            return self.gpus
        return sum(self.devices.get(resource, 0) for resource in resources)

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


def pod_record(
    pod: Mapping[str, Any],
    *,
    gpu_resources: Iterable[str] = constants.DEFAULT_GPU_RESOURCES,
    instance_type_keys: Sequence[str] = (),
) -> PodRecord | None:
    """The metering view of a pod object, or None when it requests no GPUs."""
    spec = pod.get("spec") or {}
    counted = tuple(gpu_resources)
    devices = pod_devices(spec, {*counted, *accelerator_resources(spec)})
    if not devices:
        return None
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    starts, finishes, all_terminated = _container_times(status)

    started: datetime | None = None
    if phase != "Pending":
        # kubelet's startTime is when it accepted the pod (before image pulls): only a fallback
        # when no container reports a start, e.g. a status rewritten without running states.
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
        gpus=sum(devices.get(resource, 0) for resource in counted),
        started=started,
        finished=finished,
        deleted=parse_time(metadata.get("deletionTimestamp")),
        node=str(spec.get("nodeName") or ""),
        instance_type=_instance_type(spec, instance_type_keys),
        workload=_workload(metadata),
        finalizer=constants.METERING_FINALIZER in (metadata.get("finalizers") or ()),
        devices=devices,
    )


def needs_finalizer(pod: PodRecord, *, matched: bool, now: datetime) -> bool:
    """Add the metering finalizer: a running GPU pod some budget draws on, not yet being deleted."""
    return matched and not pod.finalizer and pod.deleted is None and pod.running(now)


# -- ledgers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One pod's charge to a budget in the current period."""

    gpu_hours: float
    cost: float
    closed: bool
    """The pod has ended and this is its final charge (its finalizer may go, as far as we care)."""


@dataclass(frozen=True)
class Ledger:
    """One budget's metering state for its current period (see the module docstring)."""

    budget_uid: str
    period_start: datetime
    period_end: datetime
    metered_at: datetime | None = None
    base_gpu_hours: float = 0.0
    """Charges of pods no longer visible (deleted, or no longer matching the selector)."""
    base_cost: float = 0.0
    entries: Mapping[str, Entry] = field(default_factory=dict)
    thresholds: tuple[int, ...] = ()
    """Alert thresholds (percent) already reached, and announced, this period."""
    history: tuple[Mapping[str, Any], ...] = ()
    """Closed periods, oldest first: {start, end, usedGPUHours, estimatedCost}."""

    @property
    def used_gpu_hours(self) -> float:
        return self.base_gpu_hours + sum(e.gpu_hours for e in self.entries.values())

    @property
    def cost(self) -> float:
        return self.base_cost + sum(e.cost for e in self.entries.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "budgetUID": self.budget_uid,
            "period": {"start": format_time(self.period_start), "end": format_time(self.period_end)},
            "meteredAt": format_time(self.metered_at) if self.metered_at else None,
            "base": [self.base_gpu_hours, self.base_cost],
            # Compact rows: uid -> [GPU-hours, cost, closed]; 5,000 pods fit in ~250 KB.
            "entries": {uid: [e.gpu_hours, e.cost, int(e.closed)] for uid, e in self.entries.items()},
            "thresholds": list(self.thresholds),
            "history": list(self.history),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        period = data.get("period") or {}
        start, end = parse_time(period.get("start")), parse_time(period.get("end"))
        if start is None or end is None:
            raise ValueError("ledger has no period")
        base = data.get("base") or [0.0, 0.0]
        return cls(
            budget_uid=str(data.get("budgetUID", "")),
            period_start=start,
            period_end=end,
            metered_at=parse_time(data.get("meteredAt")),
            base_gpu_hours=float(base[0]),
            base_cost=float(base[1]),
            entries={
                uid: Entry(float(row[0]), float(row[1]), bool(row[2]))
                for uid, row in (data.get("entries") or {}).items()
            },
            thresholds=tuple(int(t) for t in data.get("thresholds") or ()),
            history=tuple(data.get("history") or ()),
        )


def new_ledger(*, budget_uid: str, period: tuple[datetime, datetime]) -> Ledger:
    return Ledger(budget_uid=budget_uid, period_start=period[0], period_end=period[1])


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


def meter(
    ledger: Ledger,
    pods: Iterable[PodRecord],
    *,
    now: datetime,
    prices: Mapping[str, Any] | None = None,
    resources: Iterable[str] | None = None,
) -> Ledger:
    """The ledger recomputed at `now` from the pods that currently match the budget.

    Every visible pod's charge is recomputed from its timestamps, clipped to the period; pods that
    were charged before but are no longer visible keep their last charge, frozen into `base`.
    Does not roll the period over (see `roll_over`); `now` past the period end meters up to it.
    `resources` limits which GPU resources count (a budget's `spec.resources`).
    """
    resources = tuple(resources) if resources is not None else None
    window_end = min(now, ledger.period_end)
    entries: dict[str, Entry] = {}
    for pod in pods:
        hours = pod.gpu_hours(ledger.period_start, window_end, now=now, resources=resources)
        closed = pod.end(now) is not None
        if hours <= 0 and pod.uid not in ledger.entries and not (closed and pod.finalizer):
            continue  # not yet running, or ran only before this period: nothing to remember
        price = price_for(prices, pod.instance_type)
        entries[pod.uid] = Entry(hours, hours * price, closed)
    base_hours, base_cost = ledger.base_gpu_hours, ledger.base_cost
    for uid, entry in ledger.entries.items():
        if uid not in entries:
            base_hours += entry.gpu_hours
            base_cost += entry.cost
    return replace(
        ledger,
        metered_at=window_end,
        base_gpu_hours=base_hours,
        base_cost=base_cost,
        entries=entries,
    )


def roll_over(ledger: Ledger, *, period: tuple[datetime, datetime]) -> Ledger:
    """Close the ledger's period into its history and start `period` from zero.

    Meter up to the old period's end first (`meter(ledger, pods, now=ledger.period_end)`).
    """
    closed = {
        "start": format_time(ledger.period_start),
        "end": format_time(ledger.period_end),
        "usedGPUHours": round(ledger.used_gpu_hours, 6),
        "estimatedCost": round(ledger.cost, 2),
    }
    history = (*ledger.history, closed)[-HISTORY_LENGTH:]
    return Ledger(
        budget_uid=ledger.budget_uid,
        period_start=period[0],
        period_end=period[1],
        metered_at=period[0],
        history=history,
    )


def releasable(pod: PodRecord, ledgers: Sequence[Ledger | None], *, now: datetime) -> bool:
    """Whether the metering finalizer can go: the pod has ended and every budget it matches
    (`ledgers`, None for a budget whose ledger is not committed yet) holds its final charge."""
    if pod.end(now) is None:
        return False
    for ledger in ledgers:
        if ledger is None:
            return False
        entry = ledger.entries.get(pod.uid)
        if entry is None or not entry.closed:
            # A pod that ended before this period began has nothing to charge here.
            end = pod.end(now)
            if not (entry is None and end is not None and end <= ledger.period_start):
                return False
    return True
