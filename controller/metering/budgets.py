"""GPUBudgets: the status, conditions and threshold alerts projected from a
metering ledger. Pure (no client, no clock); `accounting.py` persists what these return.

The status is a projection: everything in it can be recomputed from the ledger and the pods, so a
lost status write is repaired by the next tick. Thresholds are the one thing announced only
once per period: the ledger records which were reached, in the same write that commits the usage.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from controller.constants import API_VERSION, DEFAULT_GROUP_LABELS
from controller.engine.budgets import period_bounds
from controller.engine.matching import Selector
from controller.engine.models import GPUBudget
from controller.engine.rules.budget import format_gpu_hours
from controller.engine.timestamps import parse_time
from controller.metering.usage import (
    CellOf,
    Ledger,
    PodRecord,
    format_time,
    meter,
    new_ledger,
    roll_over,
)

PERIODS = ("Daily", "Weekly", "Monthly")


@dataclass(frozen=True)
class Budget:
    """The parts of a GPUBudget metering needs (the API server has validated the spec)."""

    name: str
    uid: str
    generation: int
    selector: Selector
    gpu_hours: float
    period: str
    thresholds: tuple[int, ...]
    prices: Mapping[str, Any]
    resources: tuple[str, ...] | None = None
    """GPU resources this budget counts (`spec.resources`); None: all the operator counts."""
    admission: str = "Exhausted"
    when_exhausted: str = "Deny"
    """`Queue`: pods it cannot pay for wait SchedulingGated (controller.metering.queue)."""
    created: datetime | None = None
    """Its `creationTimestamp`: which budget holds a pod's showback cells (`first_covering`)."""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Budget:
        """Validated by the engine's GPUBudget model, the one loader every door uses: a spec that
        admission would leave out is not metered either (PolicyError names the field)."""
        spec_object = {
            "apiVersion": API_VERSION,
            "kind": "GPUBudget",
            "metadata": _plain(obj.get("metadata") or {}),
            "spec": _plain(obj.get("spec") or {}),
        }
        model = GPUBudget.from_object(spec_object)  # status is the operator's own: not validated here
        spec = model.spec
        metadata = obj.get("metadata") or {}
        return cls(
            name=model.name,
            uid=str(metadata.get("uid", "")),
            generation=int(model.metadata.generation or 0),
            selector=spec.selector.compiled,
            gpu_hours=float(spec.gpu_hours),
            period=spec.period,
            thresholds=tuple(sorted(set(spec.alert_thresholds))),
            prices=dict(spec.price_per_gpu_hour),
            # Unset: every resource the operator counts (`--gpu-resource`), as before.
            resources=tuple(spec.resources) if (obj.get("spec") or {}).get("resources") else None,
            admission=spec.admission,
            when_exhausted=spec.when_exhausted,
            created=parse_time(metadata.get("creationTimestamp")),
        )

    def draws_on(self, pod: PodRecord, held: Collection[str] = ()) -> bool:
        """Whether this budget charges `pod`: its selector matches the pod's labels and its
        resources count some of the pod's GPUs; or its ledger charges the pod already (`held`,
        see `held_by`), whatever its labels say now."""
        if pod.uid in held:
            return True
        return bool(self.selector.matches(pod.labels)) and pod.gpus_of(self.resources) > 0

    def meters(self, pod: PodRecord, held: Collection[str] = ()) -> bool:
        """Whether a metering tick of this budget takes `pod` in: its selector matches the pod's
        labels, or its ledger charges the pod already."""
        return pod.uid in held or bool(self.selector.matches(pod.labels))

    def percent_used(self, used: float) -> float:
        if self.gpu_hours <= 0:
            return 100.0 if used > 0 else 0.0
        return 100.0 * used / self.gpu_hours


def reached_thresholds(budget: Budget, ledger: Ledger) -> tuple[int, ...]:
    """Every alert threshold the ledger's usage has reached, lowest first."""
    percent = budget.percent_used(ledger.used_gpu_hours)
    # A hair of tolerance so that exactly 80.0 % counts as reaching 80 despite float sums.
    return tuple(t for t in budget.thresholds if percent + 1e-9 >= t)


def threshold_message(budget: Budget, ledger: Ledger, threshold: int) -> str:
    used = ledger.used_gpu_hours
    remaining = max(budget.gpu_hours - used, 0.0)
    return (
        f"GPUBudget {budget.name} reached {threshold}% of its {format_gpu_hours(budget.gpu_hours)} GPU-hours "
        f"for the {budget.period.lower()} period starting {format_time(ledger.period_start)}: "
        f"{format_gpu_hours(used)} used, {format_gpu_hours(remaining)} left"
    )


