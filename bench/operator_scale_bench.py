"""Metering at scale, over a simulated month: what the operator persists must not grow with pods.

20,000 GPU pods run on kwok nodes across 200 namespaces (created through the local API server,
bound by `nodeName`; kwok reports them Running), metered by 20 GPUBudgets (one per team), while
200,000 short GPU pods (5 minutes to 3 hours, 1 to 8 GPUs, each deleted 10 to 60 minutes after
it ends, as a Job's `ttlSecondsAfterFinished` would) come and go over December.

The operator's own metering code runs in this process, against the API server: its pod cache
(`PodWatch`) lists and watches the real pods, every tick commits each budget's ledger ConfigMap
and patches its status, and every sweep adds and releases the metering finalizer on real pods.
Time is injected: the operator's clock (and its pod cache's) steps through the month two hours
at a time, one metering round of every budget and one finalizer sweep per step. The short pods
are fed to the pod cache as the watch events the API server would send (ADDED running,
MODIFIED Succeeded, DELETED), with their timestamps in simulated time: creating 600,000 objects
through the API server on two cores would take longer than the whole benchmark may.

Measures (`operator_scale` in bench/results.json)
- `usage_error_pct`: the worst relative difference, over budgets, between `usedGPUHours` at the
  month's last step and the truth worked out from every pod's times and GPUs; also
  `cells_error_pct`, the same for the ledgers' per-day cells against the charges folded in;
- `lag_s`: the metering interval plus the longest metering round (every budget's tick,
  concurrently, as the daemons run them): how stale a budget's status can get at this size;
  `round_s_p50` and `round_s_max` are the rounds themselves;
- `rss_mib`: this process's peak resident memory (the pod cache of 20,000 pods included);
- `persisted_bytes_per_budget`: the largest ledger ConfigMap plus its budget's status, as JSON,
  at the end; `persisted_bytes_by_finished_pods` samples it as the finished pods add up (flat).

    python -m bench.operator_scale_bench [--dir .cluster/bench] [--running 20000] [--short 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.operator_bench import COMPTROLLER, OWN_NAMESPACE, RssSampler, create_pods, on_plane, parse
from e2e.helpers import install_crds, wait_until

REPO = Path(__file__).resolve().parent.parent
TEAMS = 20
PODS_PER_NODE = 250
STEP = timedelta(hours=2)
INTERVAL_S = 10.0
"""The metering interval `lag_s` assumes (operator_bench's)."""


def this_month() -> tuple[datetime, datetime]:
    """The calendar month the benchmark simulates: the current one, so that the pods kwok runs
    (bound now, in real time) start within it."""
    from controller.engine.budgets import period_bounds

    return period_bounds("Monthly", datetime.now(UTC))


MONTH = this_month()


def short_pods(count: int, *, seed: int = 7) -> list[tuple[float, float, int, int]]:
    """(start, end as Unix seconds, GPUs, index) of the short pods, by start."""
    rng = random.Random(seed)
    span = (MONTH[1] - MONTH[0]).total_seconds() - 4 * 3600
    begin = MONTH[0].timestamp()
    pods = []
    for i in range(count):
        start = float(int(begin + rng.random() * span))  # whole seconds, as pod timestamps are
        pods.append((start, start + int(rng.uniform(300, 3 * 3600)), rng.choice((1, 1, 2, 4, 8)), i))
    pods.sort()
    return pods


def stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_pod(i: int, uid: str, team: str, namespace: str, node: str, gpus: int, start: float,
              end: float | None, deleted: float | None = None) -> dict[str, Any]:
    """A short GPU pod as the API server would send it in a watch event."""
    state = ({"terminated": {"startedAt": stamp(start), "finishedAt": stamp(end), "exitCode": 0}}
             if end is not None else {"running": {"startedAt": stamp(start)}})
    metadata: dict[str, Any] = {
        "name": f"short-{i:06d}", "namespace": namespace, "uid": uid,
        "creationTimestamp": stamp(start - 5),
        "labels": {"team": team, "cost_center": f"cc-{int(team.rsplit('-', 1)[1]) % 4}"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": f"short-{i:06d}",
                             "uid": f"job-{uid}", "controller": True}],
    }
    if deleted is not None:
        metadata["deletionTimestamp"] = stamp(deleted)
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"nodeName": node, "containers": [
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {
            "phase": "Succeeded" if end is not None else "Running",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(start)}],
            "containerStatuses": [{"name": "main", "state": state}],
        },
    }


