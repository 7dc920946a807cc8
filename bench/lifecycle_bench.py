"""Expiry at scale: 10,000 pods, 1,000 of them expired at once. How long until all 1,000 are
terminated (within the brake's rate), and how much memory the operator needs meanwhile.

The pods are bound to kwok nodes directly (`nodeName`), so the scheduler is not part of the
measurement; 9,000 of them carry an `expires_at` a month ahead, so the sweep parses and matches
every pod, not only the expired ones. The operator starts after the pods exist: its first sweep
finds all 1,000 expired at once. The drain time is measured from the operator being ready to the
last expired pod having a deletionTimestamp, and the lower bound the brake sets is reported next
to it (`brake_floor_s`).

    python -m bench.lifecycle_bench [--pods N --expiring M --brake PER_MIN]   # on .cluster/bench
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from e2e.helpers import OperatorProcess, install_crds, policy, unique, wait_until

EXPIRING_LABEL = "bench.comptroller.dev/expiring"
PODS_PER_NAMESPACE = 1000


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(name: str, namespace: str, node: str, *, expires_at: str, expiring: bool) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {EXPIRING_LABEL: str(expiring).lower()},
            "annotations": {"expires_at": expires_at},
        },
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
    }


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """Peak resident memory of a process, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            try:
                self.peak = max(self.peak, _rss_mib(self.pid))
            except OSError:
                return

    def stop(self) -> float:
        self._done.set()
        self.join(timeout=2)
        return self.peak


def run(
    cluster: Any,
    *,
    pods: int = 10_000,
    expiring: int = 1_000,
    brake_per_min: int = 600,
    expiry_interval: float = 5.0,
) -> dict:
    from controller.k8s.config import load_api_client
    from controller.k8s.workloads import BUILTIN_RESOURCES, Workloads

    install_crds(cluster)
    api = Workloads(load_api_client(str(cluster.kubeconfig)), page_size=500)
    nodes = [
        n["metadata"]["name"]
        for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ]
    prefix = unique("bench-exp")
    namespaces = [f"{prefix}-{i}" for i in range((pods + PODS_PER_NAMESPACE - 1) // PODS_PER_NAMESPACE)]
    for namespace in namespaces:
        cluster.create_namespace(namespace, labels={"finops.comptroller.dev/ignore": "true"})
    policy_name = unique("bench-expiry")
    cluster.apply(
        [policy(policy_name, {"match": {"namespaces": [f"{prefix}-*"]}, "expiry": {"notifyBefore": "1m"}})]
    )

    now = datetime.now(UTC)
    past, later = _stamp(now - timedelta(minutes=1)), _stamp(now + timedelta(days=30))
    # Expired pods spread evenly over namespaces and nodes.
    every = max(pods // expiring, 1)
    specs = [
        _pod(
            f"p-{i:05d}",
            namespaces[i // PODS_PER_NAMESPACE],
            nodes[i % len(nodes)],
            expires_at=past if i % every == 0 and i // every < expiring else later,
            expiring=i % every == 0 and i // every < expiring,
        )
        for i in range(pods)
    ]
    pods_resource = BUILTIN_RESOURCES["Pod"]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda p: api.request("POST", pods_resource.path(p["metadata"]["namespace"]), body=p), specs
            )
        )
    create_s = time.monotonic() - started
    print(f"created {pods} pods in {create_s:.1f}s", flush=True)

    def alive_expiring() -> int:
        return sum(
            1
            for p in api.iter_objects(pods_resource, label_selector=f"{EXPIRING_LABEL}=true")
            if not p["metadata"].get("deletionTimestamp")
        )

    result: dict[str, Any] = {}
    try:
        with OperatorProcess(
            cluster,
            "--expiry-interval",
            str(expiry_interval),
            "--max-terminations-per-minute",
            str(brake_per_min),
            "--idle-interval",
            "3600",
            "--audit-interval",
            "3600",
            "--metering-interval",
            "3600",
        ) as operator:
            idle_rss = _rss_mib(operator.process.pid)
            sampler = RssSampler(operator.process.pid)
            sampler.start()
            ready = time.monotonic()
            wait_until(
                lambda: alive_expiring() < expiring, timeout=300, what="the first termination", interval=0.2
            )
            first_s = time.monotonic() - ready
            wait_until(
                lambda: alive_expiring() == 0,
                timeout=1800,
                what="every expired pod to be terminated",
                interval=1.0,
            )
            drain_s = time.monotonic() - ready
            # The rest must be untouched.
            survivors = sum(
                1 for _ in api.iter_objects(pods_resource, label_selector=f"{EXPIRING_LABEL}=false")
            )
            peak = sampler.stop()
            result = {
                "pods": pods,
                "expiring": expiring,
                "create_s": round(create_s, 1),
                "first_termination_s": round(first_s, 1),
                "expiry_drain_s": round(drain_s, 1),
                "brake_per_min": brake_per_min,
                # A rolling minute: `brake_per_min` go at once, the next batch a minute later, ...
                "brake_floor_s": max(math.ceil(expiring / brake_per_min) - 1, 0) * 60,
                "untouched_pods": survivors,
                "rss_mib_at_start": round(idle_rss, 1),
                "rss_mib": round(peak, 1),
                "rss_mib_end": round(_rss_mib(operator.process.pid), 1),
            }
    finally:
        cluster.kubectl(
            "delete", "finopspolicy", policy_name, "--ignore-not-found", "--wait=false", check=False
        )
        for namespace in namespaces:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return {"lifecycle": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="plane directory (default .cluster/bench)")
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--expiring", type=int, default=1_000)
    parser.add_argument("--brake", type=int, default=600, help="--max-terminations-per-minute")
    args = parser.parse_args(argv)
    from e2e.cluster.plane import REPO, ControlPlane

    plane = ControlPlane(Path(args.dir) if args.dir else REPO / ".cluster" / "bench").up()
    print(json.dumps(run(plane, pods=args.pods, expiring=args.expiring, brake_per_min=args.brake), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