def _condition(
    previous: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> dict[str, Any]:
    old = next((c for c in previous if c.get("type") == type_), None)
    # lastTransitionTime moves only when the status flips, as kubectl and alerting expect.
    since = old.get("lastTransitionTime") if old and old.get("status") == status else format_time(now)
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def project_status(
    budget: Budget,
    ledger: Ledger,
    *,
    running_gpus: float,
    previous: Mapping[str, Any] | None,
    now: datetime,
    queued: int = 0,
    reserved: float = 0.0,
) -> dict[str, Any]:
    """The GPUBudget status for this ledger (docs/crds.md#gpubudget, docs/metering.md)."""
    previous = previous or {}
    used = ledger.used_gpu_hours
    remaining = max(budget.gpu_hours - used, 0.0)
    percent = budget.percent_used(used)
    exhausted = used >= budget.gpu_hours
    limit = format_gpu_hours(budget.gpu_hours)
    old_conditions = previous.get("conditions") or ()
    reached = reached_thresholds(budget, ledger)
    levels = ", ".join(f"{t}%" for t in budget.thresholds) or "none"
    conditions = [
        _condition(
            old_conditions,
            "Exhausted",
            "True" if exhausted else "False",
            "BudgetExhausted" if exhausted else "WithinBudget",
            f"{format_gpu_hours(used)} of {limit} GPU-hours used ({percent:.1f}%)",
            now,
            budget.generation,
        ),
        _condition(
            old_conditions,
            "ThresholdReached",
            "True" if reached else "False",
            str(max(reached)) if reached else "BelowThresholds",
            (
                f"{max(reached)}% alert threshold reached ({percent:.1f}% used)"
                if reached
                else f"{percent:.1f}% used; thresholds {levels}"
            ),
            now,
            budget.generation,
        ),
    ]
    return {
        "observedGeneration": budget.generation,
        "period": {"start": format_time(ledger.period_start), "end": format_time(ledger.period_end)},
        "usedGPUHours": round(used, 6),
        "remainingGPUHours": round(remaining, 6),
        "remainingPercent": round(100.0 * remaining / budget.gpu_hours, 2) if budget.gpu_hours > 0 else 0.0,
        "runningGPUs": running_gpus,
        "estimatedCost": round(ledger.cost, 2),
        "history": [dict(h) for h in ledger.history],
        "thresholdsReached": list(reached),
        "lastMeteredAt": format_time(ledger.metered_at or now),
        "conditions": conditions,
        "queuedPods": queued,
        "reservedGPUHours": round(reserved, 6),
    }


def advance(
    budget: Budget,
    ledger: Ledger | None,
    pods: Sequence[PodRecord],
    *,
    now: datetime,
    cell_of: CellOf | None = None,
    present: Collection[str] | None = None,
    group_labels: Sequence[str] = DEFAULT_GROUP_LABELS,
) -> tuple[Ledger, tuple[int, ...]]:
    """One metering tick of one budget: the new ledger, and the thresholds to announce now.

    `pods` are the visible pods that match the budget (`cell_of` and `present`: see `meter`). A
    missing ledger, or one of another budget of the same name, starts the current period afresh
    from the visible pods. A ledger whose period is over is metered to its end and closed into
    history first (also when the budget's `period` changed), so an operator that was down across a
    period boundary splits usage right.
    """
    last = ledger.metered_at if ledger is not None and ledger.budget_uid == budget.uid else None
    if last is not None and now < last:
        # A clock behind the last commit (a peer's, at a hand-over) never takes a ledger back into
        # the period it closed: that would close it a second time, into history and the cells.
        now = last
    bounds = period_bounds(budget.period, now)
    charge = {"prices": budget.prices, "resources": budget.resources, "cell_of": cell_of}
    if ledger is None or ledger.budget_uid != budget.uid:
        ledger = new_ledger(budget_uid=budget.uid, period=bounds, group_labels=group_labels)
    elif (ledger.period_start, ledger.period_end) != bounds:
        ledger = meter(ledger, pods, now=min(now, ledger.period_end), present=present, **charge)
        ledger = roll_over(ledger, period=bounds, pods=pods, **charge)
    if ledger.group_labels != tuple(group_labels):
        ledger = replace(ledger, group_labels=tuple(group_labels))  # new cells group by the new labels
    ledger = meter(ledger, pods, now=now, present=present, **charge)
    reached = reached_thresholds(budget, ledger)
    announce = tuple(t for t in reached if t not in ledger.thresholds)
    if announce:
        ledger = replace(ledger, thresholds=tuple(sorted({*ledger.thresholds, *announce})))
    return ledger, announce


def held_by(budget: Budget, ledger: Ledger | None) -> frozenset[str]:
    """Uids of the running pods `ledger` charges for `budget` already. A budget keeps charging a pod
    until it ends, whatever its labels become: admission refuses relabelling a Pod out of a budget
    that draws on it, and a relabel it did not judge (the webhook down under `failurePolicy:
    Ignore`) or an edit of the budget's selector must not let the GPUs it holds run uncharged."""
    if ledger is None or ledger.budget_uid != budget.uid:
        return frozenset()
    return frozenset(ledger.entries)


def first_covering(pod: PodRecord, budgets: Iterable[Budget]) -> Budget | None:
    """The budget that prices a pod in showback and holds its per-day cells, of those whose
    selector matches it and whose resources count some of its GPUs: the first by name of those
    created before the pod started, else the one created first after.

    One per pod, so the ledgers' cells add up without counting a pod twice, and the same one for
    the pod's whole life when budgets are added: a budget created after the pod started never
    takes its cells over from one that already held them. Editing a selector, or a relabel
    admission did not judge (webhook down, pod Terminating), can still move them (docs/metering.md).
    """
    since = pod.started or pod.created or _EPOCH
    covering = [b for b in budgets if b.draws_on(pod)]
    return min(covering, key=lambda b: (max(b.created or _EPOCH, since), b.name), default=None)


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    """kopf hands handlers read-only Mapping views; the models validate plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
