from datetime import timedelta

import pytest
from engine_cases import NOW, deployment, pod, policy, snapshot

from controller.engine import evaluate
from controller.engine.expiry import format_annotation

EXP = {"environment": "experiment"}
EXPIRY = policy(
    "expiry", expiry={"requiredWhen": {"environment": ["experiment"]}, "maxLifetime": "72h", "default": "24h"}
)


def judge(manifest, *, operation="CREATE", mutate=True, pol=EXPIRY):
    return evaluate(manifest, snapshot=snapshot(pol), now=NOW, operation=operation, mutate=mutate)


def at(delta):
    return format_annotation(NOW + delta)


@pytest.mark.parametrize(
    ("manifest", "operation", "problem"),
    [
        (pod({"environment": "production"}), "CREATE", None),  # not required
        (pod(EXP, annotations={"expires_at": at(timedelta(hours=48))}), "CREATE", None),
        (pod(EXP, annotations={"expires_at": at(timedelta(hours=72))}), "CREATE", None),  # exactly the max
        (
            pod(EXP, annotations={"expires_at": at(timedelta(hours=73))}),
            "CREATE",
            "after creation; at most 3d",
        ),
        (pod(EXP, annotations={"expires_at": at(-timedelta(hours=1))}), "CREATE", "in the past"),
        (
            pod(EXP, annotations={"expires_at": at(-timedelta(hours=1))}),
            "UPDATE",
            None,
        ),  # the operator ends it
        (pod(EXP, annotations={"expires_at": "friday"}), "CREATE", "not a valid expires_at annotation"),
        (pod({**EXP, "expires_at": "2026-11-23"}), "CREATE", None),
        (pod({**EXP, "expires_at": "2026-11-23T18-00-00Z"}), "CREATE", None),
        (pod({**EXP, "expires_at": str(int((NOW + timedelta(hours=5)).timestamp()))}), "CREATE", None),
        (pod({**EXP, "expires_at": "2026-12-24"}), "CREATE", "at most 3d"),
        # validated when present even where not required
        (pod({"environment": "production"}, annotations={"expires_at": "soon"}), "CREATE", "not a valid"),
        # on the template of a controller
        (deployment({**EXP, "expires_at": "2026-11-23"}), "CREATE", None),
    ],
)
def test_expiry(manifest, operation, problem):
    decision = judge(manifest, operation=operation)
    if problem is None:
        assert decision.allowed, decision.violations
    else:
        (violation,) = decision.violations
        assert violation.rule == "expiry" and problem in violation.message


def test_max_lifetime_counts_from_creation():
    manifest = pod(EXP, annotations={"expires_at": at(timedelta(hours=50))})
    manifest["metadata"]["creationTimestamp"] = format_annotation(NOW - timedelta(hours=30))
    (violation,) = judge(manifest, operation="UPDATE").violations
    assert "3d8h after creation" in violation.message
    assert at(timedelta(hours=24)) in violation.fix  # now + default, before creation + 72h
    assert "until 2026-11-24T06:00:00Z" in violation.message


def test_mutation_sets_the_default_on_the_workload_metadata():
    decision = judge(deployment(EXP))
    assert decision.allowed
    assert decision.patch == [
        {"op": "add", "path": "/metadata/annotations", "value": {"expires_at": at(timedelta(hours=24))}}
    ]


def test_without_mutation_a_missing_expiry_is_a_violation_with_a_fix():
    (violation,) = judge(deployment(EXP), mutate=False).violations
    assert "expires_at is required when environment=experiment" in violation.message
    assert violation.fix == f'metadata:\n  annotations:\n    expires_at: "{at(timedelta(hours=24))}"'


def test_without_default_a_missing_expiry_is_denied():
    pol = policy("expiry", expiry={"requiredWhen": {}, "maxLifetime": "2h"})
    (violation,) = judge(pod({}), pol=pol).violations
    assert "required" in violation.message and at(timedelta(hours=2)) in violation.fix


def test_label_fixes_stay_in_label_format():
    (violation,) = judge(pod({**EXP, "expires_at": "2027-01-01"})).violations
    assert violation.fix == 'metadata:\n  labels:\n    expires_at: "2026-11-23T12-00-00Z"'


def test_the_requirement_reads_labels_after_mutation():
    pol = policy(
        "both",
        labels={"required": [{"key": "environment", "default": "experiment"}]},
        expiry={"requiredWhen": {"environment": ["experiment"]}, "default": "1h"},
    )
    decision = judge(pod({}), pol=pol)
    assert decision.allowed
    assert {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {"expires_at": at(timedelta(hours=1))},
    } in decision.patch


def test_no_default_in_the_past_for_workloads_older_than_the_lifetime():
    manifest = pod(EXP)
    manifest["metadata"]["creationTimestamp"] = format_annotation(NOW - timedelta(days=5))
    decision = judge(manifest, operation="UPDATE")
    assert decision.patch == []
    (violation,) = decision.violations
    assert "required" in violation.message and "no expires_at fits" in violation.fix


def test_a_creation_stamp_in_the_future_counts_as_now():
    """Found by fuzzing: 9999-12-31 + maxLifetime overflowed datetime and the webhook fell back to
    its failure mode. The API server never stamps the future; hand-made manifests might."""
    manifest = pod(EXP)
    manifest["metadata"]["creationTimestamp"] = "9999-12-31T23:59:59Z"
    decision = judge(manifest)
    assert decision.allowed
    assert decision.patch == [
        {"op": "add", "path": "/metadata/annotations", "value": {"expires_at": at(timedelta(hours=24))}}
    ]
