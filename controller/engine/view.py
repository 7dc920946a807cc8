"""The workload under evaluation, with the mutations made so far.

Mutation never copies or edits the manifest: added labels and annotations are kept beside it, so
validation judges the mutated object and `patch()` turns the additions into an RFC 6902 JSON
Patch against the original. That keeps an evaluation cheap enough for the webhook's hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.constants import DEFAULTED_ANNOTATION
from controller.engine.accelerators import (
    DEFAULT_EQUIVALENCE,
    NO_GPUS,
    ClaimLookup,
    Equivalence,
    PodGPUs,
    generated_claims,
    pod_gpus,
    resource_filter,
)
from controller.engine.workloads import BUILTIN_KINDS, KindSpec, PodTemplate, escape, is_map, pod_templates_of


class WorkloadView:
    """One manifest as the rules see it: its pod templates, labels, annotations and GPUs."""

    __slots__ = (
        "manifest",
        "kind",
        "name",
        "namespace",
        "is_pod",
        "templates",
        "_template_labels",
        "_added_template",
        "_meta_labels",
        "_meta_annotations",
        "_added_meta_labels",
        "_added_annotations",
        "_defaulted",
        "_labels",
        "_gpus",
        "_asks",
        "table",
        "claims",
        "version",
    )

    def __init__(
        self,
        manifest: Mapping[str, Any],
        spec: KindSpec,
        *,
        namespace: str,
        table: Equivalence = DEFAULT_EQUIVALENCE,
        claims: ClaimLookup | None = None,
    ) -> None:
        metadata = manifest.get("metadata") or {}
        self.manifest = manifest
        self.kind: str = spec.kind
        self.name: str = metadata.get("name") or f"{metadata.get('generateName') or ''}<generated>"
        self.namespace = namespace
        self.templates: list[PodTemplate] = pod_templates_of(manifest, spec)
        self._template_labels: list[Mapping[str, str]] = []
        for template in self.templates:  # a loop, not a comprehension: no frame of its own
            self._template_labels.append(template.labels)
        self.is_pod = len(self.templates) == 1 and self.templates[0].pointer == ""
        self._added_template: dict[int, dict[str, str]] = {}
        """Labels added to each template, by template index (most workloads get none)."""
        self._meta_labels: Mapping[str, str] = metadata.get("labels") or {}
        self._meta_annotations: Mapping[str, str] = metadata.get("annotations") or {}
        self._added_meta_labels: dict[str, str] = {}
        self._added_annotations: dict[str, str] = {}
        self._defaulted: set[str] = set()
        """Required labels mutation filled from a default or the Namespace (DEFAULTED_ANNOTATION)."""
        self._labels: Mapping[str, str] | None = None
        self._gpus: dict[tuple[str, ...], tuple[list[float], float]] = {}
        """Per resource set: GPU-equivalents per pod of each template, and of the whole workload."""
        self._asks: list[PodGPUs] | None = None
        self.table = table
        self.claims = claims
        self.version = 0
        """Bumped by every label change, so callers can cache what depends on labels."""

    # -- reading -------------------------------------------------------------------------------

    @property
    def resource(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def labels_per_template(self) -> list[Mapping[str, str]]:
        """Each pod template's labels after mutation, in template order (read-only)."""
        return self._template_labels

    @property
    def meta_labels(self) -> Mapping[str, str]:
        return self._meta_labels

    @property
    def meta_annotations(self) -> Mapping[str, str]:
        return self._meta_annotations

    def labels(self) -> Mapping[str, str]:
        """Effective labels: those every pod template carries alike (a Pod's own labels). Read-only:
        with one template, they are that template's labels themselves."""
        if self._labels is None:
            if not self._template_labels:
                self._labels = self._meta_labels
            else:
                first, *rest = self._template_labels
                labels = first
                for other in rest:
                    labels = {k: v for k, v in labels.items() if other.get(k) == v}
                self._labels = labels
        return self._labels

    def pod_gpus(self, resources: tuple[str, ...]) -> list[float]:
        """GPU-equivalents per pod, per template (controller.engine.accelerators)."""
        return (self._gpus.get(resources) or self._count_gpus(resources))[0]

    def gpus(self, resources: tuple[str, ...]) -> float:
        """GPU-equivalents of the whole workload at once: per-pod x pods, summed over templates; a
        ResourceClaim its pods share counts once."""
        return (self._gpus.get(resources) or self._count_gpus(resources))[1]

    def shared_gpus(self, resources: tuple[str, ...]) -> dict[str, float]:
        """GPU-equivalents of each ResourceClaim the workload's pods share (by name): held once."""
        counts = resource_filter(resources)
        shared: dict[str, float] = {}
        for asked in self.asks():
            for claim in asked.shared:
                shared[claim] = max(shared.get(claim, 0.0), asked.shared_total(claim, counts))
        return shared

    def held_gpus(self, resources: tuple[str, ...]) -> float:
        """GPU-equivalents the workload's pods hold each on their own (per-pod x pods): without the
        named ResourceClaims they share, which another workload naming them holds as well."""
        counts = resource_filter(resources)
        return sum(
            asked.total(counts, shared=False) * template.replicas
            for template, asked in zip(self.templates, self.asks(), strict=True)
        )

    def asks(self) -> list[PodGPUs]:
        """Each template's GPUs, by what they are asked as (resource or DeviceClass), and the notes
        of what had to be assumed."""
        if self._asks is None:
            asks: list[PodGPUs] = []
            for t in self.templates:  # a loop, not a comprehension: no frame of its own
                # The claims a pod's status says were made for it matter only to the claims it names.
                named = self.is_pod and t.spec.get("resourceClaims")
                asks.append(
                    pod_gpus(
                        t.spec,
                        _annotations(t.template),
                        table=self.table,
                        namespace=self.namespace,
                        claims=self.claims,
                        generated=generated_claims(self.manifest) if named else None,
                    )
                )
            self._asks = asks
        return self._asks

    def gpu_notes(self) -> list[str]:
        """What counting the GPUs had to assume (an unresolved claim), once each; none when no
        rule counted them."""
        notes: dict[str, None] = {}
        for asked in self._asks or ():
            if asked.notes:
                notes.update(dict.fromkeys(asked.notes))
        return list(notes)

    def _count_gpus(self, resources: tuple[str, ...]) -> tuple[list[float], float]:
        asks = self.asks()
        counts = resource_filter(resources)
        per_pod: list[float] = []
        total = 0.0
        shared: dict[str, float] = {}
        for template, asked in zip(self.templates, asks, strict=True):
            if asked is NO_GPUS:  # most pods: nothing to count, whatever counts
                per_pod.append(0.0)
                continue
            own = asked.total(counts, shared=False)
            per_pod.append(asked.total(counts) if asked.shared else own)
            total += own * template.replicas
            for claim in asked.shared:
                shared[claim] = asked.shared_total(claim, counts)
        if shared:
            total += sum(shared.values())
        counted = self._gpus[resources] = (per_pod, total)
        return counted

    # -- mutating ------------------------------------------------------------------------------

    def add_template_label(self, index: int, key: str, value: str) -> None:
        if self.is_pod:
            self.add_meta_label(key, value)
            return
        self._added_template.setdefault(index, {})[key] = value
        self._template_labels[index] = {**self._template_labels[index], key: value}
        self._labels = None
        self.version += 1

    def add_meta_label(self, key: str, value: str) -> None:
        self._added_meta_labels[key] = value
        self._meta_labels = {**self._meta_labels, key: value}
        if self.is_pod:
            self._template_labels[0] = self._meta_labels
            self._labels = None
            self.version += 1

    def add_annotation(self, key: str, value: str) -> None:
        self._added_annotations[key] = value
        self._meta_annotations = {**self._meta_annotations, key: value}

    def mark_defaulted(self, key: str) -> None:
        """Record that mutation chose this required label's value (not the user, nor a controller)."""
        self._defaulted.add(key)

    def defaulted(self) -> frozenset[str]:
        """Labels mutation chose, now or when the object was admitted before (its annotation)."""
        return defaulted_labels(self._meta_annotations) | self._defaulted

    def patch(self) -> list[dict[str, Any]]:
        """RFC 6902 operations adding everything mutation added, against the original manifest."""
        ops: list[dict[str, Any]] = []
        meta_maps = {"labels": self._added_meta_labels, "annotations": self._added_annotations}
        _metadata_ops(ops, "", self.manifest, meta_maps)
        for index, added in sorted(self._added_template.items()):
            template = self.templates[index]
            _metadata_ops(ops, template.pointer, template.template, {"labels": added})
        if self._defaulted:  # last, and an operation of its own: the others read as they always did
            value = ",".join(sorted(self.defaulted()))
            metadata = self.manifest.get("metadata")
            if self._added_annotations or (metadata and metadata.get("annotations")):
                path = f"/metadata/annotations/{escape(DEFAULTED_ANNOTATION)}"
                ops.append({"op": "add", "path": path, "value": value})
            elif metadata or self._added_meta_labels:
                annotations = {DEFAULTED_ANNOTATION: value}
                ops.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
            else:
                metadata_map = {"annotations": {DEFAULTED_ANNOTATION: value}}
                ops.append({"op": "add", "path": "/metadata", "value": metadata_map})
        return ops


