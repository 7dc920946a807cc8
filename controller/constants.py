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
