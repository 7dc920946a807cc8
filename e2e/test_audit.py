"""The background audit on a real control plane: what runs is judged by the engine, one report
per namespace (never one per resource) lists it, and metrics count it. Reports are OpenReports
`Report`s where the cluster serves openreports.io (the CRDs rendered from the chart's
`reports.installOpenReportsCRD`), legacy `PolicyReport`s otherwise, with the same results.
"""

from __future__ import annotations

import pytest

from e2e.chart import render
from e2e.helpers import (
    OperatorProcess,
    deployment,
    fresh_namespace,
    get_json,
    install_crds,
    policy,
    unique,
    wait_until,
)

# These tests run operators of their own; the stack's must not act on their objects meanwhile.
pytestmark = pytest.mark.usefixtures("quiet_stack_operator")


OPENREPORTS_CRDS = ("reports.openreports.io", "clusterreports.openreports.io")


def remove_openreports(cluster) -> None:
    """The cluster without the OpenReports CRDs (the legacy PolicyReport stays): how a cluster
    without Kyverno 1.15+ looks, and how the other audit tests expect it."""
    cluster.kubectl("delete", "crd", *OPENREPORTS_CRDS, "--ignore-not-found", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: cluster.kubectl("get", "--raw", "/apis/openreports.io", check=False).returncode != 0,
        timeout=30,
        what="openreports.io to be served no more",
    )


@pytest.fixture
def openreports(cluster):
    """The OpenReports CRDs as the chart installs them, removed again afterwards."""
    crds = [
        o
        for o in render({"reports": {"installOpenReportsCRD": True}}, namespace="comptroller-system")
        if o["kind"] == "CustomResourceDefinition" and o["spec"]["group"] == "openreports.io"
    ]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(OPENREPORTS_CRDS)
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)
    try:
        yield lambda: install_openreports(cluster, crds)
    finally:
        remove_openreports(cluster)


def install_openreports(cluster, crds: list[dict]) -> None:
    cluster.apply(crds, server_side=True)
    for crd in crds:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


@pytest.fixture
def scoped(cluster):
    install_crds(cluster)
    remove_openreports(cluster)  # left over by an interrupted run: the legacy tests expect none
    namespace = fresh_namespace(cluster, "e2e-audit")
    name = unique("e2e-audit")
    cluster.apply(
        [
            policy(
                name,
                {
                    "enforcement": "Audit",
                    "match": {"namespaces": [namespace]},
                    "labels": {"required": [{"key": "team", "allowedValues": ["nlp", "vision"]}]},
                },
            )
        ]
    )
    yield namespace, name
    cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def pod(name: str, namespace: str, labels: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "containers": [{"name": "main", "image": "busybox"}],
            "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"},
        },
    }



def ours(report: dict | None, policy_name: str) -> list[dict]:
    return [r for r in (report or {}).get("results", []) if r["policy"] == policy_name]


