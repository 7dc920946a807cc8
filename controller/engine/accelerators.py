"""GPU-equivalents: every way a pod gets a GPU, counted in one unit (README "GPU-equivalents").

A whole GPU is 1. Everything else is a share of one, worked out here and only here, for admission
(the rules), metering (the operator) and `comptroller check` alike:

- extended resources, per unit: `nvidia.com/gpu` 1; `nvidia.com/mig-<N>g.<M>gb` N compute slices of
  the product's (7 on A100/H100/H200/B200, 4 on A30); `nvidia.com/gpu.shared` 1/replicas; AMD,
  Intel, Habana and AWS Neuron devices 1 (a NeuronCore 1/2, an MI300X partition 1/partitions);
- on a node GPU Feature Discovery labels as MIG single strategy or time-sliced, `nvidia.com/gpu`
  itself is a slice or a replica, and counts as one;
- HAMi vGPUs (`nvidia.com/gpu` with `nvidia.com/gpucores` / `gpumem` / `gpumem-percentage`): the
  larger of the core share and the memory share;
- KAI Scheduler / Run:ai fractions (pod annotations `gpu-fraction`, `gpu-memory`);
- Dynamic Resource Allocation: each of the pod's `resourceClaims`, resolved to its
  ResourceClaimTemplate or ResourceClaim, counts its requests' devices by DeviceClass (a MIG
  device by the one profile its selectors pin, else as a whole GPU; of `firstAvailable`, the
  alternative worth the most of those a `resources` list counts, since the scheduler may give
  any; a request for admin access, 0: it monitors devices, takes none); a claim that cannot be
  resolved counts as one GPU, with a note, never as zero.

What depends on the node (which product, how many replicas, how much memory) is read from the
node's labels when it is known (metering), else from the labels the pod pins with its own
`nodeSelector` or required affinity (admission). Unknown, a share counts as the whole GPU: the
bound a budget can trust.

The table of equivalents is data (`Equivalence`): built-in defaults, overridden by the
cluster-scoped `GPUEquivalence` objects (docs/crds.md#gpuequivalence).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, NamedTuple

from controller.engine.workloads import container_request, effective_request, is_map, quantity

# -- node facts --------------------------------------------------------------------------------

PRODUCT_LABELS = ("nvidia.com/gpu.product", "amd.com/gpu.product-name")
"""Node labels naming the GPU model (GPU Feature Discovery; the AMD GPU operator's labeller)."""
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU memory in MiB, as GPU Feature Discovery labels it."""
PARTITION_LABELS = ("amd.com/gpu.compute-memory-partition", "amd.com/compute-memory-partition")
"""`<compute>_<memory>` partition modes (`cpx_nps4`), as the AMD node labeller and GPU operator set them."""
NODE_LABELS = (*PRODUCT_LABELS, MIG_STRATEGY_LABEL, REPLICAS_LABEL, MEMORY_LABEL, *PARTITION_LABELS)
"""Every node label the equivalents read (the operator keeps only these of each node)."""

_MIG_PROFILE = re.compile(r"(\d+)g\.(\d+)gb")
_MIG_IN_PRODUCT = re.compile(r"-MIG-(\d+g\.\d+gb)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the equivalents need to know of the node a pod runs (or is pinned) on."""

    product: str = ""
    mig_strategy: str = ""
    replicas: int = 0
    memory_mib: int = 0
    partition: str = ""

    @classmethod
    def of(cls, labels: Mapping[str, Any] | None) -> NodeFacts:
        if not labels:
            return NO_NODE
        product = next((str(labels[k]) for k in PRODUCT_LABELS if labels.get(k)), "")
        partition = next((str(labels[k]) for k in PARTITION_LABELS if labels.get(k)), "")
        return cls(
            product=product,
            mig_strategy=str(labels.get(MIG_STRATEGY_LABEL) or ""),
            replicas=quantity(str(labels.get(REPLICAS_LABEL) or "0")),
            memory_mib=quantity(str(labels.get(MEMORY_LABEL) or "0")),
            partition=partition.partition("_")[0].upper(),
        )

    @property
    def mig_profile(self) -> str:
        """The MIG profile `nvidia.com/gpu` is on this node (single strategy), or ``."""
        if not self.product:  # a pod pinning no GPU product: every admission of a GPU pod asks
            return ""
        found = _MIG_IN_PRODUCT.search(self.product)
        return found.group(1).lower() if found else ""

    @property
    def base_product(self) -> str:
        """The product without GPU Feature Discovery's `-MIG-<profile>` or `-SHARED` suffix."""
        product = _MIG_IN_PRODUCT.sub("", self.product)
        return product[: -len("-SHARED")] if product.upper().endswith("-SHARED") else product


NO_NODE = NodeFacts()


def pinned_node(pod_spec: Mapping[str, Any]) -> NodeFacts:
    """The node facts a pod pins itself: its `nodeSelector`, and `In` terms of one value that every
    required node-affinity term agrees on (what the pod is sure to land on)."""
    labels: dict[str, str] = {}
    selector = pod_spec.get("nodeSelector")
    if is_map(selector):
        for key, value in selector.items():  # a loop, not a generator: this runs for every GPU pod
            if key in NODE_LABELS:
                labels[key] = str(value)
    affinity = pod_spec.get("affinity")
    if not affinity:  # the common case: a nodeSelector alone
        return NodeFacts.of(labels)
    affinity = affinity.get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or ()
    agreed: dict[str, str] | None = None
    for term in terms:
        pins = {
            e.get("key"): str(e["values"][0])
            for e in (term or {}).get("matchExpressions") or ()
            if e.get("operator") == "In" and e.get("key") in NODE_LABELS and len(e.get("values") or ()) == 1
        }
        agreed = pins if agreed is None else {k: v for k, v in agreed.items() if pins.get(k) == v}
    for key, value in (agreed or {}).items():
        labels.setdefault(key, value)
    return NodeFacts.of(labels)


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Product:
    """One GPU model, matched by a glob on its node product label."""

    match: str
    mig_slices: int = 0
    """Compute slices a whole GPU has under MIG (0: no MIG)."""
    memory_mib: int = 0
    partitions: Mapping[str, int] = field(default_factory=dict)
    """Compute partition mode (AMD: SPX, DPX, QPX, CPX) -> devices one GPU is split into."""


@dataclass(frozen=True, slots=True)
class DeviceClassEquivalent:
    """What one device of a DRA DeviceClass is worth."""

    equivalents: float = 1.0
    mig: bool = False
    """Devices are MIG partitions: worth their profile's slices (from a selector or attribute)."""
    all_devices: int = 8
    """Devices assumed for `allocationMode: All` at admission (the allocation says at metering)."""


MI300X_PARTITIONS = {"SPX": 1, "DPX": 2, "QPX": 4, "CPX": 8}

DEFAULT_PRODUCTS = (
    Product("*A100*40GB*", mig_slices=7, memory_mib=40960),
    Product("*A100*", mig_slices=7, memory_mib=81920),
    Product("*H100*NVL*", mig_slices=7, memory_mib=95830),
    Product("*H100*", mig_slices=7, memory_mib=81559),
    Product("*H200*", mig_slices=7, memory_mib=143771),
    Product("*B200*", mig_slices=7, memory_mib=183359),
    Product("*A30*", mig_slices=4, memory_mib=24576),
    Product("*RTX-PRO-6000*", mig_slices=4, memory_mib=97887),
    Product("*RTX-PRO-5000*", mig_slices=2, memory_mib=48935),
    Product("*RTX-PRO-4500*", mig_slices=2, memory_mib=32623),
    Product("*L4", memory_mib=23034),
    Product("*L4-*", memory_mib=23034),
    Product("*MI300X*", memory_mib=196608, partitions=MI300X_PARTITIONS),
    Product("*MI300A*", memory_mib=131072, partitions={"SPX": 1, "TPX": 3, "CPX": 6}),
)

DEFAULT_RESOURCES: Mapping[str, float] = {
    "nvidia.com/gpu": 1.0,
    "nvidia.com/gpu.shared": 1.0,
    "nvidia.com/mig-*": 1.0,  # a MIG device: its profile's slices of the product's (see `_mig`)
    "amd.com/gpu": 1.0,
    "gpu.intel.com/i915": 1.0,
    "gpu.intel.com/xe": 1.0,
    "gpu.intel.com/dxg": 1.0,  # an Intel GPU under WSL2
    "habana.ai/gaudi": 1.0,
    "aws.amazon.com/neuron": 1.0,
    "aws.amazon.com/neurondevice": 1.0,
    "aws.amazon.com/neuroncore": 0.5,  # two NeuronCores a device on Trainium1 and Inferentia2
}

DEFAULT_DEVICE_CLASSES: Mapping[str, DeviceClassEquivalent] = {
    "gpu.nvidia.com": DeviceClassEquivalent(),
    "mig.nvidia.com": DeviceClassEquivalent(mig=True),
    "gpu.amd.com": DeviceClassEquivalent(),
    "gpu.intel.com": DeviceClassEquivalent(),
    "gaudi.intel.com": DeviceClassEquivalent(),
    "gpu.example.com": DeviceClassEquivalent(),  # kubernetes-sigs/dra-example-driver
}

HAMI_SHARES = ("nvidia.com/gpucores", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage")
"""HAMi's per-vGPU limits: they shape `nvidia.com/gpu` in the same container and count nothing alone."""
_HAMI_SET = frozenset(HAMI_SHARES)
KAI_FRACTION = "gpu-fraction"
KAI_MEMORY = "gpu-memory"
KAI_DEVICES = "gpu-fraction-num-devices"
DRA_EXTENDED_PREFIX = "deviceclass.resource.kubernetes.io/"
"""Extended resources backed by DRA (KEP-5004): the rest of the name is the DeviceClass."""


@dataclass(frozen=True)
class Equivalence:
    """The table of GPU-equivalents (built-in defaults, then `GPUEquivalence` overrides)."""

    resources: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    """Extended resource name (glob) -> GPU-equivalents per unit."""
    products: tuple[Product, ...] = DEFAULT_PRODUCTS
    device_classes: Mapping[str, DeviceClassEquivalent] = field(
        default_factory=lambda: dict(DEFAULT_DEVICE_CLASSES)
    )
    shared_replicas: int = 1
    """Replicas of a shared GPU assumed before the pod's node is known (1: the whole GPU)."""
    _exact: dict[str, float] = field(init=False, repr=False, compare=False)
    _globs: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)
    _weights: dict[str, float | None] = field(init=False, repr=False, compare=False)
    """Memo of `weight`: resource names are few, and asked on every admission."""

    def __post_init__(self) -> None:
        exact = {k: float(v) for k, v in self.resources.items() if not _is_glob(k)}
        globs = tuple((k, float(v)) for k, v in self.resources.items() if _is_glob(k))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_globs", globs)
        object.__setattr__(self, "_weights", {})

    def weight(self, resource: str) -> float | None:
        """GPU-equivalents one unit of `resource` is worth before node facts, None if not an accelerator."""
        weights = self._weights
        if resource in weights:
            return weights[resource]
        value = self._exact.get(resource)
        if value is None:
            value = next((v for k, v in self._globs if fnmatchcase(resource, k)), None)
        if value is None and resource.startswith(DRA_EXTENDED_PREFIX):
            device_class = self.device_classes.get(resource[len(DRA_EXTENDED_PREFIX):])
            value = device_class.equivalents if device_class is not None else None
        if len(weights) < 4096:
            weights[resource] = value
        return value

    def names(self, resource: str) -> bool:
        """Whether the table has a weight for this very resource (not through a glob)."""
        return resource in self._exact

    def product(self, name: str) -> Product | None:
        if not name:
            return None
        return next((p for p in self.products if fnmatchcase(name, p.match)), None)

    def partitions(self, product_name: str, mode: str) -> int:
        """Devices one GPU of `product_name` is split into in compute partition `mode` (AMD: SPX,
        DPX, QPX, CPX); 1 for an unknown product or mode."""
        product = self.product(product_name)
        return max(product.partitions.get(mode, 1), 1) if product is not None else 1

    def mig_share(self, profile: str, node: NodeFacts) -> float:
        """One MIG device of `profile` (`3g.40gb`) as a share of its GPU."""
        found = _MIG_PROFILE.match(profile)
        if found is None:
            return 1.0
        slices = int(found.group(1))
        product = self.product(node.base_product)
        total = product.mig_slices if product is not None and product.mig_slices else _slices_of(profile)
        return min(slices / total, 1.0)

    def memory_of(self, node: NodeFacts) -> int:
        if node.memory_mib:
            return node.memory_mib
        product = self.product(node.base_product)
        return product.memory_mib if product is not None else 0


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


_FEWER_SLICES = {
    # Profiles of MIG GPUs with fewer than 7 slices; a profile two GPUs share counts as the one
    # with fewer (the larger share: the bound a budget can trust).
    "1g.6gb": 4, "2g.12gb": 4, "4g.24gb": 4,  # A30
    "1g.24gb": 2, "2g.48gb": 4, "4g.96gb": 4,  # RTX PRO 6000 Blackwell (4); RTX PRO 5000 (2)
    "1g.16gb": 2,  # RTX PRO 4500 Blackwell
}


def _slices_of(profile: str) -> int:
    """Slices of the GPU a profile comes from, when the node does not say which product it is:
    the profiles of GPUs with fewer slices are their own (`_FEWER_SLICES`); every other MIG GPU
    (A100, H100, H200, B200, GB200) has 7."""
    return _FEWER_SLICES.get(profile.split("+", 1)[0], 7)


DEFAULT_EQUIVALENCE = Equivalence()


def equivalence_of(overrides: Iterable[Any]) -> Equivalence:
    """The built-in table with each `GPUEquivalence` (models, in name order) laid over it: later
    names win for the same resource or DeviceClass; their products are tried before the built-in
    ones (first match wins)."""
    overrides = list(overrides)
    if not overrides:
        return DEFAULT_EQUIVALENCE
    resources = dict(DEFAULT_RESOURCES)
    classes = dict(DEFAULT_DEVICE_CLASSES)
    products: list[Product] = []
    replicas = DEFAULT_EQUIVALENCE.shared_replicas
    for model in overrides:
        spec = model.spec
        resources.update(spec.resources)
        classes.update(
            (name, DeviceClassEquivalent(c.equivalents, c.mig, c.all_devices))
            for name, c in spec.device_classes.items()
        )
        products = [
            *(Product(p.match, p.mig_slices, p.memory_mib, dict(p.partitions)) for p in spec.products),
            *products,
        ]
        if spec.shared_replicas is not None:
            replicas = spec.shared_replicas
    return Equivalence(
        resources=resources,
        products=(*products, *DEFAULT_PRODUCTS),
        device_classes=classes,
        shared_replicas=replicas,
    )


# -- counting ----------------------------------------------------------------------------------


UNRESOLVED_CLAIM = "dra"
"""The key a claim nobody here can resolve is counted under (1 GPU): every `resources` list counts it."""

ClaimLookup = Callable[[str, str, str], Mapping[str, Any] | None]
"""`(namespace, kind, name) -> the object's device claim spec ({requests: [...]})`; kind is
`ResourceClaim` or `ResourceClaimTemplate`. None: not known."""


@dataclass(frozen=True, slots=True)
class Choice:
    """A DRA request whose `firstAvailable` alternatives are of more than one DeviceClass. It is
    counted (in `claim_gpus`, `PodGPUs.per_pod` and `.shared`) under the class of its largest
    alternative; a `resources` list that does not count that class counts the largest alternative
    it does count instead, as the scheduler may give that one."""

    counted: str
    """The class it is counted under: its largest alternative's."""
    by_class: Mapping[str, float]
    """The largest alternative of each DeviceClass the table knows, `counted`'s included."""

    def beyond(self, counts: Callable[[str], bool]) -> float:
        """What it adds, for a `resources` list counting `counts`, to its count under `counted`."""
        if counts(self.counted):
            return 0.0
        return max((value for key, value in self.by_class.items() if counts(key)), default=0.0)


@dataclass(frozen=True)
class PodGPUs:
    """A pod's GPU-equivalents, by what it asked them as (resource name or DeviceClass name)."""

    per_pod: Mapping[str, float] = field(default_factory=dict)
    """Held by this pod alone (every replica holds its own)."""
    shared: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Named ResourceClaims the pod shares with others: claim name -> by key. Counted once per
    workload, however many of its pods use the claim."""
    unknown: Mapping[str, float] = field(default_factory=dict)
    """Extended resources the table does not know, in units: only a `resources` list naming them
    counts them (1 GPU a unit)."""
    unresolved: float = 0.0
    """Claims that could not be resolved, 1 GPU each: counted whatever `resources` says."""
    notes: tuple[str, ...] = ()
    """What had to be assumed (an unresolved claim, `allocationMode: All`), for a warning."""
    choices: tuple[tuple[str, Choice], ...] = ()
    """`firstAvailable` requests of more than one DeviceClass, with the claim they are in: `` for
    the pod's own (templates, in `per_pod`), else the shared claim's name. Counted in `per_pod` or
    `shared` as the largest alternative; only a `resources` list reads them (`Choice.beyond`)."""

    def total(self, counts: Callable[[str], bool] | None = None, *, shared: bool = True) -> float:
        """GPU-equivalents of the keys `counts` accepts (None: every accelerator)."""
        total = self.unresolved
        for key, value in self.per_pod.items():
            if counts is None or counts(key):
                total += value
        if shared:
            for by_key in self.shared.values():
                for key, value in by_key.items():
                    if counts is None or key == UNRESOLVED_CLAIM or counts(key):
                        total += value
        if counts is not None:
            for key, value in self.unknown.items():
                if counts(key):
                    total += value
            for claim, choice in self.choices:
                if shared or not claim:
                    total += choice.beyond(counts)
        return total

    def shared_total(self, claim: str, counts: Callable[[str], bool] | None = None) -> float:
        """GPU-equivalents of the keys `counts` accepts in one shared claim (None: every accelerator)."""
        total = 0.0
        for key, value in self.shared[claim].items():
            if counts is None or key == UNRESOLVED_CLAIM or counts(key):
                total += value
        if counts is not None:
            for name, choice in self.choices:
                if name == claim:
                    total += choice.beyond(counts)
        return total


NO_GPUS = PodGPUs()


def pod_gpus(
    pod_spec: Mapping[str, Any],
    annotations: Mapping[str, Any] | None = None,
    *,
    table: Equivalence = DEFAULT_EQUIVALENCE,
    node: NodeFacts | None = None,
    namespace: str = "",
    claims: ClaimLookup | None = None,
    generated: Mapping[str, str] | None = None,
) -> PodGPUs:
    """Every GPU a pod asks for, in GPU-equivalents (see the module docstring).

    `node`: facts of the node it runs on (metering); None reads what the pod pins (admission).
    `generated`: the claims made for the pod from its templates (`generated_claims`).
    """
    names = _extended_resources(pod_spec)
    fraction = annotations.get(KAI_FRACTION) or annotations.get(KAI_MEMORY) if annotations else None
    dra = pod_spec.get("resourceClaims")
    if not names and not fraction and not dra:
        return NO_GPUS  # most pods: no accelerator at all
    facts = node if node is not None else pinned_node(pod_spec)
    per_pod: dict[str, float] = {}
    unknown: dict[str, float] = {}
    overhead = pod_spec.get("overhead") or {}
    hami = not _HAMI_SET.isdisjoint(names)
    for name in names:
        if name in _HAMI_SET:
            continue
        weight = table.weight(name)
        units = effective_request(pod_spec, name)
        if overhead:
            units += quantity(overhead.get(name))
        if units <= 0:
            continue
        if weight is None:
            unknown[name] = float(units)
            continue
        if name == "nvidia.com/gpu" and hami:
            value = _hami(pod_spec, table, facts)
        else:
            value = units * _unit(name, weight, table, facts)
        if value > 0:
            per_pod[name] = per_pod.get(name, 0.0) + value
    if fraction and annotations is not None:
        share = _kai(annotations, table, facts)
        if share > 0:
            per_pod["nvidia.com/gpu"] = per_pod.get("nvidia.com/gpu", 0.0) + share
    if not dra:  # the GPU pods admission sees most: devices asked as resources, nothing to note
        return PodGPUs(per_pod, {}, unknown)
    notes: list[str] = []
    shared: dict[str, dict[str, float]] = {}
    choices: list[tuple[str, Choice]] = []
    unresolved = _claims(dra, namespace, table, claims, per_pod, shared, notes, choices, generated)
    return PodGPUs(per_pod, shared, unknown, unresolved, tuple(notes), tuple(choices))


_CORE_RESOURCES = frozenset(("cpu", "memory", "ephemeral-storage"))
"""The resources every container asks for, none of them extended (`vendor/name`)."""


def _extended_resources(pod_spec: Mapping[str, Any]) -> list[str]:
    """Names of the extended resources (`vendor/name`) any container or the overhead asks for."""
    names: list[str] = []
    for group in ("containers", "initContainers"):
        for container in pod_spec.get(group) or ():
            resources = container.get("resources") if is_map(container) else None
            if not resources:
                continue
            for part in (resources.get("requests"), resources.get("limits")):
                # Checked in C first: most containers ask for nothing but CPU and memory.
                if part and not (type(part) is dict and _CORE_RESOURCES.issuperset(part)):
                    for name in part:
                        if "/" in name and name not in names:
                            names.append(name)
    overhead = pod_spec.get("overhead")
    if overhead:
        names.extend(n for n in overhead if "/" in n and n not in names)
    return names


def _unit(name: str, weight: float, table: Equivalence, node: NodeFacts) -> float:
    """One unit of an accelerator resource, on `node`."""
    if name.startswith("nvidia.com/mig-"):
        if table.names(name):  # a weight set for this very profile replaces the share of slices
            return weight
        return weight * table.mig_share(name[len("nvidia.com/mig-"):], node)
    if name == "nvidia.com/gpu":
        profile = node.mig_profile
        if profile:  # MIG single strategy: every nvidia.com/gpu on the node is one slice
            return weight * table.mig_share(profile, node)
        if node.replicas > 1:  # time-slicing or MPS without renaming: one replica of a GPU
            return weight / node.replicas
        return weight
    if name == "nvidia.com/gpu.shared":
        replicas = node.replicas or table.shared_replicas
        return weight / max(replicas, 1)
    if node.partition and name == "amd.com/gpu":
        return weight / table.partitions(node.product, node.partition)
    return weight


def _hami(pod_spec: Mapping[str, Any], table: Equivalence, node: NodeFacts) -> float:
    """HAMi vGPUs: per container, vGPUs x the larger of its core share and its memory share (a
    memory size in MiB is a share of the GPU's memory; unknown memory: the whole GPU)."""
    memory = table.memory_of(node)

    def share(container: Mapping[str, Any]) -> float:
        vgpus = container_request(container, "nvidia.com/gpu")
        if vgpus <= 0:
            return 0.0
        cores = container_request(container, "nvidia.com/gpucores")
        percent = container_request(container, "nvidia.com/gpumem-percentage")
        mib = container_request(container, "nvidia.com/gpumem")
        parts = [cores / 100.0 if cores else 0.0, percent / 100.0 if percent else 0.0]
        if mib:
            parts.append(min(mib / memory, 1.0) if memory else 1.0)
        fraction = max(parts) if any(parts) else 1.0
        return vgpus * min(fraction, 1.0)

    return _effective(pod_spec, share)


def _effective(pod_spec: Mapping[str, Any], value: Callable[[Mapping[str, Any]], float]) -> float:
    """The scheduler's effective request rule (controller.engine.workloads.effective_request) for
    a per-container value: app containers and sidecars add up; an init container runs alone."""
    app = sum(value(c) for c in pod_spec.get("containers") or () if isinstance(c, Mapping))
    sidecars = 0.0
    peak = 0.0
    for container in pod_spec.get("initContainers") or ():
        if not isinstance(container, Mapping):
            continue
        running = value(container)
        if container.get("restartPolicy") == "Always":
            sidecars += running
            running = sidecars
        else:
            running += sidecars
        peak = max(peak, running)
    return max(app + sidecars, peak)


def _kai(annotations: Mapping[str, Any], table: Equivalence, node: NodeFacts) -> float:
    """KAI Scheduler / Run:ai: `gpu-fraction` of `gpu-fraction-num-devices` GPUs, or `gpu-memory`
    MiB of one GPU (its memory unknown: the whole GPU)."""
    devices = _number(annotations.get(KAI_DEVICES)) or 1.0
    fraction = _number(annotations.get(KAI_FRACTION))
    if fraction:
        return min(fraction, 1.0) * devices
    mib = _number(annotations.get(KAI_MEMORY))
    if not mib:
        return 0.0
    memory = table.memory_of(node)
    return (min(mib / memory, 1.0) if memory else 1.0) * devices


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if 0 < number < 1e6 else 0.0


# -- Dynamic Resource Allocation -----------------------------------------------------------------


class ClaimRef(NamedTuple):
    """One entry of a pod's `spec.resourceClaims`: the DRA object it names, and its own name."""

    kind: str
    """`ResourceClaim` (one its pods share) or `ResourceClaimTemplate` (each pod gets its own)."""
    name: str
    entry: str
    """The entry's name in the pod (what containers' `resources.claims` and the pod's status use)."""


def claim_refs(entries: Any) -> Iterator[ClaimRef]:
    """The DRA objects a pod's `spec.resourceClaims` names, in order."""
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, Mapping):
            continue
        # `source:` is the form before resource.k8s.io/v1beta1 (Kubernetes 1.31), still in examples.
        source: Mapping[str, Any] = entry["source"] if isinstance(entry.get("source"), Mapping) else entry
        template = source.get("resourceClaimTemplateName")
        name = template or source.get("resourceClaimName")
        if name:
            kind = "ResourceClaimTemplate" if template else "ResourceClaim"
            yield ClaimRef(kind, str(name), str(entry.get("name") or ""))


def generated_claims(pod: Mapping[str, Any]) -> Mapping[str, str]:
    """`entry name -> ResourceClaim` the resource claim controller made for the pod from a template,
    as the pod's status records it (empty until it has)."""
    status = pod.get("status")
    statuses = status.get("resourceClaimStatuses") if isinstance(status, Mapping) else None
    if not isinstance(statuses, list):
        return {}
    return {
        str(s["name"]): str(s["resourceClaimName"])
        for s in statuses
        if isinstance(s, Mapping) and s.get("name") and s.get("resourceClaimName")
    }


def _claims(
    entries: Any,
    namespace: str,
    table: Equivalence,
    lookup: ClaimLookup | None,
    per_pod: dict[str, float],
    shared: dict[str, dict[str, float]],
    notes: list[str],
    choices: list[tuple[str, Choice]],
    generated: Mapping[str, str] | None = None,
) -> float:
    """Adds the pod's claims to `per_pod` (templates) and `shared` (named claims), and their
    `firstAvailable` requests of more than one class to `choices`; returns how many claims could
    not be resolved. A template's entry counts the claim made from it for this pod, where
    `generated` names one that is known: that claim is what the pod gets, even once the template
    is deleted."""
    unresolved = 0.0
    for kind, name, entry in claim_refs(entries):
        template = kind == "ResourceClaimTemplate"
        spec = None
        made = generated.get(entry) if template and generated and lookup is not None else None
        if made is not None and lookup is not None:
            spec = lookup(namespace, "ResourceClaim", made)
        if spec is None or not spec.get("requests"):
            spec = lookup(namespace, kind, name) if lookup is not None else None
        if spec is None or not spec.get("requests"):  # unknown, or classic DRA (a resource class)
            notes.append(f"{kind} {name} is not known here: counted as 1 GPU")
            if template:
                unresolved += 1.0
            else:  # a claim its pods share: once for them all
                shared[name] = {UNRESOLVED_CLAIM: 1.0}
            continue
        found: list[Choice] = []
        counted = claim_gpus(spec, table, notes=notes, where=f"{kind} {name}", choices=found)
        if not counted:
            continue
        if template:
            for key, value in counted.items():
                per_pod[key] = per_pod.get(key, 0.0) + value
            choices.extend(("", choice) for choice in found)
        else:
            if name not in shared:  # a claim the pod names twice is still one claim
                choices.extend((name, choice) for choice in found)
            shared[name] = counted
    return unresolved


CLAIM_KINDS = ("ResourceClaim", "ResourceClaimTemplate")


class ClaimIndex:
    """The DRA ResourceClaims and ResourceClaimTemplates known, as a ClaimLookup: `check` fills it
    from the documents of its input, the webhook's watch cache from the API server (in place, so
    a claim created per pod never rebuilds the policy snapshot)."""

    def __init__(self, objects: Iterable[Mapping[str, Any]] = ()) -> None:
        self._devices: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        for obj in objects:
            self.put(obj)

    @staticmethod
    def key_of(obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        group = str(api_version or "resource.k8s.io/").partition("/")[0]
        if kind not in CLAIM_KINDS or group != "resource.k8s.io":
            return None
        metadata = obj.get("metadata") or {}
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        return (str(metadata.get("namespace") or ""), str(kind), str(name)) if name else None

    @staticmethod
    def devices_of(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
        """The `devices` of a ResourceClaim, or of the claims a ResourceClaimTemplate makes."""
        spec = obj.get("spec") or {}
        if kind == "ResourceClaimTemplate":
            spec = spec.get("spec") or {} if isinstance(spec, Mapping) else {}
        devices = spec.get("devices") if isinstance(spec, Mapping) else None
        return devices if isinstance(devices, Mapping) else {}

    def put(self, obj: Mapping[str, Any]) -> None:
        key = self.key_of(obj)
        if key is not None:
            self._devices[key] = self.devices_of(obj, key[1])

    def reset(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Replace every object of `kind` by `objects` (a relist). Readers see either set whole:
        the new mapping is built aside and swapped in by one assignment."""
        kept = {key: value for key, value in self._devices.items() if key[1] != kind}
        fresh = ClaimIndex(objects)
        self._devices = {**kept, **fresh._devices}

    def remove(self, obj: Mapping[str, Any]) -> None:
        key = self.key_of(obj)
        if key is not None:
            self._devices.pop(key, None)

    def __len__(self) -> int:
        return len(self._devices)

    def __call__(self, namespace: str, kind: str, name: str) -> Mapping[str, Any] | None:
        found = self._devices.get((namespace, kind, name))
        if found is None:  # a document without a namespace lands in the workload's own
            found = self._devices.get(("", kind, name))
        return found


def claim_gpus(
    devices: Mapping[str, Any],
    table: Equivalence = DEFAULT_EQUIVALENCE,
    *,
    notes: list[str] | None = None,
    where: str = "",
    choices: list[Choice] | None = None,
) -> dict[str, float]:
    """GPU-equivalents a claim's `devices` ({requests: [...]}) asks for, by DeviceClass name.

    `exactly` (resource.k8s.io/v1) or the request itself (v1beta1) names the class. Of
    `firstAvailable` the alternative worth the most counts, under its class: the scheduler takes the
    first it can satisfy, which may be any of them (a first one that matches nothing, or a class
    that is no accelerator, only leads it to the next). When the alternatives are of more than one
    class, a `Choice` added to `choices` says what each class's largest is worth, for a `resources`
    list that does not count the largest's class. Classes the table does not list are not
    accelerators (a NIC)."""
    out: dict[str, float] = {}
    requests = devices.get("requests")
    for request in requests if isinstance(requests, list) else ():
        if not isinstance(request, Mapping):
            continue
        alternatives = request.get("firstAvailable")
        if not isinstance(alternatives, list):
            alternatives = []
        options = [a for a in alternatives if isinstance(a, Mapping)]
        if not options:
            exactly = request.get("exactly")
            options = [exactly if isinstance(exactly, Mapping) and exactly else request]
        counted = [_asked_gpus(asked, table, where) for asked in options]
        best = max(range(len(counted)), key=lambda i: counted[i][1])  # the first of equals
        class_name, value, said = counted[best]
        if notes is not None:
            notes.extend(said)
            if value > counted[0][1]:
                notes.append(
                    f"{where} request {request.get('name')} may be given any of its firstAvailable "
                    f"alternatives: counted as the largest, {options[best].get('name')} ({value:g}), "
                    "until allocated"
                )
        if value > 0:
            out[class_name] = out.get(class_name, 0.0) + value
        if choices is not None and len(counted) > 1:
            by_class: dict[str, float] = {}
            for other, worth, _ in counted:
                if worth > by_class.get(other, 0.0):
                    by_class[other] = worth
            if len(by_class) > 1:
                choices.append(Choice(class_name, by_class))
    return out


def _asked_gpus(asked: Mapping[str, Any], table: Equivalence, where: str) -> tuple[str, float, list[str]]:
    """One request (or one `firstAvailable` alternative): its DeviceClass, what it is worth, and the
    notes counting it would give."""
    class_name = str(asked.get("deviceClassName") or "")
    device_class = table.device_classes.get(class_name)
    if device_class is None or admin_access(asked):
        return class_name, 0.0, []
    said: list[str] = []
    if asked.get("allocationMode") == "All":
        count = device_class.all_devices
        said.append(f"{where} asks for all {class_name} devices: counted as {count} until allocated")
    else:
        count = quantity(asked.get("count", 1)) if asked.get("count") is not None else 1
    profile = _selected_profile(asked) if device_class.mig else ""
    if device_class.mig and not profile and _named_profiles(_expressions(asked)):
        said.append(
            f"{where} does not select its {class_name} devices by one MIG profile alone: counted as "
            "whole GPUs until allocated"
        )
    return class_name, count * device_equivalents(device_class, profile, table), said


def admin_access(asked: Mapping[str, Any]) -> bool:
    """A request (or allocation result) for administrative access to devices: a monitoring or
    management tool's, allowed only in namespaces labelled `resource.kubernetes.io/admin-access`.
    It is given devices whatever else holds them and takes none from anyone, so it is worth 0: the
    devices are counted where they are used."""
    return asked.get("adminAccess") is True


def device_equivalents(
    device_class: DeviceClassEquivalent, profile: str, table: Equivalence, node: NodeFacts = NO_NODE
) -> float:
    """One device of a class; a MIG device by its profile (unknown profile, or one worth nothing:
    the whole GPU, never 0 for a slice of one)."""
    if device_class.mig:
        share = table.mig_share(profile, node) if profile else 0.0
        return share * device_class.equivalents if share > 0 else 1.0
    return device_class.equivalents


_PROFILE_ATTRIBUTE = re.compile(
    r"""device\s*\.\s*attributes\s*\[\s*(['"])[\w.\-/]+\1\s*\]\s*(?:\.\s*profile|\[\s*(['"])profile\2\s*\])"""
)
_STRING_LITERAL = re.compile(r"""(['"])([^'"]*)\1""")
_PROFILE_LITERAL = re.compile(r"([1-9]\d*)g\.([1-9]\d*)gb(?:\+[\w.+]*)?")


def _selected_profile(request: Mapping[str, Any]) -> str:
    """The MIG profile a request's CEL selectors pin its devices to (`... .profile == '1g.10gb'`),
    or `` when they pin none for sure: the devices then count as whole GPUs.

    Only an equality on the `profile` attribute that every selected device must meet (a term of a
    selector's top-level `&&`; selectors all hold) pins one, and only when no other profile is
    written anywhere in the selectors: text naming a small profile beside the one that selects
    (`'0g.0gb' != '' && ... .profile == '7g.80gb'`), a `||`, a `!=` or an `in` list would count a
    request for whole GPUs as a slice."""
    expressions = _expressions(request)
    named = _named_profiles(expressions)
    if len(named) != 1:
        return ""
    for expression in expressions:
        for term in _conjuncts(expression) or ():
            profile = _profile_equality(term)
            if _PROFILE_LITERAL.fullmatch(profile) and profile.partition("+")[0] in named:
                return profile
    return ""


def _expressions(request: Mapping[str, Any]) -> list[str]:
    """The CEL expressions of a request's selectors (a device must meet them all)."""
    out = []
    for selector in request.get("selectors") or ():
        cel = selector.get("cel") if isinstance(selector, Mapping) else None
        expression = cel.get("expression") if isinstance(cel, Mapping) else None
        if isinstance(expression, str):
            out.append(expression)
    return out


def _named_profiles(expressions: list[str]) -> set[str]:
    """Every distinct MIG profile (`1g.10gb`) written anywhere in a request's selector expressions."""
    return {found.group(0) for expression in expressions for found in _MIG_PROFILE.finditer(expression)}


def _profile_equality(term: str) -> str:
    """The literal of a `device.attributes['<domain>'].profile == '<literal>'` term (either way
    round), or ``."""
    left, equals, right = term.partition("==")
    if not equals or "==" in right:
        return ""
    left, right = left.strip(), right.strip()
    for attribute, literal in ((left, right), (right, left)):
        if _PROFILE_ATTRIBUTE.fullmatch(attribute):
            found = _STRING_LITERAL.fullmatch(literal)
            return found.group(2) if found else ""
    return ""


def _conjuncts(expression: str) -> list[str] | None:
    """The terms of a CEL expression that must all hold (`a && (b && c)`: a, b, c), or None when
    it is no plain conjunction (a `||` or `?` outside brackets) or holds what this reading does
    not follow (a comment, an escape, a raw or triple-quoted string): then no term is sure."""
    if "\\" in expression or "'''" in expression or '"""' in expression:
        return None
    top = _split_and(expression)
    if top is None:
        return None
    out: list[str] = []
    pending = top[::-1]
    unwraps = 64  # a few levels of brackets; past them a term stays whole (and pins nothing)
    while pending:
        term = pending.pop().strip()
        inner = None
        if unwraps and term.startswith("(") and term.endswith(")"):
            unwraps -= 1
            inner = _split_and(term[1:-1])
        if inner is None:
            out.append(term)
        else:
            pending.extend(inner[::-1])
    return out


def _split_and(expression: str) -> list[str] | None:
    """`expression` split at its `&&` outside brackets and strings; None if it is no conjunction
    (a `||`, `?` or comment outside them, or brackets and quotes that do not pair up)."""
    terms: list[str] = []
    depth, start, quote = 0, 0, ""
    for i, char in enumerate(expression):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif expression.startswith("//", i):
            return None
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and (char == "?" or expression.startswith("||", i)):
            return None
        elif depth == 0 and expression.startswith("&&", i):
            terms.append(expression[start:i])
            start = i + 2
    if quote or depth:
        return None
    terms.append(expression[start:])
    return terms


def allocated_gpus(
    claim: Mapping[str, Any],
    table: Equivalence = DEFAULT_EQUIVALENCE,
    attributes: Callable[[str, str, str], Mapping[str, Any] | None] | None = None,
    capacity: Callable[[str, str, str], Mapping[str, Any] | None] | None = None,
) -> dict[str, float] | None:
    """GPU-equivalents a ResourceClaim was allocated (None: not allocated yet).

    Each allocated device counts by the class its request asked; a MIG device by the `profile`
    attribute its ResourceSlice publishes (`attributes(driver, pool, device)`), else by the
    profile the request's selector names; a pre-partitioned device (AMD) by the share of its GPU
    its `partitionProfile` names (`partition_share`). A device shared by several allocations (consumable
    capacity: the result says what it `consumedCapacity`) counts the largest share of the
    device's capacity its slice publishes (`capacity(driver, pool, device)`), else all of it."""
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        return None
    requests: dict[str, Mapping[str, Any]] = {}
    for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or ():
        if not isinstance(request, Mapping):
            continue
        requests[str(request.get("name"))] = request.get("exactly") or request
        for alternative in request.get("firstAvailable") or ():
            if isinstance(alternative, Mapping):
                requests[f"{request.get('name')}/{alternative.get('name')}"] = alternative
    out: dict[str, float] = {}
    for result in (allocation.get("devices") or {}).get("results") or ():
        asked = requests.get(str(result.get("request")))
        if asked is None or admin_access(result) or admin_access(asked):
            continue
        class_name = str(asked.get("deviceClassName") or "")
        device_class = table.device_classes.get(class_name)
        if device_class is None:
            continue
        device = (str(result.get("driver")), str(result.get("pool")), str(result.get("device")))
        found = attributes(*device) if attributes is not None else None
        profile = _attribute(found, "profile") if device_class.mig else ""
        value = device_equivalents(device_class, profile or _selected_profile(asked), table)
        if not device_class.mig:
            value *= partition_share(found, table)
        consumed = result.get("consumedCapacity")
        if consumed and isinstance(consumed, Mapping) and capacity is not None:
            value *= capacity_share(consumed, capacity(*device))
        out[class_name] = out.get(class_name, 0.0) + value
    return out


def partition_share(attributes: Mapping[str, Any] | None, table: Equivalence = DEFAULT_EQUIVALENCE) -> float:
    """A pre-partitioned device as a share of its GPU, from what its ResourceSlice publishes: AMD's
    DRA driver names the GPU's `partitionProfile` (`cpx_nps4`: compute mode CPX) and `productName`
    (`AMD_Instinct_MI300X_OAM`), and the table says how many devices that mode splits the product
    into (MI300X CPX: 8). Anything else, or a product the table does not know: the whole device."""
    profile = _attribute(attributes, "partitionProfile")
    if not profile:
        return 1.0
    return 1.0 / table.partitions(_attribute(attributes, "productName"), profile.partition("_")[0].upper())


def capacity_share(consumed: Mapping[str, Any], capacity: Mapping[str, Any] | None) -> float:
    """The share of a device an allocation took from its consumable capacity: the largest of
    consumed / total over the capacities both name (memory 16Gi of 80Gi and compute 20 of 100:
    0.2), as HAMi's larger of core and memory shares. Nothing to compare (the device's capacity
    unknown): the whole device, the bound a budget can trust."""
    share = 0.0
    for name, used in consumed.items():
        total = (capacity or {}).get(name)
        whole = quantity(total.get("value")) if isinstance(total, Mapping) else 0
        if whole > 0:
            share = max(share, quantity(used) / whole)
    return min(share, 1.0) if share > 0 else 1.0


def _attribute(attributes: Mapping[str, Any] | None, name: str) -> str:
    """A device attribute's value: attributes are keyed by name, possibly domain-qualified, and
    hold `{string|int|bool|version: value}`."""
    if not attributes:
        return ""
    for key, value in attributes.items():
        if key == name or key.endswith(f"/{name}"):
            if isinstance(value, Mapping):
                inner = next(iter(value.values()), "")
                return str(inner)
            return str(value)
    return ""


def resource_filter(resources: Iterable[str]) -> Callable[[str], bool] | None:
    """Which keys a `resources` list counts: None for `*` (every accelerator the table knows);
    otherwise names or globs of extended resources and DeviceClasses."""
    return _resource_filter(tuple(resources))


@lru_cache(maxsize=256)
def _resource_filter(names: tuple[str, ...]) -> Callable[[str], bool] | None:
    """`resource_filter`, built once per list: the lists are the policies' and budgets' own, a few
    per cluster, and every admission of a GPU pod asks for one."""
    if "*" in names:
        return None
    exact = frozenset(n for n in names if not _is_glob(n))
    globs = tuple(n for n in names if _is_glob(n))
    if not globs:
        return exact.__contains__
    return lambda key: key in exact or any(fnmatchcase(key, g) for g in globs)
