"""The honest test of a fix hint: paste it into the failing manifest and the engine admits it.

For every denied workload in the policies' test cases, each violation's fix alone removes that
violation; and randomly generated workloads against the default policies and a budget converge
to admitted by applying the hints (a fixed label can change which allowlist applies, so a second
round may surface the next problem, as it would for a user).
"""

from datetime import timedelta
from pathlib import Path

import jsonpatch
import pytest
from engine_cases import NOW, apply_fix, budget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.check import load_snapshot, namespace_labels_from, read_documents
from controller.engine import evaluate
from controller.engine.expiry import format_annotation, format_label
from controller.engine.fixing import joint_fix
from controller.engine.messages import snippet

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _denied_cases():
    for folder in ("default", "examples"):
        docs = read_documents([POLICIES / folder / "tests"]).documents
        snap, errors = load_snapshot([POLICIES / folder], namespace_labels=namespace_labels_from(docs))
        assert not errors
        for doc in docs:
            decision = evaluate(doc.body, snapshot=snap, now=NOW)
            if not decision.allowed:
                yield pytest.param(doc.body, snap, id=decision.resource)


def _key(v):
    return (v.policy, v.rule, v.key, v.message)


@pytest.mark.parametrize(("manifest", "snap"), list(_denied_cases()))
def test_each_fix_removes_its_violation(manifest, snap):
    decision = evaluate(manifest, snapshot=snap, now=NOW)
    for violation in decision.violations:
        if "exhausted" in violation.message:
            # Nothing fits an exhausted budget: the hint says when it resets, and is no YAML to paste.
            assert all(line.startswith("#") for line in violation.fix.splitlines())
            continue
        fixed = evaluate(apply_fix(manifest, violation.fix), snapshot=snap, now=NOW)
        remaining = {(v.policy, v.rule, v.key) for v in fixed.violations}
        assert (violation.policy, violation.rule, violation.key) not in remaining, (
            violation.fix,
            fixed.violations,
        )


def _converges(manifest, snap, rounds=3):
    for _ in range(rounds):
        decision = evaluate(manifest, snapshot=snap, now=NOW)
        if decision.allowed:
            return True, decision
        for violation in decision.violations:
            manifest = apply_fix(manifest, violation.fix)
    decision = evaluate(manifest, snapshot=snap, now=NOW)
    return decision.allowed, decision


DEFAULT_SNAPSHOT, _ = load_snapshot([POLICIES / "default"])
NLP_BUDGET = budget(
    "team-nlp",
    used=400,
    period_end="2026-12-01T00:00:00Z",
    selector={"matchLabels": {"team": "nlp"}},
    gpuHours=500,
    admission="Projected",
)
SNAPSHOT = type(DEFAULT_SNAPSHOT)(
    policies=DEFAULT_SNAPSHOT.policies,
    budgets=(NLP_BUDGET,),
    namespace_labels={"ml": {"cost_center": "cc-101"}},
)

LABEL_VALUES = {
    "team": st.sampled_from(["nlp", "vision", "Bad Team", "x"]),
    "project": st.sampled_from(["chatbot", "-bad", "search"]),
    "model_id": st.sampled_from(["llama-3-8b", "none", "_x"]),
    "environment": st.sampled_from(["production", "staging", "development", "experiment", "prod", "dev"]),
    "lifecycle_phase": st.sampled_from(["training", "inference", "traning", "serving"]),
    "cost_center": st.sampled_from(["cc-101", "101", "cc-1"]),
}
INSTANCE_TYPES = st.sampled_from(
    [None, "g5.xlarge", "g6.12xlarge", "p4d.24xlarge", "p5.48xlarge", "m5.xlarge"]
)
EXPIRY = st.sampled_from(
    [
        None,
        ("annotation", format_annotation(NOW + timedelta(hours=12))),
        ("annotation", format_annotation(NOW + timedelta(days=30))),
        ("annotation", format_annotation(NOW - timedelta(hours=1))),
        ("annotation", "next week"),
        ("label", format_label(NOW + timedelta(hours=5))),
        ("label", "2026-13-45"),
    ]
)


@st.composite
def workloads(draw):
    labels = {k: draw(v) for k, v in LABEL_VALUES.items() if draw(st.booleans())}
    gpus = draw(st.sampled_from([0, 1, 2, 4, 8, 12]))
    instance_type = draw(INSTANCE_TYPES)
    spec = {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}
    if draw(st.booleans()):  # a sidecar that also takes GPUs
        spec["initContainers"] = [
            {
                "name": "s",
                "image": "i",
                "restartPolicy": "Always",
                "resources": {"limits": {"nvidia.com/gpu": 2}},
            }
        ]
    if instance_type:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": instance_type}
    metadata = {"name": "w", "namespace": "ml"}
    expiry = draw(EXPIRY)
    kind = draw(st.sampled_from(["Pod", "Deployment", "Job", "PyTorchJob"]))
    if kind == "Pod":
        metadata["labels"] = labels
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    else:
        template = {"metadata": {"labels": labels}, "spec": spec}
        if kind == "Deployment":
            body = {"replicas": draw(st.integers(0, 3)), "template": template}
            manifest = {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata, "spec": body}
        elif kind == "Job":
            manifest = {
                "apiVersion": "batch/v1",
                "kind": kind,
                "metadata": metadata,
                "spec": {"template": template},
            }
        else:
            replicas = {
                "Master": {"replicas": 1, "template": template},
                "Worker": {"replicas": 2, "template": template},
            }
            manifest = {
                "apiVersion": "kubeflow.org/v1",
                "kind": kind,
                "metadata": metadata,
                "spec": {"pytorchReplicaSpecs": replicas},
            }
    if expiry is not None:
        source, value = expiry
        metadata.setdefault("labels" if source == "label" else "annotations", {})["expires_at"] = value
    return manifest


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_fix_hints_lead_to_admission(manifest):
    admitted, decision = _converges(manifest, SNAPSHOT)
    assert admitted, [(v.policy, v.rule, v.message, v.fix) for v in decision.violations]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_the_joint_fix_admits_on_the_first_paste(manifest):
    """The joint fix (one snippet per denial) admits the workload pasted once, with no second round,
    unless what is left is something no paste can fix (a budget); its YAML snippet pasted as a
    person would, and its JSON Patch applied as kubectl would, give that same manifest."""
    decision = evaluate(manifest, snapshot=SNAPSHOT, now=NOW)
    if decision.allowed:
        return
    fix = joint_fix(manifest, snapshot=SNAPSHOT, now=NOW)
    fixed = fix.apply()
    again = evaluate(fixed, snapshot=SNAPSHOT, now=NOW)
    assert again.allowed == fix.admitted
    if not fix.admitted:
        assert fix.unresolved and all(v.rule == "budget" for v in fix.unresolved), fix.unresolved
    assert jsonpatch.apply_patch(manifest, fix.json_patch()) == fixed
    if not any(isinstance(part, int) for edit in fix.edits for part in edit.path):
        # Through a list, a merge replaces the whole list: that is what the JSON Patch is for.
        assert apply_fix(manifest, "\n".join(snippet(fix.edits, manifest))) == fixed
