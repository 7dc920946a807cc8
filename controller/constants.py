"""Every label, annotation, finalizer and API name Comptroller reads or writes, in one place."""

GROUP = "finops.comptroller.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

POLICY_PLURAL = "finopspolicies"
BUDGET_PLURAL = "gpubudgets"
EXCEPTION_PLURAL = "finopsexceptions"

# Workload annotations (SPEC section 4).
ORIGINAL_REPLICAS_ANNOTATION = f"{GROUP}/original-replicas"
WAKE_ANNOTATION = f"{GROUP}/wake"
WOKEN_AT_ANNOTATION = f"{GROUP}/woken-at"
EXPIRED_ANNOTATION = f"{GROUP}/expired"
ENFORCE_NAMESPACE_LABEL = f"{GROUP}/enforce"

DEFAULT_EXPIRY_KEY = "expires_at"
DEFAULT_GPU_RESOURCES = ("nvidia.com/gpu",)

# Event reasons (SPEC section 4).
REASON_POLICY_VIOLATION = "PolicyViolation"
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
