"""Workload kinds and what the engine reads from them: pod templates, labels, GPUs, node pinning.

A kind is known by its API group and kind, the JSON-pointer paths of its pod templates and, for
each template, the paths whose values multiply into how many pods run from it (Deployment
`/spec/replicas`; JobSet `replicatedJobs[*].replicas` x `parallelism`). `*` in a path stands for
every element of a list or every value of a map, and binds the same way in the replica paths of
that template. The built-in kinds are docs/crds.md#workload-kinds; `KindRegistry.with_extra` adds more from
configuration.

The operator reuses `effective_labels`; the scale webhook `scaled`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, DecimalException, localcontext
from typing import Any, TypeGuard

Pointer = str


def escape(segment: str | int) -> str:
    """One RFC 6901 reference token: `~` -> `~0`, `/` -> `~1`."""
    return str(segment).replace("~", "~0").replace("/", "~1")


def pointer_of(path: Sequence[str | int]) -> Pointer:
    """The JSON pointer (RFC 6901) of a path of keys and list indexes: `("a/b", 0)` -> `/a~1b/0`."""
    return "".join(f"/{escape(part)}" for part in path)


def _split(pointer: str) -> tuple[str, ...]:
    if pointer in ("", "/"):
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON pointer (it must start with '/')")
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/"))


@dataclass(frozen=True)
class TemplateSpec:
    """Where one pod template lives, and which values multiply into its pod count."""

    path: Pointer
    """`""` for a Pod (the object is its own template), else e.g. `/spec/template`."""
    replicas: tuple[Pointer, ...] = ()
    """Pointers multiplied together; a missing value counts as 1 (the API defaults)."""
    pods: Callable[[Mapping[str, Any], tuple[str | int, ...]], int] | None = field(
        default=None, compare=False
    )
    """For built-in kinds whose operator does more than multiply: the pods of this template, from
    the manifest and the keys the template path's `*` bound (instead of `replicas`)."""
    _segments: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _replica_segments: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    _indexed: bool = field(init=False, repr=False, compare=False)
    """Whether a segment may index a list (`/spec/tasks/0/template`, from configuration)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_segments", _split(self.path))
        object.__setattr__(self, "_indexed", any(segment.isdecimal() for segment in self._segments))
        object.__setattr__(self, "_replica_segments", tuple(_split(p) for p in self.replicas))
        wildcards = self._segments.count("*")
        for pointer, segments in zip(self.replicas, self._replica_segments, strict=True):
            if segments.count("*") > wildcards:
                raise ValueError(f"replica path {pointer!r} has more '*' than template path {self.path!r}")


@dataclass(frozen=True)
class KindSpec:
    group: str
    """API group (`apps`, `kubeflow.org`); `""` for the core group."""
    kind: str
    templates: tuple[TemplateSpec, ...]
    scale_replicas: Pointer | None = None
    """Where the `scale` subresource's `spec.replicas` lands in the object (its CRD's
    `specReplicasPath`), for kinds that have one: `kubectl scale` and HPAs change only that."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KindSpec:
        """`{group, kind, templates: [{path, replicas: [...]}]}` as written in configuration."""
        templates = tuple(
            TemplateSpec(path=t["path"], replicas=tuple(t.get("replicas") or ()))
            for t in config.get("templates") or ()
        )
        if not templates:
            raise ValueError(f"kind {config.get('kind')!r}: list at least one template path")
        return cls(
            group=config.get("group", ""),
            kind=config["kind"],
            templates=templates,
            scale_replicas=config.get("scaleReplicas"),
        )


def _t(path: str, *replicas: str) -> TemplateSpec:
    return TemplateSpec(path, tuple(replicas))


def _ray(prefix: str) -> tuple[TemplateSpec, ...]:
    workers = f"{prefix}/workerGroupSpecs/*"
    group_at = _split(workers)

    def worker_pods(manifest: Mapping[str, Any], bound: tuple[str | int, ...]) -> int:
        """As KubeRay starts them (GetWorkerGroupDesiredReplicas): `replicas` (0 when unset, the
        CRD's default) clamped to [minReplicas, maxReplicas], none while the group is suspended,
        times numOfHosts (multi-host groups such as TPU slices run that many pods per replica)."""
        group = _get(manifest, group_at, bound)
        if not is_map(group) or group.get("suspend") is True:
            return 0
        low = _count(group.get("minReplicas"), missing=0)
        high = _count(group.get("maxReplicas"), missing=_MAX_REPLICAS)
        desired = min(max(_count(group.get("replicas"), missing=0), low), max(high, low))
        return desired * _count(group.get("numOfHosts"))

    return (
        _t(f"{prefix}/headGroupSpec/template"),
        TemplateSpec(f"{workers}/template", (f"{workers}/replicas", f"{workers}/numOfHosts"), worker_pods),
    )


