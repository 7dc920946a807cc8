"""`controller.engine.unjudged`: objects of a kind the engine does not know that hold what a
workload holds. The corpus test runs it over every real upstream document; these pin its edges."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from controller.engine import evaluate
from controller.engine.accelerators import Equivalence
from controller.engine.loading import snapshot_from_objects
from controller.engine.unjudged import unjudged
from controller.engine.workloads import BUILTIN_KINDS, pod_templates_of

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
POD_SPEC = {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": 2}}}]}
REPLICA_SPECS = {  # Kubeflow's shape, under a kind the engine does not know
    "apiVersion": "kubeflow.org/v1",
    "kind": "PaddleJob",
    "metadata": {"name": "p", "namespace": "ml"},
    "spec": {
        "paddleReplicaSpecs": {
            "Master": {"replicas": 1, "template": {"spec": POD_SPEC}},
            "Worker": {"replicas": 3, "template": {"spec": POD_SPEC}},
        }
    },
}
POLICY = {
    "apiVersion": "finops.comptroller.dev/v1alpha1",
    "kind": "FinOpsPolicy",
    "metadata": {"name": "team"},
    "spec": {"labels": {"required": [{"key": "team"}]}},
}


def test_known_kinds_and_objects_that_are_no_workload_are_none():
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": POD_SPEC}
    assert unjudged(pod) is None
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "spec": {"hard": {"requests.nvidia.com/gpu": "8"}}}
    assert unjudged(quota) is None
    queue = {  # a Kueue quota names GPUs without asking for them
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": "q"},
        "spec": {
            "resourceGroups": [{"flavors": [{"resources": [{"name": "nvidia.com/gpu", "nominalQuota": 8}]}]}]
        },
    }
    assert unjudged(queue) is None
    assert unjudged({"kind": "PaddleJob", "spec": REPLICA_SPECS["spec"]}) is None  # no apiVersion: no object


def test_templates_with_their_replicas_and_the_kinds_entry_that_judges_them():
    found = unjudged(REPLICA_SPECS)
    assert found is not None
    assert found.resource == "PaddleJob/ml/p"
    assert found.templates == (
        "/spec/paddleReplicaSpecs/Master/template",
        "/spec/paddleReplicaSpecs/Worker/template",
    )
    assert found.resource_names() == ["nvidia.com/gpu"]
    # The kind's roles, not this object's: one entry for every role, with the replicas beside each.
    assert found.kinds_entry() == {
        "group": "kubeflow.org",
        "kind": "PaddleJob",
        "templates": [
            {
                "path": "/spec/paddleReplicaSpecs/*/template",
                "replicas": ["/spec/paddleReplicaSpecs/*/replicas"],
            }
        ],
    }
    kinds = BUILTIN_KINDS.with_extra([found.kinds_entry()])
    templates = pod_templates_of(REPLICA_SPECS, kinds.lookup(REPLICA_SPECS))
    assert [(t.pointer, t.replicas) for t in templates] == [
        ("/spec/paddleReplicaSpecs/Master/template", 1),
        ("/spec/paddleReplicaSpecs/Worker/template", 3),
    ]
    snapshot, errors = snapshot_from_objects([POLICY], kinds=kinds)
    assert not errors
    decision = evaluate(REPLICA_SPECS, snapshot=snapshot, now=NOW, mutate=False)
    assert [v.key for v in decision.violations] == ["team"]
    # Now known, it is no longer unjudged; and the entry an object with one role printed also
    # judges a role that object left out.
    assert unjudged(REPLICA_SPECS, kinds=kinds) is None
    worker_only = copy.deepcopy(REPLICA_SPECS)
    del worker_only["spec"]["paddleReplicaSpecs"]["Master"]
    entry = unjudged(worker_only).kinds_entry()
    roles = pod_templates_of(REPLICA_SPECS, BUILTIN_KINDS.with_extra([entry]).lookup(REPLICA_SPECS))
    assert [t.replicas for t in roles] == [1, 3]


def test_gpus_asked_outside_any_template_and_in_list_items_with_escaped_keys():
    trainjob = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "t"},
        "spec": {
            "trainer": {"resourcesPerNode": {"requests": {"amd.com/gpu": 1}, "limits": {"amd.com/gpu": 1}}}
        },
    }
    found = unjudged(trainjob, namespace="ml")
    assert found is not None and found.resource == "TrainJob/ml/t"
    assert found.accelerators == (("/spec/trainer/resourcesPerNode", "amd.com/gpu"),)
    assert found.templates == () and found.kinds_entry() is None
    nested = {
        "apiVersion": "example.com/v1",
        "kind": "Fleet",
        "metadata": {"name": "f"},
        "spec": {"groups": [{"a/b": {"template": {"spec": POD_SPEC}}}]},
    }
    found = unjudged(nested)
    assert found is not None and found.templates == ("/spec/groups/0/a~1b/template",)
    assert found.kind_templates == (("/spec/groups/*/*/template", None),)
    templates = pod_templates_of(nested, BUILTIN_KINDS.with_extra([found.kinds_entry()]).lookup(nested))
    assert [t.pointer for t in templates] == ["/spec/groups/0/a~1b/template"]


def test_kinds_known_to_make_pods_are_named_asking_for_nothing_kubernetes_writes():
    # A CPU-only TrainJob: its pods must still carry the labels policies require.
    trainjob = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "t", "namespace": "ml"},
        "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": {"numNodes": 2}},
    }
    found = unjudged(trainjob)
    assert found is not None and found.accelerators == () and found.kinds_entry() is None
    trainjob["apiVersion"] = "example.com/v1"  # the same fields under a kind nobody said makes pods
    assert unjudged(trainjob) is None


def test_an_accelerator_the_table_does_not_know_is_not_one_and_the_table_decides():
    custom = {
        "apiVersion": "example.com/v1",
        "kind": "Runner",
        "metadata": {"name": "r"},
        "spec": {"resources": {"limits": {"example.com/npu": 1, "cpu": "1"}}},
    }
    assert unjudged(custom) is None
    found = unjudged(custom, table=Equivalence(resources={"example.com/npu": 1.0}))
    assert found is not None and found.resource_names() == ["example.com/npu"]


def test_objects_known_to_run_no_pods_are_not_reported():
    kyverno = {  # its pattern is shaped like a pod
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "require-team"},
        "spec": {"rules": [{"validate": {"pattern": {"spec": {"containers": [{"name": "*"}]}}}}]},
    }
    node_pool = {  # `limits` caps the GPUs of the nodes it makes
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": "gpu"},
        "spec": {"limits": {"nvidia.com/gpu": 16}},
    }
    template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    template["template"] = {"spec": POD_SPEC}
    runtime = {  # a Kubeflow Trainer runtime: the JobSet TrainJobs are made from
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": "torch-distributed"},
    }
    job = {"template": {"spec": {"template": {"spec": POD_SPEC}}}}
    runtime["spec"] = {"template": {"spec": {"replicatedJobs": [job]}}}
    for obj in (kyverno, node_pool, template, runtime):
        assert unjudged(obj) is None, obj["kind"]
    kyverno["apiVersion"] = "example.com/v1"  # the same shape under another group is reported
    assert unjudged(kyverno) is not None


def test_keys_yaml_reads_as_other_types_are_not_fields():
    # `on:` is True and `2:` is 2 to a YAML 1.1 reader; no API server keeps such keys.
    odd = {
        "apiVersion": "example.com/v1",
        "kind": "Odd",
        "metadata": {"name": "o"},
        "spec": {True: {"template": {"spec": POD_SPEC}}, 2: {"template": {"spec": POD_SPEC}}},
    }
    assert unjudged(odd) is None


def test_metadata_status_and_loops_are_not_walked():
    with_status = {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t", "annotations": {"x": "y"}},
        "status": {"template": {"spec": POD_SPEC}},
    }
    assert unjudged(with_status) is None
    looped = copy.deepcopy(with_status)
    node: dict = {}
    node["self"] = node  # a YAML alias can make one
    looped["spec"] = node
    assert unjudged(looped) is None


def test_a_map_repeated_by_aliases_is_read_once():
    # `spec: &a {x: *a, y: *a}`, or a billion laughs: each map is read once, not once per path.
    node: dict = {}
    node["x"] = node["y"] = node
    laughs: dict = {"template": {"spec": POD_SPEC}}
    for _ in range(60):
        laughs = {"a": laughs, "b": laughs}
    for spec in (node, laughs):
        laughing = {"apiVersion": "example.com/v1", "kind": "Laughs", "metadata": {"name": "l"}, "spec": spec}
        found = unjudged(laughing)
        assert found is None or len(found.templates) == 1
