"""The `team` label of Comptroller's metrics, bounded (README.md, "Metrics and alerts").

A violation's team is whatever `team` label its workload carries, and anyone who may create a
workload may write any value there: counted as is, a stream of denied objects with random teams
would grow the webhook's (and the audit's) series without bound. Both the webhook and the operator
therefore label through one `TeamLabels`, which keeps:

- `""` (no team label) as `""`;
- a known team as itself: a `team` value in a GPUBudget selector (`matchLabels`, or an `In`
  expression) or in the `allowedValues` of a policy's required `team` label;
- another value as itself only if it is a label value every policy's required `team` rule accepts
  (its `allowedValues` and `pattern`) and it is among the first `limit` such values seen;
- anything else as `other`.

So a snapshot contributes at most its own known teams, and the rest at most `limit + 1` values.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from controller.engine.models import is_label_value

TEAM_LABEL_KEY = "team"
OTHER_TEAM = "other"
MAX_UNLISTED_TEAMS = 50
"""How many teams that no budget or policy lists may still appear as themselves."""


class TeamLabels:
    """The `team` label value of a metric sample, at most `limit` unlisted teams then `other`."""

    def __init__(self, limit: int = MAX_UNLISTED_TEAMS) -> None:
        self.limit = limit
        self._snapshot: Any = None
        self._known: frozenset[str] = frozenset()
        self._rules: tuple[Any, ...] = ()
        self._unlisted: set[str] = set()
        self._lock = threading.Lock()

    def label(self, team: str, snapshot: Any = None) -> str:
        """`team` as a label value; `snapshot` (policies and budgets) says which teams are known,
        None keeps the last one given."""
        with self._lock:
            if snapshot is not None and snapshot is not self._snapshot:
                self._learn(snapshot)
            if not team:
                return ""
            if not isinstance(team, str):  # a list or map where a label belongs (an unchecked CR)
                return OTHER_TEAM
            if team in self._known or team in self._unlisted:
                return team if team in self._known or self._accepted(team) else OTHER_TEAM
            if len(self._unlisted) >= self.limit or not self._accepted(team):
                return OTHER_TEAM
            self._unlisted.add(team)
            return team

    def learn(self, snapshot: Any) -> None:
        """Take the known teams and `team` rules from `snapshot` for the labels that follow."""
        with self._lock:
            if snapshot is not self._snapshot:
                self._learn(snapshot)

    def _accepted(self, team: str) -> bool:
        return is_label_value(team) and all(r.accepts(team) for r in self._rules)

    def _learn(self, snapshot: Any) -> None:
        self._snapshot = snapshot
        self._rules = tuple(_team_rules(snapshot))
        known = {v for rule in self._rules for v in (rule.allowed_values or ())}
        for budget in getattr(snapshot, "budgets", ()):
            selector = budget.spec.selector
            if team := selector.match_labels.get(TEAM_LABEL_KEY):
                known.add(team)
            for expression in selector.match_expressions:
                if expression.key == TEAM_LABEL_KEY and expression.operator == "In":
                    known.update(expression.values)
        self._known = frozenset(known)


def _team_rules(snapshot: Any) -> Iterator[Any]:
    """The required-label rules on `team` of the snapshot's policies."""
    for policy in getattr(snapshot, "policies", ()):
        labels = policy.spec.labels
        for rule in labels.required if labels is not None else ():
            if rule.key == TEAM_LABEL_KEY:
                yield rule
