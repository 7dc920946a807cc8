"""GPU-equivalents (controller.engine.accelerators): every way a pod gets a GPU, in one unit.

Node labels, DeviceClasses, ResourceSlices and claims come from `e2e.accelerators` (GPU Feature
Discovery's label names, NVIDIA's DRA driver's object shapes), so what is counted here is what a
real cluster shows. Counting is checked alone (`pod_gpus`, `claim_gpus`, `allocated_gpus`),
through a workload (`workload_gpus`), at admission (`evaluate`) and at metering (`pod_record`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from engine_cases import API, NOW, apply_fix, budget, deployment, policy, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine import PolicyError, Snapshot, evaluate
from controller.engine.accelerators import (
    DEFAULT_EQUIVALENCE,
    NO_GPUS,
    NO_NODE,
    ClaimIndex,
    NodeFacts,
    allocated_gpus,
    capacity_share,
    claim_gpus,
    equivalence_of,
    partition_share,
    pinned_node,
    pod_gpus,
    resource_filter,
)
from controller.engine.budgets import period_bounds
from controller.engine.evaluation import GPU_COUNT
from controller.engine.expiry import format_annotation
from controller.engine.loading import snapshot_from_objects
from controller.engine.models import GPUEquivalence
from controller.engine.view import workload_gpus
from controller.engine.workloads import effective_request
from controller.metering.usage import Counting, _asks, count_pod, meter, new_ledger, pod_record
from e2e import accelerators as lab

NS = "ml"
NLP = {"team": "nlp"}
A30 = lab.Gpu("NVIDIA A30", 24576, "ampere", "Ampere", (8, 0))
A100_40GB = lab.Gpu("NVIDIA A100-SXM4-40GB", 40960, "ampere", "Ampere", (8, 0))
MIG_A30_1G_6GB = lab.MigProfile("1g.6gb", 14, 5952, 14, copy_engines=1, decoders=0, memory_slices=1)
MIG_A100_40GB_1G_5GB = lab.MigProfile("1g.5gb", 19, 4864, 14, copy_engines=1, decoders=0, memory_slices=1)
MIG_3G_40GB_PRODUCT = f"{lab.A100_80GB.product}-MIG-3g.40gb"
MIG_1G_10GB_PRODUCT = f"{lab.A100_80GB.product}-MIG-1g.10gb"
MI300X = "AMD_Instinct_MI300X_OAM"
AMD_PRODUCT = "amd.com/gpu.product-name"
AMD_PARTITION = "amd.com/gpu.compute-memory-partition"


def labels_of(node: dict) -> dict[str, str]:
    return node["metadata"]["labels"]


MIXED_A100 = labels_of(
    lab.mig_mixed_node("mixed", "a2-ultragpu-2g", 2, {lab.MIG_1G_10GB: 7, lab.MIG_3G_40GB: 2})
)
MIXED_A30 = labels_of(lab.mig_mixed_node("mixed-a30", "a30-node", 1, {MIG_A30_1G_6GB: 4}, gpu=A30))
MIXED_A100_40GB = labels_of(
    lab.mig_mixed_node("mixed-40", "a2-highgpu-1g", 1, {MIG_A100_40GB_1G_5GB: 7}, gpu=A100_40GB)
)
SINGLE_1G = labels_of(lab.mig_single_node("single", "a2-ultragpu-1g", 1, lab.MIG_1G_10GB, per_gpu=7))
SINGLE_3G = labels_of(lab.mig_single_node("single-3g", "a2-ultragpu-1g", 1, lab.MIG_3G_40GB, per_gpu=2))
SINGLE_H100 = labels_of(
    lab.mig_single_node("single-h", "a3-highgpu-1g", 1, lab.MIG_1G_10GB, 7, lab.H100_80GB)
)
RENAMED = labels_of(lab.time_sliced_node("renamed", "a3-highgpu-2g", 2, 4, rename=True))
NOT_RENAMED = labels_of(lab.time_sliced_node("shared", "a3-highgpu-2g", 2, 4, rename=False))
WHOLE_H100 = labels_of(lab.whole_gpu_node("whole", "a3-highgpu-8g", 8))
PARTITION_OPERATOR = "amd.com/compute-memory-partition"
MI300X_CPX = {AMD_PRODUCT: MI300X, AMD_PARTITION: "cpx_nps4"}


# -- builders ------------------------------------------------------------------------------------


def spec_of(*containers: dict, init: tuple[dict, ...] = (), **extra) -> dict:
    """A pod spec whose containers ask for the given resources (`{resource: units}` each); an
    init container's dict may carry `restartPolicy` (a sidecar)."""

    def one(i: int, asked: dict, prefix: str) -> dict:
        asked = dict(asked)
        policy_ = asked.pop("restartPolicy", None)
        out = {"name": f"{prefix}{i}", "image": "cuda:12.8",
               "resources": {"limits": {k: str(v) for k, v in asked.items()}}}
        if policy_:
            out["restartPolicy"] = policy_
        return out

    spec = {"containers": [one(i, c, "c") for i, c in enumerate(containers)], **extra}
    if init:
        spec["initContainers"] = [one(i, c, "i") for i, c in enumerate(init)]
    return spec


def affinity(*terms: dict[str, list[str]], operator: str = "In") -> dict:
    """Required node affinity: one nodeSelectorTerm per mapping of key -> values."""
    selector_terms = [
        {"matchExpressions": [{"key": k, "operator": operator, "values": v} for k, v in t.items()]}
        for t in terms
    ]
    required = {"nodeSelectorTerms": selector_terms}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def gpus(spec: dict, annotations: dict | None = None, *, node: dict | None = None, table=DEFAULT_EQUIVALENCE,
         claims=None, resources: tuple[str, ...] = ("*",)) -> float:
    """GPU-equivalents of one pod: on a node with `node` labels (metering), else as it pins itself."""
    facts = NodeFacts.of(node) if node is not None else None
    found = pod_gpus(spec, annotations, table=table, node=facts, namespace=NS, claims=claims)
    return found.total(resource_filter(resources))


def manifest_pod(spec: dict, *, labels: dict | None = None, annotations: dict | None = None,
                 name: str = "p") -> dict:
    metadata: dict = {"name": name, "namespace": NS, "labels": dict(labels or NLP)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def manifest_deployment(spec: dict, *, replicas: int = 1, template_annotations: dict | None = None,
                        annotations: dict | None = None) -> dict:
    template: dict = {"metadata": {"labels": {"app": "d", **NLP}}, "spec": spec}
    if template_annotations:
        template["metadata"]["annotations"] = dict(template_annotations)
    metadata: dict = {"name": "d", "namespace": NS}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}}, "template": template},
    }


def equivalence(name: str, **spec) -> GPUEquivalence:
    return GPUEquivalence.from_object(
        {"apiVersion": API, "kind": "GPUEquivalence", "metadata": {"name": name}, "spec": spec}
    )


def judge(manifest: dict, *items, snap: Snapshot | None = None):
    return evaluate(manifest, snapshot=snap or snapshot(*items), now=NOW)


def approx(value: float):
    return pytest.approx(value, rel=1e-12, abs=1e-12)


# -- MIG, mixed strategy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "units", "node", "expected"),
    [
        # the product inferred from the profile (admission, nothing pinned)
        ("nvidia.com/mig-1g.10gb", 1, None, 1 / 7),
        ("nvidia.com/mig-3g.40gb", 1, None, 3 / 7),
        ("nvidia.com/mig-7g.80gb", 1, None, 1.0),
        ("nvidia.com/mig-1g.10gb", 3, None, 3 / 7),
        ("nvidia.com/mig-1g.10gb+me", 1, None, 1 / 7),
        ("nvidia.com/mig-1g.6gb", 1, None, 1 / 4),  # an A30 profile: 4 slices
        ("nvidia.com/mig-1g.6gb+me", 1, None, 1 / 4),
        ("nvidia.com/mig-2g.12gb", 1, None, 2 / 4),
        ("nvidia.com/mig-4g.24gb", 1, None, 1.0),
        # the product from the node's GFD labels (metering)
        ("nvidia.com/mig-1g.10gb", 1, MIXED_A100, 1 / 7),
        ("nvidia.com/mig-3g.40gb", 2, MIXED_A100, 6 / 7),
        ("nvidia.com/mig-1g.6gb", 1, MIXED_A30, 1 / 4),
        ("nvidia.com/mig-1g.6gb", 4, MIXED_A30, 1.0),
        ("nvidia.com/mig-1g.5gb", 1, MIXED_A100_40GB, 1 / 7),
    ],
)
def test_mig_mixed_strategy_counts_the_profiles_slices(resource, units, node, expected):
    assert gpus(spec_of({resource: units}), node=node) == approx(expected)
    found = pod_gpus(spec_of({resource: units}), node=NodeFacts.of(node) if node else None)
    assert set(found.per_pod) == {resource}  # keyed by what it was asked as


def test_mig_slices_come_from_the_nodes_product_before_the_profile():
    """A product the table knows says how many slices its GPU has, whatever the profile suggests."""
    table = equivalence_of([equivalence("rtx", products=[{"match": "*RTX-PRO-6000*", "migSlices": 4}])])
    node = {lab.PRODUCT: "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", lab.MIG_STRATEGY: "mixed"}
    spec = spec_of({"nvidia.com/mig-1g.24gb": 1})
    # No node: the profile says a GPU of 4 slices (RTX PRO 6000) or 2 (RTX PRO 5000): the larger share.
    assert gpus(spec, table=table) == approx(1 / 2)
    assert gpus(spec, node=node, table=table) == approx(1 / 4)
    pinned = spec_of({"nvidia.com/mig-1g.24gb": 1}, nodeSelector={lab.PRODUCT: node[lab.PRODUCT]})
    assert gpus(pinned, table=table) == approx(1 / 4)


def test_a_mig_slice_of_a_four_slice_gpu_never_counts_less_than_its_share():
    node = {lab.PRODUCT: "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", lab.MIG_STRATEGY: "mixed"}
    assert gpus(spec_of({"nvidia.com/mig-1g.24gb": 1}), node=node) >= 0.25


# -- MIG, single strategy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "units", "expected"),
    [
        (SINGLE_1G, 1, 1 / 7),
        (SINGLE_1G, 2, 2 / 7),
        (SINGLE_3G, 1, 3 / 7),
        (SINGLE_H100, 1, 1 / 7),
        (MIXED_A100, 1, 1.0),  # mixed: nvidia.com/gpu is a whole (non-MIG) GPU
        (WHOLE_H100, 1, 1.0),
        (WHOLE_H100, 3, 3.0),
    ],
)
def test_single_strategy_gpu_is_a_slice_on_its_node(node, units, expected):
    assert NodeFacts.of(SINGLE_1G).mig_profile == "1g.10gb"
    assert gpus(spec_of({"nvidia.com/gpu": units}), node=node) == approx(expected)