def test_audit_publishes_one_compact_report_per_namespace(cluster, scoped):
    namespace, policy_name = scoped
    # Admitted before the policy mattered (the webhook leaves this namespace alone).
    cluster.apply(
        [
            pod("unlabelled", namespace, {}),
            pod("wrong-team", namespace, {"team": "sales"}),
            pod("fine", namespace, {"team": "nlp"}),
            deployment("server", namespace, replicas=3),
        ]
    )
    wait_until(
        lambda: len(get_json(cluster, "pods", "-n", namespace, "-l", "app=server")["items"]) == 3,
        timeout=30,
        what="the Deployment's pods",
    )
    with OperatorProcess(
        cluster, "--audit-interval", "2", "--expiry-interval", "3600", "--idle-interval", "3600"
    ) as operator:
        report = wait_until(
            lambda: (
                len(ours(r := get_json(cluster, "policyreport", "comptroller", "-n", namespace), policy_name))
                == 3
                and r
            ),
            timeout=40,
            what="the namespace's PolicyReport with three results",
        )
        metrics = operator.metrics()

    results = ours(report, policy_name)
    # The Deployment is judged once, through itself: not its ReplicaSet, not its three pods.
    assert sorted((r["resources"][0]["kind"], r["resources"][0]["name"]) for r in results) == [
        ("Deployment", "server"),
        ("Pod", "unlabelled"),
        ("Pod", "wrong-team"),
    ]
    assert all(
        r["result"] == "fail" and r["rule"] == "labels" and r["source"] == "comptroller" for r in results
    )
    assert all(r["properties"]["enforcement"] == "Audit" and r["properties"].get("fix") for r in results)
    # Other policies in the cluster (the default set, if applied) may add to the summary.
    assert report["summary"]["fail"] >= 3
    # One report for the namespace, whatever the number of workloads.
    reports = get_json(cluster, "policyreports", "-n", namespace)["items"]
    assert [r["metadata"]["name"] for r in reports] == ["comptroller"]
    found = "comptroller_audit_violations_found_total"
    assert f'{found}{{policy="{policy_name}",rule="labels",team=""}} 2.0' in metrics
    # A team the policy refuses is counted as `other`: label values stay bounded (README.md, "Metrics").
    assert f'{found}{{policy="{policy_name}",rule="labels",team="other"}} 1.0' in metrics
    assert 'team="sales"' not in metrics


def test_with_openreports_served_reports_are_openreports_with_the_same_results(cluster, scoped, openreports):
    namespace, policy_name = scoped
    cluster.apply([pod("unlabelled", namespace, {}), pod("fine", namespace, {"team": "nlp"})])
    args = ("--audit-interval", "2", "--expiry-interval", "3600", "--idle-interval", "3600")

    def legacy():
        return ours(r := get_json(cluster, "policyreport", "comptroller", "-n", namespace), policy_name) and r

    def report():
        r = get_json(cluster, "reports.openreports.io", "comptroller", "-n", namespace)
        return ours(r, policy_name) and r

    # Without the OpenReports CRD: the legacy PolicyReport, as on a cluster without Kyverno 1.15+.
    with OperatorProcess(cluster, *args):
        old = wait_until(legacy, timeout=40, what="the namespace's PolicyReport")

    # The CRD installed (Kyverno 1.15+, or the chart): a Report with the same results takes over,
    # and our PolicyReport goes, so readers of both formats do not list the namespace twice.
    openreports()
    with OperatorProcess(cluster, *args) as operator:
        new = wait_until(report, timeout=40, what="the namespace's openreports.io Report")
        wait_until(
            lambda: get_json(cluster, "policyreport", "comptroller", "-n", namespace) is None,
            timeout=20,
            what="our legacy PolicyReport to be deleted",
        )
        log = operator.log()

    assert (new["apiVersion"], new["kind"]) == ("openreports.io/v1alpha1", "Report")
    assert new["source"] == "comptroller"
    assert new["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "comptroller"}
    (result,) = ours(new, policy_name)
    assert result["resources"][0]["kind"] == "Pod" and result["resources"][0]["name"] == "unlabelled"
    assert (result["result"], result["rule"], result["source"]) == ("fail", "labels", "comptroller")
    assert result["properties"]["enforcement"] == "Audit" and result["properties"].get("fix")
    assert set(result["timestamp"]) == {"seconds", "nanos"}

    def content(r: dict) -> list[dict]:
        return [{k: v for k, v in x.items() if k != "timestamp"} for x in ours(r, policy_name)]

    assert content(new) == content(old)
    assert new["summary"]["fail"] >= 1 and new["summary"]["pass"] >= 1
    assert "writing reports as Report (openreports.io/v1alpha1)" in log
    # One report for the namespace, as with PolicyReports.
    reports = get_json(cluster, "reports.openreports.io", "-n", namespace)["items"]
    assert [r["metadata"]["name"] for r in reports] == ["comptroller"]
