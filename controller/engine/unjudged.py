"""`unjudged`: what the engine can say of an object whose kind it does not know.

The engine judges the kinds it knows by their pod templates (`workloads.py`). Any other object is
passed over, which is right for a ConfigMap and wrong to do in silence for a JAXJob asking for
8 GPUs or a Kubeflow Trainer `TrainJob` asking for them per node: `comptroller check` would report
it as nothing to check. This says what such an object holds that the engine would have judged
(pod templates, accelerator requests) and, where it holds pod templates, the `--kinds` entry that
makes the engine judge its kind (README.md, "Supported workloads").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.engine.accelerators import DEFAULT_EQUIVALENCE, Equivalence
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry, escape, is_map, pointer_of

Path = tuple[str | int, ...]

_SKIPPED = frozenset(("metadata", "status"))
"""Top-level fields read for nothing: labels and annotations are no workload, status is not asked."""

NOT_WORKLOADS: frozenset[tuple[str, str]] = frozenset(
    {
        ("", "PodTemplate"),  # a template kept for others to use; it runs nothing itself
        ("trainer.kubeflow.org", "ClusterTrainingRuntime"),  # the same, for Kubeflow Trainer's TrainJobs
        ("trainer.kubeflow.org", "TrainingRuntime"),
        ("serving.kserve.io", "ServingRuntime"),  # and for KServe's InferenceServices
        ("serving.kserve.io", "ClusterServingRuntime"),
        ("kyverno.io", "*"),  # policies: their patterns and patches look like pods
        ("policies.kyverno.io", "*"),
        ("templates.gatekeeper.sh", "*"),
        ("mutations.gatekeeper.sh", "*"),
        ("karpenter.sh", "*"),  # node pools: `limits` caps the GPUs of the nodes, asks for none
        ("karpenter.k8s.aws", "*"),
        ("kueue.x-k8s.io", "Workload"),  # Kueue's record of a job it admits; the job is judged
    }
)
"""`(group, kind)` (`*`: every kind of the group) of objects known to hold pod-like maps or GPU
limits without running pods: not reported."""

MAKES_PODS: frozenset[tuple[str, str]] = frozenset(
    {
        ("trainer.kubeflow.org", "TrainJob"),  # Kubeflow Trainer: pods from the runtime it names
        ("serving.kserve.io", "InferenceService"),
        ("serving.kserve.io", "LLMInferenceService"),
        ("production-stack.vllm.ai", "VLLMRuntime"),
        ("sparkoperator.k8s.io", "SparkApplication"),
        ("sparkoperator.k8s.io", "ScheduledSparkApplication"),
    }
)
"""`(group, kind)` of objects known to make pods from fields of their own, with no pod template
to read (`numNodes` and `resourcesPerNode`, `gpu: "1"`): reported even when they ask for no
accelerator the way Kubernetes writes it, since their pods must still carry what policies
require."""


@dataclass(frozen=True)
class Unjudged:
    """An object of a kind the engine does not know, which holds what a workload holds."""

    resource: str
    """`Kind/namespace/name`, as a Decision names its workload."""
    api_version: str
    kind: str
    templates: tuple[str, ...]
    """Each pod template's JSON pointer in this object."""
    accelerators: tuple[tuple[str, str], ...]
    """Each accelerator request: the JSON pointer of the map that asks (`.../resources`,
    `/spec/trainer/resourcesPerNode`) and the resource it names, as Kubernetes writes requests
    (`requests` or `limits` maps). A custom resource that asks in its own words (the vLLM
    production stack's `resources: {gpu: "1", gpuType: nvidia.com/gpu}`) is not read: a field
    merely naming a GPU resource is as often a quota, a DeviceClass or a toleration. Such kinds
    are reported when they are among MAKES_PODS."""
    kind_templates: tuple[tuple[str, str | None], ...] = ()
    """The templates as the kind holds them, each with the `replicas` beside it (None: none): `*`
    for every item of a list, and for every value of a map of roles, each holding its template
    (Kubeflow's `Master` and `Worker`), so that the entry also judges the roles this object leaves
    out."""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def kinds_entry(self) -> dict[str, Any] | None:
        """The `--kinds` entry that makes the engine judge this kind by its templates (None: it
        holds no pod template, so no entry can)."""
        if not self.kind_templates:
            return None
        templates = [
            {"path": path, **({"replicas": [replicas]} if replicas else {})}
            for path, replicas in self.kind_templates
        ]
        return {"group": self.group, "kind": self.kind, "templates": templates}

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
    a kind it knows, one of NOT_WORKLOADS, not an object with `apiVersion` and `kind`, or nothing
    a workload holds and not one of MAKES_PODS). Every map and list is read once (a YAML alias
    may repeat one, or loop): a template two aliases share is reported where it is met first."""
    kind, api_version = manifest.get("kind"), manifest.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return None
    group = api_version.rpartition("/")[0]
    if (group, kind) in NOT_WORKLOADS or (group, "*") in NOT_WORKLOADS:
        return None
    if (kinds or BUILTIN_KINDS).lookup(manifest) is not None:
        return None
    weigh = (table or DEFAULT_EQUIVALENCE).weight
    templates: list[Path] = []
    asks: dict[tuple[str, str], None] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, Path]] = [(manifest, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[Any, Path]] = []
        if is_map(node):
            if _is_template(node):
                templates.append(path)
            for part in ("requests", "limits"):
                requested = node.get(part)
                if is_map(requested):
                    for name in requested:
                        if isinstance(name, str) and "/" in name and weigh(name) is not None:
                            asks[(pointer_of(path), name)] = None
            # A key YAML reads as another type (`on:`, `1:`) is no field an API server would keep.
            children = [
                (value, (*path, key))
                for key, value in node.items()
                if isinstance(key, str) and not (not path and key in _SKIPPED)
            ]
        elif isinstance(node, list):
            children = [(item, (*path, index)) for index, item in enumerate(node)]
        # Reversed onto the stack: read in document order, so templates are listed as written.
        stack.extend(child for child in reversed(children) if isinstance(child[0], Mapping | list))
    if not templates and not asks and (group, kind) not in MAKES_PODS:
        return None
    metadata = manifest.get("metadata")
    metadata = metadata if is_map(metadata) else {}
    ns = metadata.get("namespace") or namespace
    name = metadata.get("name") or metadata.get("generateName") or ""
    return Unjudged(
        resource=f"{kind}/{ns}/{name}",
        api_version=api_version,
        kind=kind,
        templates=tuple(pointer_of(path) for path in templates),
        accelerators=tuple(asks),
        kind_templates=_of_the_kind(manifest, templates),
    )


def _is_template(node: Mapping[str, Any]) -> bool:
    spec = node.get("spec")
    return is_map(spec) and isinstance(spec.get("containers"), list)


def _of_the_kind(manifest: Mapping[str, Any], templates: list[Path]) -> tuple[tuple[str, str | None], ...]:
    """Each template's path with `*` where the kind varies (see `Unjudged.kind_templates`), once."""
    found: dict[str, str | None] = {}
    for path in templates:
        general: list[str] = []
        node: Any = manifest
        parent: Any = None  # what holds the template: its `replicas` counts its pods
        for depth, part in enumerate(path):
            rest = path[depth + 1:]
            roles = is_map(node) and depth > 0 and len(rest) == 1
            if isinstance(node, list) or (roles and all(_holds(value, rest[0]) for value in node.values())):
                general.append("*")
            else:
                general.append(escape(part))
            parent, node = node, node[part]
        replicas = parent.get("replicas") if is_map(parent) else None
        counted = isinstance(replicas, int | str) and not isinstance(replicas, bool)
        beside = "".join(f"/{part}" for part in general[:-1]) + "/replicas"
        found.setdefault("".join(f"/{part}" for part in general), beside if counted else None)
    return tuple(found.items())


def _holds(role: Any, key: str | int) -> bool:
    """Whether a role's map holds a pod template under `key`, as the role met first does."""
    template = role.get(key) if is_map(role) and isinstance(key, str) else None
    return is_map(template) and _is_template(template)
