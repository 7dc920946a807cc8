"""Hypothesis strategies for the admission fuzz tests: AdmissionReviews as the API server sends
them (workloads of every supported kind with hostile labels, quantities, selectors and expiry
values), arbitrary JSON, and mutations of well-formed reviews at any depth."""

from __future__ import annotations

import copy
import string
import uuid
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

# Values the engine parses: quantities, instance types, expiry stamps, label values.
QUANTITIES = st.one_of(
    st.sampled_from(["0", "1", "2", "8", "9", "16", "1.5", "0.5", "500m", "1k", "1Ki", "2e3", "1E2",
                     "-1", "+1", ".5", "1.", "", " ", "abc", "NaN", "Infinity", "1e309", "0x10",
                     "99999999999999999999999", "1e-400", "1Gi", "3Mi", "١", "1_000"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
EXPIRY_VALUES = st.one_of(
    st.sampled_from(["2026-11-23T18:00:00Z", "2026-11-23", "2026-11-23T18-00-00Z", "1795000000",
                     "2026-02-30", "9999-12-31T23:59:59Z", "0001-01-01", "-1", "1e20", "99999999999999999",
                     "2026-11-23T18:00:00+25:00", "yesterday", "", "T", "2026-11-23T18:00:00.123456789Z"]),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
LABEL_VALUES = st.one_of(
    st.sampled_from(["nlp", "vision", "development", "experiment", "production", "staging", "training",
                     "inference", "cc-123", "cc-1", "ranker-v7", "", "-", "NLP", "nlp ", "g6.*"]),
    st.text(max_size=70),
)
LABEL_KEYS = st.one_of(
    st.sampled_from(["team", "project", "model_id", "environment", "lifecycle_phase", "cost_center",
                     "expires_at", "app", "finops.comptroller.dev/ignore"]),
    st.text(min_size=1, max_size=40),
)
INSTANCE_TYPES = st.one_of(
    st.sampled_from(["g5.xlarge", "g6.12xlarge", "p4d.24xlarge", "m5.xlarge", "nvidia-l4", "p5.48xlarge",
                     "", "*", "g6.*", "[", "\\"]),
    st.text(max_size=20),
)
INSTANCE_KEYS = st.sampled_from(["node.kubernetes.io/instance-type", "karpenter.k8s.aws/instance-type",
                                 "cloud.google.com/gke-accelerator", "nvidia.com/gpu.product", "other"])
RESOURCE_NAMES = st.sampled_from(["nvidia.com/gpu", "cpu", "memory", "amd.com/gpu", "nvidia.com/mig-1g.5gb"])
COMPLIANT_LABELS = {"project": "search-ranking", "model_id": "ranker-v7", "lifecycle_phase": "training",
                    "cost_center": "cc-123"}
NAMESPACES = st.one_of(st.sampled_from(["ml-nlp", "default", "kube-system", "comptroller-system", ""]),
                       st.text(alphabet=string.ascii_lowercase + "-", max_size=20))

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=20,
)


@st.composite
def containers(draw) -> list[dict[str, Any]]:
    def one(index: int) -> dict[str, Any]:
        resources: dict[str, Any] = {}
        for section in draw(st.lists(st.sampled_from(["requests", "limits"]), max_size=2, unique=True)):
            resources[section] = draw(st.dictionaries(RESOURCE_NAMES, QUANTITIES, max_size=3))
        container: dict[str, Any] = {"name": f"c{index}", "image": "registry.example.com/app:1"}
        if draw(st.booleans()):
            container["resources"] = resources
        return container

    return [one(i) for i in range(draw(st.integers(0, 3)))]


@st.composite
def affinities(draw) -> dict[str, Any]:
    expressions = draw(st.lists(st.fixed_dictionaries({
        "key": INSTANCE_KEYS,
        "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Bogus"]),
        "values": st.lists(INSTANCE_TYPES, max_size=3),
    }), max_size=3))
    terms = [{"matchExpressions": expressions}] if draw(st.booleans()) else []
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


@st.composite
def pod_specs(draw) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": draw(containers())}
    if draw(st.booleans()):
        spec["initContainers"] = draw(containers())
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(st.dictionaries(INSTANCE_KEYS, INSTANCE_TYPES, max_size=2))
    if draw(st.booleans()):
        spec["affinity"] = draw(affinities())
    if draw(st.booleans()):
        spec["overhead"] = draw(st.dictionaries(RESOURCE_NAMES, QUANTITIES, max_size=2))
    return spec


@st.composite
def metadata(draw, *, namespace: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "w", "namespace": namespace}
    if draw(st.booleans()):
        meta["labels"] = draw(st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=8))
    else:
        # Mostly compliant labels, so the later rule families (GPU, expiry, budgets) decide too.
        meta["labels"] = {
            **COMPLIANT_LABELS,
            "team": draw(st.sampled_from(["nlp", "vision", "search"])),
            "environment": draw(st.sampled_from(["development", "experiment", "staging", "production"])),
            **draw(st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2)),
        }
    if draw(st.booleans()):
        meta["annotations"] = {"expires_at": draw(EXPIRY_VALUES)}
    if draw(st.booleans()):
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                    "uid": "u", "controller": draw(st.booleans())}]
    if draw(st.booleans()):
        # Set by the API server, never by the user: a real moment (absent on a CREATE's mutation).
        meta["creationTimestamp"] = draw(st.datetimes(min_value=datetime(2015, 1, 1), max_value=datetime(
            2100, 1, 1))).strftime("%Y-%m-%dT%H:%M:%SZ")
    return meta


