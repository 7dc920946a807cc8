"""`projection_key_of`: under which key budgets project a workload to its expiry, the engine's one
answer to it. Admission (`evaluate`) projects under it; the operator's budget queue reserves a
released pod up to it (controller.metering.usage.pod_record)."""

from datetime import timedelta

import pytest
from engine_cases import NOW, budget, pod, policy, snapshot

from controller.constants import DEFAULT_EXPIRY_KEY
from controller.engine import evaluate
from controller.engine.evaluation import projection_key_of
from controller.engine.expiry import format_annotation, projection_key

NLP = {"team": "nlp"}


def ttl(name="ttl", key="ttl", **spec):
    return policy(name, expiry={"key": key}, **spec)


@pytest.mark.parametrize(
    ("policies", "manifest", "key"),
    [
        ([], pod(NLP, gpus=1), DEFAULT_EXPIRY_KEY),
        ([ttl()], pod(NLP, gpus=1), "ttl"),
        ([policy("a", expiry={}), ttl("b")], pod(NLP, gpus=1), "ttl"),  # the first non-default key
        ([ttl("a", key="lease"), ttl("b")], pod(NLP, gpus=1), "lease"),  # in snapshot order
        ([ttl(match={"namespaces": ["research-*"]})], pod(NLP, gpus=1), DEFAULT_EXPIRY_KEY),
        ([ttl(match={"gpuOnly": True})], pod(NLP, gpus=0), DEFAULT_EXPIRY_KEY),
        ([ttl(match={"gpuOnly": True})], pod(NLP, gpus=1), "ttl"),
        ([ttl(match={"selector": {"matchLabels": {"team": "cv"}}})], pod(NLP, gpus=1), DEFAULT_EXPIRY_KEY),
        ([ttl()], pod(NLP, gpus=1, namespace="kube-system"), DEFAULT_EXPIRY_KEY),
        ([ttl()], {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "ml"}},
         DEFAULT_EXPIRY_KEY),
    ],
    ids=["no-policy", "ttl", "first-custom", "first-of-two", "namespace", "gpu-only-cpu", "gpu-only-gpu",
         "selector", "excluded-namespace", "not-a-workload"],
)
def test_projection_key_of(policies, manifest, key):
    assert projection_key_of(manifest, snapshot=snapshot(*policies)) == key


def test_projection_key_of_matching_policies():
    assert projection_key([]) == DEFAULT_EXPIRY_KEY
    assert projection_key([policy("a"), ttl("b"), ttl("c", key="lease")]) == "ttl"


@pytest.mark.parametrize(("ttl_hours", "allowed"), [(10, True), (11, False)])
def test_admission_projects_under_the_same_key(ttl_hours, allowed):
    """A stale `expires_at` the policy does not enforce is not what admission projects to."""
    annotations = {"ttl": format_annotation(NOW + timedelta(hours=ttl_hours)),
                   "expires_at": format_annotation(NOW + timedelta(hours=1))}
    manifest = pod(NLP, gpus=1, annotations=annotations)
    spent = budget("team-nlp", used=490, period_end="2026-12-01T00:00:00Z", selector={"matchLabels": NLP},
                   gpuHours=500, period="Monthly", admission="Projected")
    policies = snapshot(ttl(), spent)
    assert projection_key_of(manifest, snapshot=policies) == "ttl"
    assert evaluate(manifest, snapshot=policies, now=NOW).allowed is allowed