def test_single_strategy_node_facts_strip_the_profile_from_the_product():
    facts = NodeFacts.of(SINGLE_3G)
    assert (facts.mig_profile, facts.base_product) == ("3g.40gb", lab.A100_80GB.product)
    assert facts.mig_strategy == "single"
    assert NodeFacts.of(NOT_RENAMED).base_product == lab.H100_80GB.product  # -SHARED dropped
    assert NodeFacts.of({}) is NO_NODE and NodeFacts.of(None) is NO_NODE


ON_1G = {lab.PRODUCT: [MIG_1G_10GB_PRODUCT]}
ZONE = "topology.kubernetes.io/zone"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"nodeSelector": {lab.PRODUCT: MIG_1G_10GB_PRODUCT}}, 1 / 7),
        ({"nodeSelector": {lab.PRODUCT: MIG_3G_40GB_PRODUCT}}, 3 / 7),
        ({"nodeSelector": {lab.PRODUCT: SINGLE_H100[lab.PRODUCT]}}, 1 / 7),
        ({"affinity": affinity(ON_1G)}, 1 / 7),
        # every term agrees: the pod lands on a 1g.10gb node whichever term it is scheduled by
        ({"affinity": affinity({**ON_1G, ZONE: ["a"]}, {**ON_1G, ZONE: ["b"]})}, 1 / 7),
        # terms that disagree, or a term that pins nothing, pin nothing
        ({"affinity": affinity(ON_1G, {lab.PRODUCT: [MIG_3G_40GB_PRODUCT]})}, 1.0),
        ({"affinity": affinity(ON_1G, {"kubernetes.io/arch": ["amd64"]})}, 1.0),
        ({"affinity": affinity({lab.PRODUCT: [MIG_1G_10GB_PRODUCT, MIG_3G_40GB_PRODUCT]})}, 1.0),
        ({"affinity": affinity(ON_1G, operator="NotIn")}, 1.0),
        ({"nodeSelector": {"node.kubernetes.io/instance-type": "a2-ultragpu-1g"}}, 1.0),
        ({}, 1.0),
    ],
)
def test_single_strategy_from_the_pods_own_pins(extra, expected):
    assert gpus(spec_of({"nvidia.com/gpu": 1}, **extra)) == approx(expected)


def test_node_facts_beat_the_pods_pins():
    """At metering the node is known: what the pod pinned no longer matters."""
    spec = spec_of({"nvidia.com/gpu": 1}, nodeSelector={lab.PRODUCT: MIG_3G_40GB_PRODUCT})
    assert gpus(spec, node=SINGLE_1G) == approx(1 / 7)
    assert gpus(spec, node=WHOLE_H100) == 1.0


def test_pinned_node_reads_only_the_labels_the_equivalents_need():
    spec = spec_of(
        {"nvidia.com/gpu": 1},
        nodeSelector={lab.PRODUCT: MIG_1G_10GB_PRODUCT, "node.kubernetes.io/instance-type": "a2"},
        affinity=affinity({lab.REPLICAS: ["4"], lab.PRODUCT: [MIG_3G_40GB_PRODUCT]}),
    )
    facts = pinned_node(spec)
    # the nodeSelector wins over the affinity for the same key; the affinity adds what it alone pins
    assert (facts.product, facts.replicas, facts.mig_profile) == (MIG_1G_10GB_PRODUCT, 4, "1g.10gb")


# -- time-slicing ------------------------------------------------------------------------------------


SHARED_4 = equivalence("shared", sharedReplicas=4)


@pytest.mark.parametrize(
    ("resource", "units", "node", "overrides", "extra", "expected"),
    [
        ("nvidia.com/gpu.shared", 1, RENAMED, [], {}, 1 / 4),
        ("nvidia.com/gpu.shared", 3, RENAMED, [], {}, 3 / 4),
        ("nvidia.com/gpu.shared", 1, None, [], {}, 1.0),  # node unknown: the whole GPU
        ("nvidia.com/gpu.shared", 1, None, [SHARED_4], {}, 1 / 4),  # sharedReplicas assumed
        ("nvidia.com/gpu.shared", 1, {**RENAMED, lab.REPLICAS: "2"}, [SHARED_4], {}, 1 / 2),  # the node says
        ("nvidia.com/gpu.shared", 1, None, [], {"nodeSelector": {lab.REPLICAS: "4"}}, 1 / 4),
        ("nvidia.com/gpu.shared", 1, None, [], {"affinity": affinity({lab.REPLICAS: ["8"]})}, 1 / 8),
        # renameByDefault: false: plain nvidia.com/gpu is a replica on a node with replicas > 1
        ("nvidia.com/gpu", 1, NOT_RENAMED, [], {}, 1 / 4),
        ("nvidia.com/gpu", 2, NOT_RENAMED, [], {}, 1 / 2),
        ("nvidia.com/gpu", 1, None, [], {"nodeSelector": {lab.PRODUCT: NOT_RENAMED[lab.PRODUCT]}}, 1.0),
        ("nvidia.com/gpu", 1, None, [], {"nodeSelector": {lab.REPLICAS: "4"}}, 1 / 4),
        ("nvidia.com/gpu", 1, None, [SHARED_4], {}, 1.0),  # sharedReplicas is about gpu.shared
        ("nvidia.com/gpu", 1, WHOLE_H100, [], {}, 1.0),  # GFD labels replicas 1 without sharing
    ],
)
def test_time_slicing(resource, units, node, overrides, extra, expected):
    table = equivalence_of(overrides)
    assert gpus(spec_of({resource: units}, **extra), node=node, table=table) == approx(expected)


# -- HAMi ------------------------------------------------------------------------------------------------


def hami(vgpus: int = 1, *, cores: int = 0, mem: int = 0, percent: int = 0, **extra) -> dict:
    asked: dict = {"nvidia.com/gpu": vgpus, **extra}
    if cores:
        asked["nvidia.com/gpucores"] = cores
    if mem:
        asked["nvidia.com/gpumem"] = mem
    if percent:
        asked["nvidia.com/gpumem-percentage"] = percent
    return asked


A100_80GB_PIN = {"nodeSelector": {lab.PRODUCT: lab.A100_80GB.product}}


@pytest.mark.parametrize(
    ("containers", "node", "extra", "expected"),
    [
        ([hami(cores=50)], None, {}, 0.5),
        ([hami(percent=25)], None, {}, 0.25),
        ([hami(cores=30, percent=50)], None, {}, 0.5),  # the larger share
        ([hami(cores=60, percent=20)], None, {}, 0.6),
        ([hami(2, cores=50)], None, {}, 1.0),  # per vGPU
        # gpumem (MiB) against the node's memory label ...
        ([hami(mem=40960)], {lab.MEMORY: "81920"}, {}, 0.5),
        ([hami(mem=20000)], WHOLE_H100, {}, 20000 / lab.H100_80GB.memory_mib),
        # ... or the product table, from the node's product or the pod's pin ...
        ([hami(mem=20480)], {lab.PRODUCT: lab.A100_80GB.product}, {}, 0.25),
        ([hami(mem=20480)], None, A100_80GB_PIN, 0.25),
        ([hami(mem=20480)], None, {"nodeSelector": {lab.MEMORY: "40960"}}, 0.5),
        ([hami(mem=10240, cores=50)], None, A100_80GB_PIN, 0.5),
        ([hami(mem=200_000)], None, A100_80GB_PIN, 1.0),  # capped at the whole GPU
        # ... and the whole GPU when the memory is unknown
        ([hami(mem=1024)], None, {}, 1.0),
        ([hami(mem=1024)], {lab.PRODUCT: "Tesla-T4"}, {}, 1.0),
        ([hami(mem=1024, cores=10)], None, {}, 1.0),
        # a container without shares in a HAMi pod has whole vGPUs
        ([hami(cores=50), hami()], None, {}, 1.5),
        ([hami(cores=30), hami(cores=40)], None, {}, 0.7),
    ],
)
def test_hami_vgpus(containers, node, extra, expected):
    assert gpus(spec_of(*containers, **extra), node=node) == approx(expected)


def test_hami_shares_alone_count_nothing():
    assert pod_gpus(spec_of({"nvidia.com/gpucores": 50, "nvidia.com/gpumem": 1000})).total() == 0.0


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        ((hami(cores=80),), 0.8),  # an init container runs alone: the larger of it and the app
        ((hami(cores=10),), 0.3),
        (({**hami(cores=20), "restartPolicy": "Always"},), 0.5),  # a sidecar runs beside the app
        # a sidecar also runs beside the init containers started after it
        (({**hami(cores=20), "restartPolicy": "Always"}, hami(cores=70)), 0.9),
        ((hami(cores=70), {**hami(cores=20), "restartPolicy": "Always"}), 0.7),
    ],
)
def test_hami_follows_the_effective_request_rule(init, expected):
    assert gpus(spec_of(hami(cores=30), init=init)) == approx(expected)


def test_hami_shares_adding_up_to_one_gpu_fit_max_one_gpu_per_pod():
    spec = spec_of(hami(cores=56), hami(cores=34), hami(cores=10))
    decision = judge(manifest_pod(spec), policy("gpu", gpu={"maxGPUsPerPod": 1}))
    assert decision.allowed, [v.message for v in decision.violations]


# -- KAI Scheduler / Run:ai fractions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "node", "extra", "expected"),
    [
        ({"gpu-fraction": "0.5"}, None, {}, 0.5),
        ({"gpu-fraction": "0.25", "gpu-fraction-num-devices": "2"}, None, {}, 0.5),
        ({"gpu-fraction": "1.5"}, None, {}, 1.0),  # at most the whole GPU each
        ({"gpu-memory": "40960"}, None, {}, 1.0),  # memory unknown: the whole GPU
        ({"gpu-memory": "40960"}, None, A100_80GB_PIN, 0.5),
        ({"gpu-memory": "20000"}, WHOLE_H100, {}, 20000 / lab.H100_80GB.memory_mib),
        ({"gpu-memory": "40960", "gpu-fraction-num-devices": "2"}, {lab.MEMORY: "81920"}, {}, 1.0),
        ({"gpu-fraction": "abc"}, None, {}, 0.0),
        ({"gpu-fraction": "0"}, None, {}, 0.0),
        ({"gpu-fraction-num-devices": "2"}, None, {}, 0.0),  # no fraction: nothing asked
    ],
)
def test_kai_fractions(annotations, node, extra, expected):
    assert gpus(spec_of({}, **extra), annotations, node=node) == approx(expected)


def test_kai_fractions_count_as_nvidia_gpus():
    spec, annotations = spec_of({}), {"gpu-fraction": "0.5"}
    assert pod_gpus(spec, annotations).per_pod == {"nvidia.com/gpu": 0.5}
    assert gpus(spec, annotations, resources=("nvidia.com/gpu",)) == 0.5
    assert gpus(spec, annotations, resources=("amd.com/gpu",)) == 0.0


