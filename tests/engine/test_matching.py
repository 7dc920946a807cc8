import pytest
from engine_cases import deployment, pod, policy, snapshot

from controller.engine import matching_policies
from controller.engine.matching import GlobSet, Selector, namespace_labels_of
from controller.engine.models import LabelSelector


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {}, True),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"team": "nlp"}}, {"team": "nlp", "x": "y"}, True),
        ({"matchLabels": {"team": "nlp"}}, {"team": "vision"}, False),
        ({"matchLabels": {"team": "nlp"}}, {}, False),
        (
            {"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev", "exp"]}]},
            {"env": "exp"},
            True,
        ),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}, {}, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
            {"env": "prod"},
            False,
        ),
        ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"env": ""}, True),
        ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {"env": "x"}, False),
        (
            {
                "matchLabels": {"team": "nlp"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}],
            },
            {"team": "nlp", "env": "prod"},
            False,
        ),
    ],
)
def test_selector(selector, labels, expected):
    """A selector as a policy, budget or exception compiles it (`LabelSelector.compiled`)."""
    assert LabelSelector.model_validate(selector or {}).compiled.matches(labels) is expected


def test_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="unknown operator"):
        Selector({}, [("a", "Gt", ["1"])])


@pytest.mark.parametrize(
    ("patterns", "value", "expected"),
    [
        (["ml-*"], "ml-nlp", True),
        (["ml-*"], "xml-nlp", False),
        (["g6.*"], "g6.12xlarge", True),
        (["g6.*"], "g6x12xlarge", False),  # the dot is literal
        (["p?d.24xlarge"], "p4d.24xlarge", True),
        (["g5.xlarge", "p5.*"], "g5.2xlarge", False),
        (["G5.*"], "g5.xlarge", False),  # case-sensitive, like label values
        ([], "anything", False),
    ],
)
def test_globs(patterns, value, expected):
    assert GlobSet(patterns).matches(value) is expected


def test_glob_literals_keep_order():
    assert GlobSet(["g6.*", "g5.xlarge", "nvidia-l4"]).literals == ("g5.xlarge", "nvidia-l4")


def test_namespace_labels_always_carry_the_name_label():
    assert namespace_labels_of("ml", {}) == {"kubernetes.io/metadata.name": "ml"}
    assert namespace_labels_of("ml", {"ml": {"team": "nlp"}}) == {
        "team": "nlp",
        "kubernetes.io/metadata.name": "ml",
    }


@pytest.mark.parametrize(
    ("match", "kw", "expected"),
    [
        ({}, {}, True),
        ({"namespaces": ["ml-*"]}, {"namespace": "ml-nlp"}, True),
        ({"namespaces": ["ml-*"]}, {"namespace": "default"}, False),
        ({"excludeNamespaces": ["ml-sandbox"]}, {"namespace": "ml-sandbox"}, False),
        ({"kinds": ["Pod", "Job"]}, {"kind": "Deployment"}, False),
        ({"kinds": ["Deployment"]}, {"kind": "Deployment"}, True),
        (
            {"namespaceSelector": {"matchLabels": {"finops": "on"}}},
            {"namespace_labels": {"finops": "on"}},
            True,
        ),
        ({"namespaceSelector": {"matchLabels": {"finops": "on"}}}, {"namespace_labels": {}}, False),
        ({"selector": {"matchLabels": {"team": "nlp"}}}, {"labels": {"team": "nlp"}}, True),
        ({"selector": {"matchLabels": {"team": "nlp"}}}, {"labels": {}}, False),
        ({"gpuOnly": True}, {"gpus": 0}, False),
        ({"gpuOnly": True}, {"gpus": 1}, True),
    ],
)
def test_policy_matches(match, kw, expected):
    """Each condition of `spec.match`, as the engine applies it to a workload."""
    args = {"kind": "Pod", "namespace": "ml-nlp", "namespace_labels": {}, "labels": {}, "gpus": 0, **kw}
    build = deployment if args["kind"] == "Deployment" else pod
    workload = build(args["labels"], namespace=args["namespace"], gpus=args["gpus"])
    config = snapshot(policy(match=match), namespace_labels={args["namespace"]: args["namespace_labels"]})
    assert bool(matching_policies(workload, snapshot=config)) is expected
