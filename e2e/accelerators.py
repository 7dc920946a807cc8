"""Kubernetes objects for GPUs in every form a real cluster offers them, for the e2e suite.

Comptroller must meter and judge a GPU however a pod asks for it, so the local plane needs nodes
that advertise GPUs the way NVIDIA's software does on a real cluster. Each builder here is a pure
function returning a manifest (a dict); nothing talks to the API server.

- Device plugin + GPU Feature Discovery (GFD) nodes (kwok `Node`s, built by wrapping
  `e2e.cluster.plane.node_manifest`): MIG `mixed` strategy (`nvidia.com/mig-<profile>` resources),
  MIG `single` strategy (`nvidia.com/gpu` is a MIG slice), time-slicing with and without
  `renameByDefault` (`nvidia.com/gpu.shared` or an oversubscribed `nvidia.com/gpu`), and a plain
  whole-GPU H100 node. Labels are the ones GFD writes (NVIDIA/k8s-device-plugin `internal/lm`).
- Dynamic Resource Allocation (resource.k8s.io/v1): nodes with no GPU extended resource at all,
  the `ResourceSlice`s NVIDIA's DRA driver (NVIDIA/k8s-dra-driver-gpu, driver `gpu.nvidia.com`)
  would publish for them, its `DeviceClass`es, and claims and pods that use them.

Every accelerator node carries `LAB_LABEL` (so a test can list and delete exactly these) and the
`nvidia.com/gpu=present:NoSchedule` taint GPU pools usually carry, so pods of other tests never
land on them by accident; the pod builders here add the matching toleration.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from e2e.cluster.plane import node_manifest

LAB_LABEL = "e2e.comptroller.dev/accelerator-lab"
"""Marks the nodes and ResourceSlices built here, so a test can select and remove exactly them."""
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

DRA_DRIVER = "gpu.nvidia.com"
"""The driver name NVIDIA's DRA driver publishes devices under (also its attribute domain)."""
GPU_CLASS = "gpu.nvidia.com"
MIG_CLASS = "mig.nvidia.com"
AMD_DRIVER = AMD_CLASS = "gpu.amd.com"
"""ROCm's DRA driver and the DeviceClass its chart installs."""
EXAMPLE_DRIVER = EXAMPLE_CLASS = "gpu.example.com"
"""dra-example-driver's driver and DeviceClass (its `gpuAllowMultipleAllocations` install shares a
GPU by consumable capacity)."""
DEVICE_CLASS_PREFIX = "deviceclass.resource.kubernetes.io/"
"""Every DeviceClass is also an extended resource of this name + the class name (KEP-5004)."""

# GFD label keys (k8s-device-plugin internal/lm/resource.go, mig-strategy.go, nvml.go).
PRODUCT = "nvidia.com/gpu.product"
COUNT = "nvidia.com/gpu.count"
MEMORY = "nvidia.com/gpu.memory"
REPLICAS = "nvidia.com/gpu.replicas"
SHARING = "nvidia.com/gpu.sharing-strategy"
MIG_STRATEGY = "nvidia.com/mig.strategy"


@dataclass(frozen=True)
class Gpu:
    """One GPU model as NVML names it and GFD / the DRA driver describe it."""

    nvml_name: str
    """`nvmlDeviceGetName` (the DRA driver's `productName`; GFD sanitises it into the label)."""
    memory_mib: int
    family: str
    """GFD's `gpu.family` (lower case)."""
    architecture: str
    """The DRA driver's `architecture` attribute (go-nvlib's spelling)."""
    compute: tuple[int, int]
    mig_capable: bool = True

    @property
    def product(self) -> str:
        """The GFD `nvidia.com/gpu.product` value: spaces to dashes, other odd characters dropped."""
        kept = "".join(c for c in self.nvml_name if c.isalnum() or c in "-_. ")
        return "-".join(kept.split())


@dataclass(frozen=True)
class MigProfile:
    """A MIG GPU-instance profile on one GPU model (from `nvidia-smi mig -lgip`)."""

    name: str
    """`1g.10gb`: compute slices `g`, memory `gb`."""
    profile_id: int
    memory_mib: int
    multiprocessors: int
    copy_engines: int
    decoders: int
    memory_slices: int
    encoders: int = 0
    jpeg_engines: int = 0
    ofa_engines: int = 0

    @property
    def slices(self) -> int:
        return int(self.name.split("g.", 1)[0])

    @property
    def resource(self) -> str:
        """The extended resource the device plugin advertises it as under the mixed strategy."""
        return f"nvidia.com/mig-{self.name}"


