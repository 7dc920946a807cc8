"""The operator's Prometheus metrics (README.md, "Metrics and alerts"), in one registry served on
`--metrics-port`.

Budget gauges are set from each committed ledger, so they agree with the GPUBudget status, and
are removed with the budget. Only the active replica meters, so a standby exports no budget
series (PromQL alerts should aggregate with `max by (budget)`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from controller.metric_labels import TeamLabels

REGISTRY = CollectorRegistry(auto_describe=True)

# Budget gauges, one series per GPUBudget. Units are in the names (Prometheus naming practice).
GPU_HOURS_USED = Gauge(
    "comptroller_budget_used_gpu_hours", "GPU-hours used in the budget's current period", ["budget"],
    registry=REGISTRY,
)
GPU_HOURS_BUDGET = Gauge(
    "comptroller_budget_limit_gpu_hours", "GPU-hours the budget allows per period (spec.gpuHours)",
    ["budget"], registry=REGISTRY,
)
GPU_RUNNING = Gauge(
    "comptroller_budget_running_gpus", "GPUs held right now by running pods the budget covers", ["budget"],
    registry=REGISTRY,
)
# pricePerGPUHour is a bare number: the cost is in whatever currency the budget's prices are in, so
# the name claims none.
ESTIMATED_COST = Gauge(
    "comptroller_budget_estimated_cost",
    "Estimated cost of the budget's current period: GPU-hours at pricePerGPUHour, in the prices' currency",
    ["budget"], registry=REGISTRY,
)
BUDGET_THRESHOLD_REACHED = Gauge(
    "comptroller_budget_threshold_reached_ratio",
    "Highest alertThreshold the budget has reached this period, as a ratio (0.8 for 80%; above 1 for "
    "thresholds over 100%), 0 if none",
    ["budget"], registry=REGISTRY,
)
METERING_TICKS = Counter(
    "comptroller_metering_ticks_total", "Metering ticks, by outcome (committed, conflict, error, refused)",
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
    "comptroller_expired_terminated_total", "Workloads terminated (or suspended) because they expired",
    registry=REGISTRY,
)
IDLE_SCALED_TO_ZERO = Counter(
    "comptroller_idle_scaled_to_zero_total", "Idle workloads scaled to zero", registry=REGISTRY,
)
IDLE_SUSPENDED = Counter(
    "comptroller_idle_suspended_total", "Batch workloads suspended because their GPUs stayed idle",
    registry=REGISTRY,
)
# The background audit of running workloads. The counter counts each violation once, when an audit
# first sees it; the gauge is what the last audit found. (The webhook counts what it finds in
# admission requests as comptroller_admission_violations_total.)
POLICY_VIOLATIONS = Counter(
    "comptroller_audit_violations_found_total",
    "Violations of running workloads found by the background audit, each counted once when first seen, "
    "by policy, rule and team (bounded: unlisted teams beyond a few are `other`)",
    ["policy", "rule", "team"], registry=REGISTRY,
)
AUDIT_VIOLATIONS = Gauge(
    "comptroller_audit_violations", "Violations of running workloads found by the last audit",
    ["policy", "rule"], registry=REGISTRY,
)
AUDIT_TEAMS = TeamLabels()
"""The `team` label of POLICY_VIOLATIONS (controller.metric_labels), told the audit's snapshot."""


def count_audit_finding(policy: str, rule: str, team: str, *, snapshot: Any = None) -> None:
    """One violation the audit sees for the first time; `snapshot` None means the last one given."""
    POLICY_VIOLATIONS.labels(policy, rule, AUDIT_TEAMS.label(team, snapshot)).inc()


def observe_budget(
    name: str, *, used: float, limit: float, running: int, cost: float, threshold: int
) -> None:
    """A budget's gauges after a committed tick; `threshold` is the highest reached, in percent."""
    GPU_HOURS_USED.labels(name).set(used)
    GPU_HOURS_BUDGET.labels(name).set(limit)
    GPU_RUNNING.labels(name).set(running)
    ESTIMATED_COST.labels(name).set(cost)
    BUDGET_THRESHOLD_REACHED.labels(name).set(threshold / 100)  # `threshold` is a percent


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
