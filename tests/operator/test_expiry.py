"""Expiry decisions: terms from policies, the owner walk, what is due; no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller import constants
from controller.engine.models import FinOpsException, FinOpsPolicy
from controller.operator.expiry import (
    ExpiryTerms,
    already_terminated,
    expiry_step,
    expiry_terms,
    plan_expiry,
    top_level_owner,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
GRACE = timedelta(hours=1)


def policy(name="experiments", *, expiry=None, match=None):
    spec = {"expiry": {"key": "expires_at", "notifyBefore": "15m"} if expiry is None else expiry}
    if match is not None:
        spec["match"] = match
    return FinOpsPolicy.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def pod(name="p", *, namespace="ml", expires=None, labels=None, owner=None, uid=None, key="expires_at"):
    annotations = {key: expires} if expires else {}
    metadata = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{name}",
        "labels": labels or {},
        "annotations": annotations,
    }
    if owner:
        metadata["ownerReferences"] = [
            {"kind": owner[0], "name": owner[1], "uid": owner[2], "controller": True}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": [{"name": "c"}]}}


def deployment(name="d", *, namespace="ml", replicas=2, template_expires=None, annotations=None, uid=None):
    template_meta = {"labels": {"app": name}}
    if template_expires:
        template_meta["annotations"] = {"expires_at": template_expires}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "annotations": annotations or {},
        },
        "spec": {"replicas": replicas, "template": {"metadata": template_meta, "spec": {"containers": []}}},
    }


def replicaset(name, *, owner_uid, namespace="ml"):
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "ownerReferences": [{"kind": "Deployment", "name": "d", "uid": owner_uid, "controller": True}],
        },
        "spec": {"replicas": 2, "template": {"metadata": {}, "spec": {"containers": []}}},
    }


PAST = "2026-11-22T11:00:00Z"
SOON = "2026-11-22T12:10:00Z"
LATER = "2026-11-23T12:00:00Z"


@pytest.mark.parametrize(
    ("obj", "policies", "expected"),
    [
        pytest.param(
            pod(expires=PAST), [policy()], ("2026-11-22T11:00:00+00:00", "experiments"), id="pod-expired"
        ),
        pytest.param(pod(), [policy()], None, id="no-expires-at"),
        pytest.param(pod(expires="next tuesday"), [policy()], None, id="unparseable-is-never-expired"),
        pytest.param(pod(expires=PAST, namespace="kube-system"), [policy()], None, id="kube-system-never"),
        pytest.param(
            pod(expires=PAST), [policy(match={"namespaces": ["other-*"]})], None, id="policy-not-matching"
        ),
        pytest.param(
            pod(expires=PAST), [policy(match={"kinds": ["Deployment"]})], None, id="kind-not-matched"
        ),
        pytest.param(
            pod(expires=PAST, labels={"environment": "experiment"}),
            [policy(match={"selector": {"matchLabels": {"environment": "experiment"}}})],
            ("2026-11-22T11:00:00+00:00", "experiments"),
            id="selector-matches",
        ),
        pytest.param(
            pod(expires=PAST, key="ttl"),
            [policy(), policy("ttl", expiry={"key": "ttl"})],
            ("2026-11-22T11:00:00+00:00", "ttl"),
            id="each-policy-its-own-key",
        ),
        pytest.param(
            deployment(template_expires=PAST),
            [policy()],
            ("2026-11-22T11:00:00+00:00", "experiments"),
            id="read-from-template",
        ),
        pytest.param(pod(expires=PAST), [], None, id="no-policies"),
    ],
)
def test_expiry_terms(obj, policies, expected):
    terms = expiry_terms(obj, policies, now=NOW)
    if expected is None:
        assert terms is None
    else:
        assert (terms.expires_at.isoformat(), terms.policy) == expected


def test_policy_without_expiry_section_never_expires_anything():
    no_expiry = FinOpsPolicy.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": "labels-only"},
            "spec": {},
        }
    )
    assert expiry_terms(pod(expires=PAST), [no_expiry], now=NOW) is None


def test_earliest_expiry_of_several_policies_wins():
    obj = pod(expires=PAST)
    obj["metadata"]["annotations"]["ttl"] = "2026-11-20"
    terms = expiry_terms(
        obj, [policy("a"), policy("b", expiry={"key": "ttl", "notifyBefore": "1h"})], now=NOW
    )
    assert terms == ExpiryTerms(datetime(2026, 11, 20, tzinfo=UTC), HOUR, "b")


@pytest.mark.parametrize(
    ("exception_spec", "namespace", "exempt"),
    [
        ({"policies": ["*"], "rules": ["expiry"]}, "ml", True),
        ({"policies": ["experiments"], "rules": ["*"]}, "ml", True),
        ({"policies": ["other"], "rules": ["expiry"]}, "ml", False),
        ({"policies": ["*"], "rules": ["labels"]}, "ml", False),
        ({"policies": ["*"], "rules": ["expiry"]}, "elsewhere", False),
        ({"policies": ["*"], "rules": ["expiry"], "expiresAt": "2026-11-01T00:00:00Z"}, "ml", False),
        ({"policies": ["*"], "rules": ["expiry"], "selector": {"matchLabels": {"app": "x"}}}, "ml", False),
    ],
)
def test_exceptions_exempt_from_expiry(exception_spec, namespace, exempt):
    spec = {"expiresAt": "2026-12-31T00:00:00Z", "reason": "demo", **exception_spec}
    exception = FinOpsException.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsException",
            "metadata": {"name": "keep", "namespace": namespace},
            "spec": spec,
        }
    )
    terms = expiry_terms(pod(expires=PAST), [policy()], now=NOW, exceptions=[exception])
    assert (terms is None) is exempt


DEP = deployment(uid="dep-uid")
RS = replicaset("d-abc", owner_uid="dep-uid")
OWNERS = {"dep-uid": DEP, "uid-d-abc": RS}


@pytest.mark.parametrize(
    ("obj", "top", "why"),
    [
        (pod(), "Pod/ml/p", ""),
        (pod(owner=("ReplicaSet", "d-abc", "uid-d-abc")), "Deployment/ml/d", ""),
        (RS, "Deployment/ml/d", ""),
        (DEP, "Deployment/ml/d", ""),
        (pod(owner=("InferenceService", "llm", "isvc-uid")), None, "InferenceService/llm"),
        (
            pod(owner=("ReplicaSet", "gone", "gone-uid")),
            None,
            "not listed yet: its controller ReplicaSet/gone",
        ),
    ],
)
def test_top_level_owner(obj, top, why):
    found, reason = top_level_owner(obj, OWNERS)
    if top is None:
        assert found is None and why in reason
    else:
        md = found["metadata"]
        assert f"{found['kind']}/{md['namespace']}/{md['name']}" == top and reason == ""


TERMS = ExpiryTerms(datetime(2026, 11, 22, 12, 10, tzinfo=UTC), timedelta(minutes=15), "experiments")
EXPIRED = ExpiryTerms(datetime(2026, 11, 22, 11, 0, tzinfo=UTC), timedelta(minutes=15), "experiments")


@pytest.mark.parametrize(
    ("owner", "terms", "step"),
    [
        (pod(), EXPIRED, "terminate"),
        (pod(), TERMS, "notify"),
        (pod(), ExpiryTerms(datetime(2026, 11, 22, 13, 0, tzinfo=UTC), timedelta(minutes=15), "x"), None),
        # Notified for this expires_at already: once only.
        (
            deployment(annotations={constants.EXPIRING_SOON_NOTIFIED_ANNOTATION: "2026-11-22T12:10:00Z"}),
            TERMS,
            None,
        ),
        # Notified for an earlier expires_at, then extended: notified again.
        (
            deployment(annotations={constants.EXPIRING_SOON_NOTIFIED_ANNOTATION: "2026-11-22T09:00:00Z"}),
            TERMS,
            "notify",
        ),
        (deployment(replicas=0), EXPIRED, None),
        (deployment(), EXPIRED, "terminate"),
        # Woken after expiry, within the grace period: left running; after it: terminated again.
        (deployment(annotations={constants.WOKEN_AT_ANNOTATION: "2026-11-22T11:30:00Z"}), EXPIRED, None),
        (
            deployment(annotations={constants.WOKEN_AT_ANNOTATION: "2026-11-22T10:30:00Z"}),
            EXPIRED,
            "terminate",
        ),
        ({"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"suspend": True}}, EXPIRED, None),
        ({"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"suspend": False}}, EXPIRED, "terminate"),
        ({**pod(), "metadata": {"name": "p", "deletionTimestamp": "2026-11-22T11:59:00Z"}}, EXPIRED, None),
    ],
)
def test_expiry_step(owner, terms, step):
    assert expiry_step(owner, terms, now=NOW, grace_period=GRACE) == step


@pytest.mark.parametrize(
    ("obj", "terminated"),
    [
        (
            {
                "kind": "DaemonSet",
                "metadata": {},
                "spec": {"template": {"spec": {"nodeSelector": {constants.EXPIRED_ANNOTATION: "true"}}}},
            },
            True,
        ),
        ({"kind": "DaemonSet", "metadata": {}, "spec": {"template": {"spec": {}}}}, False),
        ({"kind": "Job", "metadata": {}}, False),
        ({"kind": "StatefulSet", "metadata": {}, "spec": {"replicas": 0}}, True),
    ],
)
def test_already_terminated(obj, terminated):
    assert already_terminated(obj) is terminated


def test_plan_acts_once_per_top_level_owner_oldest_first():
    dep = deployment(uid="dep-uid", template_expires=PAST)
    rs = replicaset("d-abc", owner_uid="dep-uid")
    pods = [pod(f"d-abc-{i}", expires=PAST, owner=("ReplicaSet", "d-abc", "uid-d-abc")) for i in range(3)]
    older = pod("bare", expires="2026-11-22T10:00:00Z")
    soon = pod("soon", expires=SOON)
    unmanaged = pod("isvc-pod", expires=PAST, owner=("InferenceService", "llm", "isvc-uid"))
    left_alone = []
    due = plan_expiry(
        [dep, rs, *pods, older, soon, unmanaged],
        [policy()],
        owners={"dep-uid": dep, "uid-d-abc": rs},
        now=NOW,
        grace_period=GRACE,
        on_unmanaged=lambda obj, why: left_alone.append(obj["metadata"]["name"]),
    )
    assert [(d.step, d.target["kind"], d.target["metadata"]["name"]) for d in due] == [
        ("terminate", "Pod", "bare"),
        ("terminate", "Deployment", "d"),
        ("notify", "Pod", "soon"),
    ]
    assert left_alone == ["isvc-pod"]
