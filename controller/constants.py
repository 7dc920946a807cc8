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
CLAIM_WEBHOOK = f"claim.{GROUP}"
# Who the resource claim controller creates a pod's ResourceClaims from its templates as: its own
# ServiceAccount (kube-controller-manager's `--use-service-account-credentials`, as kubeadm runs it),
# else the controller-manager's user. Only their claims owned by a Pod skip `/claim`: anyone else may
# write a Pod ownerReference on a claim (docs/crds.md#dra-claims-created-after-their-pods).
CLAIM_CONTROLLER_USERS = (
    "system:serviceaccount:kube-system:resource-claim-controller",
    "system:kube-controller-manager",
)
# On a ResourceClaim whose controller is a Pod: the pod's `resourceClaims` entry it is for. The resource
# claim controller takes such a claim as the one made from the entry's template, whoever created it.
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"

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

# Budgets that queue (GPUBudget `whenExhausted: Queue`, docs/queueing.md): the mutating webhook
# creates a pod the budget cannot pay for now with this scheduling gate; the operator removes it.
BUDGET_GATE = f"{GROUP}/budget"
QUEUED_ANNOTATION = f"{GROUP}/queued"
"""On a gated pod: `<budget>: <why it waits>`, written by the mutating webhook."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""A workload Kueue admits: Kueue's own suspend stays in charge; Comptroller gates it only where a
budget cannot pay for it (docs/queueing.md#kueue)."""
KUEUE_GATE = "kueue.x-k8s.io/admission"
"""The scheduling gate Kueue's webhook puts on the plain pods it manages."""
REASON_QUEUED = "BudgetQueued"
REASON_RELEASED = "BudgetReleased"

# Namespaces never matched by any policy, whatever it says.
ALWAYS_EXCLUDED_NAMESPACES = frozenset({"kube-system"})

# Lifecycle bookkeeping on workloads (operator: expiry, idle, wake).
EXPIRING_SOON_NOTIFIED_ANNOTATION = f"{GROUP}/expiring-soon-notified"
"""The expires_at an ExpiringSoon Event was sent for (a later expires_at gets a fresh notice)."""
SCALED_TO_ZERO_ANNOTATION = f"{GROUP}/scaled-to-zero-at"
"""When the idle loop scaled the workload to zero."""
HPA_ANNOTATION = f"{GROUP}/hpa"
"""`name:minReplicas` of the HPA targeting a workload we scaled to zero (wake restores at least that)."""

# Idle batch runs (operator: `idle.py`): a Job, JobSet, Kubeflow job or RayJob whose GPUs stay idle
# gets a notice, and is suspended (never deleted) where its policy says `action: Suspend`.
IDLE_NOTIFIED_ANNOTATION = f"{GROUP}/idle-notified-at"
"""When the `GPUIdle` notice was posted for the current idle stretch (removed when it gets busy)."""
IDLE_SUSPEND_AT_ANNOTATION = f"{GROUP}/idle-suspend-at"
"""When the notice said it would be suspended if still idle (`action: Suspend` only)."""
IDLE_SUSPENDED_ANNOTATION = f"{GROUP}/idle-suspended-at"
"""When the idle loop suspended it: only a suspension carrying this is ever undone by wake."""
REASON_GPU_IDLE = "GPUIdle"
REASON_IDLE_SUSPENDED = "IdleSuspended"
SUSPENDABLE_KINDS = {
    "Job": ("batch", ("spec", "suspend")),
    "JobSet": ("jobset.x-k8s.io", ("spec", "suspend")),
    "PyTorchJob": ("kubeflow.org", ("spec", "runPolicy", "suspend")),
    "TFJob": ("kubeflow.org", ("spec", "runPolicy", "suspend")),
    "MPIJob": ("kubeflow.org", ("spec", "runPolicy", "suspend")),
    "RayJob": ("ray.io", ("spec", "suspend")),
}
"""Batch kinds the idle loop may suspend: kind -> (API group, path of the boolean that suspends it)."""

# Metering (operator): a GPU pod keeps this finalizer until every budget it draws on has
# committed its final charge, so a pod deleted while the operator is down is still metered.
METERING_FINALIZER = f"{GROUP}/metering"
DEFAULT_GROUP_LABELS = ("team", "cost_center")
"""Pod label keys the ledgers' per-day aggregates are grouped by (operator `--team-label`,
`--cost-center-label`; `comptroller report` reads them from the ledgers)."""
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
