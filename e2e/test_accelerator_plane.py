"""The accelerator lab on the real plane: GPUs in every form NVIDIA offers them are scheduled.

Before Comptroller can be shown to meter and judge MIG slices, time-sliced replicas and DRA
devices, the plane itself must hand them out as a real cluster would. These tests prove it
through the real API server, scheduler and controller-manager, with kwok running the pods:

- extended resources (device plugin + GPU Feature Discovery labels): MIG mixed and single
  strategies, time-slicing with and without renaming, and whole GPUs land on the node that
  advertises them, and run;
- Dynamic Resource Allocation (resource.k8s.io/v1): the controller-manager makes a pod's claim
  from its template, the scheduler allocates devices from the ResourceSlices standing in for
  NVIDIA's driver (a count, a MIG profile by CEL, a claim shared by two pods, an extended
  resource backed by a DeviceClass), and the pod runs on the node those devices are on.

The lab's nodes (tainted, so no other test's pod lands there) and its DRA objects live for this
module only: other modules count the plane's nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from e2e import accelerators as acc
from e2e.accelerators import LAB
from e2e.helpers import fresh_namespace, get_json, unique, wait_until

pytestmark = pytest.mark.timeout(180)

RUN_TIMEOUT = 60


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(cluster, accelerator_lab) -> Iterator[str]:
    """A namespace for the pods on the lab's nodes, one the admission webhook leaves alone: these
    tests judge the plane, not the policies."""
    namespace = fresh_namespace(cluster, "accel")
    try:
        yield namespace
    finally:
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--timeout=60s", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# ---- helpers -----------------------------------------------------------------------------------


def namespace_events(cluster, namespace: str) -> Callable[[], str]:
    """For `wait_until(..., on_timeout=)`: what the namespace's events say (the scheduler's reasons)."""
    return lambda: cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp",
                                   check=False).stdout[-3000:]


def running(cluster, namespace: str, name: str) -> dict:
    """The pod once kwok runs it."""
    def get() -> dict | None:
        pod = get_json(cluster, "pod", "-n", namespace, name)
        return pod if pod and pod.get("status", {}).get("phase") == "Running" else None

    return wait_until(get, timeout=RUN_TIMEOUT, interval=0.25, what=f"pod {namespace}/{name} to run",
                      on_timeout=namespace_events(cluster, namespace))


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_scheduled(pod: dict, node: str) -> None:
    """On `node`, with a PodScheduled condition that is True and says since when (metering may
    start a pod's clock there)."""
    assert pod["spec"]["nodeName"] == node
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert condition["status"] == "True"
    assert condition.get("lastTransitionTime"), condition
    assert stamp(condition["lastTransitionTime"]) >= stamp(pod["metadata"]["creationTimestamp"])


def published(cluster, node: str) -> dict[str, dict]:
    """Device name -> attributes, as the API server stores the node's ResourceSlice."""
    slices = get_json(cluster, "resourceslices", "--field-selector", f"spec.nodeName={node}") or {}
    return {d["name"]: d.get("attributes", {}) for s in slices.get("items", []) for d in s["spec"]["devices"]}


def allocation(cluster, namespace: str, claim: str) -> dict:
    """The claim once allocated."""
    def get() -> dict | None:
        found = get_json(cluster, "resourceclaim", "-n", namespace, claim)
        return found if found and found.get("status", {}).get("allocation") else None

    return wait_until(get, timeout=RUN_TIMEOUT, interval=0.25,
                      what=f"ResourceClaim {namespace}/{claim} to be allocated",
                      on_timeout=namespace_events(cluster, namespace))


def results(claim: dict) -> list[dict]:
    return claim["status"]["allocation"]["devices"]["results"]


def reserved_for(claim: dict) -> set[str]:
    return {r["uid"] for r in claim["status"].get("reservedFor", []) if r.get("resource") == "pods"}


def generated_claim(pod: dict, claim: str) -> str:
    """The name of the ResourceClaim the controller-manager made for the pod's claim `claim`."""
    statuses = {s["name"]: s.get("resourceClaimName") for s in pod["status"].get("resourceClaimStatuses", [])}
    assert statuses.get(claim), pod["status"]
    return statuses[claim]


def assert_from_pool(found: list[dict], node: str, devices: dict[str, dict]) -> None:
    """Every allocated device is one the node's slice publishes, from the driver's pool for it."""
    for result in found:
        assert (result["driver"], result["pool"]) == (acc.DRA_DRIVER, node), result
        assert result["device"] in devices, (result, sorted(devices))


# ---- extended resources (device plugin + GFD) ----------------------------------------------------


def test_lab_nodes_advertise_what_nvidia_software_would(cluster, lab):
    """The API server keeps the lab's resources and GFD labels as built (capacity names and label
    keys are what the later Comptroller tests rely on)."""
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes", "-l", acc.LAB_LABEL)["items"]}
    alloc = {name: n["status"]["allocatable"] for name, n in nodes.items()}
    labels = {name: n["metadata"]["labels"] for name, n in nodes.items()}
    assert alloc[LAB.mig_mixed_1g]["nvidia.com/mig-1g.10gb"] == "7"
    assert "nvidia.com/gpu" not in alloc[LAB.mig_mixed_1g]
    assert labels[LAB.mig_mixed_1g]["nvidia.com/mig-1g.10gb.product"] == "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"
    assert alloc[LAB.mig_mixed_3g]["nvidia.com/mig-3g.40gb"] == "2"
    assert alloc[LAB.mig_mixed_3g]["nvidia.com/mig-1g.10gb"] == "1"
    assert labels[LAB.mig_mixed_3g]["nvidia.com/mig-3g.40gb.memory"] == "40192"
    assert labels[LAB.mig_mixed_3g][acc.PRODUCT] == "NVIDIA-A100-SXM4-80GB"
    assert labels[LAB.mig_mixed_3g][acc.MIG_STRATEGY] == "mixed"
    assert alloc[LAB.mig_single]["nvidia.com/gpu"] == "7"
    assert labels[LAB.mig_single][acc.PRODUCT] == "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"
    assert labels[LAB.mig_single][acc.COUNT] == "7"
    assert labels[LAB.mig_single]["nvidia.com/gpu.slices.gi"] == "1"
    assert alloc[LAB.shared_renamed]["nvidia.com/gpu.shared"] == "8"
    assert labels[LAB.shared_renamed][acc.PRODUCT] == "NVIDIA-H100-80GB-HBM3"
    assert alloc[LAB.shared]["nvidia.com/gpu"] == "8"
    assert labels[LAB.shared][acc.PRODUCT] == "NVIDIA-H100-80GB-HBM3-SHARED"
    for name in (LAB.shared, LAB.shared_renamed):
        assert (labels[name][acc.REPLICAS], labels[name][acc.SHARING], labels[name][acc.COUNT]) \
            == ("4", "time-slicing", "2")
    for name in (LAB.dra_gpu, LAB.dra_mig):
        assert not any(k.startswith("nvidia.com/") for k in alloc[name]), alloc[name]
    assert len(published(cluster, LAB.dra_gpu)) == acc.DRA_GPUS
    profiles = {a["profile"]["string"] for a in published(cluster, LAB.dra_mig).values()}
    assert profiles == {"1g.10gb", "3g.40gb"}


EXTENDED = [
    # Two 1g.10gb fit only the node split in seven; a 3g.40gb exists only on the other.
    pytest.param({"nvidia.com/mig-1g.10gb": 2}, {}, LAB.mig_mixed_1g, id="mig-mixed-1g.10gb"),
    pytest.param({"nvidia.com/mig-3g.40gb": 1}, {}, LAB.mig_mixed_3g, id="mig-mixed-3g.40gb"),
    # Single strategy and unrenamed time-slicing advertise plain nvidia.com/gpu, told apart by
    # the product GFD labels; users pin it.
    pytest.param({"nvidia.com/gpu": 1}, {acc.PRODUCT: "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"}, LAB.mig_single,
                 id="mig-single"),
    pytest.param({"nvidia.com/gpu.shared": 1}, {}, LAB.shared_renamed, id="time-sliced-renamed"),
    pytest.param({"nvidia.com/gpu": 1}, {acc.PRODUCT: "NVIDIA-H100-80GB-HBM3-SHARED"}, LAB.shared,
                 id="time-sliced"),
    pytest.param({"nvidia.com/gpu": 8}, {acc.PRODUCT: "NVIDIA-H100-80GB-HBM3"}, LAB.whole, id="whole-h100"),
]


@pytest.mark.parametrize(("limits", "node_selector", "node"), EXTENDED)
def test_extended_resource_pod_runs_on_the_node_advertising_it(cluster, lab, limits, node_selector, node):
    name = unique("ext")
    cluster.apply([acc.pod(name, lab, limits=limits, node_selector=node_selector)])
    assert_scheduled(running(cluster, lab, name), node)


# ---- Dynamic Resource Allocation -----------------------------------------------------------------


def test_template_claim_is_made_allocated_and_its_pod_runs(cluster, lab):
    """Two whole GPUs through a ResourceClaimTemplate: the controller-manager makes the pod's
    claim (owned by the pod, named in its status), the scheduler allocates two of the slice's GPUs
    and reserves them for the pod, and the pod runs on the node they are on."""
    template, name = unique("two-gpus"), unique("dra-train")
    cluster.apply([acc.claim_template(template, lab, [acc.device_request("gpus", acc.GPU_CLASS, count=2)]),
                   acc.template_pod(name, lab, template, claim="gpus")])
    pod = running(cluster, lab, name)
    assert_scheduled(pod, LAB.dra_gpu)
    claim = allocation(cluster, lab, generated_claim(pod, "gpus"))
    owner = claim["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", name, pod["metadata"]["uid"])
    found = results(claim)
    assert [r["request"] for r in found] == ["gpus", "gpus"]
    assert len({r["device"] for r in found}) == 2
    assert_from_pool(found, LAB.dra_gpu, published(cluster, LAB.dra_gpu))
    assert reserved_for(claim) == {pod["metadata"]["uid"]}


def test_mig_devices_are_chosen_by_their_profile_attribute(cluster, lab):
    """A claim with two requests on `mig.nvidia.com`, each choosing a profile by CEL on the
    driver's `profile` attribute, gets one device of each profile."""
    template, name = unique("mig"), unique("dra-mig")
    requests = [acc.device_request("big", acc.MIG_CLASS, selectors=[acc.profile_selector("3g.40gb")]),
                acc.device_request("small", acc.MIG_CLASS, selectors=[acc.profile_selector("1g.10gb")])]
    cluster.apply([acc.claim_template(template, lab, requests),
                   acc.template_pod(name, lab, template, claim="mig")])
    pod = running(cluster, lab, name)
    assert_scheduled(pod, LAB.dra_mig)
    found = results(allocation(cluster, lab, generated_claim(pod, "mig")))
    devices = published(cluster, LAB.dra_mig)
    assert_from_pool(found, LAB.dra_mig, devices)
    profiles = {r["request"]: devices[r["device"]]["profile"]["string"] for r in found}
    assert profiles == {"big": "3g.40gb", "small": "1g.10gb"}


def test_a_shared_claim_is_allocated_once_for_every_pod_using_it(cluster, lab):
    """A ResourceClaim created ahead and named by two pods: one GPU, reserved for both, both
    pods on its node."""
    claim_name = unique("shared-gpu")
    first, second = unique("dra-a"), unique("dra-b")
    cluster.apply([acc.resource_claim(claim_name, lab, [acc.device_request("gpu", acc.GPU_CLASS)]),
                   acc.shared_claim_pod(first, lab, claim_name),
                   acc.shared_claim_pod(second, lab, claim_name)])
    pods = [running(cluster, lab, first), running(cluster, lab, second)]
    for pod in pods:
        assert_scheduled(pod, LAB.dra_gpu)
    claim = allocation(cluster, lab, claim_name)
    found = results(claim)
    assert len(found) == 1
    assert_from_pool(found, LAB.dra_gpu, published(cluster, LAB.dra_gpu))
    assert reserved_for(claim) == {p["metadata"]["uid"] for p in pods}


EXTENDED_BY_DRA = [
    # NVIDIA's gpu.nvidia.com DeviceClass names nvidia.com/gpu: a pod asking for it on a node
    # without the device plugin gets DRA devices. The node must be pinned (other nodes have it).
    pytest.param("nvidia.com/gpu", acc.GPU_CLASS, LAB.dra_gpu, id="nvidia.com-gpu"),
    # Every DeviceClass is an extended resource under its implicit name.
    pytest.param(acc.DEVICE_CLASS_PREFIX + acc.MIG_CLASS, acc.MIG_CLASS, LAB.dra_mig, id="implicit-mig"),
]


@pytest.mark.parametrize(("resource", "device_class", "node"), EXTENDED_BY_DRA)
def test_extended_resource_backed_by_dra(cluster, lab, resource, device_class, node):
    """The scheduler makes and allocates the claim itself and names it in the pod's
    `status.extendedResourceClaimStatus`."""
    name = unique("dra-ext")
    cluster.apply([acc.pod(name, lab, limits={resource: 1},
                           node_selector={"kubernetes.io/hostname": node})])
    pod = running(cluster, lab, name)
    assert_scheduled(pod, node)
    status = pod["status"].get("extendedResourceClaimStatus")
    assert status, json.dumps(pod["status"])
    mappings = [(m["containerName"], m["resourceName"]) for m in status["requestMappings"]]
    assert mappings == [("main", resource)]
    claim = allocation(cluster, lab, status["resourceClaimName"])
    assert claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == device_class
    found = results(claim)
    assert len(found) == 1
    assert_from_pool(found, node, published(cluster, node))
    assert reserved_for(claim) == {pod["metadata"]["uid"]}
