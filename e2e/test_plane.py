"""The local control plane itself: real scheduler, real kwok GPU nodes, clean shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from e2e.cluster.plane import REPO, ControlPlane, read_versions
from e2e.helpers import IGNORE_LABEL, wait_until

# Comptroller's webhook configuration skips namespaces with this label (like Gatekeeper's
# admission.gatekeeper.sh/ignore), so these tests judge the plane, not the policies.
IGNORE = {IGNORE_LABEL: "true"}


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return json.loads(out.stdout)["items"]


def test_version_is_the_pinned_release(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    pinned = read_versions()["KUBERNETES_VERSION"]
    assert version["serverVersion"]["gitVersion"] == pinned
    assert version["clientVersion"]["gitVersion"] == pinned


def test_gpu_node_pools_advertise_instance_type_and_gpus(cluster):
    nodes = json.loads(cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    by_type = {}
    for node in nodes:
        itype = node["metadata"]["labels"]["node.kubernetes.io/instance-type"]
        by_type[itype] = int(node["status"]["allocatable"].get("nvidia.com/gpu", 0))
    assert by_type == {"g5.xlarge": 1, "g6.12xlarge": 4, "p4d.24xlarge": 8, "m5.xlarge": 0}


def test_gpu_deployment_runs_on_the_pinned_instance_type(cluster):
    ns = "plane-gpu-deploy"
    cluster.create_namespace(ns, labels=IGNORE)
    try:
        cluster.apply([{
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "trainer", "namespace": ns},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "trainer"}},
                "template": {
                    "metadata": {"labels": {"app": "trainer"}},
                    "spec": {
                        "nodeSelector": {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
                        "containers": [{"name": "main", "image": "trainer:1",
                                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                    },
                },
            },
        }])
        pod = wait_until(
            lambda: next((p for p in pods(cluster, ns, "app=trainer")
                          if p.get("status", {}).get("phase") == "Running"), None),
            timeout=60, what="the trainer pod to run",
        )
        node = json.loads(cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
        assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "p4d.24xlarge"
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_pod_asking_for_more_gpus_than_any_node_stays_pending(cluster):
    ns = "plane-too-big"
    cluster.create_namespace(ns, labels=IGNORE)
    try:
        cluster.apply([{
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "huge", "namespace": ns, "labels": {"app": "huge"}},
            "spec": {"containers": [{"name": "main", "image": "trainer:1",
                                     "resources": {"limits": {"nvidia.com/gpu": "16"}}}]},
        }])

        def unschedulable():
            pod = json.loads(cluster.kubectl("get", "pod", "huge", "-n", ns, "-o", "json").stdout)
            conditions = pod.get("status", {}).get("conditions", [])
            return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                       and "nvidia.com/gpu" in c.get("message", "") for c in conditions) and pod

        pod = wait_until(unschedulable, timeout=60,
                         what="the scheduler to report Insufficient nvidia.com/gpu")
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_down_leaves_no_process_behind(tmp_path):
    """A second plane in its own directory: up, down, and nothing of it is left running."""
    directory = tmp_path / "plane"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "e2e.cluster.plane", "up", "--dir", str(directory)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    plane = ControlPlane(directory)
    pids = [int(p.read_text()) for p in (directory / "pids").glob("*.pid")]
    assert len(pids) == 5 and plane.healthy()
    subprocess.run([sys.executable, "-m", "e2e.cluster.plane", "down", "--dir", str(directory)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=120)
    leftovers = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"]
    assert leftovers == []
    # Nothing else on the machine still refers to this plane's directory either.
    mentioning = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(directory) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    mentioning.append(proc.name)
            except OSError:
                pass
    assert mentioning == []
