"""GPUBudget `whenExhausted: Queue` at admission (controller.engine.queueing): the mutating webhook
gates the Pods a queueing budget cannot pay for now, the validating webhook admits what was gated
and still denies what was not, and everything else is admitted with a warning."""

from __future__ import annotations

import copy

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.constants import BUDGET_GATE, KUEUE_GATE, KUEUE_QUEUE_LABEL, QUEUED_ANNOTATION
from controller.engine import evaluate
from controller.engine.mutation_scope import mutation_condition
from tests.engine.engine_cases import (
    NOW,
    budget,
    deployment,
    exception,
    pod,
    pod_spec,
    policy,
    snapshot,
)

NLP = {"team": "nlp"}
END = "2026-12-01T00:00:00Z"  # NOW is 2026-11-22T12:00Z: 204 hours left in the month
GATE = {"name": BUDGET_GATE}


def nlp_budget(name: str = "team-nlp", *, used: float = 500, when: str = "Queue", team: str = "nlp",
               **spec):
    spec = {"selector": {"matchLabels": {"team": team}}, "gpuHours": 500, "period": "Monthly",
            "whenExhausted": when, **spec}
    return budget(name, used=used, period_end=END, **spec)


def mutate(manifest, *items, operation="CREATE", old=None):
    return evaluate(manifest, snapshot=snapshot(*items), now=NOW, operation=operation, old_object=old)


def validate(manifest, *items, operation="CREATE", old=None, gates_owned=None):
    return evaluate(manifest, snapshot=snapshot(*items), now=NOW, mutate=False, operation=operation,
                    old_object=old, gates_owned=gates_owned)


def applied(manifest, decision):
    return jsonpatch.apply_patch(copy.deepcopy(manifest), decision.patch)


def gate_ops(decision):
    return [op for op in decision.patch if op["path"].startswith("/spec/schedulingGates")]


