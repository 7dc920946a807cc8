"""Budgets that queue instead of refuse: GPUBudget `whenExhausted: Queue` (docs/queueing.md).

A pod a queueing budget cannot pay for now is admitted and created with the scheduling gate
`finops.comptroller.dev/budget`: it stays `SchedulingGated`, holding no GPU, until the operator
removes the gate (controller.operator.queue). Gates can only be added when a pod is created, so
the mutating webhook adds it at Pod CREATE; everything else is admitted and queues through its
pods:

- a Pod CREATE under `Exhausted` is gated when the budget is spent;
- under `Projected` every pod the budget covers is gated, and the operator, alone and in order,
  releases what fits in what remains after the reservations of the pods it released before:
  concurrent submissions through any number of webhook replicas cannot together overspend;
- a controller or an ML job (its pods queue when they are created), an UPDATE or a scale-up is
  admitted, with a warning saying its pods will wait;
- a workload Kueue admits (`kueue.x-k8s.io/queue-name`) is not gated while the budget can pay:
  Kueue's suspend and gate stay in charge of when it runs. A Kueue Pod the budget cannot pay for
  waits for both, Kueue's gate and the budget's (Kueue's quota is not a GPU-hour budget); a
  controller or an ML job Kueue admits only gets the budget's verdict as a warning, as its pods are
  judged when they are created. The label is only a claim a user writes: a Pod is Kueue's only
  when Kueue gated it too (`kueue.x-k8s.io/admission`), and is gated and judged as any other until
  then (`kueue_managed`);
- the validating webhook, which sees the pod after mutation, admits a gated pod with a warning
  saying why it waits; a pod the mutating webhook did not gate (it was down, with
  `failurePolicy: Ignore`) is judged as under `Deny`, so a budget is never bypassed;
- the gate is the operator's to take off, and Kueue's admission gate Kueue's: the webhook tells
  the engine which gates whoever makes the request owns (`gates_owned`), and a pod anyone else
  ungates is denied, whatever remains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.constants import BUDGET_GATE, KUEUE_GATE, KUEUE_QUEUE_LABEL, QUEUED_ANNOTATION
from controller.engine.api import Violation
from controller.engine.workloads import escape


@dataclass(frozen=True)
class Queued:
    """What a queueing budget says about one workload."""

    deny: list[Violation]
    """What still denies (only a pod the mutating webhook should have gated and did not)."""
    warn: list[Violation]
    """What the user is told: the pod waits, or the workload's pods will."""
    gate: str = ""
    """Why the pod is gated, when mutation must gate it ("" when not)."""
    holds: bool = False
    """The pod has the budget's gate already and keeps it (mutation must not hand it to Kueue)."""


def has_gate(pod_spec: Mapping[str, Any], name: str = BUDGET_GATE) -> bool:
    return name in gate_names(pod_spec)


def gate_names(pod_spec: Mapping[str, Any]) -> frozenset[str]:
    gates = pod_spec.get("schedulingGates") or ()
    return frozenset(g["name"] for g in gates if isinstance(g, Mapping) and isinstance(g.get("name"), str))


QUEUEING_GATES = frozenset({BUDGET_GATE, KUEUE_GATE})
"""The scheduling gates that hold a pod for a queue: the budget's (the operator takes it off) and
Kueue's admission gate (Kueue takes it off)."""


def gates_taken_off(update: Any) -> frozenset[str]:
    """The queueing gates an UPDATE of a pod takes off (what starts a queued pod)."""
    new, old = update.new, update.old
    if not new.is_pod:
        return frozenset()
    return (gate_names(old.templates[0].spec) & QUEUEING_GATES) - gate_names(new.templates[0].spec)


def claims_released(update: Any) -> bool:
    """An UPDATE that takes the last scheduling gate off a pod with ResourceClaims, before it is bound.

    What its claims hold can change while it waits (an unallocated claim deleted and created again
    with other devices), with no update of the pod to judge: so letting it go to the scheduler is
    judged as its creation, with the claims as they are now."""
    new = update.new
    if not new.is_pod or new.manifest.get("spec", {}).get("nodeName"):
        return False
    spec = new.templates[0].spec
    if not spec.get("resourceClaims"):
        return False
    # The last gate off: while one is left, the pod is not going to the scheduler yet.
    return bool(gate_names(update.old.templates[0].spec)) and not gate_names(spec)


def self_released(budget: Any, gate: str = BUDGET_GATE) -> Violation:
    """A pod a queueing budget covers whose gate someone other than its owner took off."""
    if gate == KUEUE_GATE:
        return Violation(
            policy=budget.name,
            rule="budget",
            key=budget.name,
            message=f"GPU budget {budget.name} pays for this pod when Kueue admits it: Kueue's scheduling "
            f"gate {KUEUE_GATE} is taken off by Kueue, not by hand",
            summary=f"only Kueue takes {KUEUE_GATE} off a pod {budget.name} pays for",
            fix=f"# leave {KUEUE_GATE} on the pod for Kueue to take off; to run without Kueue, create the "
            f"pod again without {KUEUE_QUEUE_LABEL} and the gate, and {budget.name} queues it (if Kueue "
            "runs as another user, name it to Comptroller's webhook: --kueue-controller)",
        )
    return Violation(
        policy=budget.name,
        rule="budget",
        key=budget.name,
        message=f"GPU budget {budget.name} queues this pod: its scheduling gate {BUDGET_GATE} is taken "
        "off by Comptroller's operator when the budget can pay for it, in turn with the pods "
        "queued before it, not by hand",
        summary=f"only Comptroller's operator releases pods queued by {budget.name}",
        fix=f"# leave {BUDGET_GATE} on the pod: `kubectl describe pod` shows why it waits (a larger "
        f"gpuHours releases it sooner, and so does a FinOpsException for {budget.name})",
    )