A100_80GB = Gpu("NVIDIA A100-SXM4-80GB", 81920, "ampere", "Ampere", (8, 0))
H100_80GB = Gpu("NVIDIA H100 80GB HBM3", 81559, "hopper", "Hopper", (9, 0))

# A100-SXM4-80GB profiles as `nvidia-smi mig -lgip` lists them (9.50 and 39.25 GiB).
MIG_1G_10GB = MigProfile("1g.10gb", 19, 9728, 14, copy_engines=1, decoders=0, memory_slices=1)
MIG_3G_40GB = MigProfile("3g.40gb", 9, 40192, 42, copy_engines=3, decoders=3, memory_slices=4)

DRIVER_VERSION = "570.133.20"
CUDA_DRIVER_VERSION = "12.8.0"

# ---- nodes -------------------------------------------------------------------------------------


def accelerator_node(name: str, instance_type: str, *, gpus: int = 0,
                     resources: Mapping[str, int] | None = None, labels: Mapping[str, str] | None = None,
                     cpus: int = 96, memory: str = "1152Gi") -> dict:
    """A kwok node as `node_manifest` builds it, renamed for its role, with extra extended
    resources and labels, `LAB_LABEL`, and the GPU taint. `gpus` is its `nvidia.com/gpu` capacity."""
    node = node_manifest(instance_type, gpus, 0, cpus, memory)
    capacity = {**node["status"]["capacity"], **{k: str(v) for k, v in (resources or {}).items()}}
    node["metadata"]["name"] = name
    node["metadata"]["labels"].update({
        "kubernetes.io/hostname": name, LAB_LABEL: "true", "nvidia.com/gpu.present": "true", **(labels or {}),
    })
    node["spec"] = {"taints": [dict(GPU_TAINT)]}
    node["status"] = {"capacity": capacity, "allocatable": dict(capacity)}
    return node


def gfd_gpu_labels(gpu: Gpu, count: int, *, replicas: int = 1, sharing: str = "none",
                   product_suffix: str = "") -> dict[str, str]:
    """The `nvidia.com/gpu.*` labels GFD writes for `count` whole GPUs of a model. A GPU with
    MIG enabled gets `replicas` 0 (GFD labels it without sharing); a time-sliced one its replicas
    per GPU and `time-slicing`; `product_suffix` is `-SHARED` when sharing does not rename."""
    major, minor = gpu.compute
    return {
        PRODUCT: gpu.product + product_suffix,
        COUNT: str(count),
        MEMORY: str(gpu.memory_mib),
        REPLICAS: str(replicas),
        SHARING: sharing,
        "nvidia.com/gpu.family": gpu.family,
        "nvidia.com/gpu.compute.major": str(major),
        "nvidia.com/gpu.compute.minor": str(minor),
        "nvidia.com/gpu.mode": "compute",
        "nvidia.com/mig.capable": str(gpu.mig_capable).lower(),
        "nvidia.com/mps.capable": "false",
    }


def gfd_mig_labels(prefix: str, gpu: Gpu, profile: MigProfile, count: int) -> dict[str, str]:
    """The labels GFD writes for `count` MIG devices of one profile, keyed `<prefix>.<attribute>`:
    `nvidia.com/mig-1g.10gb` under the mixed strategy, `nvidia.com/gpu` under single (where they
    override the whole GPU's). The product is `<GPU>-MIG-<profile>`, the memory the slice's."""
    attributes = {
        "product": f"{gpu.product}-MIG-{profile.name}",
        "count": count,
        "replicas": 1,
        "sharing-strategy": "none",
        "memory": profile.memory_mib,
        "multiprocessors": profile.multiprocessors,
        "slices.gi": profile.slices,
        "slices.ci": profile.slices,
        "engines.copy": profile.copy_engines,
        "engines.decoder": profile.decoders,
        "engines.encoder": profile.encoders,
        "engines.jpeg": profile.jpeg_engines,
        "engines.ofa": profile.ofa_engines,
    }
    return {f"{prefix}.{key}": str(value) for key, value in attributes.items()}


