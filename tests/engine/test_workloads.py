import pytest
from engine_cases import container, deployment, pod

from controller.engine.workloads import (
    BUILTIN_KINDS,
    KindSpec,
    TemplateSpec,
    effective_labels,
    pinned_terms,
    pod_templates,
    pod_templates_of,
    pod_units,
    quantity,
    workload_units,
)


def gpu(n, **kw):
    return container(n, **kw)


def sidecar(n, name="side"):
    return container(n, name=name, restartPolicy="Always")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"containers": [gpu(0)]}, 0),
        ({"containers": [gpu(2)]}, 2),
        ({"containers": [gpu(2, field="requests")]}, 2),
        ({"containers": [gpu(2), gpu(3, name="b")]}, 5),
        # requests win over limits when both are given (they must be equal for extended resources)
        (
            {
                "containers": [
                    {
                        "name": "c",
                        "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
                    }
                ]
            },
            1,
        ),
        # init containers run one at a time, before the app: max rule
        ({"initContainers": [gpu(4, name="i")], "containers": [gpu(1)]}, 4),
        ({"initContainers": [gpu(1, name="i")], "containers": [gpu(3)]}, 3),
        ({"initContainers": [gpu(2, name="i1"), gpu(5, name="i2")], "containers": [gpu(1)]}, 5),
        # sidecars (restartPolicy: Always) keep running: they add to the app containers...
        ({"initContainers": [sidecar(1)], "containers": [gpu(2)]}, 3),
        # ...and to every init container started after them
        ({"initContainers": [sidecar(2), gpu(4, name="i")], "containers": [gpu(1)]}, 6),
        # an init container started before the sidecar does not overlap it
        ({"initContainers": [gpu(4, name="i"), sidecar(2)], "containers": [gpu(1)]}, 4),
        ({"containers": [{"name": "c", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}]}, 0),
        ({}, 0),
    ],
)
def test_pod_units_follows_the_scheduler(spec, expected):
    assert pod_units(spec, ("nvidia.com/gpu",)) == expected


def test_pod_units_sums_every_configured_resource():
    spec = {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1, "amd.com/gpu": 2}}}]}
    assert pod_units(spec, ("nvidia.com/gpu",)) == 1
    assert pod_units(spec, ("nvidia.com/gpu", "amd.com/gpu")) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, 2),
        ("2", 2),
        ("1500m", 2),
        ("1k", 1000),
        ("x", 0),
        (None, 0),
        (1.2, 2),
        # Not quantities (the API server refuses them); found by fuzzing, they crashed the engine.
        ("Infinity", 0),
        ("-Infinity", 0),
        ("NaN", 0),
        ("infm", 0),
        ("InfinityGi", 0),
        (float("inf"), 0),
        (float("nan"), 0),
        # Negative or past the API server's int64 (found by fuzzing: overflowed budget arithmetic).
        ("-1", 0),
        (-3, 0),
        (10**30, 0),
        ("9" * 19, 0),
        ("1e19", 0),
        (1e300, 0),
        ("1e100000", 0),
        ("sNaN", 0),
        # Without a suffix, exact: no rounding to Decimal's 28 digits.
        ("1.0000000000000000000000000001", 2),
        # Every suffix of the grammar (a CRD's int-or-string keeps what the user wrote): nano and
        # micro too, exactly and rounded up, with a suffix as without.
        ("8000000000n", 8),
        ("1000000u", 1),
        ("1n", 1),
        ("1500000001n", 2),
        ("1500001u", 2),
        ("0n", 0),
        ("1000.0000000000000000000000000001m", 2),
        ("9223372036854775807000000000n", 2**63 - 1),
        ("9223372036854775808000000000n", 0),
        ("1Ki", 1024),
        ("1E", 10**18),
        # The decimal exponent, either case.
        ("1e3", 1000),
        ("1E3", 1000),
        ("1.5E3", 1500),
    ],
)
def test_quantity(value, expected):
    assert quantity(value) == expected


