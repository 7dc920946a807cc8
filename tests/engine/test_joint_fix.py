"""The joint fix (controller/engine/fixing.py, docs/fix-hints.md): one set of changes, judged
together, that admits a denied workload on the first paste, and the message that prints it."""

from pathlib import Path

import jsonpatch
import pytest
import yaml
from engine_cases import NOW

from controller.check import load_snapshot
from controller.engine import evaluate
from controller.engine.fixing import explain, joint_fix
from controller.engine.messages import WIDTH, render_denial

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SNAPSHOT, _ = load_snapshot([POLICIES / "default"])
LABELS = {
    "team": "nlp",
    "project": "chat",
    "model_id": "llama-3-8b",
    "lifecycle_phase": "training",
    "cost_center": "cc-101",
}


def job(labels, instance_type="p5.48xlarge", gpus=8):
    spec = {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}
    if instance_type:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": instance_type}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {"template": {"metadata": {"labels": dict(labels)}, "spec": spec}},
    }


def _values(fix):
    return {edit.path[-1]: edit.value for edit in fix.edits}


def test_a_missing_environment_follows_the_instance_type_the_user_pinned():
    """p5.48xlarge is allowed only in production, and the manifest says no environment: the fix
    sets `environment: production` and keeps the user's instance type (the defaulted development
    would need another instance type)."""
    manifest = job(LABELS)
    fix = joint_fix(manifest, snapshot=SNAPSHOT, now=NOW)
    assert fix.admitted
    assert _values(fix) == {"environment": "production"}
    assert evaluate(fix.apply(), snapshot=SNAPSHOT, now=NOW).allowed


def test_an_environment_the_user_wrote_is_kept_and_the_instance_type_changes():
    manifest = job({**LABELS, "environment": "development"})
    fix = joint_fix(manifest, snapshot=SNAPSHOT, now=NOW)
    assert fix.admitted
    assert set(_values(fix)) == {"node.kubernetes.io/instance-type"}
    assert _values(fix)["node.kubernetes.io/instance-type"] == "g5.xlarge"


def test_a_typo_in_the_environment_is_corrected_and_the_type_judged_under_the_correction():
    """`prod` reads as production, whose allowlist takes p5.48xlarge: one fix, nothing else."""
    fix = joint_fix(job({**LABELS, "environment": "prod"}), snapshot=SNAPSHOT, now=NOW)
    assert fix.admitted and _values(fix) == {"environment": "production"}


def test_values_only_a_person_knows_are_marked_placeholders_and_said_once():
    manifest = job({"environment": "development"}, instance_type="g5.xlarge")
    decision = explain(evaluate(manifest, snapshot=SNAPSHOT, now=NOW), manifest, snapshot=SNAPSHOT, now=NOW)
    fix = decision.fix
    assert fix.admitted
    assert {e.path[-1] for e in fix.choices} == {"team", "project", "model_id", "cost_center"}
    message = render_denial(decision)
    assert message.count("fix (admitted with it)") == 1
    assert "  fix:" not in message  # one merged snippet, not one per violation
    assert "you choose: team, project, model_id, cost_center" in message
    assert message.count("lifecycle_phase: training") == 1
    for line in message.split("\nfix (", 1)[1].splitlines():
        assert len(line) <= WIDTH, line
    snippet = message.split("to merge into the manifest:\n", 1)[1].split("\nyou choose")[0]
    assert yaml.safe_load(snippet)["spec"]["template"]["metadata"]["labels"]["team"] == "set-me"


def test_a_spent_budget_is_said_in_one_line_and_the_rest_is_still_fixed():
    from engine_cases import budget

    from controller.engine import Snapshot

    spent = budget("nlp", used=600, period_end="2026-12-01T00:00:00Z", gpuHours=500)
    snap = Snapshot(policies=SNAPSHOT.policies, budgets=(spent,))
    manifest = job({**LABELS, "environment": "development"})
    decision = explain(evaluate(manifest, snapshot=snap, now=NOW), manifest, snapshot=snap, now=NOW)
    assert not decision.fix.admitted
    assert [v.policy for v in decision.fix.unresolved] == ["nlp"]
    message = render_denial(decision)
    assert "fix (still denied with it, see below)" in message
    assert "no paste fixes [nlp/budget]: nothing fits until 2026-12-01T00:00:00Z" in message


def test_list_items_are_named_and_the_json_patch_is_exact():
    """A JobSet's replicated jobs are list items: the snippet names each by its `name`, and the
    kubectl line's JSON Patch, applied, gives exactly the fixed manifest."""
    template = {"spec": {"containers": [{"name": "c", "image": "i"}]}}
    manifest = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "js", "namespace": "ml"},
        "spec": {
            "replicatedJobs": [
                {"name": "driver", "template": {"spec": {"template": template}}},
                {"name": "workers", "template": {"spec": {"template": {**template, "metadata": {}}}}},
            ]
        },
    }
    decision = explain(evaluate(manifest, snapshot=SNAPSHOT, now=NOW), manifest, snapshot=SNAPSHOT, now=NOW)
    message = render_denial(decision)
    assert "    - name: driver  # item 0" in message
    assert "    - name: workers  # item 1" in message
    assert "kubectl patch --local -f FILE --type=json -o yaml -p '[" in message
    patch = decision.fix.json_patch()
    assert jsonpatch.apply_patch(manifest, patch) == decision.fix.apply()
    assert [op["path"] for op in patch] == [
        "/spec/replicatedJobs/0/template/spec/template/metadata",
        "/spec/replicatedJobs/1/template/spec/template/metadata/labels",
    ]


