"""The background audit on a real control plane: what runs is judged by the engine, one
PolicyReport per namespace (never one per resource) lists it, and metrics count it.
"""

from __future__ import annotations

import pytest

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


@pytest.fixture
def scoped(cluster):
    install_crds(cluster)
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
    assert (
        f'comptroller_policy_violations_total{{policy="{policy_name}",rule="labels",team=""}} 2.0' in metrics
    )
    assert (
        f'comptroller_policy_violations_total{{policy="{policy_name}",rule="labels",team="sales"}} 1.0'
        in metrics
    )