def test_kai_fractions_of_a_deployment_are_read_from_its_pod_template():
    spec = spec_of({})
    on_template = manifest_deployment(spec, replicas=3, template_annotations={"gpu-fraction": "0.5"})
    assert workload_gpus(on_template) == approx(1.5)
    on_deployment = manifest_deployment(spec, replicas=3, annotations={"gpu-fraction": "0.5"})
    assert workload_gpus(on_deployment) == 0.0  # KAI reads the pod's annotations, not the Deployment's
    assert workload_gpus(manifest_pod(spec, annotations={"gpu-memory": "1000"})) == 1.0


# -- AMD and other accelerators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "node", "extra", "expected"),
    [
        ({"amd.com/gpu": 1}, MI300X_CPX, {}, 1 / 8),
        ({"amd.com/gpu": 4}, MI300X_CPX, {}, 4 / 8),
        ({"amd.com/gpu": 1}, {AMD_PRODUCT: MI300X, PARTITION_OPERATOR: "cpx_nps4"}, {}, 1 / 8),
        ({"amd.com/gpu": 1}, {AMD_PRODUCT: MI300X, AMD_PARTITION: "dpx_nps2"}, {}, 1 / 2),
        ({"amd.com/gpu": 1}, {AMD_PRODUCT: MI300X, AMD_PARTITION: "spx_nps1"}, {}, 1.0),
        ({"amd.com/gpu": 1}, {AMD_PRODUCT: "AMD_Instinct_MI300A", AMD_PARTITION: "cpx_nps1"}, {}, 1 / 6),
        ({"amd.com/gpu": 1}, {AMD_PRODUCT: MI300X}, {}, 1.0),  # no partition
        ({"amd.com/gpu": 1}, {AMD_PARTITION: "cpx_nps4"}, {}, 1.0),  # product unknown
        ({"amd.com/gpu": 1}, None, {}, 1.0),
        ({"amd.com/gpu": 1}, None, {"nodeSelector": dict(MI300X_CPX)}, 1 / 8),
        ({"gpu.intel.com/i915": 2}, None, {}, 2.0),
        ({"gpu.intel.com/xe": 1}, None, {}, 1.0),
        ({"gpu.intel.com/dxg": 1}, None, {}, 1.0),
        ({"habana.ai/gaudi": 8}, None, {}, 8.0),
        ({"aws.amazon.com/neuron": 1}, None, {}, 1.0),
        ({"aws.amazon.com/neurondevice": 2}, None, {}, 2.0),
        ({"aws.amazon.com/neuroncore": 1}, None, {}, 0.5),
        ({"aws.amazon.com/neuroncore": 3}, None, {}, 1.5),
        ({"deviceclass.resource.kubernetes.io/gpu.nvidia.com": 2}, None, {}, 2.0),  # DRA-backed (KEP-5004)
        ({"google.com/tpu": 4}, None, {}, 0.0),  # not by default
        ({"example.com/fpga": 1}, None, {}, 0.0),
        ({"cpu": 4, "memory": "1Gi"}, None, {}, 0.0),
    ],
)
def test_other_accelerators(asked, node, extra, expected):
    assert gpus(spec_of(asked, **extra), node=node) == approx(expected)


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (("*",), 1.0),  # the nvidia.com/gpu only: TPUs and FPGAs are unknown
        (("google.com/tpu",), 4.0),
        (("google.com/*",), 4.0),
        (("example.com/fpga", "nvidia.com/gpu"), 3.0),
        (("amd.com/gpu",), 0.0),
    ],
)
def test_unknown_resources_count_only_when_a_resources_list_names_them(resources, expected):
    spec = spec_of({"google.com/tpu": 4, "example.com/fpga": 2, "nvidia.com/gpu": 1})
    found = pod_gpus(spec)
    assert found.unknown == {"google.com/tpu": 4.0, "example.com/fpga": 2.0}
    assert found.total(resource_filter(resources)) == expected


def test_resource_filter():
    assert resource_filter(["*"]) is None
    assert resource_filter(["nvidia.com/gpu", "*"]) is None
    exact = resource_filter(["nvidia.com/gpu", "gpu.nvidia.com"])
    assert exact("gpu.nvidia.com") and exact("nvidia.com/gpu") and not exact("nvidia.com/mig-1g.10gb")
    globbed = resource_filter(["nvidia.com/mig-*", "amd.com/gpu"])
    assert globbed("nvidia.com/mig-3g.40gb") and globbed("amd.com/gpu") and not globbed("nvidia.com/gpu")


def test_tpus_are_judged_only_by_a_policy_that_names_them():
    tpus = manifest_pod(spec_of({"google.com/tpu": 4}))
    assert judge(tpus, policy("gpu", gpu={"maxGPUsPerPod": 1})).allowed
    decision = judge(tpus, policy("gpu", gpu={"maxGPUsPerPod": 1, "resources": ["google.com/tpu"]}))
    assert not decision.allowed
    assert decision.violations[0].message.startswith("4 GPUs per pod; at most 1 per pod allowed")


# -- DRA -------------------------------------------------------------------------------------------------


def mig_request(name: str, profile: str, count: int = 1) -> dict:
    return lab.device_request(name, lab.MIG_CLASS, count=count, selectors=[lab.profile_selector(profile)])


def claim_pod_spec(**sources: dict) -> dict:
    """The spec of e2e's pod builder for pod claim name -> source ({resourceClaimTemplateName: ...})."""
    return lab.pod("p", NS, claims=sources)["spec"]


def counted_template(*requests: dict) -> tuple[float, tuple[str, ...], dict]:
    index = ClaimIndex([lab.claim_template("t", NS, list(requests))])
    found = pod_gpus(claim_pod_spec(gpus={"resourceClaimTemplateName": "t"}), namespace=NS, claims=index)
    return found.total(), found.notes, dict(found.per_pod)


@pytest.mark.parametrize(
    ("requests", "expected", "keys"),
    [
        ([lab.device_request("gpu", lab.GPU_CLASS)], 1.0, {lab.GPU_CLASS}),
        ([lab.device_request("gpu", lab.GPU_CLASS, count=2)], 2.0, {lab.GPU_CLASS}),
        ([mig_request("mig", "1g.10gb")], 1 / 7, {lab.MIG_CLASS}),
        ([mig_request("mig", "3g.40gb", count=2)], 6 / 7, {lab.MIG_CLASS}),
        ([mig_request("mig", "1g.6gb")], 1 / 4, {lab.MIG_CLASS}),
        ([lab.device_request("mig", lab.MIG_CLASS)], 1.0, {lab.MIG_CLASS}),  # no profile: the whole GPU
        (
            [lab.device_request("gpu", lab.GPU_CLASS), mig_request("mig", "1g.10gb")],
            1 + 1 / 7,
            {lab.GPU_CLASS, lab.MIG_CLASS},
        ),
        ([lab.device_request("nic", "rdma.example.com")], 0.0, set()),  # not an accelerator
        ([lab.device_request("tpu", "tpu.google.com")], 0.0, set()),
        ([lab.device_request("gpu", "gpu.amd.com")], 1.0, {"gpu.amd.com"}),
        (
            [
                lab.device_request("gpu", "gpu.intel.com"),
                lab.device_request("hpu", "gaudi.intel.com", count=2),
            ],
            3.0,
            {"gpu.intel.com", "gaudi.intel.com"},
        ),
        ([lab.device_request("gpu", "gpu.example.com", count=3)], 3.0, {"gpu.example.com"}),
    ],
)
def test_claim_templates_count_their_requests_by_device_class(requests, expected, keys):
    total, notes, per_pod = counted_template(*requests)
    assert total == approx(expected)
    assert set(per_pod) == keys
    assert notes == ()


def test_v1beta1_requests_are_flat():
    template = {
        "apiVersion": "resource.k8s.io/v1beta1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t", "namespace": NS},
        "spec": {"spec": {"devices": {"requests": [
            {"name": "gpus", "deviceClassName": lab.GPU_CLASS, "allocationMode": "ExactCount", "count": 2},
            {"name": "mig", "deviceClassName": lab.MIG_CLASS,
             "selectors": [{"cel": {"expression": lab.profile_selector("3g.40gb")}}]},
        ]}}},
    }
    found = pod_gpus(claim_pod_spec(gpus={"resourceClaimTemplateName": "t"}), namespace=NS,
                     claims=ClaimIndex([template]))
    assert found.per_pod == {lab.GPU_CLASS: 2.0, lab.MIG_CLASS: approx(3 / 7)}


FIRST_AVAILABLE_NOTE = (
    "ResourceClaimTemplate t request gpu may be given any of its firstAvailable alternatives: "
    "counted as the largest, {} until allocated"
)


@pytest.mark.parametrize(
    ("alternatives", "expected", "note"),
    [
        ([("small", lab.MIG_CLASS, "1g.10gb", 1), ("big", lab.GPU_CLASS, "", 1)], 1.0, "big (1),"),
        ([("big", lab.GPU_CLASS, "", 1), ("small", lab.MIG_CLASS, "1g.10gb", 1)], 1.0, ""),
        ([("half", lab.MIG_CLASS, "3g.40gb", 1)], 3 / 7, ""),
        ([("a", lab.GPU_CLASS, "", 1), ("b", lab.GPU_CLASS, "", 1)], 1.0, ""),  # alike: nothing assumed
        # The first alternative a decoy the scheduler passes over: a MIG slice, or a class that is no
        # accelerator (and matches nothing); the next one takes 8 GPUs.
        ([("tiny", lab.MIG_CLASS, "1g.5gb", 1), ("real", lab.GPU_CLASS, "", 8)], 8.0, "real (8),"),
        (
            [("never", "compute-domain-default-channel.nvidia.com", "", 1), ("real", lab.GPU_CLASS, "", 8)],
            8.0,
            "real (8),",
        ),
        ([("one", lab.GPU_CLASS, "", 1), ("two", lab.GPU_CLASS, "", 2), ("mig", lab.MIG_CLASS, "", 1)], 2.0,
         "two (2),"),
    ],
)
def test_first_available_counts_the_alternative_worth_the_most(alternatives, expected, note):
    """The scheduler takes the first alternative it can satisfy, which may be any of them: counting
    the first lets one that matches nothing stand for the GPUs the next one takes."""
    subrequests = []
    for name, class_name, profile, count in alternatives:
        sub: dict = {"name": name, "deviceClassName": class_name, "allocationMode": "ExactCount",
                     "count": count}
        if profile:
            sub["selectors"] = [{"cel": {"expression": lab.profile_selector(profile)}}]
        elif not class_name.endswith(lab.DRA_DRIVER):
            sub["selectors"] = [{"cel": {"expression": "false"}}]
        subrequests.append(sub)
    total, notes, _ = counted_template({"name": "gpu", "firstAvailable": subrequests})
    assert total == approx(expected)
    assert notes == ((FIRST_AVAILABLE_NOTE.format(note),) if note else ())