def _lws_workers(manifest: Mapping[str, Any], bound: tuple[str | int, ...]) -> int:
    """Each of `replicas` groups runs `size` pods: one leader and size-1 workers. With a separate
    leaderTemplate, the leader is that template's pod and size-1 come from the worker template;
    without one, all `size` come from the worker template."""
    spec = manifest.get("spec")
    spec = spec if is_map(spec) else {}
    lwt = spec.get("leaderWorkerTemplate")
    lwt = lwt if is_map(lwt) else {}
    size = _count(lwt.get("size"))
    workers = size - 1 if is_map(lwt.get("leaderTemplate")) else size
    return _count(spec.get("replicas")) * max(workers, 0)


BUILTIN_KIND_SPECS: tuple[KindSpec, ...] = (
    KindSpec("", "Pod", (_t(""),)),
    KindSpec("apps", "Deployment", (_t("/spec/template", "/spec/replicas"),), "/spec/replicas"),
    KindSpec("apps", "StatefulSet", (_t("/spec/template", "/spec/replicas"),), "/spec/replicas"),
    KindSpec("apps", "ReplicaSet", (_t("/spec/template", "/spec/replicas"),), "/spec/replicas"),
    # A DaemonSet runs one pod per eligible node, a number the manifest does not say: counted as 1.
    KindSpec("apps", "DaemonSet", (_t("/spec/template"),)),
    KindSpec("batch", "Job", (_t("/spec/template", "/spec/parallelism"),)),
    KindSpec(
        "batch", "CronJob", (_t("/spec/jobTemplate/spec/template", "/spec/jobTemplate/spec/parallelism"),)
    ),
    *(
        KindSpec("kubeflow.org", kind, (_t(f"/spec/{field}/*/template", f"/spec/{field}/*/replicas"),), scale)
        for kind, field, scale in (
            # PyTorchJob's scale subresource (elastic training) sets the Worker replicas.
            ("PyTorchJob", "pytorchReplicaSpecs", "/spec/pytorchReplicaSpecs/Worker/replicas"),
            ("TFJob", "tfReplicaSpecs", None),
            ("MPIJob", "mpiReplicaSpecs", None),
        )
    ),
    KindSpec("ray.io", "RayCluster", _ray("/spec")),
    KindSpec("ray.io", "RayJob", _ray("/spec/rayClusterSpec")),
    KindSpec("ray.io", "RayService", _ray("/spec/rayClusterConfig")),
    KindSpec(
        "jobset.x-k8s.io",
        "JobSet",
        (
            _t(
                "/spec/replicatedJobs/*/template/spec/template",
                "/spec/replicatedJobs/*/replicas",
                "/spec/replicatedJobs/*/template/spec/parallelism",
            ),
        ),
    ),
    # Each group is one leader plus size-1 workers (`_lws_workers`).
    KindSpec(
        "leaderworkerset.x-k8s.io",
        "LeaderWorkerSet",
        (
            _t("/spec/leaderWorkerTemplate/leaderTemplate", "/spec/replicas"),
            TemplateSpec(
                "/spec/leaderWorkerTemplate/workerTemplate",
                ("/spec/replicas", "/spec/leaderWorkerTemplate/size"),
                _lws_workers,
            ),
        ),
        "/spec/replicas",
    ),
)


