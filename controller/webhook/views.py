"""Policy views that do not watch a cluster: a fixed Snapshot, typically loaded from policy files
(`comptroller webhook --policies DIR`, the tests and the benchmark)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from controller import constants
from controller.engine.api import Snapshot
from controller.k8s.cache import build_snapshot, compile_object, object_key

log = logging.getLogger(__name__)

POLICY_KINDS = ("FinOpsPolicy", "GPUBudget", "FinOpsException")


class StaticView:
    """A view that is always ready and never changes."""

    def __init__(self, snapshot: Snapshot, *, errors: Mapping[str, str] | None = None) -> None:
        self._snapshot = snapshot
        self._errors = dict(errors or {})

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def ready(self) -> bool:
        return True

    def errors(self) -> dict[str, str]:
        return dict(self._errors)


def view_from_objects(
    objects: Iterable[Mapping[str, Any]],
    *,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: Iterable[str] = (),
) -> StaticView:
    """Compile FinOpsPolicy/GPUBudget/FinOpsException objects; others are ignored, bad ones logged."""
    models: dict[str, list[Any]] = {kind: [] for kind in POLICY_KINDS}
    errors: dict[str, str] = {}
    for obj in objects:
        kind = obj.get("kind")
        if kind not in models or not str(obj.get("apiVersion", "")).startswith(constants.GROUP + "/"):
            continue
        try:
            models[kind].append(compile_object(kind, obj))
        except Exception as error:
            key = object_key(kind, obj)
            errors[key] = str(error)
            log.error("%s is left out of admission: %s", key, error)
    snapshot = build_snapshot(
        policies=models["FinOpsPolicy"],
        budgets=models["GPUBudget"],
        exceptions=models["FinOpsException"],
        namespace_labels=namespace_labels or {},
        excluded_namespaces=frozenset(excluded_namespaces),
    )
    return StaticView(snapshot, errors=errors)


def load_objects(path: Path) -> list[dict[str, Any]]:
    """Every YAML document under `path` (a file or a directory, recursively, skipping `tests/`
    folders, which hold the test cases that sit beside policies)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p
            for p in path.rglob("*")
            if p.suffix in (".yaml", ".yml") and p.is_file() and "tests" not in p.relative_to(path).parts
        )
    objects = []
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if isinstance(document, dict):
                objects.append(document)
    return objects


def view_from_path(path: Path, *, excluded_namespaces: Iterable[str] = ()) -> StaticView:
    return view_from_objects(load_objects(path), excluded_namespaces=excluded_namespaces)
