"""The background audit: judge what already runs with the same engine as admission, and publish
compact results (one report per namespace, never one object per resource) and metrics. Reports
are OpenReports `Report`s (`openreports.io/v1alpha1`) when the cluster serves them, legacy
`PolicyReport`s (`wgpolicyk8s.io/v1alpha2`) otherwise, with the same content (`reports.py`).

Workloads admitted before a policy existed, or while the webhook was down or failing open, are
found here. Each top-level workload is judged once, as the webhook would judge it (no mutation):
a Pod or ReplicaSet whose controller is a kind we know is judged through that controller, like
Kyverno's autogen rules. Budgets are left out: they decide admission of new GPU-hours, and a
running workload is already metered against its budget.

A report lists failures first, then warnings, up to `max_results_per_report`; its summary counts
everything, and an annotation says how many results were left out. Reports are rewritten only when
their content changed, so a quiet cluster costs no API writes.

Pure parts (`findings_of`, `build_report`, `top_level`) are table-tested; `Auditor.run` lists,
judges and publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller import constants
from controller.engine import Snapshot, evaluate
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry
from controller.k8s.reports import PolicyReports, candidates
from controller.k8s.workloads import ApiError, Workloads

log = logging.getLogger(__name__)

TRUNCATED_ANNOTATION = f"{constants.GROUP}/results-truncated"
_ORDER = {"fail": 0, "warn": 1}


@dataclass(frozen=True)
class Finding:
    """One violation of one running workload."""

    namespace: str
    resource: tuple[tuple[str, str], ...]
    """Report resource reference: apiVersion, kind, name, namespace, uid (as sorted items)."""
    policy: str
    rule: str
    result: str
    """fail (Enforce and Audit policies) | warn (Warn policies)"""
    message: str
    fix: str
    enforcement: str
    key: str
    team: str

    @property
    def identity(self) -> tuple[str, ...]:
        """What makes a violation the same one from one audit to the next (for the counter)."""
        return (dict(self.resource).get("uid", ""), self.policy, self.rule, self.key)


def top_level(obj: Mapping[str, Any], kinds: KindRegistry) -> bool:
    """Whether a workload is judged itself (not through a controller of a kind we know)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and kinds.lookup(
            {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind")}
        ):
            return False
    return True


def findings_of(manifest: Mapping[str, Any], *, snapshot: Snapshot, now: datetime) -> list[Finding]:
    """Every violation the engine finds in a running workload, whatever the policy's enforcement."""
    decision = evaluate(manifest, snapshot=snapshot, now=now, mutate=False, operation="CREATE")
    violations = decision.all_violations
    if not violations:
        return []
    metadata = manifest.get("metadata") or {}
    resource = tuple(
        sorted(
            {
                "apiVersion": manifest.get("apiVersion", ""),
                "kind": manifest.get("kind", ""),
                "name": metadata.get("name", ""),
                "namespace": metadata.get("namespace", ""),
                "uid": metadata.get("uid", ""),
            }.items()
        )
    )
    return [
        Finding(
            namespace=metadata.get("namespace", ""),
            resource=resource,
            policy=v.policy,
            rule=v.rule,
            result="warn" if v.enforcement == "Warn" else "fail",
            message=v.message,
            fix=v.fix,
            enforcement=v.enforcement,
            key=v.key,
            team=decision.team,
        )
        for v in violations
    ]


def result_of(finding: Finding, *, now: datetime) -> dict[str, Any]:
    """One report result: an OpenReports ReportResult, which has the fields and JSON names of a
    wgpolicyk8s.io/v1alpha2 PolicyReportResult (so both formats carry the same results)."""
    properties = {"enforcement": finding.enforcement}
    if finding.fix:
        properties["fix"] = finding.fix
    if finding.key:
        properties["key"] = finding.key
    if finding.team:
        properties["team"] = finding.team
    return {
        "policy": finding.policy,
        "rule": finding.rule,
        "result": finding.result,
        "category": "FinOps",
        "severity": "medium" if finding.result == "fail" else "low",
        "source": "comptroller",
        "scored": True,
        "message": finding.message,
        "timestamp": {"seconds": int(now.timestamp()), "nanos": 0},
        "resources": [dict(finding.resource)],
        "properties": properties,
    }


def build_report(
    findings: Sequence[Finding], *, passed: int, now: datetime, max_results: int
) -> dict[str, Any]:
    """A namespace's report body: capped results (failures first), summary over all of them."""
    ordered = sorted(
        findings,
        key=lambda f: (
            _ORDER.get(f.result, 2),
            dict(f.resource).get("kind", ""),
            dict(f.resource).get("name", ""),
            f.policy,
            f.rule,
            f.key,
        ),
    )
    shown = ordered[:max_results]
    report: dict[str, Any] = {
        "summary": {
            "pass": passed,
            "fail": sum(1 for f in findings if f.result == "fail"),
            "warn": sum(1 for f in findings if f.result == "warn"),
            "error": 0,
            "skip": 0,
        },
        "results": [result_of(f, now=now) for f in shown],
    }
    if len(ordered) > len(shown):
        report["metadata"] = {
            "annotations": {
                TRUNCATED_ANNOTATION: f"{len(shown)} of {len(ordered)} results shown, failures first"
            }
        }
    return report


@dataclass
class AuditSummary:
    audited: int = 0
    findings: int = 0
    new_findings: int = 0
    reports_written: int = 0
    reports_deleted: int = 0
    by_policy_rule: dict[tuple[str, str], int] = field(default_factory=dict)


class Auditor:
    """Runs audits; remembers the previous audit's violations so the counter counts new ones only."""

    def __init__(
        self,
        *,
        workloads: Workloads,
        kinds: KindRegistry | None = None,
        max_results_per_report: int = 1000,
        on_new_finding: Callable[[Finding], None] | None = None,
        reports_format: str = "auto",
    ) -> None:
        self.workloads = workloads
        self.reports = PolicyReports(workloads, choice=reports_format)
        self.kinds = kinds or BUILTIN_KINDS
        self.max_results = max_results_per_report
        self.on_new_finding = on_new_finding
        self._previous: set[tuple[str, ...]] = set()
        self._told_no_crd = False

    def _workloads(self) -> Iterable[dict[str, Any]]:
        for spec in self.kinds:
            resource = self.workloads.resolve(spec.kind, group=spec.group)
            if resource is None:
                continue
            try:
                yield from self.workloads.iter_objects(resource)
            except ApiError as exc:
                log.warning("audit: cannot list %s: %s", spec.kind, exc)

    def run(self, *, snapshot: Snapshot, now: datetime) -> AuditSummary:
        summary = AuditSummary()
        snapshot = Snapshot(
            policies=snapshot.policies,
            budgets=(),
            exceptions=snapshot.exceptions,
            namespace_labels=snapshot.namespace_labels,
            kinds=snapshot.kinds or self.kinds,
            excluded_namespaces=snapshot.excluded_namespaces,
        )
        by_namespace: dict[str, list[Finding]] = {}
        passed: dict[str, int] = {}
        current: set[tuple[str, ...]] = set()
        for obj in self._workloads():
            metadata = obj.get("metadata") or {}
            namespace = metadata.get("namespace") or ""
            if (
                not namespace
                or namespace in snapshot.excluded_namespaces
                or metadata.get("deletionTimestamp")
            ):
                continue
            if not top_level(obj, self.kinds):
                continue
            summary.audited += 1
            found = findings_of(obj, snapshot=snapshot, now=now)
            if not found:
                passed[namespace] = passed.get(namespace, 0) + 1
                continue
            by_namespace.setdefault(namespace, []).extend(found)
            for finding in found:
                summary.findings += 1
                key = (finding.policy, finding.rule)
                summary.by_policy_rule[key] = summary.by_policy_rule.get(key, 0) + 1
                current.add(finding.identity)
                if finding.identity not in self._previous:
                    summary.new_findings += 1
                    if self.on_new_finding is not None:
                        self.on_new_finding(finding)
        self._previous = current
        self._publish(by_namespace, passed, now=now, summary=summary)
        log.info(
            "audit: %d workloads, %d violations (%d new), %d reports written, %d deleted",
            summary.audited,
            summary.findings,
            summary.new_findings,
            summary.reports_written,
            summary.reports_deleted,
        )
        return summary

    def _publish(
        self,
        by_namespace: Mapping[str, list[Finding]],
        passed: Mapping[str, int],
        *,
        now: datetime,
        summary: AuditSummary,
    ) -> None:
        try:
            available = self.reports.available()
        except ApiError as exc:
            log.warning("audit: cannot tell whether report CRDs are served: %s", exc)
            return
        if not available:
            if not self._told_no_crd:
                formats = [str(f) for f in candidates(self.reports.choice)]
                missing = (
                    f"neither {' nor '.join(formats)} is served"
                    if len(formats) > 1
                    else f"{formats[0]} is not served"
                )
                log.warning(
                    "audit: %s (CRD not installed); audit results go to the log and metrics only. "
                    "Install the CRD to get one report per namespace.",
                    missing,
                )
                self._told_no_crd = True
            return
        self._told_no_crd = False
        kind = self.reports.format.kind if self.reports.format else "report"
        try:
            existing = self.reports.existing()
        except ApiError as exc:
            log.warning("audit: cannot list %ss: %s", kind, exc)
            return
        for namespace in sorted(set(by_namespace) | set(passed)):
            body = build_report(
                by_namespace.get(namespace, []),
                passed=passed.get(namespace, 0),
                now=now,
                max_results=self.max_results,
            )
            try:
                if self.reports.upsert(namespace, body, current=existing.get(namespace)):
                    summary.reports_written += 1
            except ApiError as exc:
                log.warning("audit: cannot write the %s in %s: %s", kind, namespace, exc)
        for namespace in sorted(set(existing) - set(by_namespace) - set(passed)):
            try:
                self.reports.delete(namespace)
                summary.reports_deleted += 1
            except ApiError as exc:
                log.warning("audit: cannot delete the stale %s in %s: %s", kind, namespace, exc)
        try:
            summary.reports_deleted += self.reports.delete_other_formats()
        except ApiError as exc:
            log.warning("audit: cannot delete our reports in the format no longer written: %s", exc)