def mig_mixed_node(name: str, instance_type: str, gpus: int, devices: Mapping[MigProfile, int],
                   gpu: Gpu = A100_80GB) -> dict:
    """MIG `mixed` strategy: every profile is its own resource (`nvidia.com/mig-1g.10gb: 7`) and
    its own label set; `nvidia.com/gpu.*` still describes the `gpus` physical GPUs, and the node
    advertises no `nvidia.com/gpu` (all its GPUs have MIG enabled)."""
    labels = {**gfd_gpu_labels(gpu, gpus, replicas=0), MIG_STRATEGY: "mixed"}
    for profile, count in devices.items():
        labels.update(gfd_mig_labels(profile.resource, gpu, profile, count))
    return accelerator_node(name, instance_type, labels=labels,
                            resources={p.resource: n for p, n in devices.items()})


def mig_single_node(name: str, instance_type: str, gpus: int, profile: MigProfile,
                    per_gpu: int, gpu: Gpu = A100_80GB) -> dict:
    """MIG `single` strategy: every GPU split into `per_gpu` devices of one profile, advertised as
    plain `nvidia.com/gpu`; GFD overrides `nvidia.com/gpu.product` (`...-MIG-1g.10gb`), `.count`,
    `.memory` and `.replicas` with the slices', and adds their `.slices.*` and `.engines.*`."""
    count = gpus * per_gpu
    labels = {
        **gfd_gpu_labels(gpu, gpus, replicas=0),
        **gfd_mig_labels("nvidia.com/gpu", gpu, profile, count),
        MIG_STRATEGY: "single",
    }
    return accelerator_node(name, instance_type, gpus=count, labels=labels)


def time_sliced_node(name: str, instance_type: str, gpus: int, replicas: int, *, rename: bool,
                     gpu: Gpu = H100_80GB) -> dict:
    """Time-slicing: each GPU handed out `replicas` times. With `renameByDefault: true` the device
    plugin advertises `nvidia.com/gpu.shared` and the product keeps its name; without, plain
    `nvidia.com/gpu` and GFD appends `-SHARED` to the product. `gpu.count` stays physical and
    `gpu.replicas` is per GPU."""
    labels = gfd_gpu_labels(gpu, gpus, replicas=replicas, sharing="time-slicing",
                            product_suffix="" if rename else "-SHARED")
    total = gpus * replicas
    if rename:
        return accelerator_node(name, instance_type, labels=labels,
                                resources={"nvidia.com/gpu.shared": total})
    return accelerator_node(name, instance_type, gpus=total, labels=labels)


def whole_gpu_node(name: str, instance_type: str, gpus: int, gpu: Gpu = H100_80GB) -> dict:
    """Whole GPUs through the device plugin, no MIG, no sharing: the baseline."""
    return accelerator_node(name, instance_type, gpus=gpus, labels=gfd_gpu_labels(gpu, gpus))


def dra_node(name: str, instance_type: str) -> dict:
    """A node whose GPUs only DRA knows of: no GPU extended resource and no GFD product labels
    (its ResourceSlices say what it has); `nvidia.com/gpu.present`, which the DRA driver's chart
    schedules its kubelet plugin by, is set."""
    return accelerator_node(name, instance_type)


# ---- DRA: classes and slices -------------------------------------------------------------------


def _attr(value: str | int | bool, kind: str = "") -> dict:
    """A v1 DeviceAttribute: exactly one of string, int, bool, version."""
    if kind:
        return {kind: value}
    if isinstance(value, bool):
        return {"bool": value}
    return {"int": value} if isinstance(value, int) else {"string": value}


def device_class(name: str, device_type: str, *, extended_resource: str | None = None) -> dict:
    """A DeviceClass selecting the DRA driver's devices of one `type` attribute (`gpu`, `mig`).
    `extended_resource` lets pods ask for these devices as that extended resource (DRA-backed
    extended resources, GA in 1.37); NVIDIA's chart maps `gpu.nvidia.com` to `nvidia.com/gpu`."""
    expression = (f"device.driver == '{DRA_DRIVER}' && "
                  f"device.attributes['{DRA_DRIVER}'].type == '{device_type}'")
    spec: dict = {"selectors": [{"cel": {"expression": expression}}]}
    if extended_resource:
        spec["extendedResourceName"] = extended_resource
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name},
            "spec": spec}


