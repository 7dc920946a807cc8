"""The Validating and Mutating WebhookConfigurations that point the API server at the webhook.

Rendered here once, used by `make up` (URL to 127.0.0.1) and mirrored by the chart (Service).
Both configurations match pods and every supported workload kind (docs/crds.md#workload-kinds) on
CREATE and UPDATE; the validating one also judges `scale` subresource updates at `/scale`, and
DRA claims created after the pods that name them at `/claim`. They
exclude kube-system and the webhook's own namespace by `kubernetes.io/metadata.name`, and declare
`sideEffects: None` so `kubectl apply --dry-run=server` is judged the same.

The mutating webhook may carry the engine's `mutation_condition` as a matchCondition, so the API
server skips `/mutate` for pods mutation would leave as they are; the operator keeps it in step
with the policy set (`controller.operator.webhook_scope`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from controller import constants
from controller.constants import IGNORE_NAMESPACE_LABEL, POD_CLAIM_ANNOTATION
from controller.engine.mutation_scope import CONDITION_NAME
from controller.webhook.settings import DEFAULT_NAMESPACE

VALIDATING_NAME = constants.VALIDATING_WEBHOOK
MUTATING_NAME = constants.MUTATING_WEBHOOK
SCALE_NAME = constants.SCALE_WEBHOOK
CLAIM_NAME = constants.CLAIM_WEBHOOK

# apiGroup -> resources: pods, the built-in pod controllers and the ML kinds of docs/crds.md#workload-kinds.
WORKLOAD_RESOURCES: Mapping[str, tuple[str, ...]] = {
    "": ("pods",),
    "apps": ("deployments", "statefulsets", "replicasets", "daemonsets"),
    "batch": ("jobs", "cronjobs"),
    "kubeflow.org": ("pytorchjobs", "tfjobs", "mpijobs"),
    "ray.io": ("rayjobs", "rayclusters", "rayservices"),
    "jobset.x-k8s.io": ("jobsets",),
    "leaderworkerset.x-k8s.io": ("leaderworkersets",),
}


# The scale subresources `/scale` judges: `kubectl scale` and HPAs change replicas through them, and
# the main resource's webhooks never see those requests (docs/crds.md#updates-and-scaling).
SCALE_RESOURCES: Mapping[str, tuple[str, ...]] = {
    "apps": ("deployments/scale", "statefulsets/scale", "replicasets/scale"),
    "kubeflow.org": ("pytorchjobs/scale",),
    "leaderworkerset.x-k8s.io": ("leaderworkersets/scale",),
}

# The DRA objects `/claim` judges at their creation: a pod may name one before it exists, admitted
# counting it as 1 GPU, and what it then holds is decided by the claim; and the ResourceClaim updates
# that make a claim a pod's (docs/crds.md#dra-claims-created-after-their-pods).
CLAIM_RESOURCES: Mapping[str, tuple[str, ...]] = {
    "resource.k8s.io": ("resourceclaims", "resourceclaimtemplates"),
}
CLAIM_UPDATE_RESOURCES: Mapping[str, tuple[str, ...]] = {"resource.k8s.io": ("resourceclaims",)}
_POD_CONTROLLER = (
    "has({o}.metadata.ownerReferences) && {o}.metadata.ownerReferences.exists(r, r.apiVersion == 'v1'"
    " && r.kind == 'Pod' && has(r.controller) && r.controller)"
)
_ENTRY = f"'{POD_CLAIM_ANNOTATION}'"
CLAIM_CONDITIONS: tuple[tuple[str, str], ...] = (
    (
        "not-made-by-the-claim-controller",
        "!(request.userInfo.username in ["
        + ", ".join(f"'{user}'" for user in constants.CLAIM_CONTROLLER_USERS)
        + "] && "
        + _POD_CONTROLLER.format(o="object")
        + ")",
    ),
    (
        "created-or-made-a-pods",
        "request.operation == 'CREATE' || ("
        f"has(object.metadata.annotations) && {_ENTRY} in object.metadata.annotations && "
        + _POD_CONTROLLER.format(o="object")
        + f" && !(has(oldObject.metadata.annotations) && {_ENTRY} in oldObject.metadata.annotations"
        f" && oldObject.metadata.annotations[{_ENTRY}] == object.metadata.annotations[{_ENTRY}]"
        " && has(oldObject.metadata.ownerReferences)"
        " && oldObject.metadata.ownerReferences == object.metadata.ownerReferences))",
    ),
)
"""When the API server calls `/claim` (the webhook checks the same itself): not for the claims the
resource claim controller makes for one pod from its template (the template was judged with the
pod, and no pod names the claim it makes; a Pod owner alone is not enough: anyone may write one),
and for an update only when it gives the claim a Pod controller and the annotation naming its entry
(the scheduler updates every claim it allocates: those are not sent)."""

def webhook_rules(
    resources: Mapping[str, Iterable[str]] = WORKLOAD_RESOURCES,
    operations: tuple[str, ...] = ("CREATE", "UPDATE"),
) -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [group],
            "apiVersions": ["*"],
            "operations": list(operations),
            "resources": sorted(resources_),
            "scope": "*",
        }
        for group, resources_ in resources.items()
    ]


def webhook_configurations(
    *,
    url: str | None = None,
    service: Mapping[str, Any] | None = None,
    ca_bundle: bytes,
    failure_policy: str = "Ignore",
    timeout_seconds: int = 3,
    exclude_namespaces: Iterable[str] = ("kube-system", DEFAULT_NAMESPACE),
    name: str = "comptroller",
    labels: Mapping[str, str] | None = None,
    mutation_condition: str | None = None,
) -> list[dict[str, Any]]:
    """[ValidatingWebhookConfiguration, MutatingWebhookConfiguration] as dicts for the API server.

    `url` is a base such as `https://127.0.0.1:8443`; `service` is `{"namespace", "name", "port"}`.
    `ca_bundle` is the PEM of the CA that signed the serving certificate. `mutation_condition`,
    when given, is the CEL expression that must hold for the API server to call `/mutate`.
    """
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url or service")
    if failure_policy not in ("Ignore", "Fail"):
        raise ValueError(f"failure_policy must be Ignore or Fail, not {failure_policy!r}")
    if not 1 <= timeout_seconds <= 30:
        raise ValueError("timeout_seconds must be within 1..30 (the API server's limit)")

    def client_config(path: str) -> dict[str, Any]:
        config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
        if url is not None:
            config["url"] = url.rstrip("/") + path
        else:
            config["service"] = {
                "namespace": service["namespace"],
                "name": service["name"],
                "port": int(service.get("port", 443)),
                "path": path,
            }
        return config

    common = {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": timeout_seconds,
        "matchPolicy": "Equivalent",
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": sorted(set(exclude_namespaces)),
                },
                {"key": IGNORE_NAMESPACE_LABEL, "operator": "NotIn", "values": ["true"]},
            ]
        },
        "rules": webhook_rules(),
    }

    def metadata() -> dict[str, Any]:
        return {"name": name, "labels": {"app.kubernetes.io/name": "comptroller", **(labels or {})}}

    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": metadata(),
        "webhooks": [
            {"name": VALIDATING_NAME, "clientConfig": client_config("/validate"), **common},
            {
                "name": SCALE_NAME,
                "clientConfig": client_config("/scale"),
                **common,
                "rules": webhook_rules(SCALE_RESOURCES, ("UPDATE",)),
            },
            {
                "name": CLAIM_NAME,
                "clientConfig": client_config("/claim"),
                **common,
                "rules": webhook_rules(CLAIM_RESOURCES, ("CREATE",))
                + webhook_rules(CLAIM_UPDATE_RESOURCES, ("UPDATE",)),
                "matchConditions": [{"name": name, "expression": cel} for name, cel in CLAIM_CONDITIONS],
            },
        ],
    }
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata(),
        "webhooks": [
            {
                "name": MUTATING_NAME,
                "clientConfig": client_config("/mutate"),
                # Another webhook may add a container or labels after us: look again.
                "reinvocationPolicy": "IfNeeded",
                **common,
                **({"matchConditions": match_conditions(mutation_condition)} if mutation_condition else {}),
            }
        ],
    }
    return [validating, mutating]


def match_conditions(mutation_condition: str) -> list[dict[str, str]]:
    return [{"name": CONDITION_NAME, "expression": mutation_condition}]