def test_first_available_keeps_the_notes_of_the_alternative_it_counts():
    all_gpus = {"name": "all", "deviceClassName": lab.GPU_CLASS, "allocationMode": "All"}
    one = {"name": "one", "deviceClassName": lab.GPU_CLASS}
    total, notes, per_pod = counted_template({"name": "gpu", "firstAvailable": [one, all_gpus]})
    assert total == 8.0 and per_pod == {lab.GPU_CLASS: 8.0}
    assert notes == (
        "ResourceClaimTemplate t asks for all gpu.nvidia.com devices: counted as 8 until allocated",
        FIRST_AVAILABLE_NOTE.format("all (8),"),
    )
    assert counted_template({"name": "gpu", "firstAvailable": [all_gpus, one]})[1] == notes[:1]


BIG_CLASS = "big.example.com"
BIG_TABLE = equivalence_of([equivalence("big", deviceClasses={BIG_CLASS: {}})])
BIG_OR_TWO = {"name": "gpu", "firstAvailable": [
    {"name": "big", "deviceClassName": BIG_CLASS, "allocationMode": "ExactCount", "count": 8},
    {"name": "two", "deviceClassName": lab.GPU_CLASS, "allocationMode": "ExactCount", "count": 2},
]}
"""8 devices of a class, else 2 nvidia GPUs: the scheduler may well give the 2."""


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ((lab.GPU_CLASS,), 2.0),  # only the smaller alternative's class: the 2 it may be given
        ((BIG_CLASS,), 8.0),
        (("*",), 8.0),
        ((BIG_CLASS, lab.GPU_CLASS), 8.0),
        (("gpu.*",), 2.0),  # a glob counts as the names it matches
        (("amd.com/gpu",), 0.0),  # neither alternative
    ],
)
def test_first_available_counts_the_largest_alternative_a_resources_list_counts(resources, expected):
    counts = resource_filter(resources)
    devices = lab.claim_spec([BIG_OR_TWO, lab.device_request("one", lab.GPU_CLASS)])["devices"]
    assert claim_gpus(devices, BIG_TABLE) == {BIG_CLASS: 8.0, lab.GPU_CLASS: 1.0}  # by key: unchanged
    index = ClaimIndex([lab.claim_template("t", NS, [BIG_OR_TWO, lab.device_request("one", lab.GPU_CLASS)])])
    found = pod_gpus(claim_pod_spec(gpus={"resourceClaimTemplateName": "t"}), table=BIG_TABLE, namespace=NS,
                     claims=index)
    one = 1.0 if counts is None or counts(lab.GPU_CLASS) else 0.0  # the request without alternatives
    assert found.total(counts) == found.total(counts, shared=False) == expected + one
    snap = Snapshot(claims=index, equivalence=BIG_TABLE)
    workload = manifest_deployment(claim_pod_spec(gpus={"resourceClaimTemplateName": "t"}), replicas=3)
    assert workload_gpus(workload, snapshot=snap, resources=resources) == 3 * (expected + one)


def test_first_available_in_a_shared_claim_counts_once_per_workload_under_a_resources_list():
    index = ClaimIndex([lab.resource_claim("c", NS, [BIG_OR_TWO])])
    spec = claim_pod_spec(a={"resourceClaimName": "c"}, b={"resourceClaimName": "c"})  # named twice
    found = pod_gpus(spec, table=BIG_TABLE, namespace=NS, claims=index)
    assert found.shared == {"c": {BIG_CLASS: 8.0}}
    nvidia = resource_filter((lab.GPU_CLASS,))
    assert found.total(nvidia) == found.shared_total("c", nvidia) == 2.0
    assert found.total(nvidia, shared=False) == 0.0
    assert found.total() == found.shared_total("c") == 8.0
    snap = Snapshot(claims=index, equivalence=BIG_TABLE)
    workload = manifest_deployment(spec, replicas=3)
    assert workload_gpus(workload, snapshot=snap, resources=(lab.GPU_CLASS,)) == 2.0
    assert workload_gpus(workload, snapshot=snap) == 8.0


def test_first_available_of_one_class_needs_no_choice():
    one_class = {"name": "gpu", "firstAvailable": [
        {"name": "one", "deviceClassName": lab.GPU_CLASS},
        {"name": "four", "deviceClassName": lab.GPU_CLASS, "allocationMode": "ExactCount", "count": 4},
        {"name": "nic", "deviceClassName": "rdma.example.com"},  # no accelerator: no class to choose
    ]}
    index = ClaimIndex([lab.claim_template("t", NS, [one_class])])
    found = pod_gpus(claim_pod_spec(gpus={"resourceClaimTemplateName": "t"}), namespace=NS, claims=index)
    assert found.per_pod == {lab.GPU_CLASS: 4.0} and found.choices == ()
    assert found.total(resource_filter((lab.GPU_CLASS,))) == 4.0
    assert found.total(resource_filter(("amd.com/gpu",))) == 0.0


def test_a_policy_on_the_smaller_alternatives_class_sees_it():
    index = ClaimIndex([lab.claim_template("t", NS, [BIG_OR_TWO])])
    gpu_policy = policy("gpu", gpu={"maxGPUsPerPod": 1, "resources": [lab.GPU_CLASS]})
    manifest = manifest_pod(claim_pod_spec(gpus={"resourceClaimTemplateName": "t"}))
    decision = judge(manifest, snap=Snapshot(policies=(gpu_policy,), claims=index, equivalence=BIG_TABLE))
    assert not decision.allowed
    assert decision.violations[0].message.startswith("2 GPUs per pod;")

ATTRIBUTE = "device.attributes['gpu.nvidia.com']"
PROFILE_NOTE = (
    "ResourceClaimTemplate t does not select its mig.nvidia.com devices by one MIG profile alone: "
    "counted as whole GPUs until allocated"
)


@pytest.mark.parametrize(
    ("selectors", "share"),
    [
        # One profile every selected device must have: its share (NVIDIA's own examples, either way
        # round, in brackets, beside other terms and selectors).
        ([lab.profile_selector("1g.5gb")], 1 / 7),
        ([f"{ATTRIBUTE}.profile == '1g.10gb+me'"], 1 / 7),
        (['device.attributes["gpu.nvidia.com"]["profile"] == "3g.40gb"'], 3 / 7),
        ([f"'1g.6gb' == {ATTRIBUTE}.profile"], 1 / 4),
        ([f"device.driver == 'gpu.nvidia.com' && {ATTRIBUTE}.type == 'mig' && "
          f"{ATTRIBUTE}.profile == '1g.12gb'"], 1 / 7),
        ([f"({ATTRIBUTE}.type == 'mig') && ({ATTRIBUTE}.profile == '3g.40gb' && true)"], 3 / 7),
        ([lab.profile_selector("2g.20gb"), f"{ATTRIBUTE}.memory.compareTo(quantity('10Gi')) >= 0"], 2 / 7),
        # Anything else: whole GPUs, never a slice the devices are not sure to be.
        ([f"'0g.0gb' != '' && {ATTRIBUTE}.profile == '7g.80gb'"], 1.0),  # a decoy before the real one
        ([f"{ATTRIBUTE}.profile == '7g.80gb' && '1g.5gb' != ''"], 1.0),  # ... or after it
        ([lab.profile_selector("0g.0gb")], 1.0),
        ([lab.profile_selector("1g.0gb")], 1.0),
        ([lab.profile_selector("1g.5gb"), lab.profile_selector("7g.80gb")], 1.0),
        ([f"{ATTRIBUTE}.profile == '1g.5gb' || {ATTRIBUTE}.profile == '7g.80gb'"], 1.0),
        ([f"{ATTRIBUTE}.profile == '1g.5gb' || true"], 1.0),
        ([f"{ATTRIBUTE}.profile != '1g.5gb'"], 1.0),
        ([f"{ATTRIBUTE}.profile in ['1g.5gb']"], 1.0),
        ([f"!({ATTRIBUTE}.profile == '1g.5gb')"], 1.0),
        ([f"true ? {ATTRIBUTE}.profile == '1g.5gb' : true"], 1.0),
        ([f"{ATTRIBUTE}.profile == '1g.5gb' // '\n || true // '"], 1.0),  # a comment hiding the ||
        ([f"{ATTRIBUTE}.profile == '1g.5gb' && r'\\' || true || r'\\' == ''"], 1.0),  # a raw string hiding it
        ([f"{ATTRIBUTE}.profile == 'x1g.5gb'"], 1.0),
        ([f"{ATTRIBUTE}.model == '1g.5gb'"], 1.0),  # no profile attribute
    ],
)
def test_a_mig_profile_counts_only_when_the_selectors_pin_it(selectors, share):
    request = lab.device_request("mig", lab.MIG_CLASS, count=7, selectors=selectors)
    total, notes, _ = counted_template(request)
    assert total == approx(7 * share)
    assert notes == (() if share < 1 else (PROFILE_NOTE,))
    claim = lab.resource_claim("c", NS, [request])
    done = allocated(claim, *[("mig", f"gpu-{i}-mig") for i in range(7)])
    assert allocated_gpus(done) == {lab.MIG_CLASS: approx(7 * share)}  # before the slices are read


def test_allocation_mode_all_counts_all_devices_with_a_note():
    total, notes, per_pod = counted_template(lab.device_request("gpus", lab.GPU_CLASS, all_devices=True))
    assert total == 8.0 and per_pod == {lab.GPU_CLASS: 8.0}
    assert notes == (
        "ResourceClaimTemplate t asks for all gpu.nvidia.com devices: counted as 8 until allocated",
    )
    table = equivalence_of([equivalence("all", deviceClasses={lab.GPU_CLASS: {"allDevices": 4}})])
    devices = lab.claim_spec([lab.device_request("gpus", lab.GPU_CLASS, all_devices=True)])["devices"]
    assert claim_gpus(devices, table) == {lab.GPU_CLASS: 4.0}