def nvidia_device_classes() -> list[dict]:
    """`gpu.nvidia.com` (whole GPUs, also `nvidia.com/gpu`) and `mig.nvidia.com`, as NVIDIA's
    DRA driver chart installs them for resource.k8s.io/v1."""
    return [device_class(GPU_CLASS, "gpu", extended_resource="nvidia.com/gpu"),
            device_class(MIG_CLASS, "mig")]


def fake_uuid(prefix: str, *parts: object) -> str:
    """A stable NVML-style UUID (`GPU-...`, `MIG-...`) for a device, so reruns publish the same."""
    return f"{prefix}-{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(map(str, parts)))}"


def _common_attributes(gpu: Gpu, minor: int) -> dict[str, dict]:
    """What the driver publishes for a GPU and for each MIG device on it alike."""
    major, minor_cc = gpu.compute
    return {
        "productName": _attr(gpu.nvml_name),
        "brand": _attr("Nvidia"),
        "architecture": _attr(gpu.architecture),
        "cudaComputeCapability": _attr(f"{major}.{minor_cc}.0", "version"),
        "driverVersion": _attr(DRIVER_VERSION, "version"),
        "cudaDriverVersion": _attr(CUDA_DRIVER_VERSION, "version"),
        "resource.kubernetes.io/pciBusID": _attr(f"0000:{0x10 + minor:02x}:00.0"),
    }


def gpu_device(node: str, minor: int, gpu: Gpu = H100_80GB) -> dict:
    """A whole GPU as the DRA driver publishes it: named `gpu-<minor>`, `type: gpu`, with its
    memory as capacity (bytes)."""
    return {
        "name": f"gpu-{minor}",
        "attributes": {
            "type": _attr("gpu"),
            "uuid": _attr(fake_uuid("GPU", node, minor)),
            **_common_attributes(gpu, minor),
        },
        "capacity": {"memory": {"value": f"{gpu.memory_mib}Mi"}},
    }


def mig_device(node: str, parent_minor: int, profile: MigProfile, placement: int,
               gpu: Gpu = A100_80GB) -> dict:
    """A MIG device (created ahead, "static MIG") as the DRA driver publishes it: named
    `gpu-<parent>-mig-<profile without dots>-<profile id>-<placement start>`, `type: mig`, its
    `profile` and parent's UUID as attributes, the GPU instance's engines, memory and the memory
    slices it occupies as capacity."""
    capacity = {
        "multiprocessors": profile.multiprocessors,
        "copyEngines": profile.copy_engines,
        "decoders": profile.decoders,
        "encoders": profile.encoders,
        "jpegEngines": profile.jpeg_engines,
        "ofaEngines": profile.ofa_engines,
        **{f"memorySlice{i}": 1 for i in range(placement, placement + profile.memory_slices)},
    }
    return {
        "name": f"gpu-{parent_minor}-mig-{profile.name.replace('.', '')}-{profile.profile_id}-{placement}",
        "attributes": {
            "type": _attr("mig"),
            "uuid": _attr(fake_uuid("MIG", node, parent_minor, profile.name, placement)),
            "parentUUID": _attr(fake_uuid("GPU", node, parent_minor)),
            "profile": _attr(profile.name),
            **_common_attributes(gpu, parent_minor),
        },
        "capacity": {
            **{k: {"value": str(v)} for k, v in capacity.items()},
            "memory": {"value": f"{profile.memory_mib}Mi"},
        },
    }


def resource_slice(node: str, devices: Sequence[dict], *, generation: int = 1,
                   driver: str = DRA_DRIVER) -> dict:
    """The one ResourceSlice of the driver's pool for `node` (the driver names pools after nodes)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}", "labels": {LAB_LABEL: "true"}},
        "spec": {
            "driver": driver,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "nodeName": node,
            "devices": list(devices),
        },
    }


def gpu_slice(node: str, gpus: int, gpu: Gpu = H100_80GB) -> dict:
    """`gpus` whole GPUs on `node`."""
    return resource_slice(node, [gpu_device(node, i, gpu) for i in range(gpus)])


def mig_slice(node: str, layout: Mapping[int, Iterable[tuple[MigProfile, int]]],
              gpu: Gpu = A100_80GB) -> dict:
    """MIG devices on `node`: parent GPU minor -> (profile, placement start) of each device."""
    devices = [mig_device(node, minor, profile, start, gpu)
               for minor, placed in layout.items() for profile, start in placed]
    return resource_slice(node, devices)


SHARED_GPU_CAPACITY = {"memory": "80Gi", "compute": "100"}
"""What dra-example-driver's shared GPU has to give out (its gpu-allow-multiple-allocations example)."""


