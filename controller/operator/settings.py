"""The operator's settings: one small frozen dataclass per concern, grouped in `OperatorConfig`.

Built once in `main` from the command line and handed to every handler through kopf's `memo`
(`memo.config`); nothing is parsed at import time, so tests build whatever settings they need.
Concerns other operator loops need (expiry, idle, audit) add their own dataclass here and a
field on `OperatorConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller import constants
from controller.engine.models import DEFAULT_INSTANCE_TYPE_KEYS


@dataclass(frozen=True)
class PeeringSettings:
    """Which replica is active: kopf peering, the highest priority alive wins."""

    name: str = "comptroller"
    """The ClusterKopfPeering object the replicas meet in."""
    standalone: bool = False
    """No peering at all: this process is always active (development, tests)."""
    priority: int = 0
    """This replica's priority. Replicas must differ (kopf pauses all replicas of equal priority);
    `main` draws a random one when not given."""
    lifetime: int = 30
    """Seconds after which a silent peer counts as dead, and a standby takes over."""


@dataclass(frozen=True)
class MeteringSettings:
    """GPU-hour metering and budget status."""

    interval: float = 30.0
    """Seconds between metering ticks: how stale a budget's status may be, and how much work a
    crash can lose (none is lost for good: the next tick recomputes it)."""
    gpu_resources: tuple[str, ...] = constants.DEFAULT_GPU_RESOURCES
    """Extended resources counted as GPUs."""
    instance_type_keys: tuple[str, ...] = DEFAULT_INSTANCE_TYPE_KEYS
    """Node label keys naming an instance type, for per-type prices."""
    finalizer: bool = True
    """Protect running GPU pods with the metering finalizer (see `metering.py`)."""
    max_concurrent_writes: int = 8
    """API writes (finalizers, statuses) in flight at once, to spare the API server."""
    group_labels: tuple[str, ...] = constants.DEFAULT_GROUP_LABELS
    """Pod label keys (team, cost center) the ledgers' per-day cells are grouped by."""


@dataclass(frozen=True)
class ServingSettings:
    """The operator's HTTP endpoints."""

    liveness_port: int = 8080
    """kopf's liveness probe, `GET /healthz`."""
    metrics_port: int = 9090
    """Prometheus metrics, `GET /metrics` (0 disables)."""


@dataclass(frozen=True)
class ExpirySettings:
    """Termination of expired workloads (`expiry.py`)."""

    interval: float = 30.0
    """Seconds between expiry sweeps: how late after `expires_at` a workload may still run."""
    max_terminations_per_minute: int = 60
    """The safety brake: at most this many terminations in any rolling minute. A bad policy or a
    clock jump then costs a few workloads, not a cluster; held-back work stays due."""
    dry_run: bool = False
    """Log and emit Events, change nothing (set from the shared `--dry-run`)."""


@dataclass(frozen=True)
class IdleSettings:
    """Idle scale-to-zero and wake (`idle.py`)."""

    interval: float = 60.0
    """Seconds between idle sweeps."""
    grace_period: float = 3600.0
    """Seconds after a wake during which neither idle nor expiry puts the workload back to sleep."""
    prometheus_timeout: float = 5.0
    """Seconds per Prometheus query; a timeout means "not idle"."""
    prometheus_url: str | None = None
    """Overrides every policy's `idle.prometheus.url` (local runs, tests)."""


@dataclass(frozen=True)
class AuditSettings:
    """The background audit and its PolicyReports (`audit.py`)."""

    interval: float = 300.0
    """Seconds between audits of everything running."""
    max_results_per_report: int = 1000
    """Results kept in one namespace's PolicyReport (failures first); the summary counts all."""
    reports_format: str = "auto"
    """Which reports to write (`controller/k8s/reports.py`): `auto` (OpenReports `Report`s when the
    cluster serves openreports.io, else `PolicyReport`s), `openreports` or `wgpolicyk8s`."""


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = "comptroller-system"
    """Comptroller's own namespace: where metering ledgers live."""
    kubeconfig: str | None = None
    webhook_configuration: str | None = None
    """The MutatingWebhookConfiguration whose matchCondition follows the policy set
    (`webhook_scope.py`); None leaves it alone."""
    skip_settled_pods: bool = True
    """Keep the condition that spares settled pods the /mutate call; off removes it."""
    dry_run: bool = False
    """Destructive actions (expiry, idle scale-to-zero) only log and emit what they would do.
    Metering is bookkeeping and runs as usual, except for the pod finalizer."""
    write_namespaces: frozenset[str] | None = None
    """Where the operator writes besides its own namespace (`controller.k8s.workloads.WriteScope`);
    None: every namespace but kube-system."""
    peering: PeeringSettings = field(default_factory=PeeringSettings)
    metering: MeteringSettings = field(default_factory=MeteringSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    # --- other operator loops add their settings below this line (expiry, idle, audit) ---
    expiry: ExpirySettings = field(default_factory=ExpirySettings)
    idle: IdleSettings = field(default_factory=IdleSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
