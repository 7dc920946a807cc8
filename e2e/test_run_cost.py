"""Cost per run on the real control plane: a finished Job and a finished bare Pod carry their
GPU-hours and estimated cost as annotations, `kubectl describe` shows the `GPUCost` Event, and
`comptroller report --by workload` lists them, the Job still after its pods are deleted.

Ground truth comes from the pods' own timestamps, as in test_metering.py: container `startedAt`
to `finishedAt` for pods kwok finishes (the `e2e.comptroller.dev/finish` annotation), to the
`deletionTimestamp` for a pod deleted with `--grace-period=0 --force` while it ran (the Job then
starts a replacement: the deleted attempt must stay in the Job's total).

The operator runs with the chart's own ServiceAccount and RBAC, so every write it needs (the
annotation patches on Jobs and Pods, the Events) must be granted there.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from e2e.helpers import (
    IGNORE_LABEL,
    OWN_NAMESPACE,
    VENV_BIN,
    OperatorProcess,
    chart_operator_kubeconfig,
    install_crds,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

COMPTROLLER = VENV_BIN / "comptroller"
GPU_HOURS = "finops.comptroller.dev/gpu-hours"
COST = "finops.comptroller.dev/cost"
FINAL = "finops.comptroller.dev/cost-final"
PRICE = 300.0
"""Per GPU-hour: high enough that a run of seconds costs tens of units, so the cost annotation's
two decimals are well within the 1 % the test allows (as are the GPU-hours' four)."""
TOLERANCE = 0.01


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def kubectl_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def labels(team: str) -> dict[str, str]:
    return {"team": team, "project": "run-cost", "model_id": "bert-base", "environment": "production",
            "lifecycle_phase": "training", "cost_center": "cc-100"}


def pod_spec(gpus: int, instance_type: str) -> dict:
    return {
        "nodeSelector": {"node.kubernetes.io/instance-type": instance_type},
        "tolerations": [{"operator": "Exists"}],
        "containers": [{"name": "main", "image": "train:latest",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
    }


def job(name: str, namespace: str, team: str) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(team)},
        "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 4,
                 "template": {"metadata": {"labels": labels(team)},
                              "spec": {**pod_spec(4, "p4d.24xlarge"), "restartPolicy": "Never"}}},
    }


def bare_pod(name: str, namespace: str, team: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                           "labels": labels(team)},
            "spec": {**pod_spec(4, "g6.12xlarge"), "restartPolicy": "Never"}}


def budget(name: str, team: str) -> dict:
    return {"apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "GPUBudget", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": 1000, "period": "Monthly",
                     "pricePerGPUHour": {"default": PRICE}}}


def container_times(pod: dict) -> tuple[float | None, float | None]:
    """(earliest container start, latest container finish) of a pod, as its status says."""
    states = [s.get("state") or {} for s in (pod.get("status") or {}).get("containerStatuses") or ()]
    starts = [(s.get("running") or s.get("terminated") or {}).get("startedAt") for s in states]
    ends = [(s.get("terminated") or {}).get("finishedAt") for s in states]
    start = min((parse(s) for s in starts if s), default=None)
    end = max((parse(s) for s in ends if s), default=None) if all(ends) and ends else None
    return start, end


def job_pods(cluster, namespace: str, name: str) -> list[dict]:
    return kubectl_json(cluster, "get", "pods", "-n", namespace, "-l",
                        f"batch.kubernetes.io/job-name={name}")["items"]


def finish(cluster, namespace: str, name: str) -> None:
    cluster.kubectl("annotate", "pod", "-n", namespace, name, "e2e.comptroller.dev/finish=Succeeded")


def annotations(cluster, kind: str, namespace: str, name: str) -> dict:
    return kubectl_json(cluster, "get", kind, "-n", namespace, name)["metadata"].get("annotations") or {}


def final_annotations(cluster, kind: str, namespace: str, name: str) -> dict | None:
    """The object's annotations once its cost is marked final."""
    got = annotations(cluster, kind, namespace, name)
    return got if FINAL in got else None