def _template(meta: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {k: v for k, v in meta.items() if k in ("labels", "annotations")}, "spec": spec}


# (group, version, kind) -> how to wrap a pod template into the object.
WORKLOAD_KINDS: dict[tuple[str, str, str], Any] = {
    ("", "v1", "Pod"): None,
    ("apps", "v1", "Deployment"): lambda t, r: {"replicas": r, "template": t},
    ("apps", "v1", "StatefulSet"): lambda t, r: {"replicas": r, "template": t},
    ("apps", "v1", "ReplicaSet"): lambda t, r: {"replicas": r, "template": t},
    ("apps", "v1", "DaemonSet"): lambda t, r: {"template": t},
    ("batch", "v1", "Job"): lambda t, r: {"parallelism": r, "template": t},
    ("batch", "v1", "CronJob"): lambda t, r: {
        "schedule": "* * * * *", "jobTemplate": {"spec": {"template": t}}},
    ("kubeflow.org", "v1", "PyTorchJob"): lambda t, r: {"pytorchReplicaSpecs": {
        "Master": {"replicas": 1, "template": t}, "Worker": {"replicas": r, "template": t}}},
    ("ray.io", "v1", "RayCluster"): lambda t, r: {"headGroupSpec": {"template": t}, "workerGroupSpecs": [
        {"replicas": r, "minReplicas": 0, "maxReplicas": r, "template": t}]},
    ("jobset.x-k8s.io", "v1alpha2", "JobSet"): lambda t, r: {"replicatedJobs": [
        {"name": "w", "replicas": r, "template": {"spec": {"parallelism": r, "template": t}}}]},
    ("leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet"): lambda t, r: {
        "replicas": r, "leaderWorkerTemplate": {"size": r, "workerTemplate": t}},
    ("example.com", "v1", "Frobnicator"): lambda t, r: {"frob": t},  # a kind nobody registered
}
REPLICAS = st.one_of(st.integers(-3, 10**12), st.none(), st.text(max_size=5), st.floats(allow_nan=False))


@st.composite
def workloads(draw) -> tuple[tuple[str, str, str], dict[str, Any]]:
    gvk = draw(st.sampled_from(sorted(WORKLOAD_KINDS)))
    namespace = draw(NAMESPACES)
    meta = draw(metadata(namespace=namespace))
    spec = draw(pod_specs())
    group, version, kind = gvk
    api_version = f"{group}/{version}" if group else version
    wrap = WORKLOAD_KINDS[gvk]
    body = spec if wrap is None else wrap(_template(meta, spec), draw(REPLICAS))
    return gvk, {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": body}


@st.composite
def kube_reviews(draw) -> dict[str, Any]:
    """An AdmissionReview the API server could send: well-formed envelope, hostile content."""
    (group, version, kind), obj = draw(workloads())
    operation = draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]))
    old = None
    if operation == "UPDATE" and draw(st.booleans()):
        old = draw(workloads())[1]
        old["kind"], old["apiVersion"] = obj["kind"], obj["apiVersion"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": kind.lower() + "s"},
            "namespace": obj["metadata"]["namespace"],
            "name": obj["metadata"]["name"],
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": None if operation == "DELETE" else obj,
            "oldObject": old,
            "dryRun": draw(st.booleans()),
        },
    }


@st.composite
def mutated(draw, seed: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A review with one node anywhere in it replaced by arbitrary JSON, or deleted."""
    review = copy.deepcopy(draw(seed))
    node: Any = review
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return review
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.integers(0, 3)):
            node = child
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(JSON_VALUES)
        return review