def test_a_request_for_admin_access_is_worth_nothing_before_and_after_allocation():
    """Admin access (a monitoring DaemonSet's claim, in a namespace labelled for it) is given devices
    whatever else holds them and takes none: the GPUs count where they are used, not twice. Upstream:
    dra-example-driver's admin-access.yaml (corpus), `All` devices with `adminAccess: true`."""
    watch = lab.device_request("watch", lab.GPU_CLASS, all_devices=True)
    watch["exactly"]["adminAccess"] = True
    use = lab.device_request("use", lab.GPU_CLASS, count=2)
    v1 = lab.claim_spec([watch, use])["devices"]
    assert claim_gpus(v1) == {lab.GPU_CLASS: 2.0}
    v1beta1 = {"requests": [{"name": "watch", **watch["exactly"]}]}
    assert claim_gpus(v1beta1) == {}
    false = {"requests": [{"name": "watch", **watch["exactly"], "adminAccess": False}]}
    assert claim_gpus(false) == {lab.GPU_CLASS: 8.0}
    total, notes, _ = counted_template(watch)
    assert total == 0.0 and notes == ()  # nor the "all devices" note: nothing was assumed
    claim = lab.resource_claim("c", NS, [watch, use])
    done = allocated(claim, ("watch", "gpu-0"), ("watch", "gpu-1"), ("use", "gpu-2"), ("use", "gpu-3"))
    assert allocated_gpus(done) == {lab.GPU_CLASS: 2.0}
    # the allocation says so itself for each result (resource.k8s.io/v1 `results[].adminAccess`)
    for result in done["status"]["allocation"]["devices"]["results"][2:]:
        result["adminAccess"] = True
    assert allocated_gpus(done) == {}


def test_pre_1_31_source_form():
    index = ClaimIndex([
        lab.claim_template("t", NS, [lab.device_request("gpu", lab.GPU_CLASS, count=2)]),
        lab.resource_claim("c", NS, [mig_request("mig", "1g.10gb")]),
    ])
    spec = {
        "containers": [{"name": "main", "image": "cuda"}],
        "resourceClaims": [
            {"name": "a", "source": {"resourceClaimTemplateName": "t"}},
            {"name": "b", "source": {"resourceClaimName": "c"}},
        ],
    }
    found = pod_gpus(spec, namespace=NS, claims=index)
    assert found.per_pod == {lab.GPU_CLASS: 2.0}
    assert found.shared == {"c": {lab.MIG_CLASS: approx(1 / 7)}}
    assert found.notes == ()


def test_claim_index_keys_by_namespace_and_kind():
    index = ClaimIndex([
        lab.claim_template("t", "other", [lab.device_request("gpu", lab.GPU_CLASS, count=2)]),
        {**lab.claim_template("anywhere", "x", [lab.device_request("gpu", lab.GPU_CLASS)]),
         "metadata": {"name": "anywhere"}},  # a document without a namespace
        {**lab.claim_template("wrong", NS, []), "apiVersion": "example.com/v1"},  # not resource.k8s.io
        lab.device_class("gpu.nvidia.com", "gpu"),  # not a claim
    ])
    assert len(index) == 2
    two = lab.device_request("gpu", lab.GPU_CLASS, count=2)
    assert index("other", "ResourceClaimTemplate", "t") == {"requests": [two]}
    assert index(NS, "ResourceClaimTemplate", "t") is None
    assert index(NS, "ResourceClaim", "t") is None
    assert index(NS, "ResourceClaimTemplate", "anywhere") is not None
    index.remove(lab.claim_template("t", "other", []))
    assert len(index) == 1


def test_a_named_claim_counts_once_per_workload_a_template_once_per_pod():
    index = ClaimIndex([
        lab.resource_claim("shared", NS, [lab.device_request("gpu", lab.GPU_CLASS, count=2)]),
        lab.claim_template("own", NS, [mig_request("mig", "1g.10gb")]),
    ])
    snap = Snapshot(claims=index)
    shared = manifest_deployment(claim_pod_spec(gpus={"resourceClaimName": "shared"}), replicas=3)
    own = manifest_deployment(claim_pod_spec(gpus={"resourceClaimTemplateName": "own"}), replicas=3)
    both = manifest_deployment(
        claim_pod_spec(a={"resourceClaimName": "shared"}, b={"resourceClaimTemplateName": "own"}), replicas=3
    )
    assert workload_gpus(shared, snapshot=snap) == 2.0
    assert workload_gpus(own, snapshot=snap) == approx(3 / 7)
    assert workload_gpus(both, snapshot=snap) == approx(2 + 3 / 7)
    # ... but every pod holds the shared claim's devices: per pod, it counts in full
    decision = judge(both, snap=Snapshot(policies=(policy("gpu", gpu={"maxGPUsPerPod": 2}),), claims=index))
    assert not decision.allowed
    assert decision.violations[0].message.startswith(f"{2 + 1 / 7:.3g} GPU-equivalents per pod")


def test_an_unresolved_claim_counts_one_gpu_that_every_resources_list_counts():
    template = claim_pod_spec(gpus={"resourceClaimTemplateName": "missing"})
    found = pod_gpus(template, namespace=NS, claims=ClaimIndex())
    assert found.unresolved == 1.0
    assert found.notes == ("ResourceClaimTemplate missing is not known here: counted as 1 GPU",)
    for resources in (("*",), ("amd.com/gpu",), ("google.com/tpu",)):
        assert found.total(resource_filter(resources)) == 1.0
    # no lookup at all counts the same
    assert pod_gpus(template, namespace=NS).unresolved == 1.0
    # a named claim nobody knows: once for every pod that shares it
    named = manifest_deployment(claim_pod_spec(gpus={"resourceClaimName": "missing"}), replicas=4)
    assert workload_gpus(named, resources=("amd.com/gpu",)) == 1.0
    assert workload_gpus(manifest_deployment(template, replicas=4), resources=("amd.com/gpu",)) == 4.0
    # a claim known with no requests (classic DRA, a resource class) is not resolved either
    classic = ClaimIndex([{**lab.claim_template("missing", NS, []), "spec": {"spec": {}}}])
    assert pod_gpus(template, namespace=NS, claims=classic).unresolved == 1.0


def gpu_warnings(decision) -> list:
    return [w for w in decision.warnings if w.policy == GPU_COUNT]


def test_evaluate_warns_about_an_unresolved_claim_only_when_gpus_are_counted():
    manifest = manifest_pod(claim_pod_spec(gpus={"resourceClaimTemplateName": "missing"}))
    counted = judge(manifest, snap=Snapshot(policies=(policy("gpu", gpu={"maxGPUsPerPod": 4}),),
                                            claims=ClaimIndex()))
    assert counted.allowed
    (warning,) = gpu_warnings(counted)
    assert (warning.rule, warning.key, warning.enforcement) == ("gpu", "resourceClaims", "Warn")
    assert warning.message == "ResourceClaimTemplate missing is not known here: counted as 1 GPU"
    assert "ResourceClaimTemplate" in warning.fix
    by_budget = judge(manifest, budget("b", gpuHours=1000, period_end="2026-12-01T00:00:00Z"))
    assert len(gpu_warnings(by_budget)) == 1
    # nothing counts GPUs: no policy with GPU rules, no budget, no gpuOnly policy
    labels_only = policy("labels", labels={"required": [{"key": "team"}]})
    assert gpu_warnings(judge(manifest, labels_only)) == []
    assert gpu_warnings(judge(manifest)) == []
    # a claim that resolves: nothing assumed, nothing to warn about
    index = ClaimIndex([lab.claim_template("missing", NS, [lab.device_request("gpu", lab.GPU_CLASS)])])
    gpu_policy = policy("gpu", gpu={"maxGPUsPerPod": 4})
    resolved = judge(manifest, snap=Snapshot(policies=(gpu_policy,), claims=index))
    assert gpu_warnings(resolved) == []


def test_evaluate_warns_once_per_note_for_a_workload():
    missing = {"resourceClaimTemplateName": "missing"}
    spec = claim_pod_spec(a=missing, b=missing)
    decision = judge(manifest_deployment(spec, replicas=3), policy("gpu", gpu={"maxGPUsPerPod": 4}))
    assert len(gpu_warnings(decision)) == 1


# -- allocated claims ---------------------------------------------------------------------------------------


MIG_NODE = "kwok-a100-dra-mig-0"
MIG_SLICE = lab.mig_slice(MIG_NODE, lab.DRA_MIG_LAYOUT)
ATTRIBUTES = {
    (MIG_SLICE["spec"]["driver"], MIG_SLICE["spec"]["pool"]["name"], d["name"]): d["attributes"]
    for d in MIG_SLICE["spec"]["devices"]
}


def allocated(claim: dict, *devices: tuple[str, str]) -> dict:
    """The claim with a status.allocation of (request, device) results on the lab's MIG node."""
    results = [
        {"request": request, "driver": lab.DRA_DRIVER, "pool": MIG_NODE, "device": device}
        for request, device in devices
    ]
    return {**claim, "status": {"allocation": {"devices": {"results": results}}}}


def mig_devices(profile: lab.MigProfile) -> list[str]:
    devices = MIG_SLICE["spec"]["devices"]
    return [d["name"] for d in devices if d["attributes"]["profile"]["string"] == profile.name]


def lookup(driver: str, pool: str, device: str):
    return ATTRIBUTES.get((driver, pool, device))


def test_allocated_gpus_is_none_until_allocated():
    claim = lab.resource_claim("c", NS, [lab.device_request("gpu", lab.GPU_CLASS)])
    assert allocated_gpus(claim) is None
    assert allocated_gpus({**claim, "status": {}}) is None


def test_allocated_gpus_count_each_device_by_its_requests_class():
    claim = lab.resource_claim("c", NS, [lab.device_request("gpu", lab.GPU_CLASS, count=2),
                                         lab.device_request("nic", "rdma.example.com")])
    done = allocated(claim, ("gpu", "gpu-0"), ("gpu", "gpu-1"), ("nic", "eth1"), ("gone", "gpu-2"))
    assert allocated_gpus(done) == {lab.GPU_CLASS: 2.0}
    only_nic = allocated(claim, ("nic", "eth1"))
    assert allocated_gpus(only_nic) == {}  # allocated, no accelerator: not None


def test_allocated_mig_devices_count_by_the_profile_their_slice_publishes():
    three, one = mig_devices(lab.MIG_3G_40GB), mig_devices(lab.MIG_1G_10GB)
    claim = lab.resource_claim("c", NS, [lab.device_request("mig", lab.MIG_CLASS, count=3)])
    done = allocated(claim, ("mig", three[0]), ("mig", one[0]), ("mig", one[1]))
    assert allocated_gpus(done, attributes=lookup) == {lab.MIG_CLASS: approx(5 / 7)}
    # without the slice: the profile the request's selector names, else the whole GPU
    assert allocated_gpus(done) == {lab.MIG_CLASS: 3.0}
    selected = lab.resource_claim("c", NS, [mig_request("mig", "1g.10gb", count=2)])
    two_slices = allocated(selected, ("mig", one[0]), ("mig", one[1]))
    assert allocated_gpus(two_slices) == {lab.MIG_CLASS: approx(2 / 7)}
    # the attribute may be domain-qualified

    def qualified(driver, pool, device):
        return {f"{lab.DRA_DRIVER}/{k}": v for k, v in ATTRIBUTES[(driver, pool, device)].items()}

    assert allocated_gpus(allocated(claim, ("mig", three[1])), attributes=qualified) == {
        lab.MIG_CLASS: approx(3 / 7)
    }


