"""Which workloads a policy, budget or exception applies to: label selectors, namespace globs, `when` maps.

Everything here is compiled once (at policy load) into small immutable objects whose `matches`
is a few dict lookups, because the webhook runs them on every admission request. The operator
reuses `Selector` for `spec.idle.selector` and for budgets' selectors.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class Selector:
    """A compiled metav1.LabelSelector: matchLabels AND every matchExpression (In, NotIn, Exists,
    DoesNotExist). The empty selector matches everything, as in Kubernetes."""

    __slots__ = ("match_labels", "expressions")

    def __init__(
        self,
        match_labels: Mapping[str, str] | None = None,
        expressions: Iterable[tuple[str, str, Iterable[str]]] = (),
    ) -> None:
        self.match_labels: tuple[tuple[str, str], ...] = tuple((match_labels or {}).items())
        compiled = []
        for key, operator, values in expressions:
            if operator not in OPERATORS:
                raise ValueError(f"unknown operator {operator!r}; use one of {', '.join(OPERATORS)}")
            compiled.append((key, operator, frozenset(values)))
        self.expressions: tuple[tuple[str, str, frozenset[str]], ...] = tuple(compiled)

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for key, operator, values in self.expressions:
            present = key in labels
            if operator == "In":
                if not present or labels[key] not in values:
                    return False
            elif operator == "NotIn":
                # As in Kubernetes: a missing key satisfies NotIn.
                if present and labels[key] in values:
                    return False
            elif operator == "Exists":
                if not present:
                    return False
            elif present:  # DoesNotExist
                return False
        return True

    def __repr__(self) -> str:
        return f"Selector({dict(self.match_labels)!r}, {list(self.expressions)!r})"


EVERYTHING = Selector()


class GlobSet:
    """Shell-style patterns (`ml-*`, `g6.*`, `p?d.*`) compiled into one case-sensitive regex."""

    __slots__ = ("patterns", "_literals", "_regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        wild = [p for p in self.patterns if any(ch in p for ch in "*?[")]
        self._literals = frozenset(p for p in self.patterns if p not in wild)
        self._regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in wild)) if wild else None

    def matches(self, value: str) -> bool:
        if value in self._literals:
            return True
        return self._regex is not None and self._regex.match(value) is not None

    @property
    def literals(self) -> tuple[str, ...]:
        """The patterns without wildcards, in order: values a fix hint can suggest verbatim."""
        return tuple(p for p in self.patterns if p in self._literals)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"GlobSet({list(self.patterns)!r})"


def when_matches(when: Mapping[str, frozenset[str]], labels: Mapping[str, str]) -> bool:
    """`{environment: [development, experiment]}`: every key present with one of its values."""
    for key, values in when.items():
        if labels.get(key) not in values:
            return False
    return True


def namespace_labels_of(namespace: str, known: Mapping[str, Mapping[str, str]]) -> Mapping[str, str]:
    """A Namespace's labels, always including `kubernetes.io/metadata.name` as the API server sets it."""
    labels = known.get(namespace)
    if labels is None:
        return {NAMESPACE_NAME_LABEL: namespace}
    if NAMESPACE_NAME_LABEL in labels:
        return labels
    return {**labels, NAMESPACE_NAME_LABEL: namespace}


def placement_matches(match: Any, *, kind: str, namespace: str, namespace_labels: Mapping[str, str]) -> bool:
    """The conditions of a `spec.match` that depend only on the workload's kind and namespace.

    The evaluator judges these once per kind and namespace of a configuration snapshot.
    """
    # Plain list truthiness first: most policies leave most conditions unset.
    if match.kinds and kind not in match.kind_set:
        return False
    if match.namespaces and not match.namespace_globs.matches(namespace):
        return False
    if match.exclude_namespaces and match.exclude_globs.matches(namespace):
        return False
    namespace_selector = match.namespace_selector
    return namespace_selector is None or namespace_selector.compiled.matches(namespace_labels)
