"""UPDATE semantics: the engine, given the object before the update, judges what the update
introduces (docs/crds.md#updates-and-scaling). A spent budget stops every way of adding GPUs and
none of the ways of keeping them; a violation the object already had is only warned about unless
the update makes it worse."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from engine_cases import NOW, budget, deployment, policy, snapshot

from controller.engine import evaluate
from controller.engine.expiry import format_annotation
from controller.engine.fixing import joint_fix
from controller.engine.workloads import scaled

TEAM = {"team": "nlp", "environment": "production"}
TYPE_KEY = "node.kubernetes.io/instance-type"


def spent(**spec):
    return budget(
        "team-nlp",
        used=500,
        period_end="2026-12-01T00:00:00Z",
        selector={"matchLabels": {"team": "nlp"}},
        gpuHours=500,
        period="Monthly",
        **spec,
    )


def running(replicas=1, gpus=1, itype="p4d.24xlarge", labels=TEAM, **kw):
    return deployment(labels, replicas=replicas, gpus=gpus, node_selector={TYPE_KEY: itype}, **kw)


def judge(new, old, *items):
    return evaluate(new, snapshot=snapshot(*items), now=NOW, operation="UPDATE", old_object=old, mutate=False)


def with_template_annotation(manifest, key, value):
    out = copy.deepcopy(manifest)
    out["spec"]["template"].setdefault("metadata", {}).setdefault("annotations", {})[key] = value
    return out


# -- a spent budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        (lambda d: running(replicas=8), False),  # kubectl patch replicas up
        (lambda d: scaled(d, 8), False),  # kubectl scale up, as the scale webhook judges it
        (lambda d: running(gpus=4), False),  # more GPUs per pod
        (lambda d: running(itype="p5.48xlarge"), False),  # a different (pricier) instance type
        (lambda d: scaled(d, 0), True),  # scale down
        (lambda d: running(labels={**TEAM, "project": "bert"}), True),  # relabel
        (lambda d: with_template_annotation(d, "kubectl.kubernetes.io/restartedAt", "now"), True),
        (lambda d: d, True),  # a no-op update (kubectl apply of the same manifest)
    ],
    ids=[
        "replicas-up",
        "scale-up",
        "gpus-per-pod-up",
        "instance-type",
        "scale-down",
        "relabel",
        "restart",
        "same",
    ],
)
def test_a_spent_budget_refuses_every_increase_and_nothing_else(change, allowed):
    old = running()
    decision = judge(change(old), old, spent())
    assert decision.allowed is allowed
    if not allowed:
        (violation,) = decision.violations
        assert violation.rule == "budget" and "exhausted" in violation.message
        assert "this update adds" in violation.message


def test_the_denial_says_how_many_gpus_the_update_adds():
    (violation,) = judge(running(replicas=8), running(), spent()).violations
    assert "this update adds 7 GPUs" in violation.message


def test_gpus_moved_between_templates_are_not_netted():
    """A PyTorchJob taking GPUs from its master to its workers adds the workers' GPUs."""

    def job(master, worker):
        def replica(gpus):
            return {
                "replicas": 1,
                "template": {
                    "metadata": {"labels": TEAM},
                    "spec": {
                        "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]
                    },
                },
            }

        return {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "j", "namespace": "ml"},
            "spec": {"pytorchReplicaSpecs": {"Master": replica(master), "Worker": replica(worker)}},
        }

    assert not judge(job(1, 3), job(2, 2), spent()).allowed
    assert judge(job(2, 2), job(2, 2), spent()).allowed


def test_projected_budgets_charge_a_later_expires_at():
    """Extending an experiment's expires_at runs its GPUs longer: the extra hours must fit."""

    def until(hours):
        return {"expires_at": format_annotation(NOW + timedelta(hours=hours))}

    tight = budget(
        "team-nlp",
        used=480,
        period_end="2026-12-01T00:00:00Z",
        admission="Projected",
        selector={"matchLabels": {"team": "nlp"}},
        gpuHours=500,
        period="Monthly",
    )
    old = running(replicas=2, annotations=until(10))
    assert judge(running(replicas=2, annotations=until(20)), old, tight).allowed  # 2 GPUs x 10h = 20 left
    denied = judge(running(replicas=2, annotations=until(21)), old, tight)
    assert [v.rule for v in denied.violations] == ["budget"]
    assert judge(running(replicas=2, annotations=until(5)), old, tight).allowed  # earlier: always fine


