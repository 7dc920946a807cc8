"""Builders for engine tests: policies, budgets, exceptions and workloads as plain dicts, and
`apply_fix`, which merges a violation's fix snippet into a manifest the way a user pastes it."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import yaml

from controller.engine import FinOpsException, FinOpsPolicy, GPUBudget, Snapshot

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
API = "finops.comptroller.dev/v1alpha1"
FULL_LABELS = {"team": "nlp", "environment": "development", "cost_center": "cc-101"}


def policy(name: str = "p", **spec: Any) -> FinOpsPolicy:
    return FinOpsPolicy.from_object(
        {"apiVersion": API, "kind": "FinOpsPolicy", "metadata": {"name": name}, "spec": spec}
    )


def budget(name: str = "b", *, used: float = 0.0, period_end: str | None = None, **spec: Any) -> GPUBudget:
    status: dict[str, Any] = {"usedGPUHours": used}
    if period_end:
        status["period"] = {"end": period_end}
    return GPUBudget.from_object(
        {"apiVersion": API, "kind": "GPUBudget", "metadata": {"name": name}, "spec": spec, "status": status}
    )


def exception(name: str = "e", namespace: str = "ml", **spec: Any) -> FinOpsException:
    spec.setdefault("reason", "testing")
    spec.setdefault("expiresAt", "2026-12-31T00:00:00Z")
    return FinOpsException.from_object(
        {
            "apiVersion": API,
            "kind": "FinOpsException",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def snapshot(*items: Any, namespace_labels: dict | None = None) -> Snapshot:
    return Snapshot(
        policies=tuple(i for i in items if isinstance(i, FinOpsPolicy)),
        budgets=tuple(i for i in items if isinstance(i, GPUBudget)),
        exceptions=tuple(i for i in items if isinstance(i, FinOpsException)),
        namespace_labels=namespace_labels or {},
    )


def container(gpus: int = 0, *, name: str = "c", field: str = "limits", **extra: Any) -> dict:
    out: dict[str, Any] = {"name": name, "image": "img", **extra}
    if gpus:
        out["resources"] = {field: {"nvidia.com/gpu": gpus}}
    return out


def pod_spec(gpus: int = 0, *, node_selector: dict | None = None, affinity_terms: list | None = None) -> dict:
    spec: dict[str, Any] = {"containers": [container(gpus)]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if affinity_terms is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": term} for term in affinity_terms]
                }
            }
        }
    return spec


def pod(
    labels: dict | None = None,
    *,
    name: str = "p",
    namespace: str = "ml",
    annotations: dict | None = None,
    **kw: Any,
) -> dict:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = dict(labels)
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec(**kw)}


def deployment(
    labels: dict | None = None,
    *,
    name: str = "d",
    namespace: str = "ml",
    replicas: int | None = 1,
    meta_labels: dict | None = None,
    annotations: dict | None = None,
    **kw: Any,
) -> dict:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if meta_labels is not None:
        metadata["labels"] = dict(meta_labels)
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    template: dict[str, Any] = {"spec": pod_spec(**kw)}
    if labels is not None:
        template["metadata"] = {"labels": dict(labels)}
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


# -- applying fix hints ----------------------------------------------------------------------------

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _resolve(manifest: dict, dotted: str) -> dict:
    node: Any = manifest
    for name, index in _STEP.findall(dotted):
        node = node[int(index)] if index else node.setdefault(name, {})
    return node


def apply_fix(manifest: dict, fix: str) -> dict:
    """The manifest with a fix snippet pasted in: nested keys merge; a dotted key such as
    `spec.template.spec.containers[0]` addresses the element the rest merges into."""
    fixed = copy.deepcopy(manifest)
    snippet = yaml.safe_load(fix) or {}
    assert isinstance(snippet, dict), f"fix is not a YAML mapping: {fix!r}"
    for key, value in snippet.items():
        if "." in key or "[" in key:
            _merge(_resolve(fixed, key), value)
        else:
            _merge(fixed, {key: value})
    return fixed