def driver_class(name: str, driver: str) -> dict:
    """A DeviceClass of every device of one driver, as dra-example-driver's and ROCm's charts
    install theirs (`gpu.example.com`, `gpu.amd.com`)."""
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{driver}'"}}]}}


def shared_gpu_slice(node: str) -> dict:
    """One GPU that several claims share, each consuming part of its `SHARED_GPU_CAPACITY`
    (DRAConsumableCapacity, beta and on by default since 1.36): dra-example-driver installed with
    `gpuAllowMultipleAllocations=true`."""
    device = {
        "name": "gpu-0",
        "allowMultipleAllocations": True,
        "attributes": {"type": _attr("gpu"), "uuid": _attr(fake_uuid("GPU", node, 0))},
        "capacity": {name: {"value": value} for name, value in SHARED_GPU_CAPACITY.items()},
    }
    return resource_slice(node, [device], driver=EXAMPLE_DRIVER)


AMD_CPX_PARTITIONS = 8
"""Partitions of `LAB.dra_amd`'s one MI300X, in CPX compute mode (each 1/8 of the GPU)."""


def amd_partition_slice(node: str) -> dict:
    """One MI300X pre-partitioned in CPX mode (NPS4), as ROCm's DRA driver publishes it: a device per
    partition (`gpu-<card>-<render>`), `type: amdgpu-partition`, the GPU's `partitionProfile` and
    `productName`, the parent's PCI bus ID, and the partition's share of memory and compute units."""
    devices = [
        {
            "name": f"gpu-{1 + i}-{129 + i}",
            "attributes": {
                "type": _attr("amdgpu-partition"),
                "partitionProfile": _attr("cpx_nps4"),
                "productName": _attr("AMD_Instinct_MI300X_OAM"),
                "deviceID": _attr("0x74a1"),
                "resource.kubernetes.io/pciBusID": _attr("0000:05:00.0"),
            },
            "capacity": {"memory": {"value": "24Gi"}, "computeUnits": {"value": "38"}},
        }
        for i in range(AMD_CPX_PARTITIONS)
    ]
    return resource_slice(node, devices, driver=AMD_DRIVER)


# ---- claims and pods ---------------------------------------------------------------------------


def device_request(name: str, device_class_name: str, *, count: int = 1, selectors: Iterable[str] = (),
                   all_devices: bool = False) -> dict:
    """A v1 DeviceRequest for `count` devices of a class (or all of them), each matching every
    CEL expression in `selectors`."""
    exactly: dict = {"deviceClassName": device_class_name}
    if all_devices:
        exactly["allocationMode"] = "All"
    else:
        exactly.update(allocationMode="ExactCount", count=count)
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    return {"name": name, "exactly": exactly}


def profile_selector(profile: str) -> str:
    """CEL choosing MIG devices of one profile by the driver's `profile` attribute."""
    return f"device.attributes['{DRA_DRIVER}'].profile == '{profile}'"


def claim_spec(requests: Sequence[dict]) -> dict:
    return {"devices": {"requests": list(requests)}}


def claim_template(name: str, namespace: str, requests: Sequence[dict]) -> dict:
    """A ResourceClaimTemplate: each pod naming it gets its own ResourceClaim, made by the
    controller-manager's resource claim controller."""
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"spec": claim_spec(requests)},
    }


def resource_claim(name: str, namespace: str, requests: Sequence[dict]) -> dict:
    """A ResourceClaim created ahead: every pod naming it shares the same devices."""
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": claim_spec(requests),
    }


def pod(name: str, namespace: str, *, limits: Mapping[str, int] | None = None,
        node_selector: Mapping[str, str] | None = None, claims: Mapping[str, Mapping[str, str]] | None = None,
        labels: Mapping[str, str] | None = None, image: str = "cuda:12.8") -> dict:
    """A one-container pod tolerating the GPU taint. `limits`: extended resources; `claims`:
    pod claim name -> `{"resourceClaimTemplateName": ...}` or `{"resourceClaimName": ...}`, each
    also listed in the container's `resources.claims` (so the container gets the devices)."""
    resources: dict = {}
    if limits:
        resources["limits"] = {k: str(v) for k, v in limits.items()}
    if claims:
        resources["claims"] = [{"name": claim} for claim in claims]
    spec: dict = {
        "tolerations": [dict(GPU_TOLERATION)],
        "containers": [{"name": "main", "image": image, "resources": resources}],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if claims:
        spec["resourceClaims"] = [{"name": claim, **dict(source)} for claim, source in claims.items()]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, **(labels or {})}},
        "spec": spec,
    }


