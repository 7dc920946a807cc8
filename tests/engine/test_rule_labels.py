import jsonpatch
import pytest
from engine_cases import NOW, deployment, pod, policy, snapshot

from controller.engine import evaluate
from controller.engine.workloads import escape

TEAM = {"key": "team", "allowedValues": ["nlp", "vision"], "description": "who pays"}
CC = {"key": "cost_center", "pattern": "^cc-[0-9]{3}$"}
ENV = {"key": "environment", "allowedValues": ["production", "development"], "default": "development"}
LABELS = policy("labels", labels={"required": [TEAM, CC, ENV], "inheritFromNamespace": True})


def judge(manifest, *, ns_labels=None, mutate=True, pol=LABELS):
    return evaluate(manifest, snapshot=snapshot(pol, namespace_labels=ns_labels), now=NOW, mutate=mutate)


def keys(decision):
    return sorted(v.key for v in decision.violations)


@pytest.mark.parametrize(
    ("manifest", "ns_labels", "violated"),
    [
        (pod({"team": "nlp", "cost_center": "cc-101", "environment": "production"}), None, []),
        (pod({"team": "nlp", "cost_center": "cc-101"}), None, []),  # environment defaulted
        (pod({}), None, ["cost_center", "team"]),
        (pod(None), None, ["cost_center", "team"]),
        (pod({"team": "search", "cost_center": "cc-1"}), None, ["cost_center", "team"]),
        (pod({"team": "nlp", "cost_center": "cc-101", "environment": "prod"}), None, ["environment"]),
        # inherited from the namespace
        (pod({}), {"ml": {"team": "vision", "cost_center": "cc-202"}}, []),
        # a namespace value the rule refuses is not inherited
        (pod({"cost_center": "cc-101"}), {"ml": {"team": "marketing"}}, ["team"]),
        # controllers are judged by their template labels...
        (deployment({"team": "nlp", "cost_center": "cc-101"}), None, []),
        (deployment(None, meta_labels={}), None, ["cost_center", "team"]),
        # ...and required labels on their own metadata are copied into the template
        (deployment({"app": "d"}, meta_labels={"team": "nlp", "cost_center": "cc-101"}), None, []),
        (deployment({"app": "d"}, meta_labels={"team": "sales", "cost_center": "cc-101"}), None, ["team"]),
    ],
)
def test_required_labels(manifest, ns_labels, violated):
    assert keys(judge(manifest, ns_labels=ns_labels)) == violated


def test_without_mutation_nothing_is_filled_in():
    decision = judge(
        deployment({"app": "d"}, meta_labels={"team": "nlp", "cost_center": "cc-101"}), mutate=False
    )
    assert keys(decision) == ["cost_center", "environment", "team"]
    assert decision.patch == []


DEFAULTED = {
    "op": "add",
    "path": "/metadata/annotations",
    "value": {"finops.comptroller.dev/defaulted-labels": "environment"},
}


@pytest.mark.parametrize(
    ("manifest", "patch"),
    [
        # no labels map at all: add the whole map (and say, last, which labels were filled in)
        (
            pod(None),
            [{"op": "add", "path": "/metadata/labels", "value": {"environment": "development"}}, DEFAULTED],
        ),
        (
            pod({"team": "nlp"}),
            [{"op": "add", "path": "/metadata/labels/environment", "value": "development"}, DEFAULTED],
        ),
        # no template metadata at all
        (
            deployment(None, meta_labels={"team": "nlp"}),
            [
                {"op": "add", "path": "/metadata/labels/environment", "value": "development"},
                {
                    "op": "add",
                    "path": "/spec/template/metadata",
                    "value": {"labels": {"team": "nlp", "environment": "development"}},
                },
                DEFAULTED,  # team was copied from the Deployment's own labels: the user's, not ours
            ],
        ),
    ],
)
def test_patches_add_whole_maps_when_missing(manifest, patch):
    assert judge(manifest).patch == patch


def test_keys_are_escaped_per_rfc6901():
    pol = policy("p", labels={"required": [{"key": "finops.example.com/owner", "default": "platform"}]})
    manifest = pod({"x": "y"})
    decision = judge(manifest, pol=pol)
    assert [op["path"] for op in decision.patch] == [
        "/metadata/labels/finops.example.com~1owner",
        "/metadata/annotations",
    ]
    patched = jsonpatch.apply_patch(manifest, decision.patch)
    assert patched["metadata"]["labels"] == {"x": "y", "finops.example.com/owner": "platform"}
    assert escape("a~b/c") == "a~0b~1c"


def test_violation_messages_name_the_values_and_where_to_fix():
    decision = judge(deployment({"team": "nlpp", "cost_center": "cc-101"}))
    (violation,) = decision.violations
    assert violation.policy == "labels" and violation.rule == "labels"
    assert '"nlpp"' in violation.message and "nlp, vision" in violation.message
    assert "spec.template.metadata.labels" in violation.message
    assert violation.fix == "spec:\n  template:\n    metadata:\n      labels:\n        team: nlp  # who pays"


def test_pattern_fix_suggests_a_matching_example():
    decision = judge(pod({"team": "nlp"}))
    (violation,) = decision.violations
    assert "^cc-[0-9]{3}$" in violation.message
    assert "cost_center: cc-000" in violation.fix


@pytest.mark.parametrize(
    ("pattern", "example"),
    [("^cc-[0-9]{3}$", "cc-000"), (r"^(eu|us)-\d{2}$", "eu-00"), ("^[A-Z][a-z]+$", "Aa"), ("^[^x]+$", None)],
)
def test_examples_for_patterns(pattern, example):
    from controller.engine.rules.labels import example_for

    assert example_for(pattern) == example


def test_remembered_verdicts_never_let_a_wrong_value_through():
    """The rule remembers its verdict per combination of values; each combination is its own."""
    required = [{"key": "team", "pattern": "^[a-z]+$"}, {"key": "env", "allowedValues": ["dev"]}]
    p = policy(labels={"required": required})
    snap = snapshot(p)
    for _ in range(2):  # the second round is answered from memory
        assert evaluate(pod({"team": "nlp", "env": "dev"}), snapshot=snap, now=NOW).allowed
        assert not evaluate(pod({"team": "nlp", "env": "prod"}), snapshot=snap, now=NOW).allowed
        assert not evaluate(pod({"team": "NLP", "env": "dev"}), snapshot=snap, now=NOW).allowed
        assert not evaluate(pod({"team": "nlp"}), snapshot=snap, now=NOW).allowed
    assert p.spec.labels.verdicts == {
        ("nlp", "dev"): True,
        ("nlp", "prod"): False,
        ("NLP", "dev"): False,
        ("nlp", None): False,
    }


def test_remembered_verdicts_are_bounded():
    p = policy(labels={"required": [{"key": "team"}]})
    snap = snapshot(p)
    for i in range(3000):
        assert evaluate(pod({"team": f"t{i}"}), snapshot=snap, now=NOW).allowed
    assert len(p.spec.labels.verdicts) == 1024


def test_a_label_value_that_is_not_a_string_is_judged_without_being_remembered():
    """Custom resources reach the mutating webhook before their schema is checked."""
    p = policy(labels={"required": [{"key": "team"}]})
    for _ in range(2):
        assert evaluate(pod({"team": ["a"]}), snapshot=snapshot(p), now=NOW).allowed
    assert p.spec.labels.verdicts == {}
