"""Where metering state is persisted: each GPUBudget's ledger ConfigMap, and the budget's status.

The ledger ConfigMap (see `controller.metering.usage` for why it exists) is written with a
compare-and-swap on its resourceVersion: two replicas overlapping during a peering hand-over, or
a write whose response was lost, can never interleave two different histories; the loser gets
`Conflict`, rereads, and recomputes (metering is idempotent, so nothing is lost or doubled).
The ConfigMap is owned by its GPUBudget, so deleting a budget garbage-collects its ledger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller import constants
from controller.k8s.workloads import ApiResource, NotFound, Workloads

CONFIGMAPS = ApiResource("", "v1", "configmaps", "ConfigMap")
BUDGETS = ApiResource(constants.GROUP, constants.VERSION, constants.BUDGET_PLURAL, "GPUBudget",
                      namespaced=False)
POLICIES = ApiResource(constants.GROUP, constants.VERSION, constants.POLICY_PLURAL, "FinOpsPolicy",
                       namespaced=False)
EXCEPTIONS = ApiResource(constants.GROUP, constants.VERSION, constants.EXCEPTION_PLURAL, "FinOpsException")
MAX_NAME = 253


def ledger_name(budget: str) -> str:
    """`comptroller-ledger-<budget>`, shortened with a hash when that would be too long."""
    name = constants.LEDGER_PREFIX + budget
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(budget.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}-{digest}"


@dataclass(frozen=True)
class StoredLedger:
    data: Mapping[str, Any] | None
    """The ledger's JSON (None: no ledger yet)."""
    resource_version: str | None
    """Of the ConfigMap as read or last written; None when it does not exist."""


def load_ledger(api: Workloads, *, namespace: str, budget: str) -> StoredLedger:
    obj = api.get(CONFIGMAPS, namespace, ledger_name(budget))
    if obj is None:
        return StoredLedger(None, None)
    raw = (obj.get("data") or {}).get(constants.LEDGER_KEY)
    data = json.loads(raw) if raw else None
    return StoredLedger(data, obj["metadata"]["resourceVersion"])


def store_ledger(
    api: Workloads,
    *,
    namespace: str,
    budget: str,
    budget_uid: str,
    data: Mapping[str, Any],
    resource_version: str | None,
) -> str:
    """Create or compare-and-swap the ledger; returns the new resourceVersion.

    Raises `Conflict` when someone else wrote it since `resource_version` (or created it first).
    """
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ledger_name(budget),
            "namespace": namespace,
            "labels": {constants.LEDGER_LABEL: budget[:63] if len(budget) <= 63 else ""},
            "ownerReferences": [
                {
                    "apiVersion": constants.API_VERSION,
                    "kind": "GPUBudget",
                    "name": budget,
                    "uid": budget_uid,
                }
            ],
        },
        "data": {constants.LEDGER_KEY: json.dumps(data, separators=(",", ":"))},
    }
    if resource_version is None:
        created = api.request("POST", CONFIGMAPS.path(namespace), body=body)
        return created["metadata"]["resourceVersion"]
    body["metadata"]["resourceVersion"] = resource_version
    replaced = api.request("PUT", CONFIGMAPS.path(namespace, ledger_name(budget)), body=body)
    return replaced["metadata"]["resourceVersion"]


def patch_budget_status(api: Workloads, *, name: str, uid: str, status: Mapping[str, Any]) -> bool:
    """Merge-patch a GPUBudget's status (lists such as conditions are replaced whole).

    False when the budget is gone or was replaced by a namesake (the uid pins it).
    """
    body = {"metadata": {"uid": uid}, "status": dict(status)}
    try:
        api.request("PATCH", BUDGETS.path(None, name, "status"), body=body,
                    content_type="application/merge-patch+json")
    except NotFound:
        return False
    return True


def list_budgets(api: Workloads) -> list[dict[str, Any]]:
    return api.list_objects(BUDGETS)

