"""Shared webhook test helpers: policies as the CRs a platform team would write, AdmissionReviews as
the API server sends them, and an app built on a static view of those policies."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from controller.webhook.app import create_app
from controller.webhook.settings import WebhookSettings
from controller.webhook.views import view_from_objects

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
API = "finops.comptroller.dev/v1alpha1"


def policy(name: str, *, enforcement: str = "Enforce", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FinOpsPolicy",
        "metadata": {"name": name},
        "spec": {"enforcement": enforcement, **spec},
    }


LABELS = {
    "required": [
        {"key": "team", "allowedValues": ["nlp", "vision", "search"]},
        {"key": "cost_center", "pattern": "^cc-[0-9]{3}$"},
        {
            "key": "environment",
            "allowedValues": ["production", "staging", "development", "experiment"],
            "default": "development",
        },
    ],
    "inheritFromNamespace": True,
}
GPU = {
    "resources": ["nvidia.com/gpu"],
    "instanceTypeKeys": ["node.kubernetes.io/instance-type"],
    "requireInstanceType": True,
    "allowedInstanceTypes": [
        {"when": {"environment": ["development", "experiment"]}, "instanceTypes": ["g5.xlarge", "g6.*"]},
        {"when": {"environment": ["production"]}, "instanceTypes": ["p4d.24xlarge", "g6.*"]},
    ],
    "maxGPUsPerPod": 8,
}
EXPIRY = {
    "key": "expires_at",
    "requiredWhen": {"environment": ["experiment"]},
    "maxLifetime": "72h",
    "default": "24h",
}

ML_PLATFORM = policy("ml-platform", labels=LABELS, gpu=GPU, expiry=EXPIRY)

GOOD_LABELS = {"team": "nlp", "cost_center": "cc-123", "environment": "development"}


def container(gpus: int = 0) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {"name": "main", "image": "registry.example/train:1", "resources": resources}


def pod(
    name: str = "trainer",
    *,
    namespace: str = "ml-team",
    labels: dict[str, str] | None = None,
    gpus: int = 1,
    instance_type: str | None = "g5.xlarge",
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = dict(labels)
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    spec: dict[str, Any] = {"containers": [container(gpus)]}
    if instance_type:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": instance_type}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def deployment(
    name: str = "serve",
    *,
    namespace: str = "ml-team",
    labels: dict[str, str] | None = None,
    template_labels: dict[str, str] | None = None,
    gpus: int = 1,
    instance_type: str | None = "g5.xlarge",
) -> dict[str, Any]:
    template_metadata: dict[str, Any] = {}
    if template_labels is not None:
        template_metadata["labels"] = dict(template_labels)
    spec: dict[str, Any] = {"containers": [container(gpus)]}
    if instance_type:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": instance_type}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": template_metadata, "spec": spec},
        },
    }


GVK = {
    "Pod": {"group": "", "version": "v1", "kind": "Pod"},
    "Deployment": {"group": "apps", "version": "v1", "kind": "Deployment"},
    "ReplicaSet": {"group": "apps", "version": "v1", "kind": "ReplicaSet"},
    "Job": {"group": "batch", "version": "v1", "kind": "Job"},
    "ConfigMap": {"group": "", "version": "v1", "kind": "ConfigMap"},
}


def review(
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    dry_run: bool = False,
    old: dict[str, Any] | None = None,
    uid: str | None = None,
    namespace: str | None = None,
    username: str = "data-scientist",
) -> dict[str, Any]:
    kind = (obj or old or {}).get("kind", "Pod")
    meta = (obj or old or {}).get("metadata", {})
    request = {
        "uid": uid or str(uuid.uuid4()),
        "kind": GVK.get(kind, {"group": "example.com", "version": "v1", "kind": kind}),
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation,
        "namespace": meta.get("namespace", "") if namespace is None else namespace,
        "name": meta.get("name", ""),
        "userInfo": {"username": username},
        "object": copy.deepcopy(obj),
        "oldObject": copy.deepcopy(old),
        "dryRun": dry_run,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


class NeverReady:
    """A policy view still syncing with the API server: nothing may be read from it."""

    def snapshot(self):
        raise AssertionError("a view that is not ready must not be read")

    def ready(self) -> bool:
        return False


def make_client(
    *policies: dict[str, Any],
    settings: WebhookSettings | None = None,
    namespace_labels: dict[str, dict[str, str]] | None = None,
    **app_kwargs: Any,
) -> TestClient:
    view = view_from_objects(policies, namespace_labels=namespace_labels)
    app_kwargs.setdefault("clock", lambda: NOW)
    app = create_app(view=view, settings=settings or WebhookSettings(), **app_kwargs)
    return TestClient(app)