@pytest.fixture(scope="module")
def run_cluster(cluster):
    install_crds(cluster)
    cluster.create_namespace(OWN_NAMESPACE)
    return cluster


@contextmanager
def metered_team(cluster, prefix: str, tmp_path: Path) -> Iterator[tuple[str, str, OperatorProcess]]:
    """(namespace, team, operator): a fresh namespace and a team of the same name with a budget at
    PRICE, metered by an operator of its own (2 s ticks) that runs with the chart's ServiceAccount
    and RBAC. On exit the pods and the budget go while the operator runs (it releases its metering
    finalizer from the pods, and kopf's finalizer leaves the budget with its daemons), then the
    operator, the RBAC and the namespace."""
    run = uuid.uuid4().hex[:6]
    ns = team = f"{prefix}-{run}"
    cluster.create_namespace(ns, labels={IGNORE_LABEL: "true"})
    try:
        with chart_operator_kubeconfig(cluster, release=f"{prefix}{run}",
                                       path=tmp_path / "operator.kubeconfig") as kubeconfig:
            cluster.apply([budget(team, team)])
            with OperatorProcess(cluster, "--metering-interval", "2", kubeconfig=kubeconfig) as operator:
                try:
                    yield ns, team, operator
                finally:
                    cluster.kubectl("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force",
                                    "--wait=false", check=False)
                    cluster.kubectl("wait", "--for=delete", "pods", "--all", "-n", ns, "--timeout=30s",
                                    check=False)
                    cluster.kubectl("delete", "gpubudget", team, "--timeout=30s", check=False)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_finished_job_and_bare_pod_carry_their_cost(run_cluster, quiet_stack_operator, tmp_path):
    cluster = run_cluster
    with metered_team(cluster, "rc", tmp_path) as (ns, team, operator):
        cluster.apply([job("train", ns, team), bare_pod("solo", ns, team)])

        def running_job_pods() -> list[dict] | None:
            pods = [p for p in job_pods(cluster, ns, "train") if container_times(p)[0] is not None]
            return pods if len(pods) == 2 else None

        first = wait_until(running_job_pods, timeout=60, what="the Job's two pods running")
        starts = {p["metadata"]["name"]: container_times(p)[0] for p in first}
        gpus = {name: 4 for name in starts}
        wait_until(lambda: container_times(kubectl_json(cluster, "get", "pod", "-n", ns, "solo"))[0],
                   timeout=30, what="solo running")
        # Written while it runs (first sight; then every 5 minutes), not final yet.
        running = wait_until(lambda: annotations(cluster, "job", ns, "train").get(GPU_HOURS), timeout=30,
                             what="the Job's running cost annotation", on_timeout=operator.log_tail)
        assert FINAL not in annotations(cluster, "job", ns, "train") and float(running) >= 0
        time.sleep(8)

        # One attempt is deleted while it runs: the Job starts a replacement; its time must stay.
        victim = sorted(starts)[0]
        cluster.kubectl("delete", "pod", "-n", ns, victim, "--grace-period=0", "--force", "--wait=false")
        got = cluster.kubectl("get", "pod", "-n", ns, victim, "-o", "jsonpath={.metadata.deletionTimestamp}",
                              check=False)
        ends = {victim: parse(got.stdout) if got.returncode == 0 and got.stdout else time.time()}

        def replacement() -> dict | None:
            fresh = [p for p in job_pods(cluster, ns, "train")
                     if p["metadata"]["name"] not in starts and container_times(p)[0] is not None]
            return fresh[0] if fresh else None

        new = wait_until(replacement, timeout=60, what="the replacement attempt running",
                         on_timeout=operator.log_tail)
        starts[new["metadata"]["name"]] = container_times(new)[0]
        gpus[new["metadata"]["name"]] = 4
        time.sleep(8)
        for name in starts:
            if name != victim:
                finish(cluster, ns, name)
        finish(cluster, ns, "solo")

        def finished_job_pods() -> dict | None:
            pods = {p["metadata"]["name"]: container_times(p)[1] for p in job_pods(cluster, ns, "train")}
            done = {n: end for n, end in pods.items() if n != victim and end is not None}
            return done if len(done) == 2 else None

        ends.update(wait_until(finished_job_pods, timeout=30, what="the Job's pods finished"))
        solo_start, solo_end = wait_until(
            lambda: (lambda t: t if t[1] else None)(
                container_times(kubectl_json(cluster, "get", "pod", "-n", ns, "solo"))),
            timeout=30, what="solo finished")

        job_annotations = wait_until(lambda: final_annotations(cluster, "job", ns, "train"), timeout=60,
                                     what="the Job's final cost annotation", on_timeout=operator.log_tail)
        pod_annotations = wait_until(lambda: final_annotations(cluster, "pod", ns, "solo"), timeout=60,
                                     what="solo's final cost annotation", on_timeout=operator.log_tail)

        truth_job = sum(gpus[n] * (ends[n] - starts[n]) for n in starts) / 3600
        truth_solo = 4 * (solo_end - solo_start) / 3600
        for what, got, truth in (("Job train", job_annotations, truth_job), ("Pod solo", pod_annotations,
                                                                               truth_solo)):
            hours, cost = float(got[GPU_HOURS]), float(got[COST])
            print(f"{what}: annotated {hours:.4f} GPU-hours / cost {cost:.2f}; truth {truth:.6f} GPU-hours / "
                  f"{truth * PRICE:.4f} ({100 * (hours - truth) / truth:+.3f} %, "
                  f"{100 * (cost - truth * PRICE) / (truth * PRICE):+.3f} %)")
            assert hours == pytest.approx(truth, rel=TOLERANCE), what
            assert cost == pytest.approx(truth * PRICE, rel=TOLERANCE), what

        # What the data scientist sees, with the real kubectl.
        for kind, name, annotated in (("job", "train", job_annotations), ("pod", "solo", pod_annotations)):
            described = cluster.kubectl("describe", kind, "-n", ns, name).stdout
            assert "GPUCost" in described, described
            print(next(line.strip() for line in described.splitlines() if "GPUCost" in line))
            assert f"{annotated[GPU_HOURS]} GPU-hours" in described and f"estimated cost {annotated[COST]}" \
                in described, described

        def cost_events() -> list[dict]:
            return kubectl_json(cluster, "get", "events", "-n", ns,
                                "--field-selector", "reason=GPUCost")["items"]

        events = cost_events()
        assert sorted(e["involvedObject"]["name"] for e in events) == ["solo", "train"]  # once each
        time.sleep(6)  # more ticks: nothing new
        events = cost_events()
        assert len(events) == 2 and all(e.get("count", 1) == 1 for e in events)
        assert annotations(cluster, "job", ns, "train")[GPU_HOURS] == job_annotations[GPU_HOURS]

        # The Job's pods are deleted: the report still counts it, from its annotation.
        cluster.kubectl("delete", "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=train",
                        "--wait=false")
        wait_until(lambda: not job_pods(cluster, ns, "train"), timeout=60, what="the Job's pods gone",
                   on_timeout=operator.log_tail)
        report = subprocess.run([str(COMPTROLLER), "report", "--by", "workload", "-o", "json", "--top", "100",
                                 "--kubeconfig", str(cluster.kubeconfig)],
                                capture_output=True, text=True, check=True, timeout=60)
        rows = {(w["namespace"], w["workload"]): w for w in json.loads(report.stdout)["workloads"]}
        job_row, pod_row = rows[(ns, "Job/train")], rows[(ns, "Pod/solo")]
        assert (job_row["source"], job_row["state"], job_row["pods"]) == ("annotation", "Finished", 0)
        assert job_row["gpuHours"] == pytest.approx(float(job_annotations[GPU_HOURS]))
        assert pod_row["estimatedCost"] == pytest.approx(float(pod_annotations[COST]))
        table = subprocess.run([str(COMPTROLLER), "report", "--by", "workload", "--top", "100",
                                "--kubeconfig", str(cluster.kubeconfig)],
                               capture_output=True, text=True, check=True, timeout=60).stdout
        line = next(line for line in table.splitlines() if line.startswith(ns) and "Job/train" in line)
        assert line.split()[-2:] == ["Finished", "annotation"], table
        assert "forbidden" not in operator.log().lower()


