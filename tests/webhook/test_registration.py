"""The webhook configurations the API server is given."""

from __future__ import annotations

import base64

import pytest

from controller.webhook.registration import MUTATING_NAME, VALIDATING_NAME, webhook_configurations

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _hooks(**kwargs):
    validating, mutating = webhook_configurations(ca_bundle=CA, **kwargs)
    return validating, mutating, validating["webhooks"][0], mutating["webhooks"][0]


def test_url_configurations():
    validating, mutating, v, m = _hooks(url="https://127.0.0.1:8443/")
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    assert (v["name"], m["name"]) == (VALIDATING_NAME, MUTATING_NAME)
    assert v["clientConfig"]["url"] == "https://127.0.0.1:8443/validate"
    assert m["clientConfig"]["url"] == "https://127.0.0.1:8443/mutate"
    assert base64.b64decode(v["clientConfig"]["caBundle"]) == CA
    for hook in (v, m):
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 3
    assert m["reinvocationPolicy"] == "IfNeeded"
    assert "reinvocationPolicy" not in v
    # Without a mutation condition, the API server sends every matched object to /mutate.
    assert "matchConditions" not in m and "matchConditions" not in v
    # The two documents never share mutable parts.
    validating["metadata"]["labels"]["x"] = "y"
    assert "x" not in mutating["metadata"]["labels"]


def test_service_configuration_and_excluded_namespaces():
    _, _, v, _ = _hooks(
        service={"namespace": "finops", "name": "comptroller-webhook", "port": 443},
        exclude_namespaces=("kube-system", "finops"),
        failure_policy="Fail",
        timeout_seconds=5,
    )
    assert v["clientConfig"]["service"] == {
        "namespace": "finops",
        "name": "comptroller-webhook",
        "port": 443,
        "path": "/validate",
    }
    assert "url" not in v["clientConfig"]
    assert v["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["finops", "kube-system"]},
        {"key": "finops.comptroller.dev/ignore", "operator": "NotIn", "values": ["true"]},
    ]
    assert v["failurePolicy"] == "Fail" and v["timeoutSeconds"] == 5


@pytest.mark.parametrize(
    ("group", "resource"),
    [
        ("", "pods"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "replicasets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("kubeflow.org", "pytorchjobs"),
        ("kubeflow.org", "tfjobs"),
        ("kubeflow.org", "mpijobs"),
        ("ray.io", "rayjobs"),
        ("ray.io", "rayclusters"),
        ("ray.io", "rayservices"),
        ("jobset.x-k8s.io", "jobsets"),
        ("leaderworkerset.x-k8s.io", "leaderworkersets"),
    ],
)
def test_every_supported_kind_is_matched_on_create_and_update(group, resource):
    _, _, v, m = _hooks(url="https://127.0.0.1:8443")
    for hook in (v, m):
        rule = next(r for r in hook["rules"] if r["apiGroups"] == [group])
        assert resource in rule["resources"]
        assert rule["operations"] == ["CREATE", "UPDATE"]
        assert not any("/" in r for r in rule["resources"])  # no status or scale subresources


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"url": "https://x", "service": {"namespace": "a", "name": "b"}}, "exactly one"),
        ({"url": "https://x", "failure_policy": "Deny"}, "Ignore or Fail"),
        ({"url": "https://x", "timeout_seconds": 31}, "1..30"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        webhook_configurations(ca_bundle=CA, **kwargs)


def test_the_mutation_condition_goes_on_the_mutating_webhook_only():
    _, _, v, m = _hooks(url="https://127.0.0.1:8443", mutation_condition="!(false)")
    assert m["matchConditions"] == [{"name": "comptroller-may-mutate", "expression": "!(false)"}]
    assert "matchConditions" not in v


def test_the_scale_webhook_judges_scale_subresource_updates_only():
    validating, _, _, _ = _hooks(url="https://127.0.0.1:8443")
    scale = next(h for h in validating["webhooks"] if h["name"] == "scale.finops.comptroller.dev")
    assert scale["clientConfig"]["url"] == "https://127.0.0.1:8443/scale"
    resources = {r for rule in scale["rules"] for r in rule["resources"]}
    assert resources == {"deployments/scale", "statefulsets/scale", "replicasets/scale",
                         "pytorchjobs/scale", "leaderworkersets/scale"}
    assert all(rule["operations"] == ["UPDATE"] for rule in scale["rules"])


def test_the_claim_webhook_judges_claims_and_templates_at_creation_but_not_those_made_for_one_pod():
    validating, _, _, _ = _hooks(url="https://127.0.0.1:8443")
    claim = next(h for h in validating["webhooks"] if h["name"] == "claim.finops.comptroller.dev")
    assert claim["clientConfig"]["url"] == "https://127.0.0.1:8443/claim"
    assert [(r["apiGroups"], r["resources"], r["operations"]) for r in claim["rules"]] == [
        (["resource.k8s.io"], ["resourceclaims", "resourceclaimtemplates"], ["CREATE"]),
        (["resource.k8s.io"], ["resourceclaims"], ["UPDATE"]),  # updated to be a pod's
    ]
    made, updated = claim["matchConditions"]
    assert "ownerReferences" in made["expression"] and "'Pod'" in made["expression"]
    assert "oldObject.metadata.ownerReferences" in updated["expression"]
