"""The rule families (`labels`, `gpu`, `expiry`, `budget`), one module each.

Each family exposes `mutate(policy, view, ctx)` (labels and expiry only: what the mutating webhook
adds) and `validate(policy, view, ctx) -> list[Violation]` (judging the mutated workload). Rules
return violations as data with `enforcement` left to the evaluator, which routes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.engine.api import Drawn


@dataclass(slots=True)
class Context:
    """What rules know besides the policy and the workload."""

    now: datetime
    operation: str
    namespace_labels: Mapping[str, str]
    update: Any = None
    """controller.engine.update.Update: the object before and after an UPDATE, when the caller
    passed the old object."""
    expiry_key: str = "expires_at"
    """The `expires_at` key of the matching policies (budgets project up to it)."""
    drawn: Mapping[str, Drawn] | None = None
    """What other workloads judged together with this one already draw from each `Projected`
    budget (by name), before this one: a claim created for several waiting pods
    (controller.engine.claims). None: judged alone."""


def when_text(when: Mapping[str, frozenset[str] | list[str]]) -> str:
    """`environment in (development, experiment)`, for messages."""
    parts = []
    for key, values in when.items():
        ordered = sorted(values)
        parts.append(f"{key}={ordered[0]}" if len(ordered) == 1 else f"{key} in ({', '.join(ordered)})")
    return " and ".join(parts)