# -- pre-existing violations -----------------------------------------------------------------------


GPU_CAP = policy(
    "gpu-rules",
    gpu={
        "maxGPUsPerPod": 1,
        "requireInstanceType": True,
        "allowedInstanceTypes": [{"instanceTypes": ["g5.xlarge"]}],
    },
)


def test_a_preexisting_violation_is_warned_about_while_the_update_keeps_the_gpus():
    old = running(gpus=2)  # over the cap and on a type not allowed: admitted before the policy existed
    decision = judge(running(gpus=2, labels={**TEAM, "project": "x"}), old, GPU_CAP)
    assert decision.allowed
    assert {v.key for v in decision.warnings} == {"maxGPUsPerPod", "instanceType"}


@pytest.mark.parametrize(
    "change",
    [
        lambda: running(gpus=16),  # 1 over the cap becomes 16
        lambda: running(gpus=2, replicas=4),  # more pods of a violating template
    ],
    ids=["more-per-pod", "more-replicas"],
)
def test_a_preexisting_violation_cannot_grow(change):
    decision = judge(change(), running(gpus=2), GPU_CAP)
    assert not decision.allowed
    assert {v.key for v in decision.violations} == {"maxGPUsPerPod", "instanceType"}


def test_switching_to_another_disallowed_type_is_judged_in_full():
    decision = judge(running(gpus=1, itype="p5.48xlarge"), running(gpus=1), GPU_CAP)
    assert [v.key for v in decision.violations] == ["instanceType"]
    assert not decision.warnings


def test_a_violation_the_update_introduces_is_denied():
    old = running(gpus=1, itype="g5.xlarge")
    decision = judge(running(gpus=1, itype="p4d.24xlarge"), old, GPU_CAP)
    assert [v.key for v in decision.violations] == ["instanceType"]


def test_a_policy_the_object_did_not_match_before_is_judged_in_full():
    """Relabelling into a policy's selector makes the policy apply: nothing is pre-existing."""
    prod_only = policy(
        "prod-types",
        match={"selector": {"matchLabels": {"environment": "production"}}},
        gpu={"allowedInstanceTypes": [{"instanceTypes": ["g5.xlarge"]}]},
    )
    old = running(labels={"team": "nlp", "environment": "development"})
    decision = judge(running(labels=TEAM), old, prod_only)
    assert [v.key for v in decision.violations] == ["instanceType"]


def test_an_expiry_moved_later_is_judged_in_full():
    capped = policy("expiry", expiry={"maxLifetime": "24h"})
    created = {"creationTimestamp": format_annotation(NOW - timedelta(hours=1))}

    def job(hours):
        manifest = running(annotations={"expires_at": format_annotation(NOW + timedelta(hours=hours))})
        manifest["metadata"].update(created)
        return manifest

    old = job(48)  # already beyond maxLifetime (the policy came later)
    assert judge(job(48), old, capped).allowed  # unchanged: warned
    assert judge(job(30), old, capped).allowed  # shortened: still over, but better, warned
    later = judge(job(60), old, capped)
    assert not later.allowed and [v.rule for v in later.violations] == ["expiry"]


def test_enforce_turns_into_a_warning_but_audit_stays_audit():
    audit = policy("audit-cap", enforcement="Audit", gpu={"maxGPUsPerPod": 1})
    decision = judge(running(gpus=2, labels={**TEAM, "x": "y"}), running(gpus=2), audit)
    assert decision.allowed and not decision.warnings
    assert [v.key for v in decision.audit] == ["maxGPUsPerPod"]


# -- scale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "path"),
    [
        (running(), ("spec", "replicas")),
        (
            {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "spec": {}},
            ("spec", "replicas"),
        ),
        (
            {
                "apiVersion": "kubeflow.org/v1",
                "kind": "PyTorchJob",
                "spec": {"pytorchReplicaSpecs": {"Worker": {"replicas": 1}}},
            },
            ("spec", "pytorchReplicaSpecs", "Worker", "replicas"),
        ),
    ],
)
def test_scaled_sets_the_scale_path_and_leaves_the_original_alone(manifest, path):
    before = copy.deepcopy(manifest)
    out = scaled(manifest, 5)
    node = out
    for key in path:
        node = node[key]
    assert node == 5
    assert manifest == before


def test_kinds_without_a_scale_subresource_are_not_scaled():
    assert scaled({"apiVersion": "batch/v1", "kind": "Job", "spec": {}}, 3) is None
    assert scaled({"apiVersion": "v1", "kind": "ConfigMap"}, 3) is None