@pytest.mark.parametrize("folder", ["default", "examples"])
def test_every_denied_policy_test_case_is_admitted_with_its_joint_fix(folder):
    from controller.check import namespace_labels_from, read_documents

    docs = read_documents([POLICIES / folder / "tests"]).documents
    snap, errors = load_snapshot([POLICIES / folder], namespace_labels=namespace_labels_from(docs))
    assert not errors
    denied = 0
    for doc in docs:
        decision = evaluate(doc.body, snapshot=snap, now=NOW)
        if decision.allowed:
            continue
        denied += 1
        fix = joint_fix(doc.body, snapshot=snap, now=NOW)
        after = evaluate(fix.apply(), snapshot=snap, now=NOW)
        assert after.allowed == fix.admitted
        assert fix.admitted or all(v.rule == "budget" for v in fix.unresolved), (decision.resource, fix)
    assert denied >= 4


def test_the_webhook_after_mutation_chooses_the_same_fix_as_check_on_the_file():
    """The validating webhook judges the object after the mutating one defaulted `environment:
    development`; the mutation says so in its `defaulted-labels` annotation, so the fix there still
    picks the environment that keeps the user's p5.48xlarge, as `comptroller check` does on the file."""
    manifest = job(LABELS)
    mutated = jsonpatch.apply_patch(manifest, evaluate(manifest, snapshot=SNAPSHOT, now=NOW).patch)
    assert mutated["metadata"]["annotations"] == {"finops.comptroller.dev/defaulted-labels": "environment"}
    assert mutated["spec"]["template"]["metadata"]["labels"]["environment"] == "development"
    at_the_webhook = joint_fix(mutated, snapshot=SNAPSHOT, now=NOW)
    on_the_file = joint_fix(manifest, snapshot=SNAPSHOT, now=NOW)
    assert _values(at_the_webhook) == _values(on_the_file) == {"environment": "production"}
    # A user who wrote `environment: development` keeps it: the instance type changes instead.
    written = job({**LABELS, "environment": "development"})
    fix = joint_fix(written, snapshot=SNAPSHOT, now=NOW)
    assert set(_values(fix)) == {"node.kubernetes.io/instance-type"}


@pytest.mark.parametrize(
    ("key", "pinned", "suggested"),
    [
        ("node.kubernetes.io/instance-type", "p5.48xlarge", "g5.xlarge"),
        # A key that names the accelerator gets an accelerator name from the same allowlist.
        ("nvidia.com/gpu.product", "Tesla-T4-SHARED", "nvidia-l4"),
        ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb", "nvidia-l4"),
    ],
)
def test_the_instance_type_fix_fits_the_key_the_pod_pins_with(key, pinned, suggested):
    manifest = job({**LABELS, "environment": "development"})
    manifest["spec"]["template"]["spec"]["nodeSelector"] = {key: pinned}
    fix = joint_fix(manifest, snapshot=SNAPSHOT, now=NOW)
    assert fix.admitted and _values(fix) == {key: suggested}


def test_the_fix_never_moves_a_workload_onto_another_teams_budget():
    """`team` decides which GPUBudget pays. With nlp's budget spent and vision's roomy, a manifest
    that leaves `team` out must not be "fixed" into vision's budget: the team is the user's choice,
    marked as such, and nlp's spent budget stays the one line no paste fixes."""
    from engine_cases import budget, policy

    from controller.engine import Snapshot

    teams = policy("teams", labels={"required": [{"key": "team", "allowedValues": ["nlp", "vision"]}]})
    spent = budget("nlp", used=600, period_end="2026-12-01T00:00:00Z", gpuHours=500,
                   selector={"matchLabels": {"team": "nlp"}})
    roomy = budget("vision", used=0, period_end="2026-12-01T00:00:00Z", gpuHours=500,
                   selector={"matchLabels": {"team": "vision"}})
    snap = Snapshot(policies=(teams,), budgets=(spent, roomy))
    fix = joint_fix(job({}, instance_type=None), snapshot=snap, now=NOW)
    team = next(e for e in fix.edits if e.path[-1] == "team")
    assert team.value == "nlp" and team.choose == "you choose: team decides which GPUBudget pays"
    assert not fix.admitted and [v.policy for v in fix.unresolved] == ["nlp"]
    # Without budgets, picking an allowed value is fine (nothing is charged by it).
    fix = joint_fix(job({}, instance_type=None), snapshot=Snapshot(policies=(teams,)), now=NOW)
    assert fix.admitted and not fix.choices
