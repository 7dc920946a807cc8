"""Which SchedulingGated pods a queueing budget releases now (docs/queueing.md). Pure: the
operator (`controller.operator.accounting`) feeds it pod records, budgets and their committed
usage, and removes the gates it names.

The order is one queue per budget: priority (the pod's `spec.priority`, from its PriorityClass)
first, then the oldest. A gang (`PodRecord.gang`: the pods of one Job, JobSet, Kubeflow job,
RayCluster or LeaderWorkerSet group) takes the place of its highest-priority, oldest pod and is
released whole or not at all, so a distributed job never half-starts. The queue is strict: a gang
that does not fit blocks those behind it on the same budget, so a large job is not starved by a
stream of small ones.

What fits:
- `admission: Exhausted`: the budget has room (used < gpuHours), as admission would admit;
- `admission: Projected`: the gang's worst case (GPU-equivalents x hours until its `expires_at`,
  or the period's end) fits in what remains after the usage so far and the reservations: the
  worst case, from now, of every pod the budget covers that is neither gated nor finished. The
  reservations are the pods themselves (a released pod reserves until it ends; a deleted one
  reserves nothing), so they survive an operator restart with nothing to persist, and every
  release is decided here, by one active operator, one after the other: submissions racing
  through several webhook replicas cannot together overspend.

A pod gated by a budget that no longer queues it (deleted, or switched to `Deny`) is released:
a gate nobody would ever remove must not strand it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from controller.engine.budgets import hours_left
from controller.metering.budgets import Budget
from controller.metering.usage import PodRecord, format_time

EPSILON = 1e-9


@dataclass(frozen=True)
class Usage:
    """What a budget's committed ledger says now."""

    used: float
    period_end: datetime
    held: frozenset[str] = frozenset()
    """Uids of the running pods the ledger charges (`held_by`): the budget draws on them still."""


@dataclass
class Plan:
    release: list[PodRecord] = field(default_factory=list)
    waiting: dict[str, list[list[PodRecord]]] = field(default_factory=dict)
    """Budget name -> the gangs still waiting on it, in queue order (their place: index + 1)."""
    reserved: dict[str, float] = field(default_factory=dict)
    """Budget name -> GPU-hours the released, unfinished pods may still use this period
    (`Projected` budgets), after this plan's releases."""


def worst_case(pod: PodRecord, budget: Budget, usage: Usage, now: datetime) -> float:
    """GPU-hours a pod may still use of a budget this period, running from now."""
    gpus = pod.gpus_of(budget.resources)
    return gpus * hours_left(pod.expires, now, usage.period_end)


def plan_release(
    pods: Sequence[PodRecord],
    budgets: Sequence[Budget],
    usage: Mapping[str, Usage],
    *,
    now: datetime,
    waived: Callable[[PodRecord, Budget], bool] | None = None,
) -> Plan:
    """Which gated pods to release now, and where the rest wait (see the module docstring).
    `usage` is the budgets' committed usage by name (a queueing budget with none yet, not
    metered since this operator started, releases nothing). `waived(pod, budget)`: a
    FinOpsException lets the pod past that budget (as admission would not have gated it)."""
    plan = Plan()
    queueing = [b for b in budgets if b.when_exhausted == "Queue"]

    live = [p for p in pods if p.end(now) is None]
    remaining: dict[str, float] = {}
    for budget in queueing:
        name = budget.name
        if name not in usage:
            continue
        if budget.admission == "Projected":
            reserved = sum(
                worst_case(p, budget, usage[name], now)
                for p in live
                if not p.gated and budget.draws_on(p, usage[name].held)
            )
            plan.reserved[name] = reserved
            remaining[name] = budget.gpu_hours - usage[name].used - reserved
        else:
            remaining[name] = budget.gpu_hours - usage[name].used

    gangs: dict[str, list[PodRecord]] = {}
    for pod in live:
        if pod.gated:
            gangs.setdefault(pod.gang or f"Pod/{pod.uid}", []).append(pod)

    def place(members: list[PodRecord]) -> tuple[int, datetime, str]:
        first = min(members, key=lambda p: (-p.priority, p.created or now, p.name))
        return (-first.priority, first.created or now, first.gang or first.uid)

    def queues(budget: Budget, pod: PodRecord) -> bool:
        return budget.draws_on(pod) and not (waived is not None and waived(pod, budget))

    blocked: set[str] = set()
    for key in sorted(gangs, key=lambda k: place(gangs[k])):
        members = gangs[key]
        on = [b for b in queueing if any(queues(b, p) for p in members)]
        if not on:
            plan.release.extend(members)  # nothing queues it any more
            continue
        needs: dict[str, float] = {}
        fits = True
        for budget in on:
            name = budget.name
            if name in blocked or name not in remaining:
                fits = False
                continue
            if budget.admission == "Projected":
                need = sum(worst_case(p, budget, usage[name], now) for p in members if queues(budget, p))
                needs[name] = need
                fits = fits and need <= remaining[name] + EPSILON
            else:
                fits = fits and remaining[name] > EPSILON
        if fits:
            plan.release.extend(members)
            for name, need in needs.items():
                remaining[name] -= need
                plan.reserved[name] = plan.reserved.get(name, 0.0) + need
            continue
        for budget in on:
            name = budget.name
            blocked.add(name)
            plan.waiting.setdefault(name, []).append(members)
    return plan


def figures(budget: Budget, pods: Sequence[PodRecord], usage: Usage, *, now: datetime) -> tuple[int, float]:
    """`(pods waiting on the budget, GPU-hours reserved)` for its status (queueing budgets only)."""
    if budget.when_exhausted != "Queue":
        return 0, 0.0
    queued = reserved = 0.0
    for pod in pods:
        if pod.end(now) is not None or not budget.draws_on(pod, usage.held):
            continue
        if pod.gated:
            queued += 1
        elif budget.admission == "Projected":
            reserved += worst_case(pod, budget, usage, now)
    return int(queued), reserved


def waiting_message(budget: Budget, usage: Usage, *, place: int, of: int, gang: Sequence[PodRecord]) -> str:
    """What a gated pod's BudgetQueued Event says: why, where in the queue, and what releases it."""
    left = max(budget.gpu_hours - usage.used, 0.0)
    first = gang[0]
    together = f" with the {len(gang)} pods of {first.gang}" if first.gang and len(gang) > 1 else ""
    return (
        f"waits SchedulingGated for GPU budget {budget.name}: place {place} of {of} in its queue{together}; "
        f"{left:.2f} of {budget.gpu_hours:g} GPU-hours left. Released when the budget has room: it resets "
        f"at {format_time(usage.period_end)}, or sooner when gpuHours is raised, a FinOpsException is "
        "granted or a workload of the team ends"
    )
