"""Expiry on a real control plane: expired pods, Jobs and Deployments are terminated at their
top-level owner, `comptroller wake` restores a Deployment, dry-run changes nothing, the brake holds.

Each test runs its own operator (fast intervals) and its own policy scoped to its namespace, and
removes both at the end, so no other operator or test acts on its objects.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from controller import constants
from e2e.helpers import (
    OperatorProcess,
    deployment,
    events,
    fresh_namespace,
    get_json,
    install_crds,
    policy,
    unique,
    wait_until,
    wake,
)

# These tests run operators of their own; the stack's must not act on their objects meanwhile.
pytestmark = pytest.mark.usefixtures("quiet_stack_operator")


@pytest.fixture(scope="module", autouse=True)
def crds(cluster):
    install_crds(cluster)


@pytest.fixture
def scoped(cluster):
    """A namespace and an expiry policy matching only it (notifyBefore 15s); both removed after."""
    namespace = fresh_namespace(cluster, "e2e-exp")
    name = unique("e2e-expiry")
    cluster.apply(
        [
            policy(
                name,
                {
                    "match": {"namespaces": [namespace]},
                    "expiry": {"key": "expires_at", "notifyBefore": "15s"},
                },
            )
        ]
    )
    yield namespace
    # Expired leftovers would be due for the next test's operator (under any cluster-wide expiry
    # policy) and eat its brake; remove them before the namespace goes away in the background.
    cluster.kubectl(
        "delete",
        "deployments,jobs,pods",
        "--all",
        "-n",
        namespace,
        "--wait=true",
        "--timeout=60s",
        check=False,
    )
    cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bare_pod(name: str, namespace: str, expires_at: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"expires_at": expires_at}},
        "spec": {
            "containers": [{"name": "main", "image": "busybox"}],
            "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"},
        },
    }



def exists(cluster, *args) -> bool:
    return get_json(cluster, *args) is not None


def test_expired_pod_and_job_are_deleted_soon_after_expiry(cluster, scoped):
    namespace = scoped
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"expires_at": stamp(expires)}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox"}],
                    "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"},
                },
            },
        },
    }
    with OperatorProcess(
        cluster, "--expiry-interval", "2", "--idle-interval", "3600", "--audit-interval", "3600"
    ):
        cluster.apply([bare_pod("experiment", namespace, stamp(expires)), job])
        wait_until(
            lambda: events(cluster, namespace, reason="ExpiringSoon", name="experiment"),
            timeout=30,
            what="ExpiringSoon on the pod before it expires",
        )
        assert datetime.now(UTC) < expires, "ExpiringSoon came only after expiry"
        wait_until(
            lambda: not exists(cluster, "pod", "experiment", "-n", namespace),
            timeout=(expires - datetime.now(UTC)).total_seconds() + 30,
            what="the expired pod to be gone within 30s of expiry",
        )
        wait_until(
            lambda: not exists(cluster, "job", "train", "-n", namespace),
            timeout=20,
            what="the expired Job to be deleted",
        )
        # Background propagation: the garbage collector takes the Job's pods with it.
        wait_until(
            lambda: not get_json(cluster, "pods", "-n", namespace, "-l", "job-name=train")["items"],
            timeout=30,
            what="the Job's pods to be gone",
        )
        assert events(cluster, namespace, reason="Expired", name="experiment")
        assert events(cluster, namespace, reason="Expired", name="train")


def test_expired_deployment_is_scaled_to_zero_and_wake_restores_it(cluster, scoped):
    namespace = scoped
    past = stamp(datetime.now(UTC) - timedelta(minutes=5))
    with OperatorProcess(
        cluster, "--expiry-interval", "2", "--idle-interval", "3600", "--audit-interval", "3600"
    ):
        cluster.apply([deployment("notebook", namespace, replicas=2, annotations={"expires_at": past})])
        scaled = wait_until(
            lambda: (
                (d := get_json(cluster, "deployment", "notebook", "-n", namespace))
                and d["spec"]["replicas"] == 0
                and d
            ),
            timeout=40,
            what="the expired Deployment to be scaled to zero",
        )
        annotations = scaled["metadata"]["annotations"]
        assert annotations[constants.ORIGINAL_REPLICAS_ANNOTATION] == "2"
        assert constants.EXPIRED_ANNOTATION in annotations
        wait_until(
            lambda: not get_json(cluster, "pods", "-n", namespace, "-l", "app=notebook")["items"],
            timeout=40,
            what="the Deployment's pods to be gone",
        )

        woken = wake(cluster, "deployment/notebook", namespace)
        assert woken.returncode == 0, woken.stderr
        assert "woken: 2 replicas" in woken.stdout
        restored = get_json(cluster, "deployment", "notebook", "-n", namespace)
        assert restored["spec"]["replicas"] == 2
        assert constants.ORIGINAL_REPLICAS_ANNOTATION not in restored["metadata"].get("annotations", {})
        assert events(cluster, namespace, reason="Woken", name="notebook")
        # Still expired, but inside the wake grace period: the next sweeps leave it running.
        time.sleep(5)
        assert get_json(cluster, "deployment", "notebook", "-n", namespace)["spec"]["replicas"] == 2


def test_dry_run_changes_nothing_but_says_what_it_would_do(cluster, scoped):
    namespace = scoped
    past = stamp(datetime.now(UTC) - timedelta(minutes=1))
    cluster.apply(
        [bare_pod("kept", namespace, past),
         deployment("kept-too", namespace, replicas=1, annotations={"expires_at": past})]
    )
    with OperatorProcess(
        cluster, "--dry-run", "--expiry-interval", "1", "--idle-interval", "3600", "--audit-interval", "3600"
    ) as operator:
        wait_until(
            lambda: len(events(cluster, namespace, reason="Expired")) >= 2,
            timeout=30,
            what="dry-run Expired events for both workloads",
        )
        time.sleep(4)  # several more sweeps
        log = operator.log()
    expired = events(cluster, namespace, reason="Expired")
    assert all(e["message"].startswith("[dry-run]") for e in expired), [e["message"] for e in expired]
    assert len(expired) == 2, "dry-run reports each workload once"
    pod = get_json(cluster, "pod", "kept", "-n", namespace)
    assert pod is not None and not pod["metadata"].get("deletionTimestamp")
    dep = get_json(cluster, "deployment", "kept-too", "-n", namespace)
    assert dep["spec"]["replicas"] == 1
    assert constants.ORIGINAL_REPLICAS_ANNOTATION not in dep["metadata"].get("annotations", {})
    assert "dry-run: would delete Pod/" in log and "dry-run: would scale Deployment/" in log


def test_the_brake_caps_terminations_per_minute(cluster, scoped):
    namespace = scoped
    past = stamp(datetime.now(UTC) - timedelta(minutes=1))
    cluster.apply([bare_pod(f"burst-{i}", namespace, past) for i in range(8)])
    with OperatorProcess(
        cluster,
        "--max-terminations-per-minute",
        "3",
        "--expiry-interval",
        "1",
        "--idle-interval",
        "3600",
        "--audit-interval",
        "3600",
    ) as operator:
        try:
            wait_until(
                lambda: len(events(cluster, namespace, reason="Expired")) >= 3,
                timeout=30,
                what="the first three terminations",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; operator log:\n{operator.log()[-3000:]}") from None
        time.sleep(8)  # many sweeps, all within the same minute
        log = operator.log()
    assert len(events(cluster, namespace, reason="Expired")) == 3
    remaining = [
        p
        for p in get_json(cluster, "pods", "-n", namespace)["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]
    assert len(remaining) == 5
    assert "the brake (3 terminations per 60s) holds back 5 expired workloads" in log


# A key of its own, so that no other expiry policy in the cluster (the default one reads
# `expires_at`) selects these pods and hides what the test's own policies do.
OWN_KEY = "e2e.example.com/expires-at"


def gpu_pod(name: str, namespace: str, expires_at: str, *, resource: str = "nvidia.com/gpu") -> dict:
    pod = bare_pod(name, namespace, expires_at)
    pod["metadata"]["annotations"] = {OWN_KEY: expires_at}
    pod["spec"]["nodeSelector"] = {"node.kubernetes.io/instance-type": "g5.xlarge"}
    pod["spec"]["containers"][0]["resources"] = {"limits": {resource: "1"}}
    return pod


def test_the_operator_selects_gpu_experiments_as_admission_does(cluster):
    """Two defects of the operator's own matching, now the engine's: a gpuOnly expiry policy named
    after a policy that is not gpuOnly never matched (the GPUs were counted once, as 0, for the
    first), and only nvidia.com/gpu was counted, whatever a policy's gpu.resources said."""
    namespace = fresh_namespace(cluster, "e2e-exp")
    first, gpu_only, amd_only = unique("aaa-jobs"), unique("mmm-gpu"), unique("zzz-amd")
    expiry = {"key": OWN_KEY, "notifyBefore": "15s"}
    cluster.apply(
        [
            # Sorts first, has an expiry, matches none of the pods below (Jobs only).
            policy(first, {"match": {"namespaces": [namespace], "kinds": ["Job"]}, "expiry": expiry}),
            policy(gpu_only, {"match": {"namespaces": [namespace], "gpuOnly": True}, "expiry": expiry}),
            policy(
                amd_only,
                {
                    "match": {"namespaces": [namespace], "gpuOnly": True},
                    "gpu": {"resources": ["amd.com/gpu"]},
                    "expiry": expiry,
                },
            ),
        ]
    )
    try:
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=15)
        with OperatorProcess(
            cluster, "--expiry-interval", "2", "--idle-interval", "3600", "--audit-interval", "3600"
        ):
            cluster.apply(
                [
                    gpu_pod("nvidia-experiment", namespace, stamp(expires)),
                    # No node offers amd.com/gpu: it stays Pending, and expires all the same.
                    gpu_pod("amd-experiment", namespace, stamp(expires), resource="amd.com/gpu"),
                    gpu_pod("cpu-only", namespace, stamp(expires), resource="cpu"),  # no policy selects it
                ]
            )
            for name in ("nvidia-experiment", "amd-experiment"):
                wait_until(
                    lambda name=name: not exists(cluster, "pod", name, "-n", namespace),
                    timeout=(expires - datetime.now(UTC)).total_seconds() + 40,
                    what=f"the expired {name} to be terminated",
                )
            assert events(cluster, namespace, reason="Expired", name="nvidia-experiment")
            assert exists(cluster, "pod", "cpu-only", "-n", namespace)
    finally:
        for name in (first, gpu_only, amd_only):
            cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", "--wait=false", check=False)
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
