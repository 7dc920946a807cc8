import jsonpatch
import pytest
from engine_cases import NOW, budget, deployment, exception, pod, policy, snapshot

from controller.engine import Snapshot, evaluate

TEAM = {"labels": {"required": [{"key": "team", "allowedValues": ["nlp", "vision"]}]}}


def judge(manifest, *items, **kw):
    return evaluate(manifest, snapshot=snapshot(*items), now=NOW, **kw)


@pytest.mark.parametrize(
    ("enforcements", "allowed", "counts"),
    [
        (["Enforce"], False, (1, 0, 0)),
        (["Warn"], True, (0, 1, 0)),
        (["Audit"], True, (0, 0, 1)),
        (["Audit", "Warn"], True, (0, 1, 1)),
        (["Warn", "Enforce", "Audit"], False, (1, 1, 1)),  # every policy applies, the strictest wins
    ],
)
def test_enforcement_routes_violations(enforcements, allowed, counts):
    policies = [policy(f"p{i}", enforcement=e, **TEAM) for i, e in enumerate(enforcements)]
    decision = judge(pod({}), *policies)
    assert decision.allowed is allowed
    assert (len(decision.violations), len(decision.warnings), len(decision.audit)) == counts
    assert {v.enforcement for v in decision.warnings} <= {"Warn"}
    assert {v.enforcement for v in decision.audit} <= {"Audit"}


@pytest.mark.parametrize(
    ("exc_kw", "labels", "waived"),
    [
        ({"policies": ["p"], "rules": ["labels"]}, {}, True),
        ({"policies": ["*"], "rules": ["*"]}, {}, True),
        ({"policies": ["other"], "rules": ["*"]}, {}, False),
        ({"policies": ["p"], "rules": ["gpu"]}, {}, False),
        (
            {"policies": ["p"], "rules": ["labels"], "selector": {"matchLabels": {"app": "legacy"}}},
            {"app": "legacy"},
            True,
        ),
        (
            {"policies": ["p"], "rules": ["labels"], "selector": {"matchLabels": {"app": "legacy"}}},
            {"app": "new"},
            False,
        ),
        ({"policies": ["p"], "rules": ["labels"], "expiresAt": "2026-11-22T11:59:59Z"}, {}, False),  # expired
        ({"policies": ["p"], "rules": ["labels"], "namespace": "elsewhere"}, {}, False),  # namespaced
    ],
)
def test_exceptions(exc_kw, labels, waived):
    namespace = exc_kw.pop("namespace", "ml")
    decision = judge(pod(labels), policy("p", **TEAM), exception(namespace=namespace, **exc_kw))
    assert decision.allowed is waived
    assert len(decision.exempted) == (1 if waived else 0)


def test_exceptions_waive_budgets_by_budget_name():
    over = budget("team-nlp", used=10, gpuHours=10, selector={"matchLabels": {"team": "nlp"}})
    manifest = pod({"team": "nlp"}, gpus=1)
    assert not judge(manifest, over).allowed
    assert judge(manifest, over, exception(policies=["team-nlp"], rules=["budget"])).allowed


def test_exceptions_waive_mutation_too():
    pol = policy("p", expiry={"requiredWhen": {}, "default": "1h"})
    assert judge(pod({}), pol).patch
    decision = judge(pod({}), pol, exception(policies=["p"], rules=["expiry"]))
    assert decision.patch == [] and decision.allowed


@pytest.mark.parametrize(
    ("manifest", "kw"),
    [
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ml"}}, {}),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, {}),
        (pod({}), {"operation": "DELETE"}),
        (pod({}, namespace="kube-system"), {}),
        (pod({}, namespace=""), {"namespace": "kube-system"}),
    ],
)
def test_not_judged(manifest, kw):
    decision = judge(manifest, policy("p", **TEAM), **kw)
    assert decision.allowed and not decision.all_violations and not decision.patch


def test_namespace_keyword_fills_in_a_missing_namespace():
    manifest = pod({})
    del manifest["metadata"]["namespace"]
    only_ml = policy("p", match={"namespaces": ["ml"]}, **TEAM)
    assert judge(manifest, only_ml).allowed  # namespace unknown: no match
    decision = judge(manifest, only_ml, namespace="ml")
    assert not decision.allowed and decision.resource == "Pod/ml/p"


def test_resource_names_generated_objects():
    manifest = pod({})
    manifest["metadata"] = {"generateName": "trainer-", "namespace": "ml"}
    assert judge(manifest, policy("p", **TEAM)).resource == "Pod/ml/trainer-<generated>"


def test_team_is_reported_after_mutation():
    pol = policy("p", labels={"required": [{"key": "team", "default": "nlp"}]})
    assert judge(pod({}), pol).team == "nlp"


def test_empty_snapshot_admits_everything():
    assert evaluate(pod({}, gpus=8), snapshot=Snapshot(), now=NOW).allowed


def test_naive_now_is_taken_as_utc():
    pol = policy("p", expiry={"requiredWhen": {}, "default": "1h"})
    assert evaluate(pod({}), snapshot=snapshot(pol), now=NOW.replace(tzinfo=None)).allowed


DEFAULTS = policy(
    "defaults",
    labels={
        "required": [
            {"key": "team", "allowedValues": ["nlp"]},
            {"key": "environment", "allowedValues": ["experiment", "production"], "default": "experiment"},
        ],
        "inheritFromNamespace": True,
    },
    expiry={"requiredWhen": {"environment": ["experiment"]}, "default": "24h", "maxLifetime": "72h"},
)


@pytest.mark.parametrize(
    "manifest",
    [
        pod(None),
        pod({"team": "nlp"}),
        pod({"team": "vision"}, annotations={}),
        deployment(None),
        deployment({"app": "x"}, meta_labels={"team": "nlp"}),
        deployment({"environment": "production"}, meta_labels={"environment": "experiment"}),
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "c", "namespace": "ml"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}},
        },
    ],
)
def test_the_patch_produces_what_validation_judged(manifest):
    """Mutating webhook then validating webhook: the patched object, judged without mutation,
    gets the same verdict the mutating evaluation gave."""
    snap = snapshot(DEFAULTS, namespace_labels={"ml": {"team": "nlp"}})
    mutated = evaluate(manifest, snapshot=snap, now=NOW)
    patched = jsonpatch.apply_patch(manifest, mutated.patch)
    validated = evaluate(patched, snapshot=snap, now=NOW, mutate=False)
    assert validated.allowed == mutated.allowed
    assert [v.message for v in validated.violations] == [v.message for v in mutated.violations]
    assert evaluate(patched, snapshot=snap, now=NOW).patch == []  # idempotent
