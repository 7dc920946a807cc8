"""Operator scale benchmark, metering part: 5,000 GPU pods across 500 namespaces on kwok nodes.

Two runs side by side: `operator`, every pod one whole `nvidia.com/gpu`; `operator_mixed`, the
pods spread over five forms of asking for a GPU (whole GPUs, MIG 1g.10gb slices on MIG nodes,
time-sliced `nvidia.com/gpu.shared` on nodes with 4 replicas, HAMi vGPUs with `gpucores: 50`,
KAI `gpu-fraction: 0.25` annotations), which the operator counts in GPU-equivalents on each pod's
node (docs/gpu-equivalents.md). DRA claims are left out: pods bound by `nodeName` bypass the
scheduler, which is what allocates them.

Measures
- `status_lag_s`: from the moment the last pod was bound (its `PodScheduled` time) until every
  GPUBudget's status counts all of them (`runningGPUs`): how stale admission's view gets;
- `accuracy_error_pct`: the worst relative difference, over budgets, between `usedGPUHours` and
  the ground truth from the pods' bind times and GPU-equivalents at the budget's `lastMeteredAt`;
- `finalizers_s`: until every running GPU pod carries the metering finalizer;
- `rss_mib`: the operator's peak resident memory (VmHWM), and at start.

    python -m bench.operator_bench [--dir .cluster/bench] [--pods 5000] [--namespaces 500] [--forms mixed]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from controller.engine.timestamps import parse_time
from e2e.helpers import install_crds, wait_until

REPO = Path(__file__).resolve().parent.parent
COMPTROLLER = Path(sys.executable).parent / "comptroller"
OWN_NAMESPACE = "comptroller-system"
GPUS_PER_NODE = 200
PODS_PER_NODE = 250
TEAMS = 10


def parse(stamp: str) -> float:
    """A Kubernetes timestamp as Unix seconds, read as the operator reads it."""
    moment = parse_time(stamp)
    if moment is None:
        raise ValueError(f"{stamp!r} is not an RFC 3339 timestamp")
    return moment.timestamp()


class RssSampler(threading.Thread):
    """Peak RSS of a process, from /proc (VmHWM is the kernel's own high-water mark)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stopped = threading.Event()

    def read(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                self.read()
            except OSError:
                return

    def stop(self) -> float:
        peak = self.read("VmHWM")
        self.stopped.set()
        return peak


# Form -> (node labels, node capacity, container resources, pod annotations, GPU-equivalents).
FORMS: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, str], float]] = {
    "whole": ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "200"},
              {"nvidia.com/gpu": "1"}, {}, 1.0),
    "mig": ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"},
            {"nvidia.com/mig-1g.10gb": "250"}, {"nvidia.com/mig-1g.10gb": "1"}, {}, 1 / 7),
    "shared": ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "4"},
               {"nvidia.com/gpu.shared": "250"}, {"nvidia.com/gpu.shared": "1"}, {}, 1 / 4),
    "hami": ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "250"},
             {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "50"}, {}, 0.5),
    "kai": ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {}, {}, {"gpu-fraction": "0.25"}, 0.25),
}


def run(cluster: Any, *, pods: int = 5000, namespaces: int = 500, interval: float = 10.0,
        forms: tuple[str, ...] = ("whole", "mixed")) -> dict:
    """Both runs, one after the other on the same plane."""
    results = {}
    for form in forms:
        key = "operator" if form == "whole" else f"operator_{form}"
        results.update(run_one(cluster, pods=pods, namespaces=namespaces, interval=interval,
                               mixed=form == "mixed", key=key))
    return results


