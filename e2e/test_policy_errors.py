"""Bad policies on the real control plane (the Kyverno/Gatekeeper failure users fear most: one bad
policy taking admission down with it).

What the API server can judge, it refuses: the CRDs' OpenAPI schemas and CEL rules reject a bad
FinOpsPolicy, GPUBudget or FinOpsException at `kubectl apply`, naming the field. What only the
engine can judge (a regular expression that does not compile) is accepted by the API server; the
operator then reports the policy not Ready with the reason, and the webhook leaves it out and keeps
judging with every other policy. Fixing the policy brings it back, without a restart.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from e2e.helpers import COMPLIANT_LABELS, wait_until

API = "finops.comptroller.dev/v1alpha1"


def fop(name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "FinOpsPolicy", "metadata": {"name": name}, "spec": spec}


def budget(name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "GPUBudget", "metadata": {"name": name}, "spec": spec}


def exception(name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "FinOpsException",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


REFUSED = [
    ("enforcement not an enum value", fop("p", {"enforcement": "Deny"}), "spec.enforcement"),
    ("required label without a key", fop("p", {"labels": {"required": [{"pattern": "^a$"}]}}),
     "spec.labels.required[0].key"),
    ("a label key Kubernetes would refuse", fop("p", {"labels": {"required": [{"key": "no spaces"}]}}),
     "spec.labels.required[0].key"),
    ("a default outside the allowed values", fop("p", {"labels": {"required": [
        {"key": "env", "allowedValues": ["a", "b"], "default": "c"}]}}), "spec.labels.required[0]"),
    ("a lifetime that is not a duration", fop("p", {"expiry": {"maxLifetime": "3 days"}}),
     "spec.expiry.maxLifetime"),
    ("a negative GPU cap", fop("p", {"gpu": {"maxGPUsPerPod": -1}}), "spec.gpu.maxGPUsPerPod"),
    ("In without values", fop("p", {"match": {"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "In"}]}}}), "spec.match.namespaceSelector.matchExpressions[0]"),
    ("a budget without hours", budget("b", {"period": "Monthly"}), "spec.gpuHours"),
    ("a budget period that does not exist", budget("b", {"gpuHours": 10, "period": "Yearly"}),
     "spec.period"),
    ("hours of the wrong type", budget("b", {"gpuHours": "lots"}), "spec.gpuHours"),
    ("an exception without a reason", exception("e", {
        "policies": ["*"], "rules": ["*"], "expiresAt": "2030-01-01T00:00:00Z"}), "spec.reason"),
]


@pytest.mark.parametrize(("case", "obj", "field"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_api_server_refuses_what_the_schema_can_judge(cluster, stack, case, obj, field):
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["name"] = f"{obj['metadata']['name']}-{uuid.uuid4().hex[:6]}"
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    assert out.returncode != 0, f"{case}: accepted\n{out.stdout}"
    assert "is invalid" in out.stderr and field in out.stderr, out.stderr


def ready_condition(cluster, name: str) -> dict | None:
    obj = json.loads(cluster.kubectl("get", "finopspolicy", name, "-o", "json").stdout)
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return next((c for c in status.get("conditions") or () if c["type"] == "Ready"), None)



def dry_run_pod(cluster, namespace: str, labels: dict) -> tuple[bool, str]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}", "namespace": namespace, "labels": labels},
           "spec": {"containers": [{"name": "main", "image": "registry.example.com/app:1"}]}}
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    return out.returncode == 0, out.stderr


def test_a_policy_only_the_engine_can_refuse_is_not_ready_and_the_others_keep_working(
        cluster, stack, namespace):
    name = f"broken-{uuid.uuid4().hex[:6]}"
    broken = fop(name, {
        "enforcement": "Enforce",
        "match": {"namespaces": [namespace]},  # whatever happens, it concerns this test only
        "labels": {"required": [{"key": "ticket", "pattern": "^(JIRA-[0-9]+"}]},  # unbalanced (
    })
    cluster.apply([broken])
    try:
        ready = wait_until(lambda: ready_condition(cluster, name), timeout=60, what="the Ready condition")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.labels.required[0].pattern" in ready["message"], ready["message"]
        printed = cluster.kubectl("get", "finopspolicy", name).stdout
        assert "False" in printed  # `kubectl get fop` shows it at a glance

        # The webhook judges with the other policies: a compliant pod is admitted (the broken
        # policy's `ticket` label is not demanded), a non-compliant one is denied by finops-labels.
        admitted, stderr = dry_run_pod(cluster, namespace, COMPLIANT_LABELS)
        assert admitted, stderr
        denied, stderr = dry_run_pod(cluster, namespace, {"team": "nlp"})
        assert not denied and "finops-labels" in stderr and name not in stderr, stderr

        # Fixed, it is Ready again and applies, without restarting anything.
        cluster.kubectl("patch", "finopspolicy", name, "--type=json", "-p", json.dumps([
            {"op": "replace", "path": "/spec/labels/required/0/pattern", "value": "^JIRA-[0-9]+$"}]))
        ready = wait_until(lambda: (c := ready_condition(cluster, name)) and c["status"] == "True" and c,
                         timeout=60, what="Ready=True after the fix")
        assert ready["reason"] == "Compiled"

        def denied_for_ticket():
            ok, stderr = dry_run_pod(cluster, namespace, COMPLIANT_LABELS)
            return not ok and name in stderr and "ticket" in stderr and stderr

        assert wait_until(denied_for_ticket, timeout=30, what="the fixed policy to apply at admission")
    finally:
        cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", check=False)