def test_a_shared_device_counts_the_largest_share_of_its_capacity_the_allocation_consumed():
    """dra-example-driver's gpu-allow-multiple-allocations (corpus): each pod's claim consumes 16Gi of
    memory and 20 of compute of one device that has 80Gi and 100 (DRAConsumableCapacity): 0.2 each.
    At admission the device's capacity is not known: the whole device, the bound a budget trusts."""
    request = lab.device_request("gpu", lab.EXAMPLE_CLASS)
    request["exactly"]["capacity"] = {"requests": {"memory": "16Gi", "compute": "20"}}
    claim = lab.resource_claim("c", NS, [request])
    assert claim_gpus(claim["spec"]["devices"]) == {lab.EXAMPLE_CLASS: 1.0}
    done = allocated(claim, ("gpu", "gpu-0"))
    [result] = done["status"]["allocation"]["devices"]["results"]
    result["consumedCapacity"] = {"memory": "16Gi", "compute": "20"}
    device = {"memory": {"value": "80Gi"}, "compute": {"value": "100"}}
    assert allocated_gpus(done, capacity=lambda *key: device) == {lab.EXAMPLE_CLASS: approx(0.2)}
    result["consumedCapacity"] = {"memory": "40Gi", "compute": "20"}  # the larger share counts
    assert allocated_gpus(done, capacity=lambda *key: device) == {lab.EXAMPLE_CLASS: approx(0.5)}
    assert allocated_gpus(done, capacity=lambda *key: None) == {lab.EXAMPLE_CLASS: 1.0}  # slice unknown
    assert allocated_gpus(done) == {lab.EXAMPLE_CLASS: 1.0}


def test_an_amd_partition_counts_the_share_of_its_gpu_its_partition_profile_names():
    """ROCm's DRA driver (its example-partitions-same-parent.yaml is in the corpus) publishes a
    pre-partitioned MI300X's partitions with the GPU's `partitionProfile` and `productName`: in CPX
    mode a partition is 1/8 of the GPU. Admission, which does not read slices, counts 1 each."""
    claim = lab.resource_claim("c", NS, [lab.device_request("p", "gpu.amd.com", count=2)])
    assert claim_gpus(claim["spec"]["devices"]) == {"gpu.amd.com": 2.0}
    done = allocated(claim, ("p", "gpu-1-129"), ("p", "gpu-2-130"))
    mi300x = {"type": {"string": "amdgpu-partition"}, "partitionProfile": {"string": "cpx_nps4"},
              "productName": {"string": "AMD_Instinct_MI300X_OAM"}}
    assert allocated_gpus(done, attributes=lambda *key: mi300x) == {"gpu.amd.com": approx(2 / 8)}
    dpx = {**mi300x, "partitionProfile": {"string": "dpx_nps2"}}
    assert allocated_gpus(done, attributes=lambda *key: dpx) == {"gpu.amd.com": approx(2 / 2)}
    unknown = {**mi300x, "productName": {"string": "AMD_Radeon_Pro_W7900"}}
    assert allocated_gpus(done, attributes=lambda *key: unknown) == {"gpu.amd.com": 2.0}
    assert allocated_gpus(done) == {"gpu.amd.com": 2.0}  # the slice not read: whole GPUs


def amd(profile: str | None, product: str | None = "AMD_Instinct_MI300X") -> dict:
    """An AMD DRA device's attributes: its GPU's partition profile and product name."""
    found = {"partitionProfile": {"string": profile}} if profile else {}
    return {**found, "productName": {"string": product}} if product else found


@pytest.mark.parametrize(
    ("attributes", "share"),
    [
        (amd("spx_nps1"), 1.0),
        (amd("qpx_nps1"), 0.25),
        (amd("cpx_nps1", "AMD_Instinct_MI300A"), 1 / 6),
        (amd("cpx_nps4", None), 1.0),  # no product: the whole GPU
        (amd("xyz"), 1.0),
        (amd(None), 1.0),
        (None, 1.0),
    ],
)
def test_partition_share(attributes, share):
    assert partition_share(attributes) == approx(share)


@pytest.mark.parametrize(
    ("consumed", "capacity", "share"),
    [
        ({"memory": "8Gi"}, {"memory": {"value": "80Gi"}}, 0.1),
        ({"memory": "80Gi"}, {"memory": {"value": "80Gi"}}, 1.0),
        ({"memory": "160Gi"}, {"memory": {"value": "80Gi"}}, 1.0),  # never more than the device
        ({"cores": "10"}, {"memory": {"value": "80Gi"}}, 1.0),  # nothing in common
        ({"memory": "8Gi"}, {"memory": {"value": "0"}}, 1.0),
        ({"memory": "8Gi"}, {"memory": "80Gi"}, 1.0),  # not a DeviceCapacity
        ({"memory": "junk"}, {"memory": {"value": "80Gi"}}, 1.0),  # consumed nothing readable
        ({"memory": "8Gi", "compute": "50"}, {"memory": {"value": "80Gi"}, "compute": {"value": "100"}}, 0.5),
    ],
)
def test_capacity_share(consumed, capacity, share):
    assert capacity_share(consumed, capacity) == approx(share)


def test_allocated_first_available_results_name_the_subrequest():
    one = mig_devices(lab.MIG_1G_10GB)
    claim = lab.resource_claim("c", NS, [{"name": "gpu", "firstAvailable": [
        {"name": "big", "deviceClassName": lab.GPU_CLASS},
        {"name": "small", "deviceClassName": lab.MIG_CLASS},
    ]}])
    assert allocated_gpus(allocated(claim, ("gpu/small", one[0])), attributes=lookup) == {
        lab.MIG_CLASS: approx(1 / 7)
    }
    assert allocated_gpus(allocated(claim, ("gpu/big", "gpu-0"))) == {lab.GPU_CLASS: 1.0}


# -- the table and its overrides ---------------------------------------------------------------------------


def test_no_override_is_the_built_in_table():
    assert equivalence_of([]) is DEFAULT_EQUIVALENCE


def test_later_names_win_and_their_products_are_tried_first():
    first = equivalence(
        "a", resources={"example.com/accel": 0.5}, sharedReplicas=2,
        products=[{"match": "*A100*", "memoryMiB": 10000}],
        deviceClasses={"gpu.example.com": {"equivalents": 0.5}},
    )
    second = equivalence(
        "b", resources={"example.com/accel": 0.25}, products=[{"match": "*A100*", "memoryMiB": 20000}],
        deviceClasses={"gpu.example.com": {"equivalents": 2}},
    )
    table = equivalence_of([first, second])
    assert table.weight("example.com/accel") == 0.25
    assert table.shared_replicas == 2  # b does not say: a's stays
    assert table.device_classes["gpu.example.com"].equivalents == 2.0
    assert table.device_classes[lab.GPU_CLASS].equivalents == 1.0  # built-in ones stay
    pinned = spec_of(hami(mem=10000), **A100_80GB_PIN)
    assert gpus(pinned, table=table) == 0.5  # b's A100: 20000 MiB, before a's and the built-in one
    assert gpus(pinned, table=equivalence_of([second, first])) == 1.0
    assert gpus(pinned) == approx(10000 / 81920)
    assert table.weight("nvidia.com/gpu") == 1.0
    assert DEFAULT_EQUIVALENCE.weight("example.com/accel") is None  # the built-in table is untouched


def test_an_override_weight_applies_at_admission():
    objects = [
        {"apiVersion": API, "kind": "GPUEquivalence", "metadata": {"name": "trn2"},
         "spec": {"resources": {"aws.amazon.com/neuroncore": 0.125, "google.com/tpu": 1}}},
        {"apiVersion": API, "kind": "FinOpsPolicy", "metadata": {"name": "gpu"},
         "spec": {"gpu": {"maxGPUsPerPod": 1}}},
    ]
    snap, errors = snapshot_from_objects(objects)
    assert errors == {}
    cores = manifest_pod(spec_of({"aws.amazon.com/neuroncore": 8}))
    assert judge(cores, snap=snap).allowed  # 8 x 0.125 = 1
    assert not judge(cores, policy("gpu", gpu={"maxGPUsPerPod": 1})).allowed  # built-in: 8 x 0.5 = 4
    tpus = judge(manifest_pod(spec_of({"google.com/tpu": 2})), snap=snap)  # now known: counted by "*"
    assert not tpus.allowed and tpus.violations[0].message.startswith("2 GPUs per pod")
    assert workload_gpus(manifest_pod(spec_of({"google.com/tpu": 2})), snapshot=snap) == 2.0


def test_gpu_equivalences_apply_in_name_order_whatever_order_they_are_read():
    def override(name: str, weight: float) -> dict:
        return {"apiVersion": API, "kind": "GPUEquivalence", "metadata": {"name": name},
                "spec": {"resources": {"google.com/tpu": weight}}}

    for objects in ([override("a", 2), override("b", 0.5)], [override("b", 0.5), override("a", 2)]):
        snap, _ = snapshot_from_objects(objects)
        assert snap.equivalence.weight("google.com/tpu") == 0.5
        assert workload_gpus(manifest_pod(spec_of({"google.com/tpu": 4})), snapshot=snap) == 2.0


def test_an_override_of_a_mig_resource_weight_applies():
    table = equivalence_of([equivalence("mig", resources={"nvidia.com/mig-1g.10gb": 0.25})])
    assert table.weight("nvidia.com/mig-1g.10gb") == 0.25
    assert gpus(spec_of({"nvidia.com/mig-1g.10gb": 1}), table=table) == 0.25


def test_a_resource_name_without_a_slash_is_refused_with_its_path():
    with pytest.raises(PolicyError) as raised:
        equivalence("bad", resources={"tpu": 1})
    assert raised.value.object == "GPUEquivalence/bad"
    assert raised.value.problems == [
        ("spec.resources", "'tpu' is not an extended resource name (vendor.example/name)")
    ]
    assert str(raised.value) == (
        "GPUEquivalence/bad: spec.resources: 'tpu' is not an extended resource name (vendor.example/name)"
    )
    bad = {"apiVersion": API, "kind": "GPUEquivalence", "metadata": {"name": "bad"},
           "spec": {"resources": {"tpu": 1}}}
    snap, errors = snapshot_from_objects([bad])
    assert list(errors) == ["GPUEquivalence/bad"] and "spec.resources" in errors["GPUEquivalence/bad"]
    assert snap.equivalence is DEFAULT_EQUIVALENCE


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"resources": {"nvidia.com/gpu": 65}}, "spec.resources['nvidia.com/gpu']"),
        ({"sharedReplicas": 0}, "spec.sharedReplicas"),
        ({"products": [{"match": ""}]}, "spec.products[0].match"),
        ({"deviceClasses": {"gpu.example.com": {"allDevices": 0}}}, "spec.deviceClasses['gpu.example.com']"),
    ],
)
def test_other_bad_overrides_name_their_field(spec, path):
    with pytest.raises(PolicyError) as raised:
        equivalence("bad", **spec)
    assert raised.value.problems[0][0].startswith(path)


