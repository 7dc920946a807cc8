"""`unjudged`: what the engine can say of an object whose kind it does not know.

The engine judges the kinds it knows by their pod templates (`workloads.py`). Any other object is
passed over, which is right for a ConfigMap and wrong to do in silence for a JAXJob asking for
8 GPUs or a Kubeflow Trainer `TrainJob` asking for them per node: `comptroller check` would report
it as nothing to check. This says what such an object holds that the engine would have judged
(pod templates, accelerator requests) and, where it holds pod templates, the `--kinds` entry that
makes the engine judge it (README.md, "Supported workloads").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.engine.accelerators import DEFAULT_EQUIVALENCE, Equivalence
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry, escape, is_map

_SKIPPED = frozenset(("metadata", "status"))
"""Top-level fields read for nothing: labels and annotations are no workload, status is not asked."""

MAX_DEPTH = 40
"""Deeper than any pod template sits in a real object; a YAML alias may also make a loop."""


@dataclass(frozen=True)
class Unjudged:
    """An object of a kind the engine does not know, which holds what a workload holds."""

    resource: str
    """`Kind/namespace/name`, as a Decision names its workload."""
    api_version: str
    kind: str
    templates: tuple[tuple[str, str | None], ...]
    """Each pod template's JSON pointer, with the pointer of the `replicas` beside it (None: none)."""
    accelerators: tuple[tuple[str, str], ...]
    """Each accelerator request: the JSON pointer of the map that asks (`.../resources`,
    `/spec/trainer/resourcesPerNode`) and the resource it names, as Kubernetes writes requests
    (`requests` or `limits` maps). A custom resource that asks in its own words (the vLLM
    production stack's `resources: {gpu: "1", gpuType: nvidia.com/gpu}`) is not recognised: a
    field merely naming a GPU resource is as often a quota, a DeviceClass or a toleration."""

    def kinds_entry(self) -> dict[str, Any] | None:
        """The `--kinds` entry that makes the engine judge this kind by the templates found here
        (None: it holds no pod template, so no entry can)."""
        if not self.templates:
            return None
        templates = [
            {"path": path, **({"replicas": [replicas]} if replicas else {})}
            for path, replicas in self.templates
        ]
        return {"group": self.group, "kind": self.kind, "templates": templates}

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def resource_names(self) -> list[str]:
        return list(dict.fromkeys(name for _, name in self.accelerators))


def unjudged(
    manifest: Mapping[str, Any],
    *,
    kinds: KindRegistry | None = None,
    table: Equivalence | None = None,
    namespace: str = "",
) -> Unjudged | None:
    """What `manifest` holds that a workload would, when the engine does not know its kind (None:
    a kind it knows, not an object with `apiVersion` and `kind`, or nothing a workload holds)."""
    kind, api_version = manifest.get("kind"), manifest.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return None
    if (kinds or BUILTIN_KINDS).lookup(manifest) is not None:
        return None
    templates: list[tuple[str, str | None]] = []
    accelerators: list[tuple[str, str]] = []
    weigh = (table or DEFAULT_EQUIVALENCE).weight

    def accelerator(name: Any) -> bool:
        return isinstance(name, str) and "/" in name and weigh(name) is not None

    def ask(pointer: str, name: str) -> None:
        if (pointer, name) not in accelerators:
            accelerators.append((pointer, name))

    def walk(node: Any, pointer: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if is_map(node):
            spec = node.get("spec")
            if is_map(spec) and isinstance(spec.get("containers"), list):
                templates.append((pointer, None))
            for part in ("requests", "limits"):
                asks = node.get(part)
                if is_map(asks):
                    for name in asks:
                        if accelerator(name):
                            ask(pointer, name)
            for key, value in node.items():
                if depth == 0 and key in _SKIPPED:
                    continue
                if isinstance(value, Mapping | list):
                    walk(value, f"{pointer}/{escape(key)}", depth + 1)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, Mapping | list):
                    walk(item, f"{pointer}/{index}", depth + 1)

    walk(manifest, "", 0)
    if not templates and not accelerators:
        return None
    metadata = manifest.get("metadata")
    metadata = metadata if is_map(metadata) else {}
    ns = metadata.get("namespace") or namespace
    name = metadata.get("name") or metadata.get("generateName") or ""
    return Unjudged(
        resource=f"{kind}/{ns}/{name}",
        api_version=api_version,
        kind=kind,
        templates=tuple((path, _replicas_beside(manifest, path)) for path, _ in templates),
        accelerators=tuple(accelerators),
    )


def _replicas_beside(manifest: Mapping[str, Any], pointer: str) -> str | None:
    """The pointer of an integer `replicas` next to the template (Kubeflow's `Worker: {replicas,
    template}`, a Deployment-like `spec: {replicas, template}`), which the pod count multiplies by."""
    parent_pointer, _, _ = pointer.rpartition("/")
    node: Any = manifest
    for token in parent_pointer.split("/")[1:]:
        key: str | int = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            key = int(key)
        node = node[key]
    replicas = node.get("replicas") if is_map(node) else None
    if isinstance(replicas, int) and not isinstance(replicas, bool):
        return f"{parent_pointer}/replicas"
    return None
