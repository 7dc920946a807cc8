"""The operator's Prometheus metrics (README.md, "Metrics and alerts"), in one registry served on
`--metrics-port`.

Budget gauges are set from each committed ledger, so they agree with the GPUBudget status, and
are removed with the budget. Only the active replica meters, so a standby exports no budget
series (PromQL alerts should aggregate with `max by (budget)`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

GPU_HOURS_USED = Gauge(
    "comptroller_gpu_hours_used", "GPU-hours used in the budget's current period", ["budget"],
    registry=REGISTRY,
)
GPU_HOURS_BUDGET = Gauge(
    "comptroller_gpu_hours_budget", "GPU-hours the budget allows per period", ["budget"], registry=REGISTRY
)
GPU_RUNNING = Gauge(
    "comptroller_gpu_running", "GPUs held right now by running pods the budget covers", ["budget"],
    registry=REGISTRY,
)
ESTIMATED_COST = Gauge(
    "comptroller_estimated_cost", "Estimated cost of the budget's current period (pricePerGPUHour)",
    ["budget"], registry=REGISTRY,
)
BUDGET_THRESHOLD_REACHED = Gauge(
    "comptroller_budget_threshold_reached_percent",
    "Highest alert threshold (percent) the budget has reached this period, 0 if none",
    ["budget"], registry=REGISTRY,
)
METERING_TICKS = Counter(
    "comptroller_metering_ticks_total", "Metering ticks, by outcome (committed, conflict, error)",
    ["outcome"], registry=REGISTRY,
)
METERING_TICK_SECONDS = Gauge(
    "comptroller_metering_tick_seconds", "Duration of the last metering tick of a budget", ["budget"],
    registry=REGISTRY,
)
METERED_PODS = Gauge(
    "comptroller_metered_gpu_pods", "GPU pods in the operator's view", registry=REGISTRY,
)

# Lifecycle loops (expiry, idle) count their actions here, so every operator metric has one home.
EXPIRED_TERMINATED = Counter(
    "comptroller_expired_terminated", "Workloads terminated (or suspended) because they expired",
    registry=REGISTRY,
)
IDLE_SCALED_TO_ZERO = Counter(
    "comptroller_idle_scaled_to_zero", "Idle workloads scaled to zero", registry=REGISTRY,
)
# The background audit: violations of running workloads. The counter counts each violation once,
# when an audit first sees it (the webhook counts denials at admission under the same name); the
# gauge is what the last audit found.
POLICY_VIOLATIONS = Counter(
    "comptroller_policy_violations", "Policy violations found (audit: running workloads, once each)",
    ["policy", "rule", "team"], registry=REGISTRY,
)
AUDIT_VIOLATIONS = Gauge(
    "comptroller_audit_violations", "Violations of running workloads found by the last audit",
    ["policy", "rule"], registry=REGISTRY,
)


def observe_budget(
    name: str, *, used: float, limit: float, running: int, cost: float, threshold: int
) -> None:
    GPU_HOURS_USED.labels(name).set(used)
    GPU_HOURS_BUDGET.labels(name).set(limit)
    GPU_RUNNING.labels(name).set(running)
    ESTIMATED_COST.labels(name).set(cost)
    BUDGET_THRESHOLD_REACHED.labels(name).set(threshold)


def forget_budget(name: str) -> None:
    for gauge in (GPU_HOURS_USED, GPU_HOURS_BUDGET, GPU_RUNNING, ESTIMATED_COST, BUDGET_THRESHOLD_REACHED,
                  METERING_TICK_SECONDS):
        try:
            gauge.remove(name)
        except KeyError:
            pass


def serve(port: int, *, host: str = "0.0.0.0") -> None:
    """Serve `/metrics` from a background thread (no-op for port 0)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