PYTORCHJOB_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "pytorchjobs.kubeflow.org"},
    "spec": {
        "group": "kubeflow.org", "scope": "Namespaced",
        "names": {"kind": "PyTorchJob", "plural": "pytorchjobs", "singular": "pytorchjob",
                  "listKind": "PyTorchJobList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def pytorchjob(name: str, namespace: str, team: str) -> dict:
    def role(replicas: int) -> dict:
        return {"replicas": replicas, "restartPolicy": "OnFailure",
                "template": {"metadata": {"labels": labels(team)}, "spec": pod_spec(8, "p4d.24xlarge")}}

    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": namespace, "labels": labels(team)},
            "spec": {"pytorchReplicaSpecs": {"Master": role(1), "Worker": role(1)}}}


@pytest.fixture
def pytorchjob_crd(run_cluster):
    """A minimal PyTorchJob CRD, there before the test's operator starts; deleted afterwards."""
    run_cluster.apply([PYTORCHJOB_CRD])
    run_cluster.kubectl("wait", "--for=condition=Established", "crd/pytorchjobs.kubeflow.org",
                        "--timeout=30s")
    yield
    run_cluster.kubectl("delete", "crd", "pytorchjobs.kubeflow.org", "--wait=false", check=False)


def test_a_finished_pytorchjob_carries_its_cost(run_cluster, pytorchjob_crd, quiet_stack_operator, tmp_path):
    """The Kubeflow training operator is not on this plane: the test stands in for it, creating the
    job's two pods (owned by the PyTorchJob, as the operator makes them) and, once they finished,
    the `Succeeded` condition. The operator finds the run by the pods' owner and writes its cost."""
    cluster = run_cluster
    with metered_team(cluster, "pt", tmp_path) as (ns, team, operator):
        cluster.apply([pytorchjob("bert", ns, team)])
        owner = kubectl_json(cluster, "get", "pytorchjob", "-n", ns, "bert")["metadata"]
        reference = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "bert",
                     "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}
        names = ["bert-master-0", "bert-worker-0"]
        cluster.apply([{"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": ns, "labels": labels(team),
                                     "ownerReferences": [reference]},
                        "spec": {**pod_spec(8, "p4d.24xlarge"), "restartPolicy": "Never"}} for name in names])
        starts = {name: wait_until(lambda n=name: container_times(
            kubectl_json(cluster, "get", "pod", "-n", ns, n))[0], timeout=60, what=f"{name} running")
            for name in names}
        time.sleep(8)
        for name in names:
            finish(cluster, ns, name)
        ends = {name: wait_until(lambda n=name: container_times(
            kubectl_json(cluster, "get", "pod", "-n", ns, n))[1], timeout=30, what=f"{name} finished")
            for name in names}
        cluster.kubectl("patch", "pytorchjob", "-n", ns, "bert", "--subresource=status", "--type=merge", "-p",
                        json.dumps({"status": {"conditions": [{"type": "Succeeded", "status": "True",
                                                               "reason": "PyTorchJobSucceeded"}]}}))
        got = wait_until(lambda: final_annotations(cluster, "pytorchjob", ns, "bert"), timeout=60,
                         what="the PyTorchJob's final cost annotation", on_timeout=operator.log_tail)
        truth = sum(8 * (ends[n] - starts[n]) for n in names) / 3600
        assert float(got[GPU_HOURS]) == pytest.approx(truth, rel=TOLERANCE)
        assert float(got[COST]) == pytest.approx(truth * PRICE, rel=TOLERANCE)
        described = cluster.kubectl("describe", "pytorchjob", "-n", ns, "bert").stdout
        assert "GPUCost" in described and f"{got[GPU_HOURS]} GPU-hours" in described, described
        assert "forbidden" not in operator.log().lower()
