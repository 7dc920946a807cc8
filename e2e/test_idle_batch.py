"""Idle GPUs in batch workloads, on a real control plane with a real Prometheus scraping a fake DCGM
exporter the test controls (`DCGM_FI_DEV_GPU_UTIL{namespace, pod, gpu}`, e2e/prometheus.py), and
the operator running with the chart's own RBAC:

- an idle PyTorchJob (its policy says `action: Suspend`) gets its `GPUIdle` notice (Event and
  annotations) first and `notifyBefore` later `spec.runPolicy.suspend: true`; it is never deleted,
  and `comptroller wake pytorchjob/NAME` resumes it;
- a PyTorchJob with one busy GPU among idle ones is never touched;
- a Job under the default action (`Notify`) only gets the notice, once;
- a Job under `Suspend` is suspended for real: the Job controller stops its pod, and wake starts a
  new one.

The Kubeflow training operator is not on this plane: the test installs a minimal PyTorchJob CRD and
stands in for the operator, creating the job's pods (owned by it) and deleting them on suspension.
Windows are seconds long (`idleAfter`, `notifyBefore`, `--idle-interval`) so the test takes about
half a minute.
"""

from __future__ import annotations

import time
import uuid

import pytest

from controller import constants
from e2e.helpers import (
    OWN_NAMESPACE,
    OperatorProcess,
    chart_operator_kubeconfig,
    events,
    fresh_namespace,
    get_json,
    install_crds,
    policy,
    unique,
    wait_until,
    wake,
)

