"""The policy engine: pure decisions about one workload (no I/O, no clock; `now` is passed in).

    decision = evaluate(manifest, snapshot=Snapshot(policies=..., budgets=...), now=now)

The webhook, the operator's background audit and `comptroller check` all call `evaluate`.
"""

from controller.engine.api import BudgetState, Decision, Snapshot, Violation
from controller.engine.evaluation import evaluate
from controller.engine.models import FinOpsException, FinOpsPolicy, GPUBudget, PolicyError

__all__ = [
    "BudgetState",
    "Decision",
    "FinOpsException",
    "FinOpsPolicy",
    "GPUBudget",
    "PolicyError",
    "Snapshot",
    "Violation",
    "evaluate",
]
