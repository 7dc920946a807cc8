"""The API server's pod-create latency with Comptroller's webhooks registered, against the same
API server with them removed, in one run: what a data scientist's `kubectl apply` pays for us.

Creates go over one keep-alive HTTPS connection with the admin's certificate, in short blocks that
cycle through the modes, so drift (etcd growth, a busy core) falls on every mode alike:

- `without_webhook`: no webhook configuration at all;
- `with_webhook`: both webhooks as installed, `/mutate` carrying the matchCondition the operator
  keeps (`mutation_condition` of the default policies): the pod is settled, so only `/validate`
  is called;
- `with_webhook_mutate_always`: the same without the condition, both webhooks called (as before
  the condition existed, or with the operator not running);
- `with_noop_webhook`: one validating webhook on the same server's `/noop` (a constant allowed
  review): what any webhook round trip costs the API server here, whatever it judges.

The pod is what a Deployment of a labelled GPU inference server creates: every FinOps label, one
GPU, an allowed instance type. A nodeSelector no node has keeps it Pending, so only the create
path is measured, not the scheduler or kwok. The API server's own webhook metrics say how many
calls each mode made and how long they took from its side.
"""

from __future__ import annotations

import http.client
import json
import re
import statistics
import time
import uuid
from collections import defaultdict

from controller.engine.models import FinOpsPolicy
from controller.engine.mutation_scope import mutation_condition
from controller.webhook.registration import webhook_configurations
from e2e.helpers import COMPLIANT_LABELS
from e2e.stack import CONFIGURATION, Stack, policy_documents

ROUNDS = 8
PER_BLOCK = 40
MODES = ("without_webhook", "with_webhook", "with_webhook_mutate_always", "with_noop_webhook")
LABELS = {**COMPLIANT_LABELS, "environment": "production", "lifecycle_phase": "inference", "app": "bench"}
UNSCHEDULABLE = "bench.comptroller.dev/none"
WEBHOOK_METRIC = re.compile(
    r'^apiserver_admission_webhook_admission_duration_seconds_(sum|count)\{[^}]*name="([^"]+)"[^}]*\} (\S+)$'
)


def pod(name: str) -> bytes:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {
            "nodeSelector": {"node.kubernetes.io/instance-type": "g6.12xlarge", UNSCHEDULABLE: "true"},
            "containers": [{"name": "serve", "image": "registry.local/serve:1",
                            "resources": {"requests": {"cpu": "4", "memory": "16Gi"},
                                          "limits": {"nvidia.com/gpu": "1"}}}],
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


def webhook_totals(conn: http.client.HTTPSConnection) -> dict[tuple[str, str], float]:
    """(sum|count, webhook name) -> value, from the API server's own /metrics."""
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for line in response.read().decode().splitlines():
        if match := WEBHOOK_METRIC.match(line):
            totals[(match[1], match[2])] += float(match[3])
    return totals


def register_noop(stack: Stack) -> None:
    validating, _ = webhook_configurations(
        url=stack.webhook_url, ca_bundle=(stack.certs / "ca.crt").read_bytes(), failure_policy="Fail",
        timeout_seconds=5, name=CONFIGURATION,
    )
    validating["webhooks"][0]["clientConfig"]["url"] = stack.webhook_url + "/noop"
    stack.plane.apply([validating])


def run(plane) -> dict:
    stack = Stack(plane, failure_policy="Fail", use_chart_rbac=False)
    plane.create_namespace("comptroller-system")
    stack.install_crds()
    stack.apply_policies()
    stack.start_webhook()
    condition = mutation_condition(FinOpsPolicy.from_object(d) for d in policy_documents())
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    plane.create_namespace(namespace)
    host, port = plane.server.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=plane.ssl_context(), timeout=30)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    calls: dict[str, dict[tuple[str, str], float]] = {mode: defaultdict(float) for mode in MODES}
    try:
        create_block(conn, namespace, 20)  # warm the connection and the API server's caches
        for _ in range(ROUNDS):
            for mode in MODES:
                stack.unregister_webhook()
                if mode == "with_noop_webhook":
                    register_noop(stack)
                elif mode != "without_webhook":
                    stack.register_webhook(mutation_condition=condition if mode == "with_webhook" else None)
                time.sleep(2)  # the API server picks up webhook configuration changes asynchronously
                before = webhook_totals(conn)
                samples[mode].extend(create_block(conn, namespace, PER_BLOCK))
                for key, value in webhook_totals(conn).items():
                    calls[mode][key] += value - before.get(key, 0.0)
    finally:
        conn.close()
        stack.unregister_webhook()
        plane.stop_process("webhook")
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    def p99(values: list[float]) -> float:
        return round(statistics.quantiles(values, n=100)[98], 3)

    p50 = {mode: round(statistics.median(values), 3) for mode, values in samples.items()}
    base = p50["without_webhook"]
    per_create = len(samples["with_webhook"])
    return {
        "apiserver_pod_create_p50_ms": {
            **p50,
            "added": round(p50["with_webhook"] - base, 3),
            "added_mutate_always": round(p50["with_webhook_mutate_always"] - base, 3),
            "added_noop_webhook": round(p50["with_noop_webhook"] - base, 3),
            "samples_per_mode": per_create,
        },
        "apiserver_pod_create_p99_ms": {mode: p99(values) for mode, values in samples.items()},
        # From the API server's side: calls per create and mean time per call, by webhook.
        "apiserver_webhook_calls": {
            mode: {
                name.split(".")[0]: {
                    "per_create": round(calls[mode][("count", name)] / per_create, 2),
                    "mean_ms": round(1000 * calls[mode][("sum", name)] / calls[mode][("count", name)], 3),
                }
                for (kind, name) in calls[mode]
                if kind == "count" and calls[mode][("count", name)]
            }
            for mode in MODES[1:]
        },
    }