def run_one(cluster: Any, *, pods: int, namespaces: int, interval: float, mixed: bool, key: str) -> dict:
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import BUDGETS
    from controller.k8s.pods import PODS
    from controller.k8s.workloads import Workloads
    from e2e.cluster.plane import free_port, node_manifest

    install_crds(cluster)
    cluster.create_namespace(OWN_NAMESPACE)
    api = Workloads(load_api_client(str(cluster.kubeconfig)), page_size=500)
    run_id = uuid.uuid4().hex[:6]
    label = {"bench.comptroller.dev/run": run_id}
    teams = [f"bench-{run_id}-{i}" for i in range(TEAMS)]
    ns_names = [f"bench-{run_id}-{i:03d}" for i in range(namespaces)]
    kinds = list(FORMS) if mixed else ["whole"]
    per_kind = -(-pods // len(kinds))
    node_count = -(-per_kind // min(GPUS_PER_NODE, PODS_PER_NODE))
    nodes: dict[str, list[dict]] = {}
    for kind in kinds:
        node_labels, capacity, *_ = FORMS[kind]
        nodes[kind] = []
        for i in range(node_count):
            node = node_manifest(f"bench-{run_id}-{kind}", 0, i, 512, "4Ti", max_pods=PODS_PER_NODE)
            node["metadata"]["labels"].update({**label, **node_labels})
            node["status"]["capacity"].update(capacity)
            node["status"]["allocatable"].update(capacity)
            nodes[kind].append(node)
    cluster.add_nodes([n for group in nodes.values() for n in group])
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": n, "labels": {**label, "finops.comptroller.dev/ignore": "true"}}}
                   for n in ns_names])
    cluster.apply([{"apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "GPUBudget",
                    "metadata": {"name": team, "labels": label},
                    "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": 1_000_000,
                             "period": "Monthly", "pricePerGPUHour": {"default": 2.5}}} for team in teams])

    log = REPO / ".cluster" / f"operator-bench-{run_id}.log"
    argv = [str(COMPTROLLER), "operator", "--kubeconfig", str(cluster.kubeconfig), "--standalone",
            "--namespace", OWN_NAMESPACE, "--metering-interval", str(interval),
            "--liveness-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "INFO"]
    result: dict[str, Any] = {"pods": pods, "namespaces": namespaces, "budgets": TEAMS,
                              "metering_interval_s": interval, "forms": kinds}
    operator = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    sampler = RssSampler(operator.pid)
    try:
        time.sleep(3)
        result["rss_mib_at_start"] = round(sampler.read(), 1)
        sampler.start()

        def form_of(i: int) -> str:
            return kinds[(i // TEAMS) % len(kinds)]  # every team gets every form

        def pod(i: int) -> dict:
            team = teams[i % TEAMS]
            kind = form_of(i)
            _, _, limits, annotations, _ = FORMS[kind]
            group = nodes[kind]
            return {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"gpu-{i:05d}", "namespace": ns_names[i % namespaces],
                                 "labels": {"team": team, **label}, "annotations": dict(annotations)},
                    "spec": {"nodeName": group[(i // len(kinds)) % len(group)]["metadata"]["name"],
                             "tolerations": [{"operator": "Exists"}],
                             "containers": [{"name": "main", "image": "train:latest",
                                             "resources": {"limits": dict(limits)}}]}}

        began = time.monotonic()
        result["create_s"] = create_pods(api, pod, pods)
        print(f"created {pods} GPU pods in {result['create_s']}s", flush=True)

        def statuses() -> dict[str, dict]:
            return {b["metadata"]["name"]: b.get("status") or {}
                    for b in api.iter_objects(BUDGETS, label_selector=f"bench.comptroller.dev/run={run_id}")}

        expected = dict.fromkeys(teams, 0.0)
        worth: dict[str, float] = {}
        for i in range(pods):
            expected[teams[i % TEAMS]] += FORMS[form_of(i)][4]
            worth[f"gpu-{i:05d}"] = FORMS[form_of(i)][4]

        def all_counted():
            current = statuses()
            ok = all(abs(float(current.get(t, {}).get("runningGPUs") or 0) - n) < 1e-6 * max(n, 1)
                     for t, n in expected.items())
            return (time.time(), current) if ok else None

        counted_at, snapshot = wait_until(all_counted, timeout=900, interval=1,
                                          what="every budget to count every pod")
        listed = list(api.iter_objects(PODS, label_selector=f"bench.comptroller.dev/run={run_id}"))
        starts: dict[str, list[tuple[float, float]]] = {}
        last_start = 0.0
        for item in listed:
            bound = [parse(c["lastTransitionTime"]) for c in item["status"].get("conditions") or ()
                     if c["type"] == "PodScheduled" and c["status"] == "True"]
            if bound:
                starts.setdefault(item["metadata"]["labels"]["team"], []).append(
                    (bound[0], worth[item["metadata"]["name"]]))
                last_start = max(last_start, bound[0])
        result["status_lag_s"] = round(counted_at - last_start, 1)

        errors = []
        for team, status in snapshot.items():
            at = parse(status["lastMeteredAt"])
            truth = sum(max(0.0, at - s) * gpus for s, gpus in starts.get(team, ())) / 3600
            if truth > 0:
                errors.append(abs(status["usedGPUHours"] - truth) / truth * 100)
        result["accuracy_error_pct"] = round(max(errors), 3) if errors else None

        def protected() -> bool:
            items = api.iter_objects(PODS, label_selector=f"bench.comptroller.dev/run={run_id}")
            return all("finops.comptroller.dev/metering" in (p["metadata"].get("finalizers") or ())
                       for p in items)

        wait_until(protected, timeout=600, interval=2, what="the metering finalizer on every pod")
        result["finalizers_s"] = round(time.monotonic() - began, 1)
        # Steady state: a few more ticks with everything running.
        time.sleep(2 * interval)
        staleness = max(time.time() - parse(s["lastMeteredAt"]) for s in statuses().values())
        result["staleness_s"] = round(staleness, 1)
        result["rss_mib"] = round(sampler.stop(), 1)
        result["rss_mib_end"] = round(sampler.read(), 1)
    finally:
        tear_down(cluster, operator, result, selector=f"bench.comptroller.dev/run={run_id}")
    return {key: result}


def create_pods(api: Any, bodies: Callable[[int], dict], count: int, *, threads: int = 8) -> float:
    """Create `bodies(i)` for i < count through the API server, `threads` at a time; seconds taken.
    A fresh namespace's ServiceAccount may not exist yet: each create is retried a while."""
    from controller.k8s.pods import PODS
    from controller.k8s.workloads import ApiError

    def create(i: int) -> None:
        body = bodies(i)
        for attempt in range(30):
            try:
                api.request("POST", PODS.path(body["metadata"]["namespace"]), body=body)
                return
            except ApiError as error:
                if error.status == 409:
                    return
                time.sleep(0.5 + attempt * 0.1)
        raise RuntimeError(f"could not create pod {i}")

    began = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(count)))
    return round(time.monotonic() - began, 1)


def on_plane(directory: Path, work: Callable[[Any], dict]) -> int:
    """Run `work(plane)` on the local control plane in `directory` (reused when healthy, else started
    and stopped afterwards) and print what it returns."""
    from e2e.cluster.plane import ControlPlane

    plane = ControlPlane(directory.resolve())
    reused = plane.healthy()
    plane.up()
    try:
        print(json.dumps(work(plane), indent=2))
    finally:
        if not reused:
            plane.down(quiet=True)
    return 0


def tear_down(cluster: Any, operator: subprocess.Popen, result: dict[str, Any], *, selector: str) -> None:
    """Stop the benchmark's operator (timing its shutdown), release the pods it protected (nothing
    will meter them any more), and delete the run's budgets, namespaces and nodes."""
    operator.send_signal(signal.SIGTERM)
    try:
        result["shutdown_s"] = _timed_wait(operator, 60)
    except subprocess.TimeoutExpired:
        operator.kill()
    subprocess.run([str(COMPTROLLER), "operator", "--kubeconfig", str(cluster.kubeconfig),
                    "--release-finalizers", "--log-level", "WARNING"], check=False, cwd=REPO)
    for kind in ("gpubudget", "namespace", "node"):
        cluster.kubectl("delete", kind, "-l", selector, "--wait=false", check=False)


def _timed_wait(process: subprocess.Popen, timeout: float) -> float:
    began = time.monotonic()
    process.wait(timeout)
    return round(time.monotonic() - began, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster" / "bench")
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--namespaces", type=int, default=500)
    parser.add_argument("--interval", type=float, default=10.0, help="metering interval (seconds)")
    parser.add_argument("--forms", action="append", choices=["whole", "mixed"],
                        help="which run (repeatable; default: both)")
    args = parser.parse_args(argv)
    return on_plane(args.dir, lambda plane: run(plane, pods=args.pods, namespaces=args.namespaces,
                                                interval=args.interval,
                                                forms=tuple(args.forms or ("whole", "mixed"))))


if __name__ == "__main__":
    sys.exit(main())