class KindRegistry:
    """The workload kinds the engine understands, looked up by `(group, kind)` from `apiVersion`."""

    def __init__(self, specs: Iterable[KindSpec]) -> None:
        self._specs: dict[tuple[str, str], KindSpec] = {}
        self._by_kind: dict[str, list[KindSpec]] = {}
        for spec in specs:
            self._specs[(spec.group, spec.kind)] = spec
        for spec in self._specs.values():
            self._by_kind.setdefault(spec.kind, []).append(spec)

    def with_extra(self, extra: Iterable[KindSpec | Mapping[str, Any]]) -> KindRegistry:
        """A registry with more kinds (or replaced ones, same group and kind) from configuration."""
        added = [e if isinstance(e, KindSpec) else KindSpec.from_config(e) for e in extra]
        return KindRegistry([*self._specs.values(), *added])

    def get(self, group: str, kind: str) -> KindSpec | None:
        return self._specs.get((group, kind))

    def lookup(self, manifest: Mapping[str, Any]) -> KindSpec | None:
        """The spec for a manifest's `apiVersion` and `kind`; None when it is not a workload we know."""
        kind = manifest.get("kind")
        api_version = manifest.get("apiVersion")
        if not isinstance(kind, str):
            return None
        if not isinstance(api_version, str):
            candidates = self._by_kind.get(kind, ())
            return candidates[0] if len(candidates) == 1 else None
        group = api_version.rpartition("/")[0]
        return self._specs.get((group, kind))

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(kind for _, kind in self._specs)

    def __iter__(self) -> Iterator[KindSpec]:
        return iter(self._specs.values())


BUILTIN_KINDS = KindRegistry(BUILTIN_KIND_SPECS)


def is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(value, Mapping), with parsed JSON's dicts answered first: the ABC check costs six
    times a type check, and admission runs it on every step into a manifest."""
    return type(value) is dict or isinstance(value, Mapping)


@dataclass(slots=True, init=False)
class PodTemplate:
    """One pod template found in a workload."""

    pointer: Pointer
    """JSON pointer to the template (`""` for a Pod itself)."""
    path: tuple[str | int, ...]
    """The same as segments, list indexes as ints (for fix hints)."""
    template: Mapping[str, Any]
    replicas: int
    labels: Mapping[str, str]
    """The template's own labels (read once: rules read them many times)."""
    spec: Mapping[str, Any]
    """The pod spec."""

    def __init__(
        self, pointer: Pointer, path: tuple[str | int, ...], template: Mapping[str, Any], replicas: int
    ) -> None:
        self.pointer = pointer
        self.path = path
        self.template = template
        self.replicas = replicas
        metadata = template.get("metadata")
        self.labels = (metadata.get("labels") if is_map(metadata) else None) or {}
        self.spec = template.get("spec") or {}


def _walk(
    node: Any, segments: Sequence[str], path: tuple[str | int, ...], bound: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], Any, tuple[str | int, ...]]]:
    if not segments:
        yield path, node, bound
        return
    head, rest = segments[0], segments[1:]
    if head == "*":
        if is_map(node):
            items: Iterable[tuple[str | int, Any]] = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            return
        for key, child in items:
            yield from _walk(child, rest, (*path, key), (*bound, key))
        return
    if is_map(node):
        if head in node:
            yield from _walk(node[head], rest, (*path, head), bound)
    elif isinstance(node, list) and head.isdecimal() and int(head) < len(node):
        yield from _walk(node[int(head)], rest, (*path, int(head)), bound)


def _get(node: Any, segments: Sequence[str], bound: Sequence[str | int]) -> Any:
    wildcard = iter(bound)
    for segment in segments:
        key: str | int | None = next(wildcard, None) if segment == "*" else segment
        if is_map(node) and isinstance(key, str):
            node = node.get(key)
        elif isinstance(node, list):
            index = (
                key if isinstance(key, int) else int(key) if isinstance(key, str) and key.isdecimal() else -1
            )
            node = node[index] if 0 <= index < len(node) else None
        else:
            return None
        if node is None:
            return None
    return node


_MAX_REPLICAS = 2**31 - 1  # replica counts are int32 in every API the built-in kinds come from


def _count(value: Any, missing: int = 1) -> int:
    """A replica-like count; a missing value (or junk) counts `missing`, as if the API default applied."""
    if isinstance(value, bool):
        return missing
    if isinstance(value, int):
        return max(value, 0) if value <= _MAX_REPLICAS else missing
    if isinstance(value, str) and value.isdecimal() and len(value) <= 10 and int(value) <= _MAX_REPLICAS:
        return int(value)
    return missing


def _indexed_path(node: Any, segments: Sequence[str]) -> tuple[str | int, ...]:
    """`segments` with those that index a list as ints, as fixes address list items."""
    path: list[str | int] = []
    for segment in segments:
        if isinstance(node, list) and segment.isdecimal():
            index = int(segment)
            path.append(index)
            node = node[index] if index < len(node) else None
        else:
            path.append(segment)
            node = node.get(segment) if is_map(node) else None
    return tuple(path)


