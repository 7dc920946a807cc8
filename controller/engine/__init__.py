"""The policy engine: pure decisions about one workload (no I/O, no clock; `now` is passed in).

    decision = evaluate(manifest, snapshot=Snapshot(policies=..., budgets=...), now=now)

The webhook, the operator's background audit and `comptroller check` all call `evaluate`; the
operator's expiry and idle loops ask `matching_policies` which policies select a workload.

    api.py         Snapshot in, Decision / Violation out
    models.py      FinOpsPolicy, GPUBudget, FinOpsException: validated, compiled at load
    evaluation.py  evaluate(): mutation, then validation; routing by enforcement; exceptions
    rules/         the rule families: labels, gpu, expiry, budget
    workloads.py   kinds and their pod templates, effective labels, GPU counts, node pinning
    matching.py    label selectors, namespace globs, policy matching
    expiry.py      the expires_at formats; budgets.py  periods and usage
    messages.py    denial text, warnings, fix snippets; view.py  the workload being mutated
    unjudged.py    what an object of a kind the engine does not know holds (for `check`)
"""

from controller.engine.api import BudgetState, Decision, Snapshot, Violation
from controller.engine.evaluation import PolicyMatch, evaluate, matching_policies
from controller.engine.models import FinOpsException, FinOpsPolicy, GPUBudget, PolicyError

__all__ = [
    "BudgetState",
    "Decision",
    "FinOpsException",
    "FinOpsPolicy",
    "GPUBudget",
    "PolicyError",
    "PolicyMatch",
    "Snapshot",
    "Violation",
    "evaluate",
    "matching_policies",
]
