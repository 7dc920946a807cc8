"""Every label, annotation, finalizer and API name Comptroller reads or writes, in one place."""

GROUP = "finops.comptroller.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

POLICY_PLURAL = "finopspolicies"
BUDGET_PLURAL = "gpubudgets"
EXCEPTION_PLURAL = "finopsexceptions"

# Workload annotations (docs/crds.md#workload-conventions).
ORIGINAL_REPLICAS_ANNOTATION = f"{GROUP}/original-replicas"
WAKE_ANNOTATION = f"{GROUP}/wake"
WOKEN_AT_ANNOTATION = f"{GROUP}/woken-at"
EXPIRED_ANNOTATION = f"{GROUP}/expired"
# The required labels the mutating webhook filled in (a default or the Namespace's value), comma
# separated: they are Comptroller's choice, not the user's, and a fix may choose them again.
DEFAULTED_ANNOTATION = f"{GROUP}/defaulted-labels"
# A namespace labelled `<this>=true` is never sent to the webhook (cf. Gatekeeper's
# admission.gatekeeper.sh/ignore): an escape hatch for break-glass and for infrastructure.
IGNORE_NAMESPACE_LABEL = f"{GROUP}/ignore"

# The admission webhooks by name, as registered in the Validating/MutatingWebhookConfigurations.
VALIDATING_WEBHOOK = f"validate.{GROUP}"
MUTATING_WEBHOOK = f"mutate.{GROUP}"
SCALE_WEBHOOK = f"scale.{GROUP}"

DEFAULT_EXPIRY_KEY = "expires_at"
# `*`: every accelerator the GPU-equivalence table knows (controller.engine.accelerators); a list of
# resource names (globs) or DRA DeviceClass names counts only those.
DEFAULT_GPU_RESOURCES = ("*",)

# Event reasons (docs/crds.md#workload-conventions).
REASON_EXPIRING_SOON = "ExpiringSoon"
REASON_EXPIRED = "Expired"
REASON_SCALED_TO_ZERO = "ScaledToZero"
REASON_WOKEN = "Woken"
REASON_BUDGET_THRESHOLD = "BudgetThreshold"

# Namespaces never matched by any policy, whatever it says.
ALWAYS_EXCLUDED_NAMESPACES = frozenset({"kube-system"})

# Lifecycle bookkeeping on workloads (operator: expiry, idle, wake).
EXPIRING_SOON_NOTIFIED_ANNOTATION = f"{GROUP}/expiring-soon-notified"
"""The expires_at an ExpiringSoon Event was sent for (a later expires_at gets a fresh notice)."""
SCALED_TO_ZERO_ANNOTATION = f"{GROUP}/scaled-to-zero-at"
"""When the idle loop scaled the workload to zero."""
HPA_ANNOTATION = f"{GROUP}/hpa"
"""`name:minReplicas` of the HPA targeting a workload we scaled to zero (wake restores at least that)."""

# Metering (operator): a GPU pod keeps this finalizer until every budget it draws on has
# committed its final charge, so a pod deleted while the operator is down is still metered.
METERING_FINALIZER = f"{GROUP}/metering"
# Each GPUBudget's ledger: a ConfigMap with this prefix in Comptroller's namespace (owned by the
# budget), labeled so `kubectl get cm -l ...` lists them all.
LEDGER_PREFIX = "comptroller-ledger-"
LEDGER_LABEL = f"{GROUP}/ledger-of"
LEDGER_KEY = "ledger.json"

# Cost per run (operator: `controller/operator/runs.py`; `comptroller report --by workload`): what
# a finished Job, JobSet, Kubeflow job, RayJob or bare Pod consumed, written onto the workload.
GPU_HOURS_ANNOTATION = f"{GROUP}/gpu-hours"
"""GPU-hours of every GPU pod of the run so far (4 decimals); final once `cost-final` is set."""
COST_ANNOTATION = f"{GROUP}/cost"
"""Estimated cost of those GPU-hours, by the pricePerGPUHour of the first GPUBudget covering each pod."""
COST_METERED_AT_ANNOTATION = f"{GROUP}/cost-metered-at"
"""When the two values above were computed (RFC 3339, microseconds): a restarted operator continues
from them exactly (see runs.py)."""
COST_FINAL_ANNOTATION = f"{GROUP}/cost-final"
"""When the run was seen finished and its `GPUCost` Event posted (posted once, even across restarts)."""
REASON_GPU_COST = "GPUCost"
RUN_KINDS = (
    ("", "Pod"),
    ("batch", "Job"),
    ("jobset.x-k8s.io", "JobSet"),
    ("kubeflow.org", "PyTorchJob"),
    ("kubeflow.org", "TFJob"),
    ("kubeflow.org", "MPIJob"),
    ("ray.io", "RayJob"),
)
"""(API group, kind) of the workloads that are runs: they finish. A Pod only when nothing controls it."""
RUN_SCHEDULER_KINDS = (("batch", "CronJob"),)
"""Kinds that create runs on a schedule: each object they create is a run of its own."""