# -- labels choose the budget --------------------------------------------------------------------


def nlp_pod(labels=TEAM, **kw):
    from engine_cases import pod

    return pod(labels, gpus=8, node_selector={TYPE_KEY: "p4d.24xlarge"}, **kw)


def test_relabelling_a_pod_out_of_the_budget_that_charges_it_is_denied_with_the_labels_to_keep():
    """A running pod relabelled out of every budget would be charged no more (its ledger entry is
    frozen at the relabel): a budget that a `kubectl label` ends is no budget. The denial says
    which labels to keep, whatever is left in the budget."""
    old, new = nlp_pod(), nlp_pod({**TEAM, "team": "scratch"})
    for budget_item in (spent(), budget("team-nlp", used=0, selector={"matchLabels": {"team": "nlp"}},
                                        gpuHours=500, period="Monthly")):
        decision = judge(new, old, budget_item)
        assert not decision.allowed
        (violation,) = decision.violations
        assert violation.policy == "team-nlp" and "team from nlp to scratch" in violation.message
        assert "team: nlp" in violation.fix
        # The joint fix puts the team back as it was: not a placeholder for the user to choose.
        fix = joint_fix(new, snapshot=snapshot(budget_item), now=NOW, operation="UPDATE", old_object=old)
        (edit,) = fix.edits
        assert (edit.path, edit.value, edit.choose) == (("metadata", "labels", "team"), "nlp", "")


def test_a_relabel_that_keeps_the_pod_under_its_budget_or_of_a_finished_pod_is_admitted():
    old = nlp_pod()
    assert judge(nlp_pod({**TEAM, "project": "bert"}), old, spent()).allowed
    finished = nlp_pod({**TEAM, "team": "scratch"})
    finished["status"] = {"phase": "Succeeded"}
    assert judge(finished, old, spent()).allowed


def test_relabelling_a_pod_into_a_spent_budget_is_judged_as_its_creation_there():
    """Moving a pod's team onto a spent budget adds all its GPUs to that budget: before, `added_gpus`
    compared GPUs only, so the move was free."""
    old, new = nlp_pod({**TEAM, "team": "vision"}), nlp_pod()
    decision = judge(new, old, spent())
    assert not decision.allowed and [v.policy for v in decision.violations] == ["team-nlp"]
    # a Deployment's template relabelled onto the spent budget: its pods would all be new there
    assert not judge(running(), running(labels={**TEAM, "team": "vision"}), spent()).allowed


def test_taking_a_foreign_gate_off_a_pod_with_claims_judges_the_claims_as_they_are_now():
    """An unallocated ResourceClaim can be deleted and created again with other devices while the
    pod waits behind its own gate: taking the gate off is judged as the pod's creation."""
    from engine_cases import pod

    def claiming(gates=(), node=""):
        manifest = pod(TEAM, gpus=0)
        manifest["spec"]["resourceClaims"] = [{"name": "r", "resourceClaimName": "c"}]
        if gates:
            manifest["spec"]["schedulingGates"] = [{"name": g} for g in gates]
        if node:
            manifest["spec"]["nodeName"] = node
        return manifest

    old, new = claiming(["example.com/hold"]), claiming()
    assert not judge(new, old, spent()).allowed  # the claim is unresolved here: 1 GPU at least
    assert judge(claiming(["example.com/hold"]), old, spent()).allowed  # the gate kept: nothing new
    # one of two gates off: the pod is not going to the scheduler yet
    two = claiming(["example.com/hold", "b.example/x"])
    assert judge(claiming(["example.com/hold"]), two, spent()).allowed
    assert judge(claiming(node="n1"), claiming(node="n1"), spent()).allowed


def test_a_label_the_mutating_webhook_fills_in_on_an_update_does_not_move_the_pod():
    """A pod created without a required label (before the policy, or while the webhook was down)
    gets it at its next update from mutation (here from the Namespace): an annotate is no move
    onto the budget that label selects."""
    from controller.constants import DEFAULTED_ANNOTATION

    old = nlp_pod({k: v for k, v in TEAM.items() if k != "team"})
    new = nlp_pod(annotations={"note": "x", DEFAULTED_ANNOTATION: "team"})
    assert judge(new, old, spent()).allowed
    assert not judge(nlp_pod(), old, spent()).allowed  # the user writing it: a move
