"""PolicyReports (`wgpolicyk8s.io/v1alpha2`, the Policy WG's format Kyverno also writes): upsert
one report per namespace, delete the ones whose namespace has nothing left to report.

The CRD belongs to the Policy WG, not to us; when a cluster does not have it, `available()` says
so and the audit keeps its results in logs and metrics only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from controller.k8s.workloads import ApiResource, Conflict, Workloads

log = logging.getLogger(__name__)

GROUP = "wgpolicyk8s.io"
VERSION = "v1alpha2"
REPORT_NAME = "comptroller"
MANAGED_BY = {"app.kubernetes.io/managed-by": "comptroller"}
SELECTOR = "app.kubernetes.io/managed-by=comptroller"


def comparable(report: Mapping[str, Any]) -> tuple:
    """What makes two reports differ for a reader: results and summary, timestamps aside."""
    results = [{k: v for k, v in r.items() if k != "timestamp"} for r in report.get("results") or ()]
    return (
        repr(results),
        repr(report.get("summary")),
        repr((report.get("metadata") or {}).get("annotations")),
    )


class PolicyReports:
    def __init__(self, workloads: Workloads) -> None:
        self.workloads = workloads
        self._resource: ApiResource | None = None

    def available(self) -> bool:
        """Whether the cluster serves PolicyReport (a CRD installed later is found within a minute)."""
        if self._resource is None:
            self._resource = self.workloads.resolve("PolicyReport", group=GROUP, version=VERSION)
        return self._resource is not None

    def existing(self) -> dict[str, dict[str, Any]]:
        """Our reports by namespace."""
        assert self._resource is not None
        return {
            r["metadata"]["namespace"]: r
            for r in self.workloads.iter_objects(self._resource, label_selector=SELECTOR)
        }

    def upsert(self, namespace: str, body: dict[str, Any], *, current: Mapping[str, Any] | None) -> bool:
        """Create or replace our report in `namespace`; False when nothing changed (no write)."""
        assert self._resource is not None
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PolicyReport",
            **body,
            "metadata": {
                "name": REPORT_NAME,
                "namespace": namespace,
                "labels": dict(MANAGED_BY),
                "annotations": dict((body.get("metadata") or {}).get("annotations") or {}),
            },
        }
        if current is not None and comparable(current) == comparable(body):
            return False
        path = self._resource.path(namespace)
        if current is None:
            try:
                self.workloads.request("POST", path, body=body)
                return True
            except Conflict:  # created meanwhile (another replica, or our previous run): replace it
                current = self.workloads.get(self._resource, namespace, REPORT_NAME)
                if current is None:
                    raise
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.workloads.request("PUT", self._resource.path(namespace, REPORT_NAME), body=body)
        return True

    def delete(self, namespace: str) -> None:
        assert self._resource is not None
        self.workloads.delete(self._resource, namespace, REPORT_NAME)  # already gone is fine
