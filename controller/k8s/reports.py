"""Audit reports, one per namespace: upsert them, delete the ones whose namespace has nothing left
to report. Two formats carry the same content:

- `openreports.io/v1alpha1` `Report` (OpenReports, what Kyverno 1.15+ writes and Policy Reporter
  3.2+ reads), preferred when the cluster serves it;
- `wgpolicyk8s.io/v1alpha2` `PolicyReport` (the Policy WG's format, its predecessor), otherwise.

`--reports-format auto` (the default) picks by API discovery at each audit pass (cheap: a served
kind is remembered, an absent one is asked about again at most once a minute, see
`Workloads.resolve`); `openreports` or `wgpolicyk8s` pin one. Neither CRD belongs to us: when the
chosen one is not served, `available()` says so and the audit keeps its results in logs and
metrics only. When the format in use changes (OpenReports installed after the operator started,
or a pinned format), our reports in the other format are deleted, so readers of both never list
a namespace twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.k8s.workloads import ApiError, ApiResource, Conflict, Workloads

log = logging.getLogger(__name__)

REPORT_NAME = "comptroller"
SOURCE = "comptroller"
MANAGED_BY = {"app.kubernetes.io/managed-by": "comptroller"}
SELECTOR = "app.kubernetes.io/managed-by=comptroller"


@dataclass(frozen=True)
class ReportFormat:
    name: str
    """How `--reports-format` names it."""
    group: str
    version: str
    kind: str
    source_field: bool
    """Whether the report itself (not only each result) names its source."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def __str__(self) -> str:
        return f"{self.kind} ({self.api_version})"


OPENREPORTS = ReportFormat("openreports", "openreports.io", "v1alpha1", "Report", source_field=True)
WGPOLICYK8S = ReportFormat("wgpolicyk8s", "wgpolicyk8s.io", "v1alpha2", "PolicyReport", source_field=False)
FORMATS: dict[str, ReportFormat] = {f.name: f for f in (OPENREPORTS, WGPOLICYK8S)}
CHOICES = ("auto", *FORMATS)
"""The values of `--reports-format`."""


def candidates(choice: str) -> tuple[ReportFormat, ...]:
    """The formats `choice` may write, preferred first."""
    if choice == "auto":
        return (OPENREPORTS, WGPOLICYK8S)
    if choice not in FORMATS:
        raise ValueError(f"unknown reports format {choice!r}: expected one of {', '.join(CHOICES)}")
    return (FORMATS[choice],)


def select(choice: str, served: Mapping[ReportFormat, bool]) -> ReportFormat | None:
    """The format to write: the first candidate the cluster serves, or None."""
    return next((f for f in candidates(choice) if served.get(f)), None)


def comparable(report: Mapping[str, Any]) -> tuple:
    """What makes two reports differ for a reader: results and summary, timestamps aside."""
    results = [{k: v for k, v in r.items() if k != "timestamp"} for r in report.get("results") or ()]
    return (
        repr(results),
        repr(report.get("summary")),
        repr((report.get("metadata") or {}).get("annotations")),
        repr(report.get("source")),
    )


def document(fmt: ReportFormat, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The object to write for a namespace's report `body` (summary, results, annotations)."""
    document: dict[str, Any] = {"apiVersion": fmt.api_version, "kind": fmt.kind}
    if fmt.source_field:
        document["source"] = SOURCE
    document.update({k: v for k, v in body.items() if k != "metadata"})
    document["metadata"] = {
        "name": REPORT_NAME,
        "namespace": namespace,
        "labels": dict(MANAGED_BY),
        "annotations": dict((body.get("metadata") or {}).get("annotations") or {}),
    }
    return document


class PolicyReports:
    """Our per-namespace reports, in the format `choice` selects (see the module docstring)."""

    def __init__(self, workloads: Workloads, *, choice: str = "auto") -> None:
        self.workloads = workloads
        self.choice = choice
        self._candidates = candidates(choice)
        self.format: ReportFormat | None = None
        """The format in use after `available()`, None when none is served."""
        self._resource: ApiResource | None = None
        self._cleaned: ReportFormat | None = None

    def _resolve(self, fmt: ReportFormat) -> ApiResource | None:
        return self.workloads.resolve(fmt.kind, group=fmt.group, version=fmt.version)

    def available(self) -> bool:
        """Whether a format `choice` allows is served; picks it. Asked at each audit pass, so a CRD
        installed later is found within a minute."""
        resources = {f: self._resolve(f) for f in self._candidates}
        chosen = select(self.choice, {f: r is not None for f, r in resources.items()})
        if chosen != self.format:
            if chosen is not None:
                log.info("audit: writing reports as %s", chosen)
            self.format = chosen
        self._resource = resources.get(chosen) if chosen is not None else None
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
        assert self._resource is not None and self.format is not None
        body = document(self.format, namespace, body)
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

    def delete_other_formats(self) -> int:
        """Once per format in use: delete our reports in the other format, when it is served (left
        by an earlier run, before OpenReports was installed). Returns how many were deleted; a
        failure to list raises (and it is tried again at the next pass)."""
        if self.format is None or self._cleaned == self.format:
            return 0
        deleted = 0
        for fmt in FORMATS.values():
            if fmt == self.format:
                continue
            resource = self._resolve(fmt)
            if resource is None:
                continue
            for report in self.workloads.iter_objects(resource, label_selector=SELECTOR):
                metadata = report["metadata"]
                if metadata.get("name") != REPORT_NAME:
                    continue
                try:
                    self.workloads.delete(resource, metadata["namespace"], REPORT_NAME)
                    deleted += 1
                except ApiError as exc:  # one we may not delete (say, outside the write scope): leave it
                    log.warning("audit: cannot delete our %s in %s: %s", fmt.kind, metadata["namespace"], exc)
        if deleted:
            log.info(
                "audit: deleted %d reports left in the other format (now writing %s)", deleted, self.format
            )
        self._cleaned = self.format
        return deleted
