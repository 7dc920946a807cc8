"""Rule family `budget`: GPU-hour budgets at admission (docs/crds.md#gpubudget).

A budget applies to a workload that requests GPUs and whose effective labels match its selector.
`Exhausted` denies once the period's usage reached `gpuHours`. `Projected` also denies a workload
whose worst case does not fit in what remains: all its GPUs (per-pod GPUs x replicas) running
from now until its `expires_at`, capped at the end of the period (what it draws from this
period's budget), or until the period ends when it has no `expires_at`.

At UPDATE, when the caller passes the old object, only what the update adds is judged: more GPUs
(a template whose instance type changed counts in full), and under `Projected` the extra hours a
later `expires_at` gives the GPUs it keeps. Restarting or scaling down a running workload never
hits the budget (controller.engine.update). Labels choose the budget, so a relabel is judged for
what it moves: into a budget, as a creation under it; a Pod out of a budget that draws on it, not
at all (`left`): the budget would stop charging it.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from controller.engine.api import Draw, Violation
from controller.engine.budgets import current_usage, hours_left, max_gpus_for
from controller.engine.expiry import format_annotation, format_label
from controller.engine.messages import fix_fields, gpus_text
from controller.engine.models import DEFAULT_INSTANCE_TYPE_KEYS
from controller.engine.rules import Context
from controller.engine.rules.expiry import expires_at, find


def format_gpu_hours(value: float) -> str:
    """GPU-hours as a person reads them; budgets under one GPU-hour keep two significant digits
    (a tiny daily cap must not read as `0.0 of 0.0`). The operator's Events and conditions use it too."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1 or value <= 0:
        return f"{value:,.1f}"
    return f"{value:.2g}"


def validate(budget: Any, view: Any, ctx: Context) -> list[Violation]:
    spec = budget.spec
    gpus = view.gpus(spec.resource_tuple)
    if gpus <= 0 or not spec.selector.compiled.matches(view.labels()):
        return []
    update = ctx.update
    # At UPDATE only what the update adds is charged: new GPUs (a retyped template in full), and
    # under Projected the extra time a later expires_at gives the GPUs it keeps.
    added = gpus if update is None else update.added_gpus(spec.resource_tuple, DEFAULT_INSTANCE_TYPE_KEYS)
    projected = spec.admission == "Projected"
    used, period_end = current_usage(budget, ctx.now)
    hours = extended = 0.0
    if projected:
        hours = _hours_left(view, ctx, period_end)
        if update is not None and gpus > added:
            extended = (gpus - added) * max(hours - _hours_left(update.old, ctx, period_end), 0.0)
    if added <= 0 and extended <= 0:
        return []
    remaining = spec.gpu_hours - used
    resets = format_annotation(period_end)
    if used >= spec.gpu_hours:
        used_text, limit_text = format_gpu_hours(used), format_gpu_hours(spec.gpu_hours)
        adds = ""
        if update is not None:
            adds = f"; this update adds {gpus_text(added)}" if added else "; this update runs its GPUs longer"
        return [
            Violation(
                policy=budget.name,
                rule="budget",
                key=budget.name,
                message=f"GPU budget {budget.name} is exhausted: {used_text} of {limit_text} "
                f"GPU-hours used this {spec.period.lower()} period{adds}; it resets at {resets}",
                summary=f"GPU budget exhausted ({used_text}/{limit_text} GPU-hours)",
                fix=f"# nothing fits until {resets}: ask for a larger budget or a FinOpsException "
                f"(rules: [budget], policies: [{budget.name}])",
            )
        ]
    if not projected:
        return []
    together = ctx.drawn.get(budget.name) if ctx.drawn else None
    drawn = together.before(view.shared_gpus(spec.resource_tuple), hours) if together else 0.0
    remaining = max(remaining - drawn, 0.0)
    needed = added * hours + extended
    if needed <= remaining + 1e-9:
        return []
    charged = added or gpus
    return [
        _projected(
            budget,
            view,
            ctx,
            gpus=charged,
            hours=needed / charged,
            remaining=remaining,
            period_end=period_end,
            drawn=drawn,
        )
    ]