def _job(kind, api, spec):
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "w"}, "spec": spec}


def _tpl(n, labels=None):
    return {"metadata": {"labels": labels or {}}, "spec": {"containers": [gpu(n)]}}


@pytest.mark.parametrize(
    ("manifest", "pointers", "gpus"),
    [
        (pod(gpus=2), [""], 2),
        (deployment(gpus=2, replicas=3), ["/spec/template"], 6),
        (deployment(gpus=2, replicas=None), ["/spec/template"], 2),
        (deployment(gpus=2, replicas=0), ["/spec/template"], 0),
        (_job("StatefulSet", "apps/v1", {"replicas": 2, "template": _tpl(1)}), ["/spec/template"], 2),
        (_job("ReplicaSet", "apps/v1", {"replicas": 2, "template": _tpl(1)}), ["/spec/template"], 2),
        (_job("DaemonSet", "apps/v1", {"template": _tpl(1)}), ["/spec/template"], 1),
        (_job("Job", "batch/v1", {"parallelism": 4, "template": _tpl(1)}), ["/spec/template"], 4),
        (
            _job("CronJob", "batch/v1", {"jobTemplate": {"spec": {"parallelism": 2, "template": _tpl(2)}}}),
            ["/spec/jobTemplate/spec/template"],
            4,
        ),
        (
            _job(
                "PyTorchJob",
                "kubeflow.org/v1",
                {
                    "pytorchReplicaSpecs": {
                        "Master": {"replicas": 1, "template": _tpl(8)},
                        "Worker": {"replicas": 3, "template": _tpl(8)},
                    }
                },
            ),
            ["/spec/pytorchReplicaSpecs/Master/template", "/spec/pytorchReplicaSpecs/Worker/template"],
            32,
        ),
        (
            _job(
                "TFJob",
                "kubeflow.org/v1",
                {"tfReplicaSpecs": {"Worker": {"replicas": 2, "template": _tpl(1)}}},
            ),
            ["/spec/tfReplicaSpecs/Worker/template"],
            2,
        ),
        (
            _job(
                "MPIJob",
                "kubeflow.org/v2beta1",
                {"mpiReplicaSpecs": {"Worker": {"replicas": 2, "template": _tpl(4)}}},
            ),
            ["/spec/mpiReplicaSpecs/Worker/template"],
            8,
        ),
        (
            _job(
                "RayCluster",
                "ray.io/v1",
                {
                    "headGroupSpec": {"template": _tpl(0)},
                    "workerGroupSpecs": [
                        {"replicas": 3, "template": _tpl(1)},
                        {"replicas": 1, "numOfHosts": 2, "template": _tpl(4)},
                    ],
                },
            ),
            [
                "/spec/headGroupSpec/template",
                "/spec/workerGroupSpecs/0/template",
                "/spec/workerGroupSpecs/1/template",
            ],
            11,
        ),
        (
            _job(
                "RayJob",
                "ray.io/v1",
                {
                    "rayClusterSpec": {
                        "headGroupSpec": {"template": _tpl(1)},
                        "workerGroupSpecs": [{"replicas": 2, "template": _tpl(1)}],
                    }
                },
            ),
            [
                "/spec/rayClusterSpec/headGroupSpec/template",
                "/spec/rayClusterSpec/workerGroupSpecs/0/template",
            ],
            3,
        ),
        (
            _job(
                "RayService",
                "ray.io/v1",
                {
                    "rayClusterConfig": {
                        "headGroupSpec": {"template": _tpl(0)},
                        "workerGroupSpecs": [{"replicas": 2, "template": _tpl(2)}],
                    }
                },
            ),
            [
                "/spec/rayClusterConfig/headGroupSpec/template",
                "/spec/rayClusterConfig/workerGroupSpecs/0/template",
            ],
            4,
        ),
        (
            _job(
                "JobSet",
                "jobset.x-k8s.io/v1alpha2",
                {
                    "replicatedJobs": [
                        {"replicas": 2, "template": {"spec": {"parallelism": 3, "template": _tpl(1)}}}
                    ]
                },
            ),
            ["/spec/replicatedJobs/0/template/spec/template"],
            6,
        ),
        (
            _job(
                "LeaderWorkerSet",
                "leaderworkerset.x-k8s.io/v1",
                {"replicas": 2, "leaderWorkerTemplate": {"size": 4, "workerTemplate": _tpl(1)}},
            ),
            ["/spec/leaderWorkerTemplate/workerTemplate"],
            8,
        ),
    ],
)
def test_every_builtin_kind(manifest, pointers, gpus):
    assert [p for p, _ in pod_templates(manifest)] == pointers
    assert workload_units(manifest, ("nvidia.com/gpu",)) == gpus


