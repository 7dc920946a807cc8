"""Comptroller's own objects as the operator decides with them: listed from the API server and
compiled by the engine's loader, the one every door uses (`controller.engine.loading`)."""

from __future__ import annotations

import logging
from typing import Any

from controller.engine.api import Snapshot
from controller.engine.loading import snapshot_from_objects
from controller.k8s.workloads import ApiResource, NotFound, Workloads

log = logging.getLogger(__name__)

NAMESPACES = ApiResource("", "v1", "namespaces", "Namespace", namespaced=False)


def listed(
    workloads: Workloads, resource: ApiResource, *, with_deleting: bool = False
) -> list[dict[str, Any]]:
    """Every object of one of our kinds; none while its CRD is not installed. Objects being deleted
    are left out unless `with_deleting`."""
    try:
        return [
            obj
            for obj in workloads.iter_objects(resource)
            # Being deleted (kopf's finalizer holds it until its daemon stops): gone for us.
            if with_deleting or not obj["metadata"].get("deletionTimestamp")
        ]
    except NotFound:
        log.debug("%s is not served (CRD not installed)", resource.kind)
        return []


def compiled(objects: list[dict[str, Any]], **context: Any) -> Snapshot:
    """The engine's loader: what does not compile is left out, as admission leaves it out; its
    status says why (controller.operator.policies), so no need to shout here."""
    snapshot, errors = snapshot_from_objects(objects, **context)
    for key, error in errors.items():
        log.debug("skipping %s: %s", key, error)
    return snapshot


def namespace_labels(workloads: Workloads) -> dict[str, dict[str, str]]:
    """Every Namespace's labels, by name (what namespaceSelectors match)."""
    return {
        ns["metadata"]["name"]: dict(ns["metadata"].get("labels") or {})
        for ns in workloads.iter_objects(NAMESPACES)
    }
