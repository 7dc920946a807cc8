"""One engine decides at every door: the webhook (/mutate then /validate, over HTTP), the operator
(its audit of what runs, and the policies its expiry and idle loops select) and `comptroller
check` give the same verdict, the same violations, the same matching policies and the same GPU
counts, on generated workloads of every supported kind, under the default and example policies."""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import jsonpatch
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.check import Document, check_documents, load_snapshot, read_documents
from controller.constants import DEFAULT_GPU_RESOURCES
from controller.engine import matching_policies
from controller.engine.view import workload_gpus
from controller.engine.workloads import BUILTIN_KINDS
from controller.operator.audit import findings_of
from controller.operator.expiry import expiry_terms
from controller.webhook.app import create_app
from controller.webhook.settings import WebhookSettings
from controller.webhook.views import view_from_objects
from tests.reliability.admission_strategies import workloads

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POLICY_SETS = {
    "default": [ROOT / "policies" / "default"],
    "examples": [ROOT / "policies" / "examples"],
    "both": [ROOT / "policies" / "default", ROOT / "policies" / "examples"],
}
_DENIED_LINE = re.compile(r"^- \[([^/\]]+)/([a-z]+)\]", re.MULTILINE)


def _doors(paths):
    snapshot, errors = load_snapshot(paths)
    assert not errors, errors
    objects = [d.body for d in read_documents(paths).documents]
    view = view_from_objects(objects, excluded_namespaces=snapshot.excluded_namespaces)
    # The webhook's own namespace is one no generated workload uses: check does not know it.
    app = create_app(
        view=view, settings=WebhookSettings(namespace="comptroller-under-test"), clock=lambda: NOW
    )
    return snapshot, TestClient(app), view


DOORS = {name: _doors(paths) for name, paths in POLICY_SETS.items()}


def _review(obj, uid="u"):
    group, _, version = obj["apiVersion"].rpartition("/")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": obj["kind"]},
            "resource": {"group": group, "version": version, "resource": obj["kind"].lower() + "s"},
            "namespace": obj["metadata"]["namespace"],
            "name": obj["metadata"].get("name", ""),
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": obj,
        },
    }


def _webhook(client, manifest):
    """What the API server does: /mutate, apply its patch, then /validate the mutated object."""
    mutated_response = client.post("/mutate", json=_review(manifest)).json()["response"]
    mutated = copy.deepcopy(manifest)
    if "patch" in mutated_response:
        ops = json.loads(base64.b64decode(mutated_response["patch"]))
        mutated = jsonpatch.apply_patch(mutated, ops)
    verdict = client.post("/validate", json=_review(mutated)).json()["response"]
    return mutated, verdict


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(generated=workloads(), policy_set=st.sampled_from(sorted(POLICY_SETS)))
def test_webhook_operator_and_check_agree(generated, policy_set):
    _, manifest = generated
    if not isinstance(manifest["metadata"].get("name"), str):
        manifest["metadata"]["name"] = "generated"
    manifest["metadata"]["namespace"] = manifest["metadata"].get("namespace") or "default"
    snapshot, client, _ = DOORS[policy_set]

    # check: mutation and validation in one evaluation, as `comptroller check` prints it
    decisions = check_documents([Document("generated.yaml", 1, manifest)], snapshot=snapshot, now=NOW)
    mutated, verdict = _webhook(client, manifest)
    if BUILTIN_KINDS.lookup(manifest) is None:
        assert decisions == [] and verdict["allowed"] is True
        return
    (decision,) = decisions

    # the verdict, and which policy and rule each denial comes from
    assert verdict["allowed"] is decision.allowed
    denied = sorted(_DENIED_LINE.findall(verdict.get("status", {}).get("message", "")))
    assert denied == sorted((v.policy, v.rule) for v in decision.violations)
    assert len(verdict.get("warnings", [])) >= len(decision.warnings)

    # the operator's audit of the running (already mutated) object finds the same violations
    found = sorted((f.policy, f.rule, f.key) for f in findings_of(mutated, snapshot=snapshot, now=NOW))
    assert found == sorted((v.policy, v.rule, v.key) for v in decision.all_violations)

    # which policies select it, with the GPUs each counts; the operator's expiry loop agrees
    matches = matching_policies(mutated, snapshot=snapshot, now=NOW)
    for match in matches:
        gpu = match.policy.spec.gpu
        resources = gpu.resource_tuple if gpu is not None else DEFAULT_GPU_RESOURCES
        assert match.gpus == workload_gpus(mutated, resources=resources)
    judged = {v.policy for v in decision.all_violations + decision.exempted if v.rule != "budget"}
    assert judged <= {m.policy.name for m in matches}
    terms = expiry_terms(
        mutated, snapshot.policies, now=NOW, excluded_namespaces=snapshot.excluded_namespaces
    )
    if terms is not None:
        assert terms.policy in {m.policy.name for m in matches if m.policy.spec.expiry is not None}


@pytest.mark.parametrize("policy_set", sorted(POLICY_SETS))
def test_the_doors_load_the_same_policies(policy_set):
    snapshot, _, view = DOORS[policy_set]
    assert snapshot.policies, "a policy set with no policies would make the agreement test vacuous"
    served = view.snapshot()
    for field in ("policies", "budgets", "exceptions"):
        assert [o.name for o in getattr(served, field)] == [o.name for o in getattr(snapshot, field)]
