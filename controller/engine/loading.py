"""From FinOpsPolicy, GPUBudget and FinOpsException objects to the Snapshot the engine decides with.

One way for every door: policy files (`comptroller check -p`, `comptroller webhook --policies`) and
the API server (the webhook's watch cache, the operator) all go through `compile_object` and
`build_snapshot`, so they leave out the same broken objects with the same errors and order
policies the same way (by name: when two policies default the same label, the first name wins).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controller.constants import ALWAYS_EXCLUDED_NAMESPACES, GROUP
from controller.engine.accelerators import ClaimLookup, equivalence_of
from controller.engine.api import Snapshot
from controller.engine.models import MODELS

POLICY_KINDS = tuple(MODELS)
"""FinOpsPolicy, GPUBudget, FinOpsException, GPUEquivalence."""


def is_policy_object(obj: Mapping[str, Any]) -> bool:
    """One of our kinds, in our API group (anything else beside the policies is ignored)."""
    api_version = obj.get("apiVersion")
    return obj.get("kind") in MODELS and isinstance(api_version, str) and api_version.startswith(f"{GROUP}/")


def object_key(kind: str, obj: Mapping[str, Any]) -> str:
    """`Kind/name` or `Kind/namespace/name`: how objects are stored and how errors are reported."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    return f"{kind}/{namespace}/{metadata.get('name')}" if namespace else f"{kind}/{metadata.get('name')}"


def compile_object(kind: str, obj: Mapping[str, Any]) -> Any:
    """A CR as the engine's validated model (raises the model's PolicyError on a bad spec)."""
    return MODELS[kind].from_object(dict(obj))


def build_snapshot(
    *,
    policies: Iterable[Any] = (),
    budgets: Iterable[Any] = (),
    exceptions: Iterable[Any] = (),
    equivalences: Iterable[Any] = (),
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: Iterable[str] = (),
    kinds: Any = None,
    claims: ClaimLookup | None = None,
) -> Snapshot:
    """Models sorted by (namespace, name), so evaluation order, and so message order, does not
    depend on the order objects were read or events arrived."""

    def by_name(models: Iterable[Any]) -> tuple[Any, ...]:
        return tuple(sorted(models, key=lambda m: (getattr(m, "namespace", "") or "", m.name)))

    return Snapshot(
        policies=by_name(policies),
        budgets=by_name(budgets),
        exceptions=by_name(exceptions),
        namespace_labels=dict(namespace_labels or {}),
        kinds=kinds,
        equivalence=equivalence_of(by_name(equivalences)),
        claims=claims,
        excluded_namespaces=ALWAYS_EXCLUDED_NAMESPACES | frozenset(excluded_namespaces),
    )


def snapshot_from_objects(
    objects: Iterable[Mapping[str, Any]],
    *,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: Iterable[str] = (),
    kinds: Any = None,
    where: Callable[[Mapping[str, Any]], str] | None = None,
    claims: ClaimLookup | None = None,
) -> tuple[Snapshot, dict[str, str]]:
    """Compile every policy object among `objects` (others are skipped); a broken one is left out
    and named in the errors: `where(obj)` (a file and document, say), by default `Kind/name`, ->
    what is wrong, with the field's path."""
    models: dict[str, list[Any]] = {kind: [] for kind in POLICY_KINDS}
    errors: dict[str, str] = {}
    for obj in objects:
        if not is_policy_object(obj):
            continue
        kind = obj["kind"]
        try:
            models[kind].append(compile_object(kind, obj))
        except ValueError as error:  # PolicyError, or a spec pydantic could not even read
            errors[where(obj) if where else object_key(kind, obj)] = str(error)
    snapshot = build_snapshot(
        policies=models["FinOpsPolicy"],
        budgets=models["GPUBudget"],
        exceptions=models["FinOpsException"],
        equivalences=models["GPUEquivalence"],
        namespace_labels=namespace_labels,
        excluded_namespaces=excluded_namespaces,
        kinds=kinds,
        claims=claims,
    )
    return snapshot, errors
