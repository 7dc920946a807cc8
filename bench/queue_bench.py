"""Budget queue benchmark: how long 1,000 gated pods across 50 teams wait once their budgets have
room (GPUBudget `whenExhausted: Queue`, docs/queueing.md).

50 queueing budgets at 0 GPU-hours, 20 pods per team created `SchedulingGated` (the gate the
mutating webhook would add), then every budget raised at once. Measures, from the moment the
last budget was raised:
- `release_p50_s`, `release_p99_s`, `release_all_s`: until a pod's gate is gone (watched);
- `rss_mib`: the operator's peak resident memory (VmHWM) over the run.

The operator runs standalone with the metering interval given (10 s by default, the e2e suite's
is 2 s, the chart's 30 s): a release waits for the next tick of the budget and its sweep.

    python -m bench.queue_bench [--dir .cluster/bench] [--teams 50] [--pods-per-team 20] [--interval 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.operator_bench import RssSampler, create_pods, on_plane, tear_down
from e2e.helpers import install_crds, wait_until

REPO = Path(__file__).resolve().parent.parent
COMPTROLLER = Path(sys.executable).parent / "comptroller"
OWN_NAMESPACE = "comptroller-system"
GATE = "finops.comptroller.dev/budget"


def run(cluster: Any, *, teams: int = 50, pods_per_team: int = 20, interval: float = 10.0) -> dict:
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import BUDGETS
    from controller.k8s.pods import PODS
    from controller.k8s.workloads import Workloads
    from e2e.cluster.plane import free_port, node_manifest

    install_crds(cluster)
    cluster.create_namespace(OWN_NAMESPACE)
    api = Workloads(load_api_client(str(cluster.kubeconfig)), page_size=500)
    run_id = uuid.uuid4().hex[:6]
    selector = f"bench.comptroller.dev/queue={run_id}"
    label = {"bench.comptroller.dev/queue": run_id}
    names = [f"q{run_id}-{i:02d}" for i in range(teams)]
    total = teams * pods_per_team
    nodes = [node_manifest(f"queue-{run_id}", 200, i, 512, "4Ti", max_pods=250)
             for i in range(-(-total // 200))]
    for node in nodes:
        node["metadata"]["labels"].update(label)
    cluster.add_nodes(nodes)
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": n, "labels": {**label, "finops.comptroller.dev/ignore": "true"}}}
                   for n in names])

    def budget(team: str, hours: float) -> dict:
        return {"apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "GPUBudget",
                "metadata": {"name": team, "labels": label},
                "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": hours,
                         "period": "Monthly", "whenExhausted": "Queue"}}

    cluster.apply([budget(team, 0) for team in names])
    log = REPO / ".cluster" / f"queue-bench-{run_id}.log"
    argv = [str(COMPTROLLER), "operator", "--kubeconfig", str(cluster.kubeconfig), "--standalone",
            "--namespace", OWN_NAMESPACE, "--metering-interval", str(interval),
            "--liveness-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "INFO"]
    result: dict[str, Any] = {"teams": teams, "pods": total, "metering_interval_s": interval}
    operator = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    sampler = RssSampler(operator.pid)
    try:
        time.sleep(3)
        sampler.start()

        def pod(i: int) -> dict:
            team = names[i % teams]
            return {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"gpu-{i:05d}", "namespace": team,
                                 "labels": {"team": team, **label}},
                    "spec": {"schedulingGates": [{"name": GATE}], "tolerations": [{"operator": "Exists"}],
                             "nodeSelector": {"bench.comptroller.dev/queue": run_id},
                             "containers": [{"name": "main", "image": "train:latest",
                                             "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}

        create_pods(api, pod, total)

        def gated() -> dict[str, bool]:
            return {f"{p['metadata']['namespace']}/{p['metadata']['name']}":
                    any(g.get("name") == GATE for g in p["spec"].get("schedulingGates") or ())
                    for p in api.iter_objects(PODS, label_selector=selector)}

        wait_until(lambda: len(gated()) == total, timeout=300, interval=1, what="every pod created")
        # The operator has seen them all queued: every budget's status says so.
        wait_until(lambda: sum(int((b.get("status") or {}).get("queuedPods") or 0)
                               for b in api.iter_objects(BUDGETS, label_selector=selector)) == total,
                   timeout=300, interval=1, what="every pod counted as queued")
        cluster.apply([budget(team, 1000) for team in names])
        raised = time.monotonic()
        released_at: dict[str, float] = {}
        while len(released_at) < total and time.monotonic() - raised < 600:
            now = time.monotonic() - raised
            for key, still in gated().items():
                if not still and key not in released_at:
                    released_at[key] = now
            time.sleep(0.5)
        waits = sorted(released_at.values())
        result["released"] = len(waits)
        if waits:
            result["release_p50_s"] = round(waits[len(waits) // 2], 1)
            result["release_p99_s"] = round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 1)
            result["release_all_s"] = round(waits[-1], 1)
        result["rss_mib"] = round(sampler.stop(), 1)
    finally:
        tear_down(cluster, operator, result, selector=selector)
    return {"queue": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster" / "bench")
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--pods-per-team", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0, help="metering interval (seconds)")
    args = parser.parse_args(argv)
    return on_plane(args.dir, lambda plane: run(plane, teams=args.teams, pods_per_team=args.pods_per_team,
                                                interval=args.interval))


if __name__ == "__main__":
    sys.exit(main())