def template_pod(name: str, namespace: str, template: str, *, claim: str = "gpus", **kwargs) -> dict:
    """A pod whose devices come from its own claim, made from `template`."""
    return pod(name, namespace, claims={claim: {"resourceClaimTemplateName": template}}, **kwargs)


def shared_claim_pod(name: str, namespace: str, claim_name: str, *, claim: str = "shared", **kwargs) -> dict:
    """A pod using the pre-created ResourceClaim `claim_name`, shared with every other pod naming it."""
    return pod(name, namespace, claims={claim: {"resourceClaimName": claim_name}}, **kwargs)


# ---- the lab: one of each ----------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """Node names of the accelerator lab `lab()` builds, for tests to expect pods on."""

    mig_mixed_1g: str = "kwok-a100-mig-mixed-0"
    mig_mixed_3g: str = "kwok-a100-mig-mixed-1"
    mig_single: str = "kwok-a100-mig-single-0"
    shared_renamed: str = "kwok-h100-shared-renamed-0"
    shared: str = "kwok-h100-shared-0"
    whole: str = "kwok-h100-0"
    dra_gpu: str = "kwok-h100-dra-0"
    dra_mig: str = "kwok-a100-dra-mig-0"
    dra_shared: str = "kwok-dra-shared-0"
    dra_amd: str = "kwok-mi300x-dra-cpx-0"


LAB = Lab()
DRA_GPUS = 8
"""Whole GPUs on `LAB.dra_gpu` (an a3-highgpu-8g)."""
DRA_MIG_LAYOUT: Mapping[int, tuple[tuple[MigProfile, int], ...]] = {
    0: ((MIG_3G_40GB, 0), (MIG_3G_40GB, 4)),
    1: tuple((MIG_1G_10GB, start) for start in range(7)),
}
"""`LAB.dra_mig` (an a2-ultragpu-2g): GPU 0 split in two 3g.40gb, GPU 1 in seven 1g.10gb."""


def lab_nodes(lab: Lab = LAB) -> list[dict]:
    """One node of each form. Instance types are Google Cloud's (A2 Ultra: A100-SXM4-80GB, A3
    High: H100 80GB HBM3), whose 1-, 2-, 4- and 8-GPU sizes let GPU counts stay physical."""
    return [
        mig_mixed_node(lab.mig_mixed_1g, "a2-ultragpu-1g", 1, {MIG_1G_10GB: 7}),
        # Two GPUs: one split in two 3g.40gb, the other with a single 1g.10gb made so far.
        mig_mixed_node(lab.mig_mixed_3g, "a2-ultragpu-2g", 2, {MIG_3G_40GB: 2, MIG_1G_10GB: 1}),
        mig_single_node(lab.mig_single, "a2-ultragpu-1g", 1, MIG_1G_10GB, per_gpu=7),
        time_sliced_node(lab.shared_renamed, "a3-highgpu-2g", 2, 4, rename=True),
        time_sliced_node(lab.shared, "a3-highgpu-2g", 2, 4, rename=False),
        whole_gpu_node(lab.whole, "a3-highgpu-8g", 8),
        dra_node(lab.dra_gpu, "a3-highgpu-8g"),
        dra_node(lab.dra_mig, "a2-ultragpu-2g"),
        dra_node(lab.dra_shared, "a3-highgpu-1g"),
        dra_node(lab.dra_amd, "ND96isr_MI300X_v5"),
    ]


def lab_dra_objects(lab: Lab = LAB) -> list[dict]:
    """The DeviceClasses and, standing in for the driver's kubelet plugin, the ResourceSlices."""
    return [
        *nvidia_device_classes(),
        gpu_slice(lab.dra_gpu, DRA_GPUS),
        mig_slice(lab.dra_mig, DRA_MIG_LAYOUT),
        driver_class(EXAMPLE_CLASS, EXAMPLE_DRIVER),
        shared_gpu_slice(lab.dra_shared),
        driver_class(AMD_CLASS, AMD_DRIVER),  # full GPUs and partitions alike
        amd_partition_slice(lab.dra_amd),
    ]