@pytest.mark.parametrize(
    "manifest",
    [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        {
            "apiVersion": "example.com/v1",
            "kind": "Deployment",
            "metadata": {"name": "x"},
        },  # same kind, other group
    ],
)
def test_unknown_kinds_have_no_templates(manifest):
    assert pod_templates(manifest) == []
    assert workload_units(manifest, ("nvidia.com/gpu",)) == 0


def test_kinds_are_addable_by_configuration():
    notebook = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Notebook",
        "metadata": {"name": "nb"},
        "spec": {"template": {"metadata": {"labels": {"team": "nlp"}}, "spec": {"containers": [gpu(1)]}}},
    }
    registry = BUILTIN_KINDS.with_extra(
        [{"group": "kubeflow.org", "kind": "Notebook", "templates": [{"path": "/spec/template"}]}]
    )
    assert pod_templates(notebook) == []
    assert [p for p, _ in pod_templates(notebook, registry)] == ["/spec/template"]
    assert effective_labels(notebook, registry) == {"team": "nlp"}
    assert registry.get("apps", "Deployment") is not None  # built-ins stay


def test_a_configured_path_indexing_a_list_gives_the_index_as_an_int():
    # Fixes address list items by int: a "0" string would name a map key nobody has.
    job = {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "spec": {"tasks": [{"template": {"spec": {"containers": [gpu(1)]}}}], "0": {"template": {}}},
    }
    registry = BUILTIN_KINDS.with_extra(
        [{"group": "batch.volcano.sh", "kind": "Job", "templates": [{"path": "/spec/tasks/0/template"}]}]
    )
    [template] = pod_templates_of(job, registry.lookup(job))
    assert template.path == ("spec", "tasks", 0, "template")
    assert template.pointer == "/spec/tasks/0/template"
    # A decimal key of a map stays a key.
    registry = BUILTIN_KINDS.with_extra(
        [{"group": "batch.volcano.sh", "kind": "Job", "templates": [{"path": "/spec/0/template"}]}]
    )
    assert [t.path for t in pod_templates_of(job, registry.lookup(job))] == [("spec", "0", "template")]


def test_replica_paths_cannot_have_more_wildcards_than_the_template():
    with pytest.raises(ValueError, match="more"):
        KindSpec("x", "Y", (TemplateSpec("/spec/template", ("/spec/*/replicas",)),))


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (pod({"team": "nlp"}), {"team": "nlp"}),
        # a controller is judged by its template, not its own metadata
        (deployment({"team": "nlp"}, meta_labels={"team": "vision", "x": "y"}), {"team": "nlp"}),
        (deployment(None), {}),
        (
            _job(
                "PyTorchJob",
                "kubeflow.org/v1",
                {
                    "pytorchReplicaSpecs": {
                        "Master": {"template": _tpl(1, {"team": "nlp", "role": "m"})},
                        "Worker": {"template": _tpl(1, {"team": "nlp", "role": "w"})},
                    }
                },
            ),
            {"team": "nlp"},
        ),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"labels": {"a": "b"}}}, {"a": "b"}),
    ],
)
def test_effective_labels(manifest, expected):
    assert effective_labels(manifest) == expected


