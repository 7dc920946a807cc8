"""When can mutation change a workload? The answer as a CEL expression, for the API server.

The mutating webhook's `matchConditions` carry `mutation_condition(policies)`, so the API server
calls `/mutate` only for objects the engine might change. A pod that already carries every label
and its `expires_at` (every pod a labelled Deployment or Job creates) then costs one webhook round
trip at admission instead of two.

The expression must never be false for a pod the engine would patch, and it is kept simple enough
to show that. On a pod, mutation (`rules/labels.py`, `rules/expiry.py`) only ever adds:

- a required label the pod lacks, when its policy can fill it: a `default`, or
  `inheritFromNamespace` (copying from the controller's metadata is for pod templates only);
- a policy's expiry key, when the policy has a default, its `requiredWhen` holds for the pod's
  labels, and the pod carries the key neither as an annotation nor as a label.

So a pod is *settled*, and left alone, when it carries every label a policy could fill and, for
every expiry default, the key is there or `requiredWhen` does not hold. Which policies match,
which namespace labels exist and which exceptions apply are ignored: each can only take
mutations away. Only pods are ever settled: they are what every Deployment, Job and scale-up
creates again and again, and their shape is fixed by the API server, so the expression can never
fail on one. Workload controllers and the ML kinds are rare by comparison and are always sent,
unless no policy requires a label or defaults an expiry (then nothing is: the expression is `false`).

`tests/engine/test_mutation_scope.py` holds the engine to this by property, with a CEL evaluator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from controller.engine.models import FinOpsPolicy, is_label_value

CONDITION_NAME = "comptroller-may-mutate"
"""The matchCondition Comptroller owns on its mutating webhook; others there are left alone."""

_LABELS = "object.metadata.labels"
_ANNOTATIONS = "object.metadata.annotations"


def mutation_condition(policies: Iterable[FinOpsPolicy], *, queueing: bool = False) -> str:
    """A CEL expression over `request` and `object`: false only for a pod mutation leaves as it is.

    `queueing`: some GPUBudget has `whenExhausted: Queue`, so any pod may need the budget's
    scheduling gate, which only mutation at its creation can add (controller.engine.queueing):
    every object is sent."""
    if queueing:
        return "true"
    policies = list(policies)
    fillable = sorted(
        {
            rule.key
            for p in policies
            if p.spec.labels is not None
            for rule in p.spec.labels.required
            if rule.default is not None or p.spec.labels.inherit_from_namespace
        }
    )
    expiries = [
        (p.spec.expiry, p.spec.expiry.required_when_sets)
        for p in policies
        if p.spec.expiry is not None
        and p.spec.expiry.default is not None
        and p.spec.expiry.required_when_sets is not None
    ]
    if not expiries and not any(p.spec.labels and p.spec.labels.required for p in policies):
        return "false"  # nothing to add to anything
    # A controller is sent whenever a policy requires labels: its own may be copied to its template.
    settled = ['request.kind.group == "" && request.kind.kind == "Pod" && has(object.metadata)']
    if fillable:
        settled.append(f"has({_LABELS}) && {_literal(fillable)}.all(k, k in {_LABELS})")
    for expiry, required_when in expiries:
        key = _literal(expiry.key)
        present = f"(has({_ANNOTATIONS}) && {key} in {_ANNOTATIONS} || has({_LABELS}) && {key} in {_LABELS})"
        # A value no label can hold never matches: leaving it out is exact.
        when = [
            f"{_literal(label)} in {_LABELS} && {_LABELS}[{_literal(label)}] in "
            + _literal(sorted(v for v in values if is_label_value(v)))
            for label, values in sorted(required_when.items())
        ]
        not_required = f" || !(has({_LABELS}) && {' && '.join(when)})" if when else ""
        clause = f"({present}{not_required})"
        if clause not in settled:
            settled.append(clause)
    return "!(\n  " + " &&\n  ".join(settled) + "\n)"


def _literal(value: str | list[str]) -> str:
    """A CEL string or list literal: JSON's double-quoted strings are valid CEL, with non-ASCII
    characters kept as they are (CEL has no surrogate pairs to spell them)."""
    return json.dumps(value, ensure_ascii=False)