def pod_templates_of(manifest: Mapping[str, Any], spec: KindSpec) -> list[PodTemplate]:
    """Every pod template of a manifest whose kind spec is already known."""
    found: list[PodTemplate] = []
    for tspec in spec.templates:
        if not tspec._segments:
            found.append(PodTemplate("", (), manifest, 1))
            continue
        if "*" not in tspec._segments:  # the common case (Deployment, Job, ...): plain lookups
            template = _get(manifest, tspec._segments, ())
            if is_map(template):
                if tspec.pods is not None:
                    replicas = tspec.pods(manifest, ())
                else:
                    replicas = 1
                    for segments in tspec._replica_segments:
                        replicas *= _count(_get(manifest, segments, ()))
                path = _indexed_path(manifest, tspec._segments) if tspec._indexed else tspec._segments
                found.append(PodTemplate(tspec.path, path, template, replicas))
            continue
        for path, template, bound in _walk(manifest, tspec._segments, (), ()):
            if not is_map(template):
                continue
            if tspec.pods is not None:
                replicas = tspec.pods(manifest, bound)
            else:
                replicas = 1
                for segments in tspec._replica_segments:
                    replicas *= _count(_get(manifest, segments, bound))
            found.append(PodTemplate(pointer_of(path), path, template, replicas))
    return found


def pod_templates(
    manifest: Mapping[str, Any], kinds: KindRegistry | None = None
) -> list[tuple[Pointer, Mapping[str, Any]]]:
    """`[(json_pointer, pod_template)]` of a workload; `[]` when the kind is not a known workload."""
    spec = (kinds or BUILTIN_KINDS).lookup(manifest)
    if spec is None:
        return []
    return [(t.pointer, t.template) for t in pod_templates_of(manifest, spec)]


def scaled(
    manifest: Mapping[str, Any], replicas: Any, kinds: KindRegistry | None = None
) -> dict[str, Any] | None:
    """The workload as its `scale` subresource would leave it: `replicas` set at the kind's scale
    path (copying only the maps on the way). None when the kind has no scale path we know."""
    spec = (kinds or BUILTIN_KINDS).lookup(manifest)
    if spec is None or spec.scale_replicas is None:
        return None
    *parents, leaf = _split(spec.scale_replicas)
    top: dict[str, Any] = dict(manifest)
    node = top
    for key in parents:
        child = node.get(key)
        copied: dict[str, Any] = dict(child) if is_map(child) else {}
        node[key] = copied
        node = copied
    node[leaf] = replicas
    return top


def common_labels(templates: Sequence[PodTemplate]) -> dict[str, str]:
    """Labels every template carries with the same value (the labels all of its pods will have)."""
    if not templates:
        return {}
    first = dict(templates[0].labels)
    for other in templates[1:]:
        labels = other.labels
        first = {k: v for k, v in first.items() if labels.get(k) == v}
    return first


def effective_labels(manifest: Mapping[str, Any], kinds: KindRegistry | None = None) -> dict[str, str]:
    """The labels policies judge (docs/crds.md#effective-labels): a Pod's own; for controllers and
    ML kinds, the labels every pod template carries alike. Unknown kinds: the object's own labels."""
    spec = (kinds or BUILTIN_KINDS).lookup(manifest)
    if spec is None:
        return dict((manifest.get("metadata") or {}).get("labels") or {})
    return common_labels(pod_templates_of(manifest, spec))


_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
"""Every suffix of the Kubernetes quantity grammar but its decimal exponent (`1e3`, `1E3`), which
Decimal reads itself. A suffix it does not know would make the count junk, 0: `8000000000n` GPUs
are 8, not none."""


_MAX_QUANTITY = 2**63 - 1  # the API server stores a quantity in an int64; anything larger is junk


def quantity(value: Any) -> int:
    """A resource quantity as a whole count, rounded up (`"2"` -> 2, `"1500m"` -> 2); junk counts 0.

    Extended resources such as GPUs are integers, the API server refuses anything else, so this
    only needs to be total, not exact, for the odd forms. Negative and out-of-range values, which
    the API server refuses too, are junk.
    """
    # The common case first: a plain count as a string ("1"). isdecimal, not isdigit: "¹" is a
    # digit that int() refuses.
    if type(value) is str and value.isdecimal() and len(value) < 20:
        count = int(value)
    else:
        count = _odd_quantity(value)
    return count if 0 <= count <= _MAX_QUANTITY else 0