def run(cluster: Any, *, running: int = 20000, short: int = 200000, namespaces: int = 200) -> dict:
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import BUDGETS, CONFIGMAPS, ledger_name
    from controller.k8s.pods import PODS
    from controller.k8s.workloads import Workloads
    from e2e.cluster.plane import node_manifest

    install_crds(cluster)
    cluster.create_namespace(OWN_NAMESPACE)
    kubeconfig = str(cluster.kubeconfig)
    api = Workloads(load_api_client(kubeconfig), page_size=500)
    run_id = uuid.uuid4().hex[:6]
    selector = f"bench.comptroller.dev/run={run_id}"
    label = {"bench.comptroller.dev/run": run_id}
    teams = [f"scale-{run_id}-{i}" for i in range(TEAMS)]
    ns_names = [f"scale-{run_id}-{i:03d}" for i in range(namespaces)]
    nodes = []
    for i in range(-(-running // PODS_PER_NODE)):
        node = node_manifest(f"scale-{run_id}", 0, i, 512, "4Ti", max_pods=PODS_PER_NODE)
        node["metadata"]["labels"].update(label)
        node["status"]["capacity"]["nvidia.com/gpu"] = str(PODS_PER_NODE)
        node["status"]["allocatable"]["nvidia.com/gpu"] = str(PODS_PER_NODE)
        nodes.append(node["metadata"]["name"])
        cluster.add_nodes([node])
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": n, "labels": {**label, "finops.comptroller.dev/ignore": "true"}}}
                   for n in ns_names])
    cluster.apply([{"apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "GPUBudget",
                    "metadata": {"name": team, "labels": label},
                    "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": 100_000_000,
                             "period": "Monthly", "pricePerGPUHour": {"default": 2.5}}} for team in teams])
    result: dict[str, Any] = {"running_pods": running, "finished_pods": short, "namespaces": namespaces,
                              "budgets": TEAMS, "simulated": f"{MONTH[0]:%Y-%m}, {STEP} steps",
                              "metering_interval_s": INTERVAL_S}
    sampler = RssSampler(os.getpid())
    try:
        def pod(i: int) -> dict:
            return {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"gpu-{i:05d}", "namespace": ns_names[i % namespaces],
                                 "labels": {"team": teams[i % TEAMS], "cost_center": f"cc-{i % TEAMS % 4}",
                                            **label}},
                    "spec": {"nodeName": nodes[i // PODS_PER_NODE], "tolerations": [{"operator": "Exists"}],
                             "containers": [{"name": "main", "image": "train:latest",
                                             "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}

        result["create_s"] = create_pods(api, pod, running)
        print(f"created {running} GPU pods in {result['create_s']}s", flush=True)

        def bound() -> dict[str, list[float]] | None:
            starts: dict[str, list[float]] = {}
            for item in api.iter_objects(PODS, label_selector=selector):
                times = [parse(c["lastTransitionTime"]) for c in item["status"].get("conditions") or ()
                         if c["type"] == "PodScheduled" and c["status"] == "True"]
                if times and item["status"].get("phase") == "Running":
                    starts.setdefault(item["metadata"]["labels"]["team"], []).append(times[0])
            return starts if sum(len(v) for v in starts.values()) == running else None

        starts = wait_until(bound, timeout=1200, interval=5, what="kwok to run every pod")
        result["rss_mib_at_start"] = round(sampler.read(), 1)
        measured = asyncio.run(simulate(kubeconfig, api, teams=teams, ns_names=ns_names, nodes=nodes,
                                        short=short, selector=selector))
        result.update(measured.pop("figures"))
        result["rss_mib"] = round(sampler.read("VmHWM"), 1)

        # The truth: every pod's GPUs x its time within the month, up to the last step.
        end = measured["end"]
        truth = {team: sum(max(0.0, end - s) for s in starts.get(team, ())) / 3600 for team in teams}
        for team, hours in measured["short_truth"].items():
            truth[team] += hours
        errors, cell_errors, persisted = [], [], []
        for obj in api.iter_objects(BUDGETS, label_selector=selector):
            name, status = obj["metadata"]["name"], obj.get("status") or {}
            errors.append(abs(float(status["usedGPUHours"]) - truth[name]) / truth[name] * 100)
            stored = api.get(CONFIGMAPS, OWN_NAMESPACE, ledger_name(name)) or {}
            raw = (stored.get("data") or {}).get("ledger.json") or "{}"
            ledger = json.loads(raw)
            folded = float(ledger["base"][0])
            cells = sum(day[0] for days in ledger["cells"].values() for day in days.values())
            cell_errors.append(abs(cells - folded) / folded * 100 if folded else 0.0)
            persisted.append(len(raw) + len(json.dumps(status, separators=(",", ":"))))
        result["usage_error_pct"] = float(f"{max(errors):.2e}")
        result["cells_error_pct"] = float(f"{max(cell_errors):.2e}")
        result["persisted_bytes_per_budget"] = max(persisted)
        result["used_gpu_hours_total"] = round(sum(truth.values()), 1)
    finally:
        subprocess.run([str(COMPTROLLER), "operator", "--kubeconfig", kubeconfig, "--release-finalizers",
                        "--log-level", "WARNING"], check=False, cwd=REPO)
        for kind in ("gpubudget", "namespace", "node"):
            cluster.kubectl("delete", kind, "-l", selector, "--wait=false", check=False)
    return {"operator_scale": result}


async def simulate(kubeconfig: str, api: Any, *, teams: list[str], ns_names: list[str], nodes: list[str],
                   short: int, selector: str) -> dict[str, Any]:
    """The month, step by step: the operator's metering with its clock and pod cache's injected."""
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import BUDGETS, CONFIGMAPS, ledger_name
    from controller.operator import accounting
    from controller.operator.settings import MeteringSettings, OperatorConfig

    now = [MONTH[0]]
    config = OperatorConfig(namespace=OWN_NAMESPACE, kubeconfig=kubeconfig,
                            metering=MeteringSettings(interval=INTERVAL_S))
    state = accounting.build_state(config, load_api_client(kubeconfig))
    # The cache's tombstones live two steps of simulated time: every deleted pod is seen by a tick.
    state.watch._clock = lambda: now[0].timestamp()  # noqa: SLF001 - the benchmark injects time
    state.watch._tombstone_ttl = 2 * STEP.total_seconds()  # noqa: SLF001
    state.clock = lambda: now[0]
    # A relist (the watch's periodic resync, or a 410 Gone after etcd compacted) replaces the cache
    # with what the API server holds, where the injected pods are not: put the live ones back, as
    # they would be listed if they were real.
    injected: dict[str, Any] = {}
    listed = state.watch._list  # noqa: SLF001

    def relist() -> str:
        version = listed()
        with state.watch._lock:  # noqa: SLF001
            state.watch._records.update(injected)  # noqa: SLF001
            state.watch._snapshot = None  # noqa: SLF001
        return version

    state.watch._list = relist  # type: ignore[method-assign]  # noqa: SLF001
    state.watch.start()
    state.watch.wait_ready(300)
    bodies = list(api.iter_objects(BUDGETS, label_selector=selector))

    pending = short_pods(short)
    ending: list[tuple[float, int]] = []  # (end, index) of running short pods
    leaving: list[tuple[float, int]] = []  # (deletion, index) of finished ones
    info: dict[int, tuple[str, int, float, float]] = {}  # index -> (uid, GPUs, start, end)
    rng = random.Random(11)
    short_truth = dict.fromkeys(teams, 0.0)
    rounds: list[float] = []
    sweeps: list[float] = []
    samples: dict[str, int] = {}
    finished = 0
    cursor = 0

    def emit(kind: str, i: int, *, ended: bool, deleted: float | None = None) -> None:
        uid, gpus, start, end = info[i]
        team = teams[i % len(teams)]
        state.watch._apply(kind, short_pod(  # noqa: SLF001 - a watch event, as the API server sends it
            i, uid, team, ns_names[i % len(ns_names)], nodes[i % len(nodes)], gpus, start,
            end if ended else None, deleted))
        if kind == "DELETED":
            injected.pop(uid, None)
        else:
            injected[uid] = state.watch._records[uid]  # noqa: SLF001

    def persisted() -> int:
        sizes = []
        for body in bodies:
            stored = api.get(CONFIGMAPS, OWN_NAMESPACE, ledger_name(body["metadata"]["name"])) or {}
            sizes.append(len((stored.get("data") or {}).get("ledger.json") or ""))
        return max(sizes)

    step = MONTH[0]
    last = MONTH[1] - timedelta(seconds=1)
    while step < last:
        step = min(step + STEP, last)
        moment = step.timestamp()
        while cursor < len(pending) and pending[cursor][0] <= moment:
            start, end, gpus, i = pending[cursor]
            cursor += 1
            info[i] = (str(uuid.uuid4()), gpus, start, end)
            emit("ADDED", i, ended=False)
            heapq.heappush(ending, (end, i))
        while ending and ending[0][0] <= moment:
            end, i = heapq.heappop(ending)
            emit("MODIFIED", i, ended=True)
            heapq.heappush(leaving, (end + int(rng.uniform(600, 3600)), i))
        while leaving and leaving[0][0] <= moment:
            deleted, i = heapq.heappop(leaving)
            emit("DELETED", i, ended=True, deleted=deleted)
            uid, gpus, start, end = info.pop(i)
            short_truth[teams[i % len(teams)]] += gpus * (end - start) / 3600
            finished += 1
        now[0] = step
        began = time.monotonic()
        await asyncio.gather(*(accounting.tick(state, body) for body in bodies))
        rounds.append(time.monotonic() - began)
        began = time.monotonic()
        await accounting.reconcile_finalizers(state)
        sweeps.append(time.monotonic() - began)
        for mark in (short // 10, short // 4, short // 2, 3 * short // 4):
            if finished >= mark and str(mark) not in samples:
                samples[str(mark)] = persisted()
        if len(rounds) % 50 == 0:
            print(f"{step:%Y-%m-%d %H:%M}: round {rounds[-1]:.2f}s, {finished} short pods finished, "
                  f"{len(info)} in flight", flush=True)
    samples[str(finished)] = persisted()
    # Pods still running or not yet deleted at the last step: charged up to it.
    for i, (_uid, gpus, start, end) in info.items():
        short_truth[teams[i % len(teams)]] += gpus * (min(end, last.timestamp()) - start) / 3600
    state.watch.stop()
    state.executor.shutdown(wait=False)
    return {
        "end": last.timestamp(),
        "short_truth": short_truth,
        "figures": {
            "steps": len(rounds),
            "round_s_p50": round(statistics.median(rounds), 2),
            "round_s_max": round(max(rounds), 2),
            "sweep_s_p50": round(statistics.median(sweeps), 2),
            "sweep_s_max": round(max(sweeps), 2),
            "lag_s": round(INTERVAL_S + max(rounds), 1),
            "persisted_bytes_by_finished_pods": samples,
            "watch_events": state.watch.events,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster" / "bench")
    parser.add_argument("--running", type=int, default=20000)
    parser.add_argument("--short", type=int, default=200000)
    parser.add_argument("--namespaces", type=int, default=200)
    args = parser.parse_args(argv)
    return on_plane(args.dir, lambda plane: run(plane, running=args.running, short=args.short,
                                                namespaces=args.namespaces))


if __name__ == "__main__":
    sys.exit(main())