def view_of(manifest: Mapping[str, Any], spec: KindSpec, *, namespace: str, snapshot: Any) -> WorkloadView:
    """A view counting GPUs with the snapshot's GPU-equivalents table and known DRA claims."""
    return WorkloadView(
        manifest,
        spec,
        namespace=namespace,
        table=snapshot.equivalence or DEFAULT_EQUIVALENCE,
        claims=snapshot.claims,
    )


def workload_gpus(
    manifest: Mapping[str, Any], *, snapshot: Any = None, resources: tuple[str, ...] = ("*",)
) -> float:
    """GPU-equivalents the whole workload takes at once (0 for a kind the engine does not know)."""
    kinds = (snapshot.kinds if snapshot is not None else None) or BUILTIN_KINDS
    spec = kinds.lookup(manifest)
    if spec is None:
        return 0.0
    namespace = (manifest.get("metadata") or {}).get("namespace") or ""
    if snapshot is None:
        return WorkloadView(manifest, spec, namespace=namespace).gpus(resources)
    return view_of(manifest, spec, namespace=namespace, snapshot=snapshot).gpus(resources)


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if is_map(metadata) else None
    return annotations if is_map(annotations) else None


def defaulted_labels(annotations: Mapping[str, Any] | None) -> frozenset[str]:
    """The labels an earlier mutation chose, from its DEFAULTED_ANNOTATION (comma separated)."""
    written = (annotations or {}).get(DEFAULTED_ANNOTATION)
    return frozenset(k for k in written.split(",") if k) if isinstance(written, str) else frozenset()


def _metadata_ops(
    ops: list[dict[str, Any]], base: str, obj: Mapping[str, Any], maps: Mapping[str, Mapping[str, str]]
) -> None:
    maps = {name: dict(values) for name, values in maps.items() if values}
    if not maps:
        return
    metadata = obj.get("metadata")
    if not metadata:
        # `add` on a missing parent fails, so add the whole map (also replaces an explicit null).
        ops.append({"op": "add", "path": f"{base}/metadata", "value": maps})
        return
    for name, values in maps.items():
        if not metadata.get(name):
            ops.append({"op": "add", "path": f"{base}/metadata/{name}", "value": values})
            continue
        for key, value in values.items():
            ops.append({"op": "add", "path": f"{base}/metadata/{name}/{escape(key)}", "value": value})