def draw(budget: Any, view: Any, ctx: Context) -> Draw:
    """What a workload a `Projected` budget covers draws from it at worst, as one judged together
    with others (`Context.drawn`) counts it: the GPUs its pods hold on their own and those of the
    ResourceClaims they share, from now until its `expires_at` or the period's end."""
    _, period_end = current_usage(budget, ctx.now)
    hours = _hours_left(view, ctx, period_end)
    resources = budget.spec.resource_tuple
    return Draw(float(view.held_gpus(resources) * hours), view.shared_gpus(resources), hours)


def _hours_left(view: Any, ctx: Context, period_end: datetime) -> float:
    return hours_left(expires_at(view, ctx.expiry_key), ctx.now, period_end)


def _projected(
    budget: Any,
    view: Any,
    ctx: Context,
    *,
    gpus: float,
    hours: float,
    remaining: float,
    period_end: datetime,
    drawn: float = 0.0,
) -> Violation:
    fit_hours = remaining / gpus
    fit_until = (ctx.now + timedelta(hours=fit_hours)).replace(second=0, microsecond=0)
    fewer = max_gpus_for(remaining, hours)
    options = []
    if fit_until - ctx.now >= timedelta(minutes=1):
        options.append(
            f"{gpus_text(gpus)} fit until {format_annotation(fit_until)} ({_duration(fit_until - ctx.now)})"
        )
    if fewer:
        options.append(
            f"{gpus_text(fewer)} fit{'s' * (fewer == 1)} for the requested "
            f"{_duration(timedelta(hours=hours))}"
        )
    fits = "; ".join(options) or "nothing fits"
    needed, left = format_gpu_hours(gpus * hours), format_gpu_hours(remaining)
    after = f" after the {format_gpu_hours(drawn)} GPU-hours of the pods judged with it" if drawn else ""
    message = (
        f"worst case {gpus_text(gpus)} x {format_gpu_hours(hours)}h = {needed} GPU-hours exceeds the "
        f"{left} GPU-hours left in budget {budget.name}{after} until {format_annotation(period_end)}: {fits}"
    )
    note = f"{budget.name} has {left} GPU-hours left: {fits}"
    if fit_until - ctx.now >= timedelta(minutes=1):
        key = ctx.expiry_key
        _, source, path = find(view, key)
        if source == "label":
            fix = fix_fields([((*path, "metadata", "labels"), {key: format_label(fit_until)})], note=note)
        else:
            fix = fix_fields(
                [((*path, "metadata", "annotations"), {key: format_annotation(fit_until)})], note=note
            )
    else:
        fix = {"fix": f"# {note}"}
    return Violation(
        policy=budget.name,
        rule="budget",
        key=budget.name,
        message=message,
        summary=f"needs {needed} GPU-hours, {left} left in {budget.name}",
        **fix,
    )


def _duration(delta: timedelta) -> str:
    minutes = math.floor(delta.total_seconds() / 60)
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return "".join(parts) or "under a minute"


def left(budget: Any, update: Any) -> Violation:
    """A Pod relabelled out of a budget that draws on it: the budget's ledger would stop charging
    its GPUs from then on, and no budget may be left that way. The fix puts back the labels the
    update changed or removed."""
    old, new = update.old.labels(), update.new.labels()
    kept = {key: value for key, value in old.items() if new.get(key) != value}
    moves = [f"{key} from {value} to {new[key]}" if key in new else f"removes {key}={value}"
             for key, value in sorted(kept.items())]
    moves += [f"adds {key}={new[key]}" for key in sorted(new) if key not in old]
    changed = ", ".join(moves) or "its labels"
    keep = ", ".join(f"{key}={value}" for key, value in sorted(kept.items()))
    note = (f"keep {keep}" if keep else "leave its labels as they were") + (
        f": the pod stays charged to {budget.name} until it ends")
    return Violation(
        policy=budget.name,
        rule="budget",
        key=budget.name,
        message=f"GPU budget {budget.name} charges this pod's GPUs; this update changes {changed}, "
        f"which would take it out of {budget.name}. A pod keeps the budget it was created under: "
        "to move the work, delete the pod and create it with the new labels",
        summary=f"relabelling would take the pod out of {budget.name}",
        **fix_fields([(("metadata", "labels"), kept)], note=note) if kept else {"fix": f"# {note}"},
    )