# -- admission, end to end --------------------------------------------------------------------------------


END = "2026-12-01T00:00:00Z"
T_BOUND = NOW - timedelta(hours=10)


def nlp_budget(*, used: float, gpu_hours: float = 10, **spec):
    selector = {"matchLabels": NLP}
    return budget("team-nlp", used=used, period_end=END, selector=selector, gpuHours=gpu_hours, **spec)


def mig_pod(resource: str = "nvidia.com/mig-1g.10gb", units: int = 1, **kw) -> dict:
    return manifest_pod(spec_of({resource: units}), **kw)


def bound_pod(name: str, spec: dict, *, node: str, scheduled: str, phase: str = "Running",
              container_states: list | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": dict(NLP)},
        "spec": {**spec, "nodeName": node},
        "status": {
            "phase": phase,
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}],
            "containerStatuses": container_states or [],
        },
    }


def metered_usage(pods: int) -> float:
    """GPU-hours `pods` 1g.10gb pods on a MIG mixed node used in the 10 hours before NOW, as the
    operator writes them in the budget's status."""
    counting = Counting(nodes={"mixed": NodeFacts.of(MIXED_A100)})
    started = format_annotation(T_BOUND)
    spec = spec_of({"nvidia.com/mig-1g.10gb": 1})
    records = [
        pod_record(bound_pod(f"p{i}", spec, node="mixed", scheduled=started), counting=counting)
        for i in range(pods)
    ]
    ledger = meter(new_ledger(budget_uid="u", period=period_bounds("Monthly", NOW)), records, now=NOW)
    return round(ledger.used_gpu_hours, 6)


def test_an_exhausted_budget_spent_by_mig_slices_refuses_the_next_slice():
    assert metered_usage(7) == 10.0  # seven 1/7 slices for ten hours: ten GPU-hours
    spent = nlp_budget(used=metered_usage(7))
    decision = judge(mig_pod(), spent)
    assert not decision.allowed
    (violation,) = decision.violations
    assert "exhausted: 10.0 of 10.0 GPU-hours" in violation.message
    room = nlp_budget(used=metered_usage(6))
    assert judge(mig_pod(), room).allowed  # 60/7 = 8.6 GPU-hours used


def test_a_projected_budget_fits_a_small_slice_but_not_a_large_one():
    left_one = nlp_budget(used=9, admission="Projected")
    six_hours = {"expires_at": format_annotation(NOW + timedelta(hours=6))}
    assert judge(mig_pod(annotations=six_hours), left_one).allowed  # 6/7 GPU-hours
    decision = judge(mig_pod("nvidia.com/mig-3g.40gb", annotations=six_hours), left_one)
    assert not decision.allowed
    (violation,) = decision.violations
    assert "worst case 0.429 GPU-equivalents x 6.0h = 2.6 GPU-hours exceeds the 1.0 GPU-hours left" in (
        violation.message
    )
    assert "0.429 GPU-equivalents fit until 2026-11-22T14:20:00Z (2h20m)" in violation.message
    # the same slice on a single-strategy node, pinned by the pod itself
    pinned = manifest_pod(spec_of({"nvidia.com/gpu": 1}, nodeSelector={lab.PRODUCT: MIG_3G_40GB_PRODUCT}),
                          annotations=six_hours)
    assert judge(pinned, left_one).violations[0].message == violation.message
    single_1g = manifest_pod(spec_of({"nvidia.com/gpu": 1}, nodeSelector={lab.PRODUCT: MIG_1G_10GB_PRODUCT}),
                             annotations=six_hours)
    assert judge(single_1g, left_one).allowed


@pytest.mark.parametrize(
    ("asked", "allowed", "message"),
    [
        ({"nvidia.com/mig-1g.10gb": 7}, True, ""),  # 7/7 = 1
        ({"nvidia.com/mig-1g.10gb": 4, "nvidia.com/mig-3g.40gb": 1}, True, ""),  # 4/7 + 3/7 = 1
        ({"nvidia.com/mig-1g.10gb": 8}, False, "1.14 GPU-equivalents per pod; at most 1 per pod allowed"),
        ({"nvidia.com/mig-3g.40gb": 3}, False, "1.29 GPU-equivalents per pod; at most 1 per pod allowed"),
        ({"nvidia.com/gpu": 2}, False, "2 GPUs per pod; at most 1 per pod allowed"),
        ({"nvidia.com/gpu": 1}, True, ""),
        ({"aws.amazon.com/neuroncore": 3}, False, "1.5 GPU-equivalents per pod"),
    ],
)
def test_max_gpus_per_pod_in_gpu_equivalents(asked, allowed, message):
    decision = judge(manifest_pod(spec_of(asked)), policy("gpu", gpu={"maxGPUsPerPod": 1}))
    assert decision.allowed is allowed
    if message:
        assert decision.violations[0].message.startswith(message)


def test_the_fix_for_too_many_slices_is_admitted():
    pol = policy("gpu", gpu={"maxGPUsPerPod": 1})
    manifest = manifest_pod(spec_of({"nvidia.com/mig-1g.10gb": 8}))
    (violation,) = judge(manifest, pol).violations
    assert judge(apply_fix(manifest, violation.fix), pol).allowed


def test_a_gpu_only_policy_matches_every_form_of_gpu():
    only = policy("gpu", match={"gpuOnly": True}, labels={"required": [{"key": "owner"}]})
    for spec, kai in [
        (spec_of({"nvidia.com/mig-1g.10gb": 1}), None),
        (spec_of({"nvidia.com/gpu.shared": 1}), None),
        (spec_of(hami(cores=10)), None),
        (spec_of({}), {"gpu-fraction": "0.1"}),
        (spec_of({"amd.com/gpu": 1}), None),
        (claim_pod_spec(gpus={"resourceClaimTemplateName": "unknown"}), None),
    ]:
        assert not judge(manifest_pod(spec, annotations=kai), only).allowed
    assert judge(manifest_pod(spec_of({"google.com/tpu": 1})), only).allowed  # not a GPU here
    assert judge(manifest_pod(spec_of({})), only).allowed
    nic = ClaimIndex([lab.claim_template("nic", NS, [lab.device_request("nic", "rdma.example.com")])])
    nic_pod = manifest_pod(claim_pod_spec(net={"resourceClaimTemplateName": "nic"}))
    assert judge(nic_pod, snap=Snapshot(policies=(only,), claims=nic)).allowed  # resolved: no GPU


def test_a_deployments_slices_are_charged_per_replica():
    manifest = deployment(NLP, replicas=7)
    manifest["spec"]["template"]["spec"] = spec_of({"nvidia.com/mig-1g.10gb": 1})
    assert workload_gpus(manifest) == approx(1.0)
    left = nlp_budget(used=9.5, admission="Projected")
    manifest["spec"]["template"]["metadata"]["annotations"] = {
        "expires_at": format_annotation(NOW + timedelta(minutes=30))
    }
    assert judge(manifest, left).allowed  # 7 x 1/7 x 0.5h = 0.5


# -- metering ------------------------------------------------------------------------------------------------


T = "2026-11-10T12:00:00Z"
PULLING = [{"name": "c0", "state": {"waiting": {"reason": "ContainerCreating"}}, "ready": False}]


def test_a_bound_pod_is_metered_from_when_it_was_scheduled_while_its_image_pulls():
    counting = Counting(nodes={"single": NodeFacts.of(SINGLE_1G)})
    obj = bound_pod("p", spec_of({"nvidia.com/gpu": 1}), node="single", scheduled=T, phase="Pending",
                    container_states=PULLING)
    record = pod_record(obj, counting=counting)
    assert record is not None
    started = record.started
    assert format_annotation(started) == T
    assert record.gpus == approx(1 / 7) and record.devices == {"nvidia.com/gpu": approx(1 / 7)}
    later = started + timedelta(hours=7)
    assert record.running(later)
    assert record.gpu_hours(started, later, now=later) == approx(1.0)


def test_an_unscheduled_pod_has_no_start():
    obj = bound_pod("p", spec_of({"nvidia.com/mig-1g.10gb": 1}), node="", scheduled=T, phase="Pending")
    obj["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": T}
    ]
    del obj["spec"]["nodeName"]
    record = pod_record(obj)
    assert record is not None and record.started is None
    later = NOW
    assert not record.running(later)
    assert record.gpu_hours(NOW - timedelta(days=30), later, now=later) == 0.0
    assert record.gpus == approx(1 / 7)


def test_scheduled_false_on_a_bound_pod_is_no_start_either():
    obj = bound_pod("p", spec_of({"nvidia.com/gpu": 1}), node="n", scheduled=T, phase="Pending")
    obj["status"]["conditions"][0]["status"] = "False"
    assert pod_record(obj).started is None


@pytest.mark.parametrize(
    ("node", "pins", "expected"),
    [
        (SINGLE_1G, {}, 1 / 7),
        (SINGLE_3G, {}, 3 / 7),
        (NOT_RENAMED, {}, 1 / 4),
        (WHOLE_H100, {}, 1.0),
        (None, {}, 1.0),  # node unknown: what the pod pins ...
        (None, {"nodeSelector": {lab.PRODUCT: MIG_1G_10GB_PRODUCT}}, 1 / 7),
        ({}, {"nodeSelector": {lab.PRODUCT: MIG_1G_10GB_PRODUCT}}, 1.0),  # ... a node without GFD: whole
    ],
)
def test_count_gpus_on_the_pods_node(node, pins, expected):
    facts = NodeFacts.of(node) if node is not None else None
    nodes = {"n": facts} if facts is not None else {}
    obj = bound_pod("p", spec_of({"nvidia.com/gpu": 1}, **pins), node="n", scheduled=T)
    found = count_pod(_asks(obj), namespace=NS, node=facts, counting=Counting(nodes=nodes))[0]
    assert found == {"nvidia.com/gpu": approx(expected)}
    assert pod_record(obj, counting=Counting(nodes=nodes)).gpus == approx(expected)


def test_kai_memory_is_metered_against_the_nodes_memory():
    obj = bound_pod("p", spec_of({}), node="whole", scheduled=T)
    obj["metadata"]["annotations"] = {"gpu-memory": "20000", "unrelated": "x"}
    record = pod_record(obj, counting=Counting(nodes={"whole": NodeFacts.of(WHOLE_H100)}))
    assert record.gpus == approx(20000 / lab.H100_80GB.memory_mib)
    assert pod_record(obj).gpus == 1.0  # node unknown: the whole GPU