def kueue_managed(view: Any, *, old: Any = None) -> bool:
    """Whether Kueue decides when the workload runs. A pod's label is only believed when Kueue's
    own gate is on it too, or was before the update (Kueue admitting the pod takes it off, with the
    flavor's nodeSelector: anyone else taking it off is refused before this is asked); a
    controller's pods are judged again when they are created.

    When our mutating webhook is called before Kueue's (the API server orders them by configuration
    name), a Pod with the label alone is gated as any other; when Kueue's gate comes, the API
    server calls ours again (`reinvocationPolicy: IfNeeded`), which takes its own gate back off
    (`handed_to_kueue`). Called after Kueue's, ours sees Kueue's gate at once. Where Kueue does
    not manage the pod, the budget's gate stays: the label alone never skips the queue."""
    if KUEUE_QUEUE_LABEL not in view.labels() and KUEUE_QUEUE_LABEL not in view.meta_labels:
        return False
    if not view.is_pod or has_gate(view.templates[0].spec, KUEUE_GATE):
        return True
    return old is not None and old.is_pod and has_gate(old.templates[0].spec, KUEUE_GATE)


def judge(
    budget: Any, view: Any, operation: str, found: list[Violation], *, mutate: bool, old: Any = None
) -> Queued:
    """A queueing budget's verdict on a workload it covers, given what it would deny (`found`)."""
    spec = budget.spec
    projected = spec.admission == "Projected"
    waiting = found[0].summary if found else "it fits in what remains (pods are released in order)"
    kueue = kueue_managed(view, old=old)
    if kueue and not (found and view.is_pod and operation == "CREATE"):
        return Queued([], [_note(budget, f"Kueue admits this workload; for {budget.name}: {waiting}")]
                      if found else [])
    # From here on, a Kueue Pod is one the budget cannot pay for: it waits for the budget as well.
    if view.is_pod and operation == "UPDATE" and found:
        return Queued(found, [])  # the gate taken off a pod the budget cannot pay for (`gates_taken_off`)
    if not view.is_pod or operation != "CREATE":
        if not found:
            return Queued([], [])
        return Queued([], [_note(budget, f"its new pods will wait SchedulingGated: {waiting}")])
    if not found and not projected:
        return Queued([], [])  # room now: not gated
    if has_gate(view.templates[0].spec):
        also = "Kueue admits this pod, and it also " if kueue else "this pod "
        return Queued([], [_note(budget, f"{also}waits SchedulingGated ({waiting}); "
                                         "`kubectl describe pod` shows its place")], holds=True)
    if mutate:
        return Queued([], [], gate=waiting)
    return Queued(found, [])  # not gated: the mutating webhook did not run on it


def _note(budget: Any, text: str) -> Violation:
    return Violation(
        policy=budget.name,
        rule="budget",
        key=budget.name,
        message=f"GPU budget {budget.name} queues: {text}",
        summary=f"queued by {budget.name}: {text}",
        fix=f"# nothing to change: the operator releases queued pods when {budget.name} has room "
        "(a new period, a larger gpuHours, a FinOpsException, or a finished workload of the team)",
        enforcement="Warn",
    )


def handed_to_kueue(view: Any, operation: str) -> list[dict[str, Any]]:
    """At a Pod's creation, once Kueue's gate is on it and every budget can pay for it: the RFC 6902
    operations taking back the budget's gate and note our first call put on it (Kueue decides
    when it runs)."""
    if operation != "CREATE" or not view.is_pod or not kueue_managed(view):
        return []
    spec = view.manifest.get("spec") or {}
    gates = spec.get("schedulingGates") or ()
    ops: list[dict[str, Any]] = [
        {"op": "remove", "path": f"/spec/schedulingGates/{index}"}
        for index in reversed(range(len(gates)))
        if isinstance(gates[index], Mapping) and gates[index].get("name") == BUDGET_GATE
    ]
    annotations = (view.manifest.get("metadata") or {}).get("annotations") or {}
    if ops and QUEUED_ANNOTATION in annotations:
        ops.append({"op": "remove", "path": f"/metadata/annotations/{escape(QUEUED_ANNOTATION)}"})
    return ops


def gate(view: Any, reasons: Mapping[str, str]) -> dict[str, Any]:
    """Gate a Pod: annotate (on the view) which budgets it waits for and why, so `kubectl describe
    pod` shows it, and return the RFC 6902 operation adding the scheduling gate."""
    text = "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
    view.add_annotation(QUEUED_ANNOTATION, text)
    spec = view.manifest.get("spec") or {}
    if spec.get("schedulingGates"):
        return {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": BUDGET_GATE}}
    return {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": BUDGET_GATE}]}
