"""Audit reports (`controller/k8s/reports.py`): which format is written, and the objects' shape."""

from __future__ import annotations

import pytest

from controller.k8s.reports import (
    CHOICES,
    MANAGED_BY,
    OPENREPORTS,
    WGPOLICYK8S,
    PolicyReports,
    comparable,
    document,
    select,
)
from controller.k8s.workloads import NOT_SERVED_RECHECK_SECONDS
from tests.k8s.fakes import Discovery


@pytest.mark.parametrize(
    ("choice", "served", "chosen"),
    [
        ("auto", {OPENREPORTS, WGPOLICYK8S}, OPENREPORTS),
        ("auto", {OPENREPORTS}, OPENREPORTS),
        ("auto", {WGPOLICYK8S}, WGPOLICYK8S),
        ("auto", set(), None),
        ("openreports", {OPENREPORTS, WGPOLICYK8S}, OPENREPORTS),
        ("openreports", {WGPOLICYK8S}, None),
        ("wgpolicyk8s", {OPENREPORTS, WGPOLICYK8S}, WGPOLICYK8S),
        ("wgpolicyk8s", {OPENREPORTS}, None),
    ],
)
def test_select(choice, served, chosen):
    assert select(choice, {f: f in served for f in (OPENREPORTS, WGPOLICYK8S)}) == chosen


def test_choices_and_unknown_formats():
    assert CHOICES == ("auto", "openreports", "wgpolicyk8s")
    with pytest.raises(ValueError, match="unknown reports format 'kyverno'"):
        select("kyverno", {})


BODY = {
    "summary": {"pass": 3, "fail": 1, "warn": 0, "error": 0, "skip": 0},
    "results": [
        {
            "source": "comptroller",
            "policy": "labels",
            "rule": "labels",
            "result": "fail",
            "category": "FinOps",
            "severity": "medium",
            "scored": True,
            "message": "Pod/a is missing team",
            "timestamp": {"seconds": 1795000000, "nanos": 0},
            "resources": [{"apiVersion": "v1", "kind": "Pod", "name": "a", "namespace": "ml-a", "uid": "u"}],
            "properties": {"enforcement": "Audit", "fix": "team: nlp"},
        }
    ],
    "metadata": {"annotations": {"finops.comptroller.dev/results-truncated": "1 of 2 results shown"}},
}


def test_an_openreports_report():
    doc = document(OPENREPORTS, "ml-a", BODY)
    assert doc == {
        "apiVersion": "openreports.io/v1alpha1",
        "kind": "Report",
        "source": "comptroller",
        "summary": BODY["summary"],
        "results": BODY["results"],
        "metadata": {
            "name": "comptroller",
            "namespace": "ml-a",
            "labels": MANAGED_BY,
            "annotations": BODY["metadata"]["annotations"],
        },
    }


def test_a_legacy_policyreport_carries_the_same_content():
    doc = document(WGPOLICYK8S, "ml-a", BODY)
    assert (doc["apiVersion"], doc["kind"]) == ("wgpolicyk8s.io/v1alpha2", "PolicyReport")
    assert "source" not in doc  # v1alpha2 has no report-level source; each result names it
    openreports = document(OPENREPORTS, "ml-a", BODY)
    assert {k: v for k, v in openreports.items() if k not in ("apiVersion", "kind", "source")} == {
        k: v for k, v in doc.items() if k not in ("apiVersion", "kind")
    }


def test_comparable_ignores_timestamps_only():
    doc = document(OPENREPORTS, "ml-a", BODY)
    later = document(OPENREPORTS, "ml-a", BODY)
    later["results"] = [{**r, "timestamp": {"seconds": 1795000300, "nanos": 0}} for r in later["results"]]
    assert comparable(doc) == comparable(later)
    assert comparable(doc) != comparable({**doc, "summary": {**doc["summary"], "pass": 4}})


def test_auto_finds_openreports_installed_later_cheaply():
    api = Discovery()
    api.served["wgpolicyk8s.io"] = [{"name": "policyreports", "kind": "PolicyReport", "namespaced": True}]
    reports = PolicyReports(api)
    assert reports.available() and reports.format == WGPOLICYK8S
    assert api.asked == ["/apis/openreports.io/v1alpha1", "/apis/wgpolicyk8s.io/v1alpha2"]

    api.served["openreports.io"] = [
        {"name": "reports", "kind": "Report", "namespaced": True},
        {"name": "clusterreports", "kind": "ClusterReport", "namespaced": False},
    ]
    for _ in range(10):  # audit passes within the recheck interval: discovery is not asked again
        api.now += NOT_SERVED_RECHECK_SECONDS / 20
        assert reports.available() and reports.format == WGPOLICYK8S
    assert len(api.asked) == 2

    api.now += NOT_SERVED_RECHECK_SECONDS
    assert reports.available() and reports.format == OPENREPORTS
    assert api.asked[2:] == ["/apis/openreports.io/v1alpha1"]
    assert reports._resource is not None
    assert reports._resource.path("ml-a") == "/apis/openreports.io/v1alpha1/namespaces/ml-a/reports"
    for _ in range(10):  # served kinds are remembered
        assert reports.available()
    assert len(api.asked) == 3


def test_pinned_formats_ask_only_about_their_own_group():
    api = Discovery()
    reports = PolicyReports(api, choice="wgpolicyk8s")
    assert not reports.available() and reports.format is None
    assert api.asked == ["/apis/wgpolicyk8s.io/v1alpha2"]


@pytest.mark.parametrize(
    ("argv", "expected"), [([], "auto"), (["--reports-format", "openreports"], "openreports")]
)
def test_the_operator_flag(argv, expected):
    import argparse

    from controller.operator.main import build_config, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    assert build_config(parser.parse_args(argv)).audit.reports_format == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["--reports-format", "kyverno"])
