"""The background audit: findings from the engine, compact capped reports, publishing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lifecycle_fakes import FakeWorkloads

from controller import constants
from controller.engine import Snapshot
from controller.engine.models import FinOpsPolicy
from controller.engine.workloads import BUILTIN_KINDS
from controller.operator.audit import (
    TRUNCATED_ANNOTATION,
    Auditor,
    Finding,
    build_report,
    findings_of,
    top_level,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def policy(name="labels", enforcement="Enforce"):
    return FinOpsPolicy.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": name},
            "spec": {
                "enforcement": enforcement,
                "match": {"namespaces": ["ml-*"]},
                "labels": {"required": [{"key": "team", "allowedValues": ["nlp", "vision"]}]},
            },
        }
    )


SNAPSHOT = Snapshot(policies=(policy(),))


def pod(name, *, namespace="ml-a", labels=None, owner=None):
    metadata = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [
            {"apiVersion": owner[0], "kind": owner[1], "name": "o", "uid": "o", "controller": True}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": [{"name": "c"}]}}


@pytest.mark.parametrize(
    ("obj", "judged"),
    [
        (pod("bare"), True),
        (pod("of-rs", owner=("apps/v1", "ReplicaSet")), False),
        (pod("of-job", owner=("batch/v1", "Job")), False),
        (pod("of-ray", owner=("ray.io/v1", "RayCluster")), False),
        (pod("of-unknown", owner=("serving.kserve.io/v1beta1", "InferenceService")), True),
    ],
)
def test_top_level(obj, judged):
    assert top_level(obj, BUILTIN_KINDS) is judged


@pytest.mark.parametrize(
    ("obj", "snapshot", "results"),
    [
        (pod("ok", labels={"team": "nlp"}), SNAPSHOT, []),
        (pod("missing"), SNAPSHOT, [("labels", "labels", "fail")]),
        (pod("wrong", labels={"team": "sales"}), SNAPSHOT, [("labels", "labels", "fail")]),
        (pod("warned"), Snapshot(policies=(policy("soft", "Warn"),)), [("soft", "labels", "warn")]),
        (pod("audited"), Snapshot(policies=(policy("quiet", "Audit"),)), [("quiet", "labels", "fail")]),
        (pod("elsewhere", namespace="prod"), SNAPSHOT, []),
    ],
)
def test_findings_of(obj, snapshot, results):
    found = findings_of(obj, snapshot=snapshot, now=NOW)
    assert [(f.policy, f.rule, f.result) for f in found] == results
    for f in found:
        assert dict(f.resource)["uid"] == obj["metadata"]["uid"] and f.message


def finding(name, result="fail"):
    return Finding(
        namespace="ml-a",
        resource=(("kind", "Pod"), ("name", name), ("uid", name)),
        policy="p",
        rule="labels",
        result=result,
        message=f"{name} is missing team",
        fix="team: nlp",
        enforcement="Enforce" if result == "fail" else "Warn",
        key="team",
        team="",
    )


@pytest.mark.parametrize(
    ("findings", "cap", "shown", "truncated"),
    [
        ([finding("a"), finding("b", "warn")], 10, ["a", "b"], None),
        (
            [finding("w1", "warn"), finding("f1"), finding("w2", "warn"), finding("f2")],
            3,
            ["f1", "f2", "w1"],
            "3 of 4 results shown, failures first",
        ),
        ([], 10, [], None),
    ],
)
def test_build_report_caps_failures_first_and_summary_counts_all(findings, cap, shown, truncated):
    report = build_report(findings, passed=7, now=NOW, max_results=cap)
    assert [r["resources"][0]["name"] for r in report["results"]] == shown
    assert report["summary"] == {
        "pass": 7,
        "fail": sum(f.result == "fail" for f in findings),
        "warn": sum(f.result == "warn" for f in findings),
        "error": 0,
        "skip": 0,
    }
    assert report.get("metadata", {}).get("annotations", {}).get(TRUNCATED_ANNOTATION) == truncated
    for result in report["results"]:
        assert result["source"] == "comptroller" and result["timestamp"] == {
            "seconds": int(NOW.timestamp()),
            "nanos": 0,
        }
        assert all(isinstance(v, str) for v in result["properties"].values())


class Served(FakeWorkloads):
    """FakeWorkloads serving only the report groups in `groups` (workload kinds are all served)."""

    def __init__(self, *objects: dict, groups: set[str]) -> None:
        super().__init__(*objects)
        self.groups = groups

    def resolve(self, kind, *, group=None, version=None):
        if group in ("openreports.io", "wgpolicyk8s.io") and group not in self.groups:
            return None
        return super().resolve(kind, group=group, version=version)


BOTH = {"openreports.io", "wgpolicyk8s.io"}


@pytest.mark.parametrize(
    ("groups", "kind", "api_version"),
    [
        (BOTH, "Report", "openreports.io/v1alpha1"),
        ({"openreports.io"}, "Report", "openreports.io/v1alpha1"),
        ({"wgpolicyk8s.io"}, "PolicyReport", "wgpolicyk8s.io/v1alpha2"),
    ],
)
def test_one_report_per_namespace_and_no_rewrite_when_nothing_changed(groups, kind, api_version):
    fake = Served(
        pod("a"),
        pod("b"),
        pod("ok", labels={"team": "nlp"}),
        pod("c", namespace="ml-b"),
        pod("d", namespace="ml-c", labels={"team": "nlp"}),
        pod("sys", namespace="kube-system"),
        groups=groups,
    )
    new = []
    auditor = Auditor(workloads=fake, max_results_per_report=1, on_new_finding=new.append)
    first = auditor.run(snapshot=SNAPSHOT, now=NOW)
    reports = {ns: obj for (k, ns, _), obj in fake.objects.items() if k == kind}
    assert sorted(reports) == ["ml-a", "ml-b", "ml-c"]
    assert all(r["apiVersion"] == api_version for r in reports.values())
    assert not any(k in ("Report", "PolicyReport") and k != kind for (k, _, _) in fake.objects)
    assert reports["ml-a"]["summary"] == {"pass": 1, "fail": 2, "warn": 0, "error": 0, "skip": 0}
    assert len(reports["ml-a"]["results"]) == 1  # capped
    assert reports["ml-c"]["results"] == [] and reports["ml-c"]["summary"]["pass"] == 1
    assert (first.audited, first.findings, first.new_findings, first.reports_written) == (5, 3, 3, 3)
    assert len(new) == 3

    writes = len(fake.mutations())
    second = auditor.run(snapshot=SNAPSHOT, now=NOW.replace(minute=5))
    assert (second.new_findings, second.reports_written) == (0, 0)
    assert len(fake.mutations()) == writes  # a quiet cluster costs no writes

    # Fixed workloads leave the report; a namespace with nothing left loses it.
    del fake.objects[("Pod", "ml-b", "c")]
    fake.objects[("Pod", "ml-a", "a")]["metadata"]["labels"] = {"team": "nlp"}
    third = auditor.run(snapshot=SNAPSHOT, now=NOW.replace(minute=10))
    assert third.reports_deleted == 1 and (kind, "ml-b", "comptroller") not in fake.objects
    assert fake.objects[(kind, "ml-a", "comptroller")]["summary"]["fail"] == 1


def test_without_the_crd_the_audit_still_runs_and_counts(caplog):
    fake = FakeWorkloads(pod("a"), served=False)
    summary = Auditor(workloads=fake).run(snapshot=SNAPSHOT, now=NOW)
    assert summary.findings == 1 and fake.mutations() == []
    assert (
        "neither Report (openreports.io/v1alpha1) nor PolicyReport (wgpolicyk8s.io/v1alpha2) is served"
        in caplog.text
    )


def reports_of(fake: FakeWorkloads) -> dict[tuple[str, str], dict]:
    return {
        (k, ns): obj
        for (k, ns, name), obj in fake.objects.items()
        if k in ("Report", "PolicyReport") and name == "comptroller"
    }


def test_openreports_installed_later_takes_over_with_the_same_content_and_legacy_reports_go():
    fake = Served(
        pod("a"), pod("b", namespace="ml-b"), pod("ok", labels={"team": "nlp"}), groups={"wgpolicyk8s.io"}
    )
    auditor = Auditor(workloads=fake, max_results_per_report=1)
    auditor.run(snapshot=SNAPSHOT, now=NOW)
    legacy = reports_of(fake)
    assert sorted(legacy) == [("PolicyReport", "ml-a"), ("PolicyReport", "ml-b")]

    kyverno = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": "kyverno-x",
            "namespace": "ml-a",
            "labels": {"app.kubernetes.io/managed-by": "kyverno"},
        },
    }
    fake.add(kyverno)
    fake.groups = set(BOTH)  # Kyverno 1.15+ (or the chart) installs the OpenReports CRD
    summary = auditor.run(snapshot=SNAPSHOT, now=NOW.replace(minute=5))
    now = reports_of(fake)
    assert sorted(now) == [("Report", "ml-a"), ("Report", "ml-b")]
    assert summary.reports_written == 2 and summary.reports_deleted == 2
    for namespace in ("ml-a", "ml-b"):
        old, new = legacy[("PolicyReport", namespace)], now[("Report", namespace)]
        assert new["source"] == "comptroller" and "source" not in old
        assert new["summary"] == old["summary"]
        assert [{k: v for k, v in r.items() if k != "timestamp"} for r in new["results"]] == [
            {k: v for k, v in r.items() if k != "timestamp"} for r in old["results"]
        ]
        assert new["metadata"]["labels"] == old["metadata"]["labels"]
    assert ("PolicyReport", "ml-a", "kyverno-x") in fake.objects  # not ours: left alone

    # Settled: the legacy kind is not listed again, and nothing is written.
    writes = len(fake.mutations())
    assert auditor.run(snapshot=SNAPSHOT, now=NOW.replace(minute=10)).reports_written == 0
    assert len(fake.mutations()) == writes


@pytest.mark.parametrize(
    ("choice", "groups", "kind"),
    [
        ("wgpolicyk8s", BOTH, "PolicyReport"),
        ("openreports", BOTH, "Report"),
        ("openreports", {"wgpolicyk8s.io"}, None),
        ("wgpolicyk8s", {"openreports.io"}, None),
    ],
)
def test_a_pinned_format_is_the_only_one_written(choice, groups, kind, caplog):
    fake = Served(pod("a"), groups=groups)
    Auditor(workloads=fake, reports_format=choice).run(snapshot=SNAPSHOT, now=NOW)
    assert [k for (k, _) in reports_of(fake)] == ([kind] if kind else [])
    if kind is None:
        assert "is not served (CRD not installed)" in caplog.text


def test_a_pinned_legacy_format_removes_our_openreports_reports_once():
    fake = Served(pod("a"), groups=BOTH)
    Auditor(workloads=fake).run(snapshot=SNAPSHOT, now=NOW)
    assert list(reports_of(fake)) == [("Report", "ml-a")]
    Auditor(workloads=fake, reports_format="wgpolicyk8s").run(snapshot=SNAPSHOT, now=NOW)
    assert list(reports_of(fake)) == [("PolicyReport", "ml-a")]
