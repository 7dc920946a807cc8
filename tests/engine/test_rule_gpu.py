import pytest
from engine_cases import NOW, container, deployment, pod, policy, snapshot

from controller.engine import evaluate

IT = "node.kubernetes.io/instance-type"
GPU = policy(
    "gpu",
    gpu={
        "requireInstanceType": True,
        "maxGPUsPerPod": 8,
        "allowedInstanceTypes": [
            {"when": {"environment": ["development"]}, "instanceTypes": ["g5.xlarge", "g6.*"]},
            {"when": {"environment": ["production"]}, "instanceTypes": ["p4d.24xlarge", "p5.*"]},
        ],
    },
)
DEV = {"environment": "development"}
PROD = {"environment": "production"}


def judge(manifest, pol=GPU):
    return evaluate(manifest, snapshot=snapshot(pol), now=NOW)


def keys(decision):
    return sorted(v.key for v in decision.violations)


def term(*exprs):
    return [dict(zip(("key", "operator", "values"), e, strict=False)) for e in exprs]


@pytest.mark.parametrize(
    ("manifest", "violated"),
    [
        (pod(DEV, gpus=0), []),  # no GPUs, no GPU rules
        (pod(DEV, gpus=1, node_selector={IT: "g5.xlarge"}), []),
        (pod(DEV, gpus=1, node_selector={IT: "g6.12xlarge"}), []),  # glob
        (pod(DEV, gpus=1), ["instanceType"]),  # not pinned
        (pod(DEV, gpus=1, node_selector={IT: "p4d.24xlarge"}), ["instanceType"]),  # not allowed in dev
        (pod(PROD, gpus=8, node_selector={IT: "p4d.24xlarge"}), []),
        (pod(PROD, gpus=1, node_selector={"karpenter.k8s.aws/instance-type": "p5.48xlarge"}), []),  # any key
        (pod(PROD, gpus=16, node_selector={IT: "p5.48xlarge"}), ["maxGPUsPerPod"]),
        # no allowlist entry for staging: only the pin is required
        (pod({"environment": "staging"}, gpus=1, node_selector={IT: "anything"}), []),
        # required node affinity
        (pod(DEV, gpus=1, affinity_terms=[term((IT, "In", ["g5.xlarge", "g6.xlarge"]))]), []),
        (
            pod(DEV, gpus=1, affinity_terms=[term((IT, "In", ["g5.xlarge", "p4d.24xlarge"]))]),
            ["instanceType"],
        ),
        (pod(DEV, gpus=1, affinity_terms=[term((IT, "NotIn", ["p4d.24xlarge"]))]), ["instanceType"]),
        (pod(DEV, gpus=1, affinity_terms=[term((IT, "Exists"))]), ["instanceType"]),
        # terms are ORed: every term must pin to allowed types
        (
            pod(
                DEV, gpus=1, affinity_terms=[term((IT, "In", ["g5.xlarge"])), term((IT, "In", ["g6.xlarge"]))]
            ),
            [],
        ),
        (
            pod(DEV, gpus=1, affinity_terms=[term((IT, "In", ["g5.xlarge"])), term(("zone", "In", ["a"]))]),
            ["instanceType"],
        ),
        (
            pod(
                DEV,
                gpus=1,
                affinity_terms=[term((IT, "In", ["g5.xlarge"])), term((IT, "In", ["p5.2xlarge"]))],
            ),
            ["instanceType"],
        ),
        # expressions within a term are ANDed: one allowed pin is enough
        (pod(DEV, gpus=1, affinity_terms=[term((IT, "In", ["g5.xlarge"]), ("zone", "In", ["a"]))]), []),
        # nodeSelector is ANDed into every term
        (
            pod(
                DEV,
                gpus=1,
                node_selector={IT: "g5.xlarge"},
                affinity_terms=[term(("zone", "In", ["a"])), term(("zone", "In", ["b"]))],
            ),
            [],
        ),
        # controllers: the template is judged
        (deployment(DEV, gpus=1, node_selector={IT: "g5.xlarge"}), []),
        (deployment(DEV, gpus=1), ["instanceType"]),
    ],
)
def test_gpu_rules(manifest, violated):
    assert keys(judge(manifest)) == violated


def test_unpinned_and_disallowed_are_separate_violations_with_one_fix_each():
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "j", "namespace": "ml"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "template": {
                        "metadata": {"labels": DEV},
                        "spec": {"nodeSelector": {IT: "p4d.24xlarge"}, "containers": [container(1)]},
                    }
                },
                "Worker": {"template": {"metadata": {"labels": DEV}, "spec": {"containers": [container(1)]}}},
            }
        },
    }
    decision = judge(manifest)
    messages = sorted(v.message for v in decision.violations)
    assert len(messages) == 2
    assert "must pin" in messages[0] and "Worker" in messages[0]
    assert "p4d.24xlarge not allowed" in messages[1] and "Master" in messages[1]
    assert "allowed when environment=development: g5.xlarge, g6.*" in messages[1]


def test_gpu_only_policies_skip_cpu_workloads():
    pol = policy("labels", match={"gpuOnly": True}, labels={"required": [{"key": "team"}]})
    assert judge(pod({}, gpus=0), pol).allowed
    assert not judge(pod({}, gpus=1), pol).allowed


def test_configured_resources_count_as_gpus():
    pol = policy("gpu", gpu={"resources": ["amd.com/gpu"], "maxGPUsPerPod": 1})
    manifest = pod({})
    manifest["spec"]["containers"][0]["resources"] = {"limits": {"amd.com/gpu": 2, "nvidia.com/gpu": 5}}
    (violation,) = judge(manifest, pol).violations
    assert violation.message.startswith("2 GPUs per pod")


def test_the_max_gpu_fix_reduces_the_containers():
    manifest = pod(PROD, gpus=0, node_selector={IT: "p5.48xlarge"})
    manifest["spec"]["containers"] = [container(6, name="a"), container(6, name="b")]
    (violation,) = judge(manifest).violations
    assert violation.fix == ("spec.containers[1]:\n  resources:\n    limits:\n      nvidia.com/gpu: 2")