IDLE_AFTER = 8
NOTIFY_BEFORE = 8
GRACE = 120
CHECKPOINTS = {"checkpoints": "true"}
PYTORCHJOB_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "pytorchjobs.kubeflow.org"},
    "spec": {
        "group": "kubeflow.org",
        "scope": "Namespaced",
        "names": {"kind": "PyTorchJob", "plural": "pytorchjobs", "singular": "pytorchjob",
                  "listKind": "PyTorchJobList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}

# These tests run an operator of their own; the stack's must not act on their objects meanwhile.
pytestmark = pytest.mark.usefixtures("quiet_stack_operator")


@pytest.fixture(scope="module")
def setup(cluster, prometheus):
    install_crds(cluster)
    had_crd = get_json(cluster, "crd", PYTORCHJOB_CRD["metadata"]["name"]) is not None
    cluster.apply([PYTORCHJOB_CRD])
    cluster.kubectl("wait", "--for=condition=Established", "crd/pytorchjobs.kubeflow.org", "--timeout=30s")
    namespace = fresh_namespace(cluster, "e2e-idleb")
    suspend, notify = unique("e2e-idleb-suspend"), unique("e2e-idleb-notify")
    measure = {"url": prometheus.url}  # no query: the default DCGM query, threshold 5
    cluster.apply([
        # Jobs that checkpoint opt in to suspension...
        policy(suspend, {"match": {"namespaces": [namespace]}, "idle": {
            "selector": {"matchLabels": CHECKPOINTS}, "kinds": ["PyTorchJob", "Job"], "action": "Suspend",
            "idleAfter": f"{IDLE_AFTER}s", "notifyBefore": f"{NOTIFY_BEFORE}s", "prometheus": measure}}),
        # ... the others only get the notice (the default action for batch kinds).
        policy(notify, {"match": {"namespaces": [namespace]}, "idle": {
            "selector": {"matchExpressions": [{"key": "checkpoints", "operator": "DoesNotExist"}]},
            "kinds": ["Job"], "idleAfter": f"{IDLE_AFTER}s", "prometheus": measure}}),
    ])
    cluster.create_namespace(OWN_NAMESPACE)
    yield namespace
    for name in (suspend, notify):
        cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=false",
                    check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    if not had_crd:
        cluster.kubectl("delete", "crd", "pytorchjobs.kubeflow.org", "--wait=false", check=False)


def pod_template(labels: dict) -> dict:
    return {"metadata": {"labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "trainer"}]}}


def pytorchjob(name: str, namespace: str) -> dict:
    template = pod_template({**CHECKPOINTS, "app": name})
    role = {"replicas": 1, "restartPolicy": "OnFailure", "template": template}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pytorchReplicaSpecs": {"Master": role, "Worker": role}}}


def job(name: str, namespace: str, labels: dict) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, "template": pod_template(labels)}}


def training_pods(cluster, name: str, namespace: str) -> list[str]:
    """Stand in for the training operator: the master's and the worker's pod, owned by the job."""
    uid = get_json(cluster, "pytorchjob", name, "-n", namespace)["metadata"]["uid"]
    owner = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    pods = [f"{name}-master-0", f"{name}-worker-0"]
    cluster.apply([{"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": namespace, "ownerReferences": [owner],
                                 "labels": {**CHECKPOINTS, "app": name}},
                    "spec": pod_template({})["spec"]} for pod in pods])
    return pods


def job_pods(cluster, name: str, namespace: str) -> list[str]:
    listed = get_json(cluster, "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}") or {}
    return sorted(p["metadata"]["name"] for p in listed.get("items", [])
                  if not p["metadata"].get("deletionTimestamp"))


def annotations(cluster, kind: str, name: str, namespace: str) -> dict:
    return (get_json(cluster, kind, name, "-n", namespace) or {}).get("metadata", {}).get("annotations") or {}


def torch_suspended(cluster, name: str, namespace: str) -> bool | None:
    obj = get_json(cluster, "pytorchjob", name, "-n", namespace)
    return ((obj or {}).get("spec", {}).get("runPolicy") or {}).get("suspend")


def job_suspended(cluster, name: str, namespace: str) -> bool | None:
    return (get_json(cluster, "job", name, "-n", namespace) or {}).get("spec", {}).get("suspend")


def test_idle_batch_workloads_are_noticed_suspended_by_opt_in_and_woken(cluster, setup, prometheus, tmp_path):
    namespace, exporter = setup, prometheus.exporter
    cluster.apply([pytorchjob("idle", namespace), pytorchjob("busy", namespace),
                   job("batch", namespace, {"app": "batch"}),
                   job("ckpt", namespace, {**CHECKPOINTS, "app": "ckpt"})])
    pods = {name: training_pods(cluster, name, namespace) for name in ("idle", "busy")}
    for name in ("batch", "ckpt"):
        pods[name] = wait_until(lambda n=name: job_pods(cluster, n, namespace), timeout=60,
                                what=f"the Job controller to start {name}'s pod")
    utilisation = {"idle": (1, 0), "busy": (70, 2), "batch": (0,), "ckpt": (3,)}  # busy: one busy GPU
    for name, values in utilisation.items():
        for pod, value in zip(pods[name], values, strict=True):
            exporter.set(namespace, pod, value)
    prometheus.wait_for_series(f'DCGM_FI_DEV_GPU_UTIL{{namespace="{namespace}"}}', count=6)

    timings: dict[str, float] = {}

    def idle_annotations() -> dict:
        return annotations(cluster, "pytorchjob", "idle", namespace)

    try:
        with (
            chart_operator_kubeconfig(cluster, release=f"ib{uuid.uuid4().hex[:6]}",
                                      path=tmp_path / "operator.kubeconfig") as kubeconfig,
            OperatorProcess(cluster, "--idle-interval", "1", "--wake-grace-period", str(GRACE),
                            "--expiry-interval", "3600", "--audit-interval", "3600",
                            "--metering-interval", "3600", kubeconfig=kubeconfig) as operator,
        ):
            started = time.monotonic()

            # Notice first: Event and annotations, the job untouched.
            wait_until(lambda: constants.IDLE_NOTIFIED_ANNOTATION in idle_annotations(),
                       timeout=IDLE_AFTER + 30, what="the idle PyTorchJob's GPUIdle notice")
            timings["notice"] = time.monotonic() - started
            noted = idle_annotations()
            assert not torch_suspended(cluster, "idle", namespace)
            assert events(cluster, namespace, reason="GPUIdle", name="idle")
            assert not events(cluster, namespace, reason="IdleSuspended", name="idle")

            # Then, notifyBefore later and still idle, suspended; the stand-in operator stops its pods.
            wait_until(lambda: torch_suspended(cluster, "idle", namespace), timeout=NOTIFY_BEFORE + 30,
                       what="the idle PyTorchJob to be suspended")
            timings["suspended"] = time.monotonic() - started
            suspended, due = idle_annotations(), noted[constants.IDLE_SUSPEND_AT_ANNOTATION]
            assert suspended[constants.IDLE_SUSPEND_AT_ANNOTATION] == due
            assert suspended[constants.IDLE_SUSPENDED_ANNOTATION] >= due  # not before the notice said
            (suspension,) = events(cluster, namespace, reason="IdleSuspended", name="idle")
            assert "spec.runPolicy.suspend: true" in suspension["message"]
            assert f"comptroller wake PyTorchJob/idle -n {namespace}" in suspension["message"]
            for pod in pods["idle"]:
                cluster.kubectl("delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force")
                exporter.remove(namespace, pod)

            # What the data scientist sees.
            described = cluster.kubectl("describe", "pytorchjob", "idle", "-n", namespace).stdout
            assert "GPUIdle" in described and "IdleSuspended" in described, described

            # The Job that checkpoints is suspended for real: the Job controller stops its pod.
            wait_until(lambda: job_suspended(cluster, "ckpt", namespace), timeout=30,
                       what="the idle checkpointing Job to be suspended")
            wait_until(lambda: not job_pods(cluster, "ckpt", namespace), timeout=30,
                       what="the Job controller to stop the suspended Job's pod")
            exporter.remove(namespace, pods["ckpt"][0])

            # The Notify Job: one notice, nothing changed. The busy PyTorchJob: nothing at all.
            time.sleep(3)  # a few more sweeps
            assert len(events(cluster, namespace, reason="GPUIdle", name="batch")) == 1
            assert constants.IDLE_NOTIFIED_ANNOTATION in annotations(cluster, "job", "batch", namespace)
            assert constants.IDLE_SUSPEND_AT_ANNOTATION not in annotations(cluster, "job", "batch", namespace)
            assert not job_suspended(cluster, "batch", namespace)
            assert job_pods(cluster, "batch", namespace) == pods["batch"]
            assert not events(cluster, namespace, name="busy")
            assert not {k for k in annotations(cluster, "pytorchjob", "busy", namespace) if "idle" in k}
            assert not torch_suspended(cluster, "busy", namespace)
            assert f"PyTorchJob/{namespace}/busy is not idle: value 70" in operator.log()
            assert "forbidden" not in operator.log().lower()

            # Wake resumes what the idle loop suspended; the stand-in operator starts the pods again.
            before = time.monotonic()
            woken = wake(cluster, "pytorchjob/idle", namespace)
            timings["wake"] = time.monotonic() - before
            assert woken.returncode == 0, woken.stderr
            assert "woken: running (spec.runPolicy.suspend: false)" in woken.stdout
            assert torch_suspended(cluster, "idle", namespace) is False
            after = idle_annotations()
            assert constants.WOKEN_AT_ANNOTATION in after
            assert not {k for k in after if k.startswith(f"{constants.GROUP}/idle-")}
            assert events(cluster, namespace, reason="Woken", name="idle")
            for pod in training_pods(cluster, "idle", namespace):
                exporter.set(namespace, pod, 0)

            woken = wake(cluster, "job/ckpt", namespace)
            assert woken.returncode == 0, woken.stderr
            assert "woken: running (spec.suspend: false)" in woken.stdout
            restarted = wait_until(lambda: job_pods(cluster, "ckpt", namespace), timeout=30,
                                   what="the Job controller to start the woken Job's pod again")
            assert restarted != pods["ckpt"]

            # Still idle, but woken: the grace period holds the idle loop off.
            time.sleep(IDLE_AFTER + 3)
            assert not torch_suspended(cluster, "idle", namespace)
            assert len(events(cluster, namespace, reason="GPUIdle", name="idle")) == 1
            # Never deleted, any of them.
            for kind, names in (("pytorchjob", ("idle", "busy")), ("job", ("batch", "ckpt"))):
                for name in names:
                    assert get_json(cluster, kind, name, "-n", namespace) is not None
    finally:
        print(f"\nidle batch e2e timings (s) since the operator was up: {timings}")