KEYS = ("node.kubernetes.io/instance-type", "karpenter.k8s.aws/instance-type")
IT = KEYS[0]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, [[]]),
        ({"nodeSelector": {IT: "g5.xlarge", "zone": "a"}}, [[(IT, ("g5.xlarge",))]]),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": IT, "operator": "In", "values": ["a", "b"]}]},
                                {
                                    "matchExpressions": [
                                        {"key": IT, "operator": "NotIn", "values": ["c"]},
                                        {"key": IT, "operator": "Exists"},
                                    ]
                                },
                            ]
                        }
                    }
                }
            },
            [[(IT, ("a", "b"))], []],
        ),
        (
            # nodeSelector is ANDed into every term
            {
                "nodeSelector": {KEYS[1]: "p5.48xlarge"},
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                            ]
                        }
                    }
                },
            },
            [[(KEYS[1], ("p5.48xlarge",))]],
        ),
    ],
)
def test_pinned_terms(spec, expected):
    assert pinned_terms(spec, KEYS) == expected


def test_a_unicode_digit_int_refuses_counts_as_junk():
    """ "¹".isdigit() is true, yet int("¹") raises: found by the admission fuzzer."""
    assert quantity("¹") == 0
    assert quantity("2") == 2


def test_a_number_longer_than_int_parses_counts_as_junk():
    assert quantity("9" * 5000) == 0
    manifest = deployment({}, replicas="9" * 5000, gpus=1)  # type: ignore[arg-type]
    assert workload_units(manifest, ("nvidia.com/gpu",), BUILTIN_KINDS) == 1


def test_a_replica_count_past_int32_counts_as_one():
    gpus = ("nvidia.com/gpu",)
    assert workload_units(deployment({}, replicas=2**31, gpus=2), gpus, BUILTIN_KINDS) == 2
    assert workload_units(deployment({}, replicas=str(2**31), gpus=2), gpus, BUILTIN_KINDS) == 2  # type: ignore[arg-type]
    assert workload_units(deployment({}, replicas=2**31 - 1, gpus=2), gpus, BUILTIN_KINDS) == 2 * (2**31 - 1)


def _lws(size, leader_template):
    worker = {"spec": {"containers": [{"name": "w", "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}
    lwt = {"size": size, "workerTemplate": worker}
    if leader_template:
        lwt["leaderTemplate"] = {
            "spec": {"containers": [{"name": "l", "resources": {"limits": {"nvidia.com/gpu": 8}}}]}
        }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "spec": {"replicas": 2, "leaderWorkerTemplate": lwt},
    }


@pytest.mark.parametrize(
    ("size", "leader", "gpus"), [(2, True, 32), (2, False, 32), (4, True, 64), (1, True, 16)]
)
def test_a_leaderworkerset_group_is_one_leader_and_size_minus_one_workers(size, leader, gpus):
    """2 groups of `size` pods, 8 GPUs each: the leader template takes one pod per group when it
    exists, so the workers are size-1 (before, a separate leader made it size+1 per group)."""
    assert workload_units(_lws(size, leader), ("nvidia.com/gpu",)) == gpus


@pytest.mark.parametrize(
    ("group", "pods"),
    [
        ({}, 0),  # the CRD defaults replicas to 0
        ({"replicas": 3}, 3),
        ({"minReplicas": 2}, 2),
        ({"replicas": 1, "minReplicas": 2, "maxReplicas": 5}, 2),
        ({"replicas": 9, "maxReplicas": 5}, 5),
        ({"replicas": 2, "numOfHosts": 4}, 8),
        ({"replicas": 2, "suspend": True}, 0),
    ],
)
def test_a_ray_worker_group_counts_the_pods_kuberay_starts(group, pods):
    template = {"spec": {"containers": [{"name": "w", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "spec": {
            "headGroupSpec": {"template": {"spec": {"containers": [{"name": "h"}]}}},
            "workerGroupSpecs": [{"groupName": "g", "template": template, **group}],
        },
    }
    assert workload_units(cluster, ("nvidia.com/gpu",)) == pods