def _odd_quantity(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return math.ceil(value) if math.isfinite(value) else 0
    if not isinstance(value, str):
        return 0
    text = value.strip()
    scale = Decimal(1)
    for suffix in _SUFFIXES:
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    try:
        number = Decimal(text)
        if scale != 1 and number.is_finite():
            # Exactly: the context's 28 digits would round `1000.0000000000000000000000000001m` down
            # to 1 where the count is 2. Digits enough for both factors make the product exact.
            with localcontext() as exact:
                exact.prec = len(number.as_tuple().digits) + 20
                number *= scale
    except DecimalException:  # not a number, or beyond even Decimal's range ("1e999999E")
        return 0
    # NaN, infinities and anything past int64 are junk; checked before ceil() builds a huge int.
    if not number.is_finite() or number.adjusted() > 19:
        return 0
    return math.ceil(number)


def container_request(container: Mapping[str, Any], resource: str) -> int:
    """A container's request of an extended resource; requests default to limits (as the API does)."""
    resources = container.get("resources")
    if not resources:
        return 0
    requests = resources.get("requests")
    if requests and resource in requests:
        return quantity(requests[resource])
    limits = resources.get("limits")
    if limits and resource in limits:
        return quantity(limits[resource])
    return 0


def effective_request(pod_spec: Mapping[str, Any], resource: str) -> int:
    """The scheduler's effective request of one resource (KEP-753 rules).

    max(sum of app containers + sum of sidecars, max over init containers of what runs at once
    while it runs). Sidecars are init containers with `restartPolicy: Always`: they keep running,
    so they add up like app containers and also to every init container started after them.
    """
    app = 0
    for container in pod_spec.get("containers") or ():
        app += container_request(container, resource)
    sidecars = 0
    init_peak = 0
    for container in pod_spec.get("initContainers") or ():
        # Comparisons, not max(): this runs for every container of every admission.
        running = container_request(container, resource)
        if container.get("restartPolicy") == "Always":
            sidecars += running
            running = sidecars
        else:
            running += sidecars
        if running > init_peak:
            init_peak = running
    app += sidecars
    return app if app > init_peak else init_peak


def pod_units(pod_spec: Mapping[str, Any], resources: Sequence[str]) -> int:
    """Units of the named extended resources one pod takes, as the scheduler counts them (whole
    devices, whatever a device is worth: GPU-equivalents are controller.engine.accelerators)."""
    if len(resources) == 1:  # the common case, and this runs on every admission
        return effective_request(pod_spec, resources[0])
    total = 0
    for resource in resources:
        total += effective_request(pod_spec, resource)
    return total


def workload_units(
    manifest: Mapping[str, Any], resources: Sequence[str], kinds: KindRegistry | None = None
) -> int:
    """Units of the named resources the whole workload takes at once: per template, per pod x pods."""
    spec = (kinds or BUILTIN_KINDS).lookup(manifest)
    if spec is None:
        return 0
    return sum(pod_units(t.spec, resources) * t.replicas for t in pod_templates_of(manifest, spec))


Pin = tuple[str, tuple[str, ...]]
"""`(node label key, the values it restricts the pod to)`."""


def pinned_terms(pod_spec: Mapping[str, Any], keys: Sequence[str]) -> list[list[Pin]]:
    """Instance-type pins of each way a pod can be scheduled.

    Required node affinity terms are ORed, so each term is one way; `nodeSelector` is ANDed into
    every term. Within a term, `In` on one of `keys` pins (to its values); `NotIn`, `Exists`,
    `Gt`/`Lt` do not: they leave other types possible. No required terms: one way, the nodeSelector.
    """
    base: list[Pin] = []
    selector = pod_spec.get("nodeSelector")
    if selector:
        for key in keys:  # a loop, not a comprehension: this runs for every GPU pod admitted
            if key in selector:
                value = selector[key]
                base.append((key, (value if type(value) is str else str(value),)))
    affinity = pod_spec.get("affinity")
    if not affinity:  # the common case: a nodeSelector alone
        return [base]
    node_affinity = affinity.get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or ()
    if not terms:
        return [base]
    out = []
    for term in terms:
        pins = list(base)
        for expr in (term or {}).get("matchExpressions") or ():
            if expr.get("operator") == "In" and expr.get("key") in keys:
                pins.append((expr["key"], tuple(str(v) for v in expr.get("values") or ())))
        out.append(pins)
    return out