def test_an_allocated_claim_is_counted_from_its_allocation_instead_of_its_requests():
    spec = claim_pod_spec(gpus={"resourceClaimTemplateName": "t"})
    obj = bound_pod("p", spec, node=MIG_NODE, scheduled=T)
    obj["status"]["resourceClaimStatuses"] = [{"name": "gpus", "resourceClaimName": "p-gpus-x7k2"}]
    asks = _asks(obj)
    claims = ("p-gpus-x7k2",)
    assert count_pod(asks, namespace=NS, node=None, counting=Counting(), claims=claims)[0] == {"dra": 1.0}
    counting = Counting(claims={(NS, "p-gpus-x7k2"): {lab.MIG_CLASS: 3 / 7}})
    assert count_pod(asks, namespace=NS, node=None, counting=counting, claims=("p-gpus-x7k2",))[0] == {
        lab.MIG_CLASS: 3 / 7
    }
    record = pod_record(obj, counting=counting)
    assert record.claims == ("p-gpus-x7k2",) and record.gpus == approx(3 / 7)
    assert pod_record(obj, counting=counting, gpu_resources=["amd.com/gpu"]).gpus == 0.0


def test_count_pod_counts_the_claims_not_allocated_as_asked():
    spec = claim_pod_spec(own={"resourceClaimTemplateName": "t"}, shared={"resourceClaimName": "shared"})
    asks = _asks({"spec": spec})
    counting = Counting(claims={(NS, "shared"): {lab.GPU_CLASS: 1.0}})
    found = count_pod(asks, namespace=NS, node=None, counting=counting, claims=("p-own-abcde", "shared"))[0]
    assert found == {lab.GPU_CLASS: 1.0, "dra": 1.0}


def test_metering_counts_unknown_resources_a_resources_list_names():
    obj = bound_pod("p", spec_of({"google.com/tpu": 4}), node="n", scheduled=T)
    record = pod_record(obj, gpu_resources=["google.com/tpu"])
    assert record is not None and record.gpus == 4.0


# -- properties ---------------------------------------------------------------------------------------------


FAMILIES = {
    "NVIDIA-A100-SXM4-80GB": ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "NVIDIA-A100-SXM4-40GB": ("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
    "NVIDIA-H100-80GB-HBM3": ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "NVIDIA-H100-NVL": ("1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"),
    "NVIDIA-H200": ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
    "NVIDIA-B200": ("1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
    "NVIDIA-A30": ("1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"),
}
DEVICES = (
    "nvidia.com/gpu", "nvidia.com/gpu.shared", "amd.com/gpu", "gpu.intel.com/i915", "habana.ai/gaudi",
    "aws.amazon.com/neuron", "aws.amazon.com/neuroncore",
    *sorted({f"nvidia.com/mig-{p}" for profiles in FAMILIES.values() for p in profiles}),
)
NODE_LABEL_SETS = (MIXED_A100, MIXED_A30, SINGLE_1G, SINGLE_3G, RENAMED, NOT_RENAMED, WHOLE_H100, MI300X_CPX)

PARTITIONS = ("spx_nps1", "dpx_nps2", "qpx_nps4", "cpx_nps4", "tpx_nps1")
family = st.sampled_from(sorted(FAMILIES))


@st.composite
def node_labels(draw) -> dict[str, str]:
    """GFD-like labels: a lab node's, or a product (maybe MIG single, maybe -SHARED), replicas,
    memory and an AMD partition drawn at random."""
    if draw(st.booleans()):
        return dict(draw(st.sampled_from(NODE_LABEL_SETS)))
    labels: dict[str, str] = {}
    product = draw(family)
    form = draw(st.sampled_from(["plain", "mig", "shared", "amd", "none"]))
    if form == "mig":
        labels[lab.PRODUCT] = f"{product}-MIG-{draw(st.sampled_from(FAMILIES[product])).split('+')[0]}"
    elif form == "shared":
        labels[lab.PRODUCT] = f"{product}-SHARED"
    elif form == "plain":
        labels[lab.PRODUCT] = product
    elif form == "amd":
        labels[AMD_PRODUCT] = draw(st.sampled_from([MI300X, "AMD_Instinct_MI300A", "AMD_Instinct_MI250X"]))
        labels[AMD_PARTITION] = draw(st.sampled_from(PARTITIONS))
    if draw(st.booleans()):
        labels[lab.REPLICAS] = str(draw(st.integers(0, 16)))
    if draw(st.booleans()):
        labels[lab.MEMORY] = str(draw(st.integers(0, 200_000)))
    return labels


hami_shares = st.fixed_dictionaries(
    {},
    optional={
        "nvidia.com/gpucores": st.integers(0, 150),
        "nvidia.com/gpumem": st.integers(0, 300_000),
        "nvidia.com/gpumem-percentage": st.integers(0, 150),
    },
)


@st.composite
def containers(draw) -> dict:
    asked = draw(st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 4), max_size=3))
    if draw(st.booleans()):
        asked.update(draw(hami_shares))
    return asked


@st.composite
def init_containers(draw) -> tuple[dict, ...]:
    out = []
    for asked in draw(st.lists(containers(), max_size=2)):
        if draw(st.booleans()):
            asked = {**asked, "restartPolicy": "Always"}
        out.append(asked)
    return tuple(out)


kai_annotations = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "gpu-fraction": st.sampled_from(["0.1", "0.25", "0.5", "1", "1.5", "junk"]),
            "gpu-memory": st.sampled_from(["1000", "20480", "40960", "1000000"]),
            "gpu-fraction-num-devices": st.sampled_from(["1", "2", "4"]),
        },
    ),
)
claim_requests = st.lists(
    st.tuples(
        st.sampled_from([lab.GPU_CLASS, lab.MIG_CLASS, "rdma.example.com"]),
        st.integers(1, 3),
        st.sampled_from(["", "1g.10gb", "3g.40gb", "1g.6gb", "7g.80gb"]),
        st.booleans(),
    ),
    max_size=3,
)


def kai_devices(annotations: dict | None) -> float:
    if not annotations or not (annotations.get("gpu-fraction") or annotations.get("gpu-memory")):
        return 0.0
    return float(annotations.get("gpu-fraction-num-devices", "1"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    app=st.lists(containers(), min_size=1, max_size=3),
    init=init_containers(),
    annotations=kai_annotations,
    requests=claim_requests,
    node=st.one_of(st.none(), node_labels()),
)
def test_gpu_equivalents_never_exceed_the_whole_devices_asked(app, init, annotations, requests, node):
    """Whatever the form and the node, a pod's GPU-equivalents are at most one per device it asks
    for (a unit of an extended resource, a KAI device, a DRA device)."""
    spec = spec_of(*app, init=init)
    whole = sum(
        effective_request(spec, name)
        for name in {n for c in (*app, *init) for n in c}
        if name in DEVICES and name != "aws.amazon.com/neuroncore"
    )
    whole += 0.5 * effective_request(spec, "aws.amazon.com/neuroncore") + kai_devices(annotations)
    index = None
    if requests:
        built = []
        for i, (class_name, count, profile, all_devices) in enumerate(requests):
            selectors = [lab.profile_selector(profile)] if profile else []
            built.append(lab.device_request(f"r{i}", class_name, count=count, selectors=selectors,
                                            all_devices=all_devices))
            if class_name != "rdma.example.com":
                whole += 8 if all_devices else count
        index = ClaimIndex([lab.claim_template("t", NS, built)])
        spec["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": "t"}]
    found = gpus(spec, annotations, node=node, claims=index)
    assert 0.0 <= found <= whole + 1e-9


@st.composite
def pinned_pods(draw) -> tuple[dict, dict, dict | None]:
    """A pod asking for a slice or share of the GPUs of one family, the labels it pins (of a node
    of that family: a profile the product has), and KAI annotations."""
    product = draw(family)
    profile = draw(st.sampled_from(FAMILIES[product]))
    resource = draw(st.sampled_from([f"nvidia.com/mig-{profile}", "nvidia.com/gpu", "nvidia.com/gpu.shared",
                                     "amd.com/gpu"]))
    asked = {resource: draw(st.integers(1, 4))}
    if resource == "nvidia.com/gpu" and draw(st.booleans()):
        asked.update(draw(hami_shares))
    pins: dict[str, str] = {}
    product_pin = draw(st.sampled_from(["none", "plain", "mig", "shared"]))
    if product_pin == "plain":
        pins[lab.PRODUCT] = product
    elif product_pin == "mig":
        pins[lab.PRODUCT] = f"{product}-MIG-{profile.split('+')[0]}"
    elif product_pin == "shared":
        pins[lab.PRODUCT] = f"{product}-SHARED"
    if draw(st.booleans()):
        pins[lab.REPLICAS] = str(draw(st.integers(0, 16)))
    if draw(st.booleans()):
        pins[lab.MEMORY] = str(draw(st.integers(1, 200_000)))
    if resource == "amd.com/gpu" and draw(st.booleans()):
        pins = {AMD_PRODUCT: draw(st.sampled_from([MI300X, "AMD_Instinct_MI300A"])),
                AMD_PARTITION: draw(st.sampled_from(["spx_nps1", "dpx_nps2", "cpx_nps4", "tpx_nps1"]))}
    memory = st.fixed_dictionaries({"gpu-memory": st.sampled_from(["1000", "40960"])})
    annotations = draw(st.one_of(st.none(), memory))
    return asked, pins, annotations


def pinned_by(pins: dict[str, str], form: str) -> dict:
    if form == "nodeSelector":
        return {"nodeSelector": dict(pins)}
    terms = [{k: [v] for k, v in pins.items()}]
    if form == "two agreeing terms":
        terms.append({**terms[0], "topology.kubernetes.io/zone": ["b"]})
    return {"affinity": affinity(*terms)}


PIN_FORMS = st.sampled_from(["nodeSelector", "affinity", "two agreeing terms"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=pinned_pods(), form=PIN_FORMS)
def test_pinning_a_node_never_raises_the_count(pod, form):
    """What a pod pins only ever narrows a share down from the whole GPU it is counted as unpinned
    (MIG slices of the pinned product's own profiles, shared replicas, HAMi and KAI memory, AMD
    partitions)."""
    asked, pins, annotations = pod
    unpinned = gpus(spec_of(asked), annotations)
    pinned = gpus(spec_of(asked, **pinned_by(pins, form)), annotations)
    assert pinned <= unpinned + 1e-12


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=pinned_pods(), form=PIN_FORMS)
def test_admission_pins_count_as_the_node_they_pin_is_metered(pod, form):
    """A pod that pins node labels is counted at admission as metering counts it on a node with
    those labels: the two doors agree."""
    asked, pins, annotations = pod
    at_admission = pod_gpus(spec_of(asked, **pinned_by(pins, form)), annotations)
    on_the_node = pod_gpus(spec_of(asked), annotations, node=NodeFacts.of(pins))
    assert at_admission.per_pod == on_the_node.per_pod


def test_a_pod_without_accelerators_has_no_gpus():
    assert pod_gpus(spec_of({"cpu": 1})) is NO_GPUS
    assert pod_gpus(spec_of({}), {"unrelated": "x"}) is NO_GPUS