def job(labels=None, *, gpus=1, meta_labels=None) -> dict:
    metadata: dict = {"name": "j", "namespace": "ml"}
    if meta_labels:
        metadata["labels"] = dict(meta_labels)
    template: dict = {"spec": {**pod_spec(gpus), "restartPolicy": "Never"}}
    if labels:
        template["metadata"] = {"labels": dict(labels)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": {"template": template}}


# -- Pods the mutating webhook gates ------------------------------------------------------------------


def test_a_pod_a_spent_queueing_budget_covers_is_admitted_gated_and_annotated():
    manifest = pod(NLP, gpus=1)
    decision = mutate(manifest, nlp_budget())
    assert decision.allowed and not decision.violations
    assert gate_ops(decision) == [{"op": "add", "path": "/spec/schedulingGates", "value": [GATE]}]
    gated = applied(manifest, decision)
    assert gated["spec"]["schedulingGates"] == [GATE]
    note = gated["metadata"]["annotations"][QUEUED_ANNOTATION]
    assert note.startswith("team-nlp: ") and "exhausted" in note
    assert gated["spec"]["containers"] == manifest["spec"]["containers"]


def test_the_gate_is_appended_after_the_pods_own_gates_and_its_annotations_are_kept():
    manifest = pod(NLP, gpus=1, annotations={"owner": "me"})
    manifest["spec"]["schedulingGates"] = [{"name": "example.com/other"}]
    decision = mutate(manifest, nlp_budget())
    assert gate_ops(decision) == [{"op": "add", "path": "/spec/schedulingGates/-", "value": GATE}]
    gated = applied(manifest, decision)
    assert gated["spec"]["schedulingGates"] == [{"name": "example.com/other"}, GATE]
    assert gated["metadata"]["annotations"]["owner"] == "me"
    assert "team-nlp" in gated["metadata"]["annotations"][QUEUED_ANNOTATION]


def test_a_gated_pod_passes_validation_with_a_warning_that_it_waits():
    manifest = pod(NLP, gpus=1)
    budgets = [nlp_budget()]
    gated = applied(manifest, mutate(manifest, *budgets))
    decision = validate(gated, *budgets)
    assert decision.allowed and not decision.violations
    (warning,) = decision.warnings
    assert warning.enforcement == "Warn" and warning.policy == "team-nlp" and warning.rule == "budget"
    assert "waits" in warning.message and "team-nlp" in warning.message
    assert decision.patch == []


def test_a_pod_already_gated_is_not_gated_twice_when_mutation_runs_again():
    manifest = pod(NLP, gpus=1)
    budgets = [nlp_budget()]
    gated = applied(manifest, mutate(manifest, *budgets))
    again = mutate(gated, *budgets)  # reinvocation, or a pod created with the gate already
    assert again.allowed and gate_ops(again) == []
    assert applied(gated, again)["spec"]["schedulingGates"] == [GATE]


def test_a_pod_the_mutating_webhook_did_not_gate_is_denied_as_under_deny():
    decision = validate(pod(NLP, gpus=1), nlp_budget())
    assert not decision.allowed
    (violation,) = decision.violations
    assert (violation.policy, violation.rule) == ("team-nlp", "budget")
    assert "exhausted" in violation.message


def test_a_pod_of_a_deployment_is_gated_too():
    manifest = pod(NLP, gpus=2)
    manifest["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "d-5f9c", "uid": "rs", "controller": True}
    ]
    decision = mutate(manifest, nlp_budget())
    assert decision.allowed and len(gate_ops(decision)) == 1


def test_a_label_defaulted_by_mutation_brings_the_pod_under_the_budget_and_its_gate():
    defaults = policy("labels", labels={"required": [{"key": "team", "default": "nlp"}]})
    manifest = pod({}, gpus=1)
    decision = mutate(manifest, defaults, nlp_budget())
    gated = applied(manifest, decision)
    assert gated["metadata"]["labels"]["team"] == "nlp"
    assert gated["spec"]["schedulingGates"] == [GATE]
    assert validate(gated, defaults, nlp_budget()).allowed


def test_two_spent_queueing_budgets_add_one_gate_and_name_both():
    budgets = [nlp_budget("a-nlp"), nlp_budget("b-all", selector={}, gpuHours=10, used=10)]
    manifest = pod(NLP, gpus=1)
    decision = mutate(manifest, *budgets)
    assert len(gate_ops(decision)) == 1
    note = applied(manifest, decision)["metadata"]["annotations"][QUEUED_ANNOTATION]
    assert "a-nlp: " in note and "b-all: " in note
    assert validate(applied(manifest, decision), *budgets).allowed


def test_a_spent_deny_budget_still_denies_next_to_a_queueing_one():
    budgets = [nlp_budget("a-queue"), nlp_budget("b-deny", when="Deny")]
    decision = mutate(pod(NLP, gpus=1), *budgets)
    assert not decision.allowed
    assert [v.policy for v in decision.violations] == ["b-deny"]


# -- what is not gated ----------------------------------------------------------------------------------


def test_with_room_under_exhausted_nothing_is_gated_nor_warned():
    manifest = pod(NLP, gpus=1)
    decision = mutate(manifest, nlp_budget(used=499.9))
    assert decision.allowed and decision.patch == [] and not decision.warnings
    assert validate(manifest, nlp_budget(used=499.9)).allowed


@pytest.mark.parametrize("used", [0, 10, 296, 400, 499, 600])
def test_under_projected_every_covered_pod_is_gated_even_with_room(used):
    budgets = [nlp_budget(used=used, admission="Projected")]
    manifest = pod(NLP, gpus=1)
    decision = mutate(manifest, *budgets)
    assert decision.allowed and not decision.violations
    assert gate_ops(decision) == [{"op": "add", "path": "/spec/schedulingGates", "value": [GATE]}]
    gated = applied(manifest, decision)
    assert "team-nlp" in gated["metadata"]["annotations"][QUEUED_ANNOTATION]
    checked = validate(gated, *budgets)
    assert checked.allowed and [w.enforcement for w in checked.warnings] == ["Warn"]


@pytest.mark.parametrize(("used", "allowed"), [(296, True), (297, False)])  # 1 GPU x 204 h left
def test_under_projected_an_ungated_pod_is_judged_as_under_deny(used, allowed):
    decision = validate(pod(NLP, gpus=1), nlp_budget(used=used, admission="Projected"))
    assert decision.allowed is allowed


@pytest.mark.parametrize("workload", [deployment(NLP, gpus=1, replicas=2), job(NLP, gpus=2)],
                         ids=["Deployment", "Job"])
def test_a_controller_under_a_spent_queueing_budget_is_admitted_with_a_warning(workload):
    for decision in (mutate(workload, nlp_budget()), validate(workload, nlp_budget())):
        assert decision.allowed and not decision.violations
        (warning,) = decision.warnings
        assert warning.enforcement == "Warn" and "pods will wait" in warning.message
        assert not gate_ops(decision)
        assert not any(QUEUED_ANNOTATION in str(op) for op in decision.patch)


@pytest.mark.parametrize("workload", [deployment(NLP, gpus=1, replicas=2), job(NLP, gpus=2)],
                         ids=["Deployment", "Job"])
def test_a_controller_with_room_is_admitted_silently(workload):
    decision = mutate(workload, nlp_budget(used=10))
    assert decision.allowed and not decision.warnings and decision.patch == []


def test_an_update_is_never_gated():
    old, new = pod(NLP, gpus=1), pod({**NLP, "extra": "x"}, gpus=1)
    decision = mutate(new, nlp_budget(), operation="UPDATE", old=old)
    assert decision.allowed and not decision.violations and not gate_ops(decision)
    assert validate(new, nlp_budget(), operation="UPDATE", old=old).allowed


def gated(manifest):
    out = copy.deepcopy(manifest)
    out["spec"]["schedulingGates"] = [GATE]
    return out


def test_an_update_that_keeps_the_gate_is_admitted():
    old = gated(pod(NLP, gpus=1))
    new = gated(pod({**NLP, "extra": "x"}, gpus=1))
    assert validate(new, nlp_budget(), operation="UPDATE", old=old).allowed


def test_the_operator_removing_the_gate_when_there_is_room_is_admitted():
    old, new = gated(pod(NLP, gpus=1)), pod(NLP, gpus=1)
    for room in (nlp_budget(used=10), nlp_budget(used=10, admission="Projected")):
        assert validate(new, room, operation="UPDATE", old=old).allowed


def test_a_user_removing_the_gate_under_a_spent_budget_is_denied():
    old, new = gated(pod(NLP, gpus=1)), pod(NLP, gpus=1)
    decision = validate(new, nlp_budget(), operation="UPDATE", old=old)
    assert not decision.allowed
    assert [v.policy for v in decision.violations] == ["team-nlp"]


def test_a_scale_up_under_a_spent_queueing_budget_is_admitted_with_a_warning():
    old, new = deployment(NLP, gpus=1, replicas=1), deployment(NLP, gpus=1, replicas=4)
    assert not validate(new, nlp_budget(when="Deny"), operation="UPDATE", old=old).allowed
    decision = validate(new, nlp_budget(), operation="UPDATE", old=old)
    assert decision.allowed
    assert ["pods will wait" in w.message for w in decision.warnings] == [True]


def kueue_gated(manifest):
    out = copy.deepcopy(manifest)
    out["spec"]["schedulingGates"] = [{"name": KUEUE_GATE}]
    return out


def test_a_workload_kueue_admits_is_only_warned_its_pods_are_judged_when_created():
    workload = job(NLP, gpus=1, meta_labels={KUEUE_QUEUE_LABEL: "team-q"})
    for decision in (mutate(workload, nlp_budget()), validate(workload, nlp_budget())):
        assert decision.allowed and not decision.violations and not gate_ops(decision)
        (warning,) = decision.warnings
        assert warning.enforcement == "Warn" and "Kueue" in warning.message


@pytest.mark.parametrize("admission", ["Exhausted", "Projected"])
def test_a_kueue_pod_the_budget_cannot_pay_for_waits_for_kueue_and_the_budget(admission):
    """Kueue's quota is not a GPU-hour budget: a Pod Kueue gated that a spent budget cannot pay for
    gets the budget's gate too, so Kueue admitting it does not start it past the budget."""
    budget = nlp_budget(used=500, admission=admission)
    workload = kueue_gated(pod({**NLP, KUEUE_QUEUE_LABEL: "team-q"}, gpus=1))
    gated_pod = applied(workload, mutate(workload, budget))
    assert [g["name"] for g in gated_pod["spec"]["schedulingGates"]] == [KUEUE_GATE, BUDGET_GATE]
    waits = validate(gated_pod, budget)
    assert waits.allowed and not waits.violations
    assert ["Kueue admits this pod, and it also waits SchedulingGated" in w.message
            for w in waits.warnings] == [True]
    # Not gated by us (our mutating webhook was down): judged as under Deny, Kueue's gate or not.
    refused = validate(workload, budget)
    assert not refused.allowed and [v.policy for v in refused.violations] == ["team-nlp"]
    # Kueue taking its own gate off leaves the budget's: the pod still waits for the operator.
    by_kueue = copy.deepcopy(gated_pod)
    by_kueue["spec"]["schedulingGates"] = [GATE]
    decision = validate(by_kueue, budget, operation="UPDATE", old=gated_pod,
                        gates_owned=frozenset({KUEUE_GATE}))
    assert decision.allowed and not decision.violations


def test_kueue_taking_its_gate_off_with_the_flavors_node_selector_is_only_warned():
    """Kueue admits a plain pod by removing its gate and merging the flavor's nodeSelector in one
    patch: its gate was on the object before, so the pod is still Kueue's."""
    labels = {**NLP, KUEUE_QUEUE_LABEL: "team-q"}
    old = kueue_gated(pod(labels, gpus=8))
    new = pod(labels, gpus=8)
    new["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    decision = validate(new, nlp_budget(), operation="UPDATE", old=old)
    assert decision.allowed and ["Kueue" in w.message for w in decision.warnings] == [True]


@pytest.mark.parametrize("keep_label", [True, False], ids=["label kept", "label taken off too"])
def test_only_kueue_takes_its_gate_off_a_pod_a_queueing_budget_covers(keep_label):
    """A user can write Kueue's gate and queue-name label on their own pod (it is then taken as
    Kueue's, and only warned about) and take the gate off later: by anyone but Kueue that starts
    the pod past the budget, so it is denied, with or without the label, with room or without."""
    labels = {**NLP, KUEUE_QUEUE_LABEL: "team-q"}
    old = kueue_gated(pod(labels, gpus=8))
    new = pod(labels if keep_label else NLP, gpus=8)
    for used in (0, 200):
        by_user = validate(new, nlp_budget(used=used), operation="UPDATE", old=old, gates_owned=frozenset())
        assert not by_user.allowed, used
        (violation,) = by_user.violations
        assert violation.policy == "team-nlp" and "Kueue" in violation.message and KUEUE_GATE in violation.fix
        # The operator owns the budget's gate, not Kueue's.
        assert not validate(new, nlp_budget(used=used), operation="UPDATE", old=old,
                            gates_owned=frozenset({BUDGET_GATE})).allowed
    by_kueue = validate(new, nlp_budget(), operation="UPDATE", old=old, gates_owned=frozenset({KUEUE_GATE}))
    assert by_kueue.allowed and not by_kueue.violations
    # Under a budget that refuses (Deny), the pod was judged at its creation; the gate changes nothing.
    assert validate(new, nlp_budget(when="Deny", used=0), operation="UPDATE", old=old,
                    gates_owned=frozenset()).allowed


def test_taking_off_a_gate_that_is_not_a_queues_is_judged_as_before():
    other = "example.com/quota"
    old = pod(NLP, gpus=1)
    old["spec"]["schedulingGates"] = [{"name": other}]
    decision = validate(pod(NLP, gpus=1), nlp_budget(used=0), operation="UPDATE", old=old,
                        gates_owned=frozenset())
    assert decision.allowed and not decision.violations


def test_a_pod_that_only_claims_kueue_is_judged_as_any_other():
    """The label alone is something anyone writes: without Kueue's own gate on the pod (Kueue not
    installed, or not managing it), the validating webhook judges it as under Deny."""
    workload = pod({**NLP, KUEUE_QUEUE_LABEL: "does-not-exist"}, gpus=8)
    decision = validate(workload, nlp_budget())
    assert not decision.allowed and [v.policy for v in decision.violations] == ["team-nlp"]
    # Nor does our mutating webhook believe the label alone: the pod queues as any other.
    gated_pod = applied(workload, mutate(workload, nlp_budget()))
    assert gated_pod["spec"]["schedulingGates"] == [GATE]
    waits = validate(gated_pod, nlp_budget())
    assert waits.allowed and ["waits SchedulingGated" in w.message for w in waits.warnings] == [True]
    # Once Kueue gates it too, the budget that cannot pay for it still holds it.
    assert validate(kueue_gated(workload), nlp_budget()).violations


@pytest.mark.parametrize("room", [True, False], ids=["room", "spent"])
def test_once_kueue_gates_a_pod_our_reinvoked_webhook_takes_its_own_gate_back(room):
    """The API server calls our mutating webhook first (`comptroller` < `kueue`), then Kueue's,
    which adds its gate, then ours again (reinvocationPolicy IfNeeded): where the budget can pay
    for the pod, that second call hands it to Kueue, taking the budget's gate and note back off,
    and nothing else; where it cannot, the pod keeps both gates."""
    budget = nlp_budget(used=0 if room else 500, admission="Projected")
    workload = pod({**NLP, KUEUE_QUEUE_LABEL: "team-q"}, gpus=1)
    workload["spec"]["schedulingGates"] = [{"name": "example.com/other"}]
    first = applied(workload, mutate(workload, budget))
    assert [g["name"] for g in first["spec"]["schedulingGates"]] == ["example.com/other", BUDGET_GATE]
    by_kueue = copy.deepcopy(first)  # what Kueue's pod webhook does
    by_kueue["spec"]["schedulingGates"].append({"name": KUEUE_GATE})
    by_kueue["metadata"]["labels"]["kueue.x-k8s.io/managed"] = "true"
    again = mutate(by_kueue, budget)
    final = applied(by_kueue, again)
    if not room:
        assert again.patch == [] and final == by_kueue
        assert validate(final, budget).allowed
        return
    assert [g["name"] for g in final["spec"]["schedulingGates"]] == ["example.com/other", KUEUE_GATE]
    assert QUEUED_ANNOTATION not in final["metadata"].get("annotations", {})
    assert final["metadata"]["labels"] == by_kueue["metadata"]["labels"]
    decision = validate(final, budget)
    assert decision.allowed and not decision.violations
    # Called once more (another webhook changed it again), it has nothing left to take back.
    assert mutate(final, budget).patch == []
    # An UPDATE never takes the budget's gate off: only the operator does.
    assert gate_ops(mutate(by_kueue, budget, operation="UPDATE", old=by_kueue)) == []


def test_adding_the_kueue_label_while_taking_the_budget_gate_off_is_denied():
    old = gated(pod(NLP, gpus=8))
    new = pod({**NLP, KUEUE_QUEUE_LABEL: "team-q"}, gpus=8)
    decision = validate(new, nlp_budget(), operation="UPDATE", old=old)
    assert not decision.allowed and [v.policy for v in decision.violations] == ["team-nlp"]


def test_a_kueue_workload_with_room_is_not_even_warned():
    workload = pod({**NLP, KUEUE_QUEUE_LABEL: "team-q"}, gpus=1)
    decision = mutate(workload, nlp_budget(used=0))
    assert decision.allowed and not decision.warnings and decision.patch == []


@pytest.mark.parametrize(
    "workload",
    [pod({"team": "vision"}, gpus=1), pod(NLP, gpus=0)],
    ids=["another team", "no GPU"],
)
def test_a_pod_the_budget_does_not_cover_is_untouched(workload):
    for decision in (mutate(workload, nlp_budget()), validate(workload, nlp_budget())):
        assert decision.allowed and decision.patch == []
        assert not decision.warnings and not decision.violations


def test_a_budget_counting_other_resources_does_not_gate():
    decision = mutate(pod(NLP, gpus=1), nlp_budget(resources=["amd.com/gpu"]))
    assert decision.allowed and decision.patch == [] and not decision.warnings


@pytest.mark.parametrize("admission", ["Exhausted", "Projected"])
def test_under_deny_a_spent_budget_denies_and_gates_nothing(admission):
    spent = nlp_budget(when="Deny", admission=admission)
    for decision in (mutate(pod(NLP, gpus=1), spent), validate(pod(NLP, gpus=1), spent)):
        assert not decision.allowed and not gate_ops(decision)
        assert [v.policy for v in decision.violations] == ["team-nlp"]


def test_deny_is_the_default():
    spent = budget("team-nlp", used=500, period_end=END, selector={"matchLabels": NLP}, gpuHours=500)
    assert spent.spec.when_exhausted == "Deny"
    assert not mutate(pod(NLP, gpus=1), spent).allowed


def test_a_finopsexception_waiving_the_budget_means_no_gate():
    waiver = exception(policies=["team-nlp"], rules=["budget"], selector={"matchLabels": NLP})
    manifest = pod(NLP, gpus=1)
    decision = mutate(manifest, nlp_budget(), waiver)
    assert decision.allowed and not gate_ops(decision)
    assert not any(QUEUED_ANNOTATION in str(op) for op in decision.patch)
    checked = validate(manifest, nlp_budget(), waiver)
    assert checked.allowed and [v.policy for v in checked.exempted] == ["team-nlp"]


def test_an_exception_for_another_rule_does_not_lift_the_gate():
    waiver = exception(policies=["team-nlp"], rules=["labels"], selector={"matchLabels": NLP})
    assert len(gate_ops(mutate(pod(NLP, gpus=1), nlp_budget(), waiver))) == 1


def test_an_expired_exception_does_not_lift_the_gate():
    waiver = exception(policies=["team-nlp"], rules=["budget"], expiresAt="2026-11-01T00:00:00Z")
    assert len(gate_ops(mutate(pod(NLP, gpus=1), nlp_budget(), waiver))) == 1


# -- the mutating webhook's matchCondition --------------------------------------------------------------


def test_queueing_sends_every_object_to_the_mutating_webhook():
    labels = policy("labels", labels={"required": [{"key": "team", "default": "nlp"}]})
    assert mutation_condition([], queueing=True) == "true"
    assert mutation_condition([labels], queueing=True) == "true"
    assert mutation_condition([]) == "false"  # without queueing, nothing to add: nothing is sent
    assert mutation_condition([labels]) not in ("true", "false")


# -- by property ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(used=st.integers(0, 700), gpus=st.integers(1, 8), limit=st.integers(1, 600))
def test_exhausted_queueing_never_refuses_at_mutation_nor_lets_an_ungated_pod_through(used, gpus, limit):
    budgets = [nlp_budget(used=used, gpuHours=limit)]
    spent = used >= limit
    manifest = pod(NLP, gpus=gpus)
    decision = mutate(manifest, *budgets)
    assert decision.allowed
    assert bool(gate_ops(decision)) is spent
    assert validate(applied(manifest, decision), *budgets).allowed
    # Without the mutating webhook, the budget judges as under Deny.
    assert validate(manifest, *budgets).allowed is (not spent)
    assert validate(manifest, *budgets).allowed is mutate(manifest, nlp_budget(
        used=used, gpuHours=limit, when="Deny")).allowed
