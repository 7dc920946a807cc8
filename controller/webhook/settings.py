"""Settings of the webhook app: built once by `comptroller webhook` (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from controller.constants import ALWAYS_EXCLUDED_NAMESPACES, BUDGET_GATE, KUEUE_GATE

FailureMode = Literal["ignore", "deny"]

DEFAULT_NAMESPACE = "comptroller-system"
DEFAULT_OPERATOR_SERVICE_ACCOUNT = "comptroller-operator"
"""The operator's ServiceAccount under the chart's default release name."""
DEFAULT_KUEUE_CONTROLLER = "system:serviceaccount:kueue-system:kueue-controller-manager"
"""Kueue's controller as its release manifests and Helm chart install it (namespace `kueue-system`)."""
# An UPDATE's review carries the object twice (object and oldObject), and JSON can spend 6 bytes on
# one stored byte (the API server writes `<`, `>`, `&` and control characters as \u00XX): a
# 400 KB Deployment with markup in an env value is a 4.8 MB review. A limit below what the API
# server can legitimately send fails that call, and under failurePolicy Fail blocks the update.
# So: two objects at etcd's 1.5 MiB limit, fully escaped (18 MiB), plus the envelope.
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class WebhookSettings:
    namespace: str = DEFAULT_NAMESPACE
    """The webhook's own namespace: never matched, so a broken policy cannot lock Comptroller out."""

    failure_mode: FailureMode = "ignore"
    """What an internal error answers: `ignore` admits with a warning, `deny` denies with the error."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Larger request bodies get HTTP 413 (see DEFAULT_MAX_BODY_BYTES)."""

    extra_excluded_namespaces: frozenset[str] = field(default_factory=frozenset)
    """Namespaces excluded besides kube-system and `namespace`."""

    queue_releasers: frozenset[str] | None = None
    """Users who may take a queueing budget's gate off a pod (`--queue-releaser`); None: the
    operator's ServiceAccount as the chart names it, in `namespace`."""

    kueue_controllers: frozenset[str] = frozenset({DEFAULT_KUEUE_CONTROLLER})
    """Users who may take Kueue's admission gate off a pod a queueing budget covers
    (`--kueue-controller`): Kueue's controller."""

    def releases_queue(self, username: str) -> bool:
        """Whether `username` may take the budget gate off a pod (docs/queueing.md)."""
        if self.queue_releasers is None:
            return username == f"system:serviceaccount:{self.namespace}:{DEFAULT_OPERATOR_SERVICE_ACCOUNT}"
        return username in self.queue_releasers

    def gates_owned(self, username: str) -> frozenset[str]:
        """The queueing gates `username` may take off a pod a queueing budget covers."""
        owned = frozenset({BUDGET_GATE}) if self.releases_queue(username) else frozenset()
        return owned | {KUEUE_GATE} if username in self.kueue_controllers else owned

    @property
    def excluded_namespaces(self) -> frozenset[str]:
        return ALWAYS_EXCLUDED_NAMESPACES | {self.namespace} | self.extra_excluded_namespaces
