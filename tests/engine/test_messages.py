import pytest
from engine_cases import NOW, deployment, policy, snapshot

from controller.engine import Decision, Violation, evaluate
from controller.engine.fixing import explain
from controller.engine.messages import WARNING_LIMIT, render_denial, render_fix, render_warning, scalar


def test_denial_names_the_workload_policy_values_and_fix():
    pol = policy("ml-platform", labels={"required": [{"key": "team", "allowedValues": ["nlp", "vision"]}]})
    manifest = deployment({}, name="trainer", namespace="ml-nlp")
    decision = evaluate(manifest, snapshot=snapshot(pol), now=NOW)
    assert render_denial(decision) == (
        "Comptroller denied Deployment ml-nlp/trainer:\n"
        '- [ml-platform/labels] missing required label "team" in spec.template.metadata.labels; '
        "allowed values: nlp, vision\n"
        "  fix:\n"
        "    spec:\n"
        "      template:\n"
        "        metadata:\n"
        "          labels:\n"
        "            team: nlp"
    )
    # With the joint fix (what the webhook and `check` print): the violations, then one snippet.
    explain(decision, manifest, snapshot=snapshot(pol), now=NOW)
    assert render_denial(decision) == (
        "Comptroller denied Deployment ml-nlp/trainer:\n"
        '- [ml-platform/labels] missing required label "team" in spec.template.metadata.labels; '
        "allowed values: nlp, vision\n"
        "fix (admitted with it), to merge into the manifest:\n"
        "  spec:\n"
        "    template:\n"
        "      metadata:\n"
        "        labels:\n"
        "          team: nlp"
    )


def test_warnings_are_one_short_line():
    long = Violation(policy="p", rule="labels", message="x" * 500, fix="")
    assert len(render_warning(long)) == WARNING_LIMIT and "\n" not in render_warning(long)
    short = Violation(policy="p", rule="labels", message="long text", fix="", summary="missing label team")
    assert render_warning(short) == "p: missing label team"


def test_denial_of_a_cluster_scoped_resource():
    decision = Decision(resource="Foo//bar", allowed=False, violations=[Violation("p", "gpu", "m", "")])
    assert render_denial(decision) == "Comptroller denied Foo bar:\n- [p/gpu] m"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("nlp", "nlp"),
        ("true", '"true"'),
        ("2026-11-23", '"2026-11-23"'),
        ("123", '"123"'),
        ("a b", '"a b"'),
        ("g5.xlarge", "g5.xlarge"),
        (8, "8"),
        ("", '""'),
        ("no", '"no"'),
    ],
)
def test_scalars_read_back_as_written(value, text):
    assert scalar(value) == text


def test_fix_paths_through_lists_are_dotted_and_merge():
    fix = render_fix(
        [
            (("spec", "replicatedJobs", 0, "template", "metadata", "labels"), {"team": "nlp"}),
            (("spec", "replicatedJobs", 0, "template", "metadata", "labels"), {"env": "dev"}),
            (("metadata", "labels"), {"team": "nlp"}),
        ],
        note="two places",
    )
    assert fix == (
        "# two places\n"
        "spec.replicatedJobs[0]:\n  template:\n    metadata:\n      labels:\n"
        "        team: nlp\n        env: dev\n"
        "metadata:\n  labels:\n    team: nlp"
    )
