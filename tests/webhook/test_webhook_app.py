"""The webhook app through FastAPI's TestClient: the AdmissionReview contract, verdicts, patches,
metrics and every failure mode."""

from __future__ import annotations

import base64
import json

import jsonpatch
import pytest
from webhook_fixtures import (
    EXPIRY,
    GOOD_LABELS,
    GPU,
    LABELS,
    ML_PLATFORM,
    NOW,
    NeverReady,
    deployment,
    make_client,
    pod,
    policy,
    review,
)

from controller.webhook.app import FAILURE_WARNING, create_app
from controller.webhook.settings import WebhookSettings


def _response(http) -> dict:
    assert http.status_code == 200, http.text
    body = http.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    return body["response"]


def _patch(response: dict) -> list[dict]:
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


class Exploding:
    """An engine that fails, to drive the catch-all."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("engine exploded")


# -- verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "allowed", "mentions"),
    [
        (pod(labels=GOOD_LABELS), True, []),
        (pod(labels={}), False, ["team", "cost_center", "environment"]),
        (pod(labels={**GOOD_LABELS, "team": "finance"}), False, ["team", "nlp"]),
        (pod(labels={**GOOD_LABELS, "cost_center": "42"}), False, ["cost_center", "^cc-[0-9]{3}$"]),
        (pod(labels=GOOD_LABELS, instance_type="p4d.24xlarge"), False, ["p4d.24xlarge", "g5.xlarge"]),
        (pod(labels=GOOD_LABELS, instance_type=None), False, ["node.kubernetes.io/instance-type"]),
        (pod(labels={**GOOD_LABELS, "environment": "production"}, instance_type="p4d.24xlarge"), True, []),
        (pod(labels=GOOD_LABELS, gpus=9), False, ["9", "8"]),
        # Judged by the pod template, as Kyverno's require-labels autogen does.
        (deployment(labels=GOOD_LABELS, template_labels={}), False, ["team"]),
        (deployment(labels={}, template_labels=GOOD_LABELS), True, []),
    ],
    ids=[
        "labelled",
        "unlabelled",
        "team-not-allowed",
        "bad-pattern",
        "instance-type-not-allowed",
        "instance-type-missing",
        "production-p4d",
        "too-many-gpus",
        "deployment-template-unlabelled",
        "deployment-template-labelled",
    ],
)
def test_validate_verdicts(client, obj, allowed, mentions):
    request = review(obj)
    response = _response(client.post("/validate", json=request))

    assert response["uid"] == request["request"]["uid"]
    assert response["allowed"] is allowed
    if allowed:
        assert "status" not in response
    else:
        status = response["status"]
        assert status["code"] == 403
        assert status["reason"] == "Forbidden"
        for word in mentions:
            assert word in status["message"]


def test_every_violation_is_in_one_message(client):
    obj = pod(labels={"team": "finance", "environment": "development"}, instance_type="p4d.24xlarge")
    message = _response(client.post("/validate", json=review(obj)))["status"]["message"]
    for word in ("team", "finance", "cost_center", "p4d.24xlarge", "g5.xlarge"):
        assert word in message


def test_a_denial_gets_its_joint_fix_without_walking_the_review_for_yaml_aliases(client, monkeypatch):
    """A review is parsed JSON, a tree: the webhook says so, and the engine skips the walk."""
    from controller.engine import fixing

    def walk(_document):
        raise AssertionError("the alias walk ran on a review")

    monkeypatch.setattr(fixing, "_aliased", walk)
    message = _response(client.post("/validate", json=review(pod(labels={}))))["status"]["message"]
    assert "fix (admitted with it)" in message


def test_a_pod_created_by_a_controller_is_judged_too(client):
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "serve-abc",
        "uid": "1",
        "controller": True,
    }
    response = _response(client.post("/validate", json=review(pod(labels={}, owner=owner))))
    assert response["allowed"] is False


def test_dry_run_gets_the_same_verdict(client):
    for obj in (pod(labels={}), pod(labels=GOOD_LABELS)):
        wet = _response(client.post("/validate", json=review(obj)))
        dry = _response(client.post("/validate", json=review(obj, dry_run=True)))
        assert dry["allowed"] is wet["allowed"]
        assert dry.get("status") == wet.get("status")


@pytest.mark.parametrize(
    ("obj", "kwargs"),
    [
        (pod(labels={}), {"operation": "DELETE"}),
        (pod(labels={}), {"operation": "CONNECT"}),
        (pod(labels={}, namespace="kube-system"), {}),
        (pod(labels={}, namespace="comptroller-system"), {}),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ml"}}, {}),
    ],
    ids=["delete", "connect", "kube-system", "own-namespace", "unknown-kind"],
)
def test_admitted_untouched(obj, kwargs):
    client = make_client(ML_PLATFORM)
    for path in ("/validate", "/mutate"):
        response = _response(client.post(path, json=review(obj, **kwargs)))
        assert response["allowed"] is True
        assert "patch" not in response and "status" not in response


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_skipped_requests_never_reach_the_engine(path):
    engine = Exploding()
    client = make_client(ML_PLATFORM, evaluate=engine)
    obj = pod(labels={}, namespace="kube-system")
    assert _response(client.post(path, json=review(obj)))["allowed"] is True
    assert _response(client.post(path, json=review(pod(labels={}), operation="DELETE")))["allowed"] is True
    assert engine.calls == 0


def test_an_object_being_deleted_is_never_blocked(client):
    obj = pod(labels={})
    obj["metadata"]["deletionTimestamp"] = "2026-11-20T11:00:00Z"
    response = _response(client.post("/validate", json=review(obj, operation="UPDATE", old=obj)))
    assert response["allowed"] is True


@pytest.mark.parametrize(
    ("old_labels", "new_labels", "allowed"),
    [
        ({}, {}, True),  # violated before this policy: updates still go through, warned
        (GOOD_LABELS, {}, False),  # the update removes labels: denied
        ({}, {"team": "finance"}, True),
    ],
)
def test_update_denies_only_what_it_introduces(client, old_labels, new_labels, allowed):
    old, new = pod(labels=old_labels), pod(labels=new_labels)
    response = _response(client.post("/validate", json=review(new, operation="UPDATE", old=old)))
    assert response["allowed"] is allowed
    if allowed:
        assert any("team" in w for w in response["warnings"])


# -- Warn and Audit -------------------------------------------------------------------------------


def test_warn_admits_with_warnings():
    client = make_client(policy("labels-warn", enforcement="Warn", labels=LABELS))
    response = _response(client.post("/validate", json=review(pod(labels={}))))
    assert response["allowed"] is True
    assert response["warnings"]
    assert any("team" in w for w in response["warnings"])
    assert all("\n" not in w for w in response["warnings"])


def test_audit_admits_silently_and_counts():
    client = make_client(policy("labels-audit", enforcement="Audit", labels=LABELS))
    response = _response(client.post("/validate", json=review(pod(labels={}))))
    assert response["allowed"] is True
    assert "warnings" not in response
    metrics = client.get("/metrics").text
    assert 'comptroller_admission_violations_total{policy="labels-audit",rule="labels",team=""}' in metrics
    assert (
        'comptroller_admission_requests_total{decision="audited",kind="Pod",operation="CREATE"} 1.0'
        in metrics
    )


# -- mutation -------------------------------------------------------------------------------------


def test_mutate_never_denies_and_patches_defaults_into_a_template_without_labels(client):
    obj = deployment(labels={"team": "nlp", "cost_center": "cc-001"}, template_labels=None)
    response = _response(client.post("/mutate", json=review(obj)))
    assert response["allowed"] is True
    mutated = jsonpatch.apply_patch(obj, _patch(response))
    assert mutated["spec"]["template"]["metadata"]["labels"] == {
        "team": "nlp",
        "cost_center": "cc-001",
        "environment": "development",
    }


def test_mutate_does_not_deny_an_unfixable_object(client):
    response = _response(client.post("/mutate", json=review(pod(labels={}, instance_type="p4d.24xlarge"))))
    assert response["allowed"] is True
    assert "status" not in response


def test_mutate_without_changes_sends_no_patch(client):
    response = _response(client.post("/mutate", json=review(pod(labels=GOOD_LABELS))))
    assert response == {"uid": response["uid"], "allowed": True}


def test_mutate_inherits_from_the_namespace():
    client = make_client(
        ML_PLATFORM, namespace_labels={"ml-team": {"team": "vision", "cost_center": "cc-777", "other": "x"}}
    )
    obj = pod(labels=None)
    mutated = jsonpatch.apply_patch(obj, _patch(_response(client.post("/mutate", json=review(obj)))))
    assert mutated["metadata"]["labels"] == {
        "team": "vision",
        "cost_center": "cc-777",
        "environment": "development",
    }


@pytest.mark.parametrize(
    "labels", [None, {}, {"app": "x"}], ids=["no-labels-map", "empty-map", "other-labels"]
)
def test_mutate_escapes_keys_per_rfc6901_and_creates_missing_maps(labels):
    escaped = policy(
        "escaped",
        labels={"required": [{"key": "finops.example.com/owner", "default": "platform"}]},
        expiry={**EXPIRY, "key": "finops.example.com/expires_at", "requiredWhen": {}},
    )
    client = make_client(escaped)
    obj = pod(labels=labels)
    operations = _patch(_response(client.post("/mutate", json=review(obj))))
    if labels:  # the map exists: the key is added by a path, escaped per RFC 6901
        assert {
            "op": "add",
            "path": "/metadata/labels/finops.example.com~1owner",
            "value": "platform",
        } in operations
    mutated = jsonpatch.apply_patch(obj, operations)
    assert mutated["metadata"]["labels"] == {**(labels or {}), "finops.example.com/owner": "platform"}
    assert "finops.example.com/expires_at" in mutated["metadata"].get("annotations", {})
    assert _response(client.post("/validate", json=review(mutated)))["allowed"] is True


def test_mutate_sets_a_default_expiry_on_experiments(client):
    obj = pod(labels={**GOOD_LABELS, "environment": "experiment"})
    mutated = jsonpatch.apply_patch(obj, _patch(_response(client.post("/mutate", json=review(obj)))))
    found = {**mutated["metadata"].get("labels", {}), **mutated["metadata"].get("annotations", {})}
    assert found["expires_at"].startswith("2026-11-21")  # NOW + 24h
    # And the mutated object then passes validation.
    assert _response(client.post("/validate", json=review(mutated)))["allowed"] is True


def test_mutate_leaves_a_deployments_replicaset_alone(client):
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve", "uid": "1", "controller": True}
    obj = deployment(labels={}, template_labels=None)
    obj["kind"] = "ReplicaSet"
    obj["metadata"]["ownerReferences"] = [owner]
    response = _response(client.post("/mutate", json=review(obj)))
    assert "patch" not in response


def test_an_integer_beyond_64_bits_is_still_json_and_judged(client):
    """orjson refuses it; the review is parsed by pydantic instead, not refused."""
    request = review(pod(labels={}))
    request["request"]["object"]["spec"]["priority"] = 2**70
    response = _response(client.post("/validate", content=json.dumps(request).encode()))
    assert response["allowed"] is False and "team" in response["status"]["message"]


@pytest.mark.parametrize("path", ["/validate", "/mutate", "/noop"])
def test_a_lone_surrogate_is_refused_not_a_500(client, path):
    """Not UTF-8, so not something the API server sends, and nothing orjson could write back."""
    request = review(pod(labels={"team": "\ud800"}))
    request["request"]["uid"] = "u-\ud800"
    http = client.post(path, content=json.dumps(request).encode())  # ASCII JSON with \ud800 escapes
    assert http.status_code == 400, http.text
    assert "not valid JSON" in http.json()["message"] or path == "/noop"


@pytest.mark.parametrize("uid", [10**30, None, ["u"]])
def test_noop_refuses_a_uid_that_is_not_a_string(client, uid):
    request = review(pod())
    request["request"]["uid"] = uid
    assert client.post("/noop", content=json.dumps(request).encode()).status_code == 400


# -- malformed requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "AdmissionReview"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request"),
        (
            json.dumps({**review(pod()), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
            "apiVersion",
        ),
        (
            json.dumps({**review(pod()), "request": {**review(pod())["request"], "uid": ""}}).encode(),
            "request.uid",
        ),
        (
            json.dumps(
                {**review(pod()), "request": {**review(pod())["request"], "operation": "PATCH"}}
            ).encode(),
            "request.operation",
        ),
        (
            json.dumps(
                {**review(pod()), "request": {**review(pod())["request"], "object": "a pod"}}
            ).encode(),
            "request.object",
        ),
    ],
    ids=["not-json", "array", "no-request", "v1beta1", "empty-uid", "bad-operation", "object-not-a-map"],
)
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_a_malformed_request_gets_400_naming_what_is_wrong(client, path, body, mentions):
    http = client.post(path, content=body, headers={"content-type": "application/json"})
    assert http.status_code == 400
    assert mentions in http.json()["message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_request_gets_413(chunked):
    client = make_client(ML_PLATFORM, settings=WebhookSettings(max_body_bytes=1000))
    body = json.dumps(review(pod(labels={"team": "x" * 50} | {f"k{i}": "v" for i in range(100)}))).encode()
    assert len(body) > 1000
    content = iter([body[:500], body[500:]]) if chunked else body
    http = client.post("/validate", content=content)
    assert http.status_code == 413
    assert "1000 bytes" in http.json()["message"]


# -- internal errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
@pytest.mark.parametrize(
    ("mode", "allowed"),
    [("ignore", True), ("deny", False)],
)
def test_an_internal_error_is_answered_per_failure_mode(path, mode, allowed):
    client = make_client(ML_PLATFORM, settings=WebhookSettings(failure_mode=mode), evaluate=Exploding())
    request = review(pod(labels={}))
    response = _response(client.post(path, json=request))
    assert response["uid"] == request["request"]["uid"]
    assert response["allowed"] is allowed
    if allowed:
        assert response["warnings"] == [FAILURE_WARNING]
    else:
        assert "engine exploded" in response["status"]["message"]
        assert response["status"]["code"] == 500
    assert 'decision="error"' in client.get("/metrics").text


@pytest.mark.parametrize(("mode", "allowed"), [("ignore", True), ("deny", False)])
def test_a_view_that_is_not_synced_is_answered_per_failure_mode(mode, allowed):
    from fastapi.testclient import TestClient

    app = create_app(view=NeverReady(), settings=WebhookSettings(failure_mode=mode), clock=lambda: NOW)
    client = TestClient(app)
    response = _response(client.post("/validate", json=review(pod(labels=GOOD_LABELS))))
    assert response["allowed"] is allowed
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


# -- the rest of the surface -------------------------------------------------------------------------


def test_noop_echoes_the_uid(client):
    request = review(pod())
    assert _response(client.post("/noop", json=request)) == {
        "uid": request["request"]["uid"],
        "allowed": True,
    }
    assert client.post("/noop", content=b"nope").status_code == 400


@pytest.mark.parametrize("path", ["/validate", "/mutate", "/noop"])
def test_an_admission_path_only_takes_post(client, path):
    http = client.get(path)
    assert http.status_code == 405
    assert http.headers["allow"] == "POST"
    assert "POST" in http.json()["message"]


def test_probes(client):
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/readyz").status_code == 200


def test_metrics_count_requests_by_operation_kind_and_decision(client):
    client.post("/validate", json=review(pod(labels={})))
    client.post("/validate", json=review(pod(labels={})))
    client.post("/validate", json=review(pod(labels=GOOD_LABELS)))
    client.post("/mutate", json=review(deployment(labels=GOOD_LABELS, template_labels=None)))
    text = client.get("/metrics").text
    assert 'comptroller_admission_requests_total{decision="denied",kind="Pod",operation="CREATE"} 2.0' in text
    assert (
        'comptroller_admission_requests_total{decision="allowed",kind="Pod",operation="CREATE"} 1.0' in text
    )
    assert (
        'comptroller_admission_requests_total{decision="mutated",kind="Deployment",operation="CREATE"} 1.0'
        in text
    )
    assert 'comptroller_admission_violations_total{policy="ml-platform",rule="labels",team=""} ' in text
    assert 'comptroller_admission_duration_seconds_count{webhook="validate"} 3.0' in text


def test_two_apps_in_one_process_keep_separate_metrics():
    first, second = make_client(ML_PLATFORM), make_client(ML_PLATFORM)
    first.post("/validate", json=review(pod(labels={})))
    assert 'decision="denied"' in first.get("/metrics").text
    assert 'decision="denied"' not in second.get("/metrics").text


def test_a_broken_policy_is_left_out_and_the_others_still_apply():
    broken = policy("broken", labels={"required": [{"key": "team", "pattern": "("}]})
    gpu_only = policy("gpu-only", gpu={**GPU, "allowedInstanceTypes": [{"instanceTypes": ["g5.xlarge"]}]})
    client = make_client(broken, gpu_only)
    response = _response(client.post("/validate", json=review(pod(labels={}, instance_type="p4d.24xlarge"))))
    assert response["allowed"] is False
    assert "p4d.24xlarge" in response["status"]["message"]
    assert "gpu-only" in response["status"]["message"]
