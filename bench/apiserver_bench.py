"""The API server's pod-create latency with Comptroller's webhooks registered, against the same
API server with them removed, in one run: what a data scientist's `kubectl apply` pays for us.

Creates go over one keep-alive HTTPS connection with the admin's certificate, alternating blocks
with and without the webhook so drift (etcd growth, a busy core) falls on both sides alike.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
import uuid

from e2e.stack import Stack

BLOCKS = 8
PER_BLOCK = 50
LABELS = {"team": "nlp", "project": "search-ranking", "model_id": "bert-base", "environment": "production",
          "lifecycle_phase": "inference", "cost_center": "cc-100", "app": "bench"}


def pod(name: str) -> bytes:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {
            # Unschedulable on purpose: only the create path is measured, not the scheduler or kwok.
            "nodeSelector": {"bench.comptroller.dev/none": "true"},
            "containers": [{"name": "main", "image": "registry.local/serve:1",
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
        },
    }).encode()


def create_block(conn: http.client.HTTPSConnection, namespace: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        body = pod(f"p-{uuid.uuid4().hex[:10]}")
        start = time.perf_counter()
        conn.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        latencies.append((time.perf_counter() - start) * 1000)
        if response.status != 201:
            raise RuntimeError(f"pod create failed ({response.status}): {payload[:500]!r}")
    return latencies


def run(plane) -> dict:
    stack = Stack(plane, failure_policy="Fail", use_chart_rbac=False)
    plane.create_namespace("comptroller-system")
    stack.install_crds()
    stack.apply_policies()
    stack.start_webhook()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    plane.create_namespace(namespace)
    host, port = plane.server.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=plane.ssl_context(), timeout=30)
    samples: dict[str, list[float]] = {"with_webhook": [], "without_webhook": []}
    try:
        create_block(conn, namespace, 20)  # warm the connection and the API server's caches
        for block in range(BLOCKS):
            mode = "with_webhook" if block % 2 == 0 else "without_webhook"
            if mode == "with_webhook":
                stack.register_webhook()
            else:
                stack.unregister_webhook()
            time.sleep(2)  # the API server picks up webhook configuration changes asynchronously
            samples[mode].extend(create_block(conn, namespace, PER_BLOCK))
    finally:
        conn.close()
        stack.unregister_webhook()
        plane.stop_process("webhook")
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1]

    result = {
        "apiserver_pod_create_p50_ms": {m: round(statistics.median(v), 3) for m, v in samples.items()},
        "apiserver_pod_create_p99_ms": {m: round(p(v, 99), 3) for m, v in samples.items()},
    }
    p50 = result["apiserver_pod_create_p50_ms"]
    result["apiserver_pod_create_p50_ms"]["added"] = round(p50["with_webhook"] - p50["without_webhook"], 3)
    result["apiserver_pod_create_p50_ms"]["samples_per_mode"] = BLOCKS // 2 * PER_BLOCK
    return result
