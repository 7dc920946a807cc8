"""`judge_claim`: a DRA claim created after the pods that name it is judged by what it adds to them
(controller.engine.claims). Without it, a pod admitted while its claim did not exist (counted as
1 GPU) could be given 8 by a claim created next: past maxGPUsPerPod, past a Projected budget."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from controller.engine import evaluate
from controller.engine.accelerators import ClaimIndex, generated_claims, pod_gpus
from controller.engine.claims import (
    claim_update_judged,
    judge_claim,
    made_by_the_claim_controller,
    waiting_for,
    waiting_on,
)
from controller.engine.messages import render_denial
from e2e import accelerators as lab
from tests.engine.engine_cases import NOW, apply_fix, budget, policy, snapshot

NS = "ml"
NLP = {"team": "nlp"}
END = "2026-12-01T00:00:00Z"  # 204 hours after NOW
MAX_FOUR = policy("max-four", gpu={"maxGPUsPerPod": 4})


def gpus(count: int) -> list[dict]:
    return [lab.device_request("gpu", lab.GPU_CLASS, count=count)]


def waiting(name: str = "trainer", *, claim: str = "shared", template: bool = False, **extra) -> dict:
    source = {"resourceClaimTemplateName": claim} if template else {"resourceClaimName": claim}
    manifest = lab.pod(name, NS, claims={"gpus": source}, labels=NLP)
    manifest["metadata"]["uid"] = f"uid-{name}"  # as the API server lists it
    manifest["spec"].update(extra)
    return manifest


def judged(claim: dict, *pods: dict, items=(MAX_FOUR,), claims: ClaimIndex | None = None):
    known = replace(snapshot(*items), claims=claims or ClaimIndex())
    return judge_claim(claim, pods, snapshot=known, now=NOW)


def test_a_claim_giving_a_waiting_pod_more_than_its_policy_allows_is_denied_naming_the_pod():
    decision = judged(lab.resource_claim("shared", NS, gpus(8)), waiting())
    assert not decision.allowed
    [found] = decision.violations
    assert (found.policy, found.key) == ("max-four", "maxGPUsPerPod")
    assert found.message.startswith("pod trainer: 8 GPUs per pod")
    assert "ResourceClaim shared gives it 8 GPUs" in found.message
    text = render_denial(decision)
    assert text.startswith("Comptroller denied ResourceClaim ml/shared:")
    assert "kubectl delete pod -n ml trainer" in text
    assert "spec.devices.requests" in text


def test_a_claim_within_the_policy_is_admitted():
    assert judged(lab.resource_claim("shared", NS, gpus(4)), waiting()).allowed


@pytest.mark.parametrize(
    "pod",
    [
        waiting(nodeName="gpu-node-0"),
        waiting(claim="other"),
        waiting(template=True),
        {**waiting(), "status": {"phase": "Failed"}},
        {**waiting(), "metadata": {**waiting()["metadata"], "deletionTimestamp": "2026-11-22T11:00:00Z"}},
    ],
    ids=["bound", "names another claim", "names a template of that name", "finished", "deleted"],
)
def test_only_pods_that_name_the_claim_and_wait_for_the_scheduler_are_judged(pod):
    assert not waiting_for(pod, "ResourceClaim", "shared")
    assert judged(lab.resource_claim("shared", NS, gpus(8)), pod).allowed


def test_a_template_created_after_its_pods_is_judged_for_them():
    decision = judged(lab.claim_template("shared", NS, gpus(8)), waiting(template=True))
    assert [v.key for v in decision.violations] == ["maxGPUsPerPod"]
    assert decision.resource == "ResourceClaimTemplate/ml/shared"


def test_only_the_resource_claim_controller_makes_claims_for_one_pod():
    """Its claims (owned by the pod, named by no pod's spec) need no judging; a Pod ownerReference
    anyone else writes on a claim does not make it one, and the claim is judged as any other."""
    claim = lab.resource_claim("trainer-gpus-x7k2", NS, gpus(8))
    claim["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Pod", "name": "trainer", "uid": "u", "controller": True}
    ]
    assert made_by_the_claim_controller(claim, "system:serviceaccount:kube-system:resource-claim-controller")
    assert made_by_the_claim_controller(claim, "system:kube-controller-manager")
    assert not made_by_the_claim_controller(claim, "data-scientist")
    unowned = lab.resource_claim("trainer-gpus-x7k2", NS, gpus(8))
    assert not made_by_the_claim_controller(unowned, "system:kube-controller-manager")
    decision = judged(claim, waiting(claim="trainer-gpus-x7k2"))
    assert [v.key for v in decision.violations] == ["maxGPUsPerPod"]


def claim_for_entry(
    name: str, count: int, *, uid: str = "uid-trainer", owner: str = "trainer", entry: str = "gpus"
) -> dict:
    """A claim anyone may create for a pod's template entry: the resource claim controller takes a
    claim whose controller is the pod and whose annotation names the entry, instead of making one."""
    made = lab.resource_claim(name, NS, gpus(count))
    made["metadata"]["annotations"] = {"resource.kubernetes.io/pod-claim-name": entry}
    made["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Pod", "name": owner, "uid": uid, "controller": True}
    ]
    return made


def test_a_claim_made_by_hand_for_a_pods_template_entry_is_judged_for_the_pod():
    """No pod names it, yet it is the pod's claim: judged for it, as the template would be."""
    pod = waiting(claim="per-pod", template=True)
    assert [v.key for v in judged(claim_for_entry("mine", 8), pod).violations] == ["maxGPUsPerPod"]
    assert judged(claim_for_entry("mine", 4), pod).allowed
    assert judged(claim_for_entry("mine", 8, entry="other"), pod).allowed  # no such entry


def test_the_pod_a_claim_is_made_for_is_the_one_its_owner_uid_names_whatever_the_name():
    """The resource claim controller finds a pod's claims by its uid alone (an index of controller
    references by uid): a reference with the pod's uid and another name is the pod's claim; one
    with the pod's name and another uid (a pod of that name deleted and created again) is not."""
    pod = waiting(claim="per-pod", template=True)
    assert not judged(claim_for_entry("mine", 8, owner="someone-else"), pod).allowed
    assert judged(claim_for_entry("mine", 8, uid="uid-of-an-older-trainer"), pod).allowed
    controlled = claim_for_entry("mine", 8)
    controlled["metadata"]["ownerReferences"][0]["controller"] = False  # not its controller
    assert judged(controlled, pod).allowed


def test_a_claim_updated_to_be_a_pods_is_judged_for_it_as_if_created_so():
    """The spec of a claim cannot change, but an owner and the annotation written on it later make
    it the claim the resource claim controller takes for the pod's entry: judged then. An update
    that changes nothing a pod holds is not judged, nor is the claim judged again for a pod it was
    the pod's before."""
    pod = waiting(claim="per-pod", template=True)
    plain = lab.resource_claim("mine", NS, gpus(8))
    owned = claim_for_entry("mine", 8)
    assert claim_update_judged(plain, owned)
    assert not claim_update_judged(owned, owned) and not claim_update_judged(owned, plain)
    labelled = copy.deepcopy(owned)
    labelled["metadata"]["labels"] = {"reviewed": "yes"}
    assert not claim_update_judged(owned, labelled)
    assert claim_update_judged(owned, claim_for_entry("mine", 8, entry="other"))
    assert not claim_update_judged(None, lab.claim_template("per-pod", NS, gpus(8)))
    known = replace(snapshot(MAX_FOUR), claims=ClaimIndex())
    assert [v.key for v in judge_claim(owned, [pod], snapshot=known, now=NOW, old=plain).violations] == [
        "maxGPUsPerPod"
    ]
    assert judge_claim(labelled, [pod], snapshot=known, now=NOW, old=owned).allowed
    assert waiting_on(owned, [pod], old=plain) == [pod] and waiting_on(labelled, [pod], old=owned) == []


def test_a_warning_the_pod_had_is_the_claims_only_when_it_takes_the_pod_further():
    """Under a Warn policy the 6 container GPUs of the pod were warned of at its admission: a claim
    of a NIC does not repeat the warning, one of 8 GPUs more does, naming the pod."""
    warn = policy("max-four", enforcement="Warn", gpu={"maxGPUsPerPod": 4})
    pod = waiting()
    pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": "6"}
    nic = judged(lab.resource_claim("shared", NS, [lab.device_request("nic", "rdma.example.com")]), pod,
                 items=(warn,))
    assert nic.allowed and not nic.warnings
    eight = judged(lab.resource_claim("shared", NS, gpus(8)), pod, items=(warn,))
    assert eight.allowed and not eight.violations
    assert [w.message.split(":")[0] for w in eight.warnings] == ["pod trainer"]
    assert "14 GPUs per pod" in eight.warnings[0].message


def test_a_claim_made_again_by_hand_under_the_name_the_pods_status_records_is_judged():
    """The claim made for the pod was deleted; one of 8 created under its name is what it gets."""
    pod = made_for_it(waiting(claim="per-pod", template=True))
    assert not judged(lab.resource_claim("trainer-gpus-x7k2", NS, gpus(8)), pod).allowed


def test_a_template_made_again_is_judged_by_what_it_asks_not_the_claims_made_before():
    """A pending pod's claim was made from a template of 1 GPU; a template of 8 under the same name
    decides what the claim made again (after a deletion) holds: judged, it is refused."""
    pod = made_for_it(waiting(claim="per-pod", template=True))
    before = ClaimIndex([lab.resource_claim("trainer-gpus-x7k2", NS, gpus(1))])
    assert not judged(lab.claim_template("per-pod", NS, gpus(8)), pod, claims=before).allowed
    assert judged(lab.claim_template("per-pod", NS, gpus(4)), pod, claims=before).allowed


def test_an_unallocated_claim_deleted_and_created_bigger_is_judged_against_the_new_one():
    """The watch cache may still hold the old claim (2 GPUs): the new one counts, not the old."""
    old = ClaimIndex([lab.resource_claim("shared", NS, gpus(2))])
    assert not judged(lab.resource_claim("shared", NS, gpus(8)), waiting(), claims=old).allowed
    assert judged(lab.resource_claim("shared", NS, gpus(3)), waiting(), claims=old).allowed


def left_one():
    """204 GPU-hours left and 204 hours to the period's end: room for 1 GPU, not 2."""
    return budget("team-nlp", used=296, period_end=END, selector={"matchLabels": NLP}, gpuHours=500,
                  period="Monthly", admission="Projected")


@pytest.mark.parametrize(("count", "allowed"), [(1, True), (2, False)])
def test_a_claim_that_takes_a_waiting_pod_past_a_projected_budget_is_denied(count, allowed):
    """Room for the 1 GPU the pod was admitted with (its claim unknown), not for 2."""
    decision = judged(lab.resource_claim("shared", NS, gpus(count)), waiting(), items=(left_one(),))
    assert decision.allowed is allowed
    if not allowed:
        [found] = decision.violations
        assert (found.policy, found.rule) == ("team-nlp", "budget")
        assert found.message.startswith("pod trainer: ")


def room_for(gpus_: int):
    """`gpus_` GPUs for the 204 hours to the period's end, and nothing more."""
    return budget("team-nlp", used=0, period_end=END, selector={"matchLabels": NLP}, gpuHours=204 * gpus_,
                  period="Monthly", admission="Projected")


def job_pods(count: int) -> list[dict]:
    """A Job's pods, each naming the template it gets its own claim from, created one by one."""
    made = []
    for index in range(count):
        pod = waiting(f"train-{index}", claim="per-pod", template=True)
        pod["metadata"]["creationTimestamp"] = f"2026-11-22T10:00:0{index}Z"
        made.append(pod)
    return made


def test_a_template_giving_each_of_a_jobs_pods_its_own_gpus_is_judged_for_all_of_them_together():
    """A Job of 4 pods admitted while its template did not exist (1 GPU each): room for 4 GPUs. A
    template of 2 GPUs fits each pod alone, not the 8 GPUs the 4 pods hold together: the pods it
    takes past the budget, the youngest, are named, and 1 device is the count that fits."""
    pods = job_pods(4)
    template = lab.claim_template("per-pod", NS, gpus(2))
    decision = judged(template, *reversed(pods), items=(room_for(4),))
    assert not decision.allowed
    assert [v.message.split(":")[0] for v in decision.violations] == ["pod train-2", "pod train-3"]
    assert "left in budget team-nlp after the 816 GPU-hours of the pods judged with it" in (
        decision.violations[0].message
    )
    assert "1 device fits" in decision.violations[0].fix
    assert judged(apply_fix(template, decision.violations[0].fix), *pods, items=(room_for(4),)).allowed
    assert judged(template, *pods, items=(room_for(8),)).allowed


def test_a_claim_pods_share_counts_once_for_all_of_them():
    """Two pods naming one ResourceClaim share its devices: 4 GPUs for both fit room for 4."""
    pods = [waiting("first"), waiting("second")]
    assert judged(lab.resource_claim("shared", NS, gpus(4)), *pods, items=(room_for(4),)).allowed
    assert not judged(lab.resource_claim("shared", NS, gpus(5)), *pods, items=(room_for(4),)).allowed


@pytest.mark.parametrize("oldest", ["long", "short"])
def test_a_shared_claim_is_held_as_long_as_its_longest_sharer_whatever_the_order(oldest):
    """Pod `long` (100 h) holds only the shared claim, pod `short` (10 h) 8 GPUs of its own too. The
    claim's 8 GPUs are held for 100 h: 800 + 80 GPU-hours do not fit 800, whichever pod is older."""
    from datetime import timedelta

    from controller.engine.expiry import format_annotation

    def sharer(name: str, hours: int, own: int, created: str) -> dict:
        pod = waiting(name)
        if own:
            pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": str(own)}
        pod["metadata"]["annotations"] = {"expires_at": format_annotation(NOW + timedelta(hours=hours))}
        pod["metadata"]["creationTimestamp"] = created
        return pod

    first, second = "2026-11-22T10:00:00Z", "2026-11-22T10:00:01Z"
    pods = [sharer("long", 100, 0, first if oldest == "long" else second),
            sharer("short", 10, 8, first if oldest == "short" else second)]
    room = budget("team-nlp", used=0, period_end=END, selector={"matchLabels": NLP}, gpuHours=800,
                  period="Monthly", admission="Projected")
    assert not judged(lab.resource_claim("shared", NS, gpus(8)), *pods, items=(room,)).allowed
    assert judged(lab.resource_claim("shared", NS, gpus(7)), *pods, items=(room,)).allowed  # 7 x 100 + 8 x 10


def test_an_instance_type_a_pod_had_is_not_the_doing_of_a_claim_that_adds_gpus():
    """The pod pins an instance type the policy stopped allowing after it was admitted: a claim of
    2 GPUs, within its limit, does not change where it runs, and is admitted."""
    g5_only = [{"instanceTypes": ["g5.*"]}]
    strict = policy("g5-only", gpu={"maxGPUsPerPod": 4, "allowedInstanceTypes": g5_only})
    pod = waiting(nodeSelector={"node.kubernetes.io/instance-type": "p4d.24xlarge"})
    broken = evaluate(pod, snapshot=replace(snapshot(strict), claims=ClaimIndex()), now=NOW, mutate=False)
    assert [v.key for v in broken.violations] == ["instanceType"]
    assert judged(lab.resource_claim("shared", NS, gpus(2)), pod, items=(strict,)).allowed
    eight = judged(lab.resource_claim("shared", NS, gpus(8)), pod, items=(strict,))
    assert [v.key for v in eight.violations] == ["maxGPUsPerPod"]


def test_what_a_pod_violated_without_the_claim_is_not_the_claims_doing_unless_it_makes_it_worse():
    """A policy made stricter after the pod was admitted: its 6 container GPUs break it with or
    without the claim. A claim of no GPUs adds nothing; a claim of 8 takes it further past."""
    pod = waiting()
    pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": "6"}
    nic = lab.resource_claim("shared", NS, [lab.device_request("nic", "rdma.example.com")])
    assert judged(nic, pod).allowed
    [found] = judged(lab.resource_claim("shared", NS, gpus(8)), pod).violations
    assert found.message.startswith("pod trainer: 14 GPUs per pod")


def test_a_claim_that_adds_gpus_past_a_spent_budget_is_denied():
    """The pod was admitted while the budget had room; spent since, it must not get 7 GPUs more."""
    spent = budget("team-nlp", used=500, period_end=END, selector={"matchLabels": NLP}, gpuHours=500,
                   period="Monthly")
    decision = judged(lab.resource_claim("shared", NS, gpus(8)), waiting(), items=(spent,))
    assert [v.policy for v in decision.violations] == ["team-nlp"]
    same = judged(lab.resource_claim("shared", NS, gpus(1)), waiting(), items=(spent,))
    assert same.allowed  # 1 GPU, as the pod was admitted with


def test_a_claim_adding_only_gpus_a_spent_budget_does_not_count_is_not_its_doing():
    """The budget counts `nvidia.com/gpu` only: the pod's container GPU breaks it, spent since, with
    or without the claim. The claim's DRA GPUs are not the budget's (nor metered by it); a claim
    adding `nvidia.com/gpu`-counted devices would be refused, as would one under a `*` budget."""
    def spent(*resources: str):
        return budget("team-nlp", used=500, period_end=END, selector={"matchLabels": NLP}, gpuHours=500,
                      period="Monthly", resources=list(resources))

    pod = waiting()
    pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": "1"}
    container_gpus = spent("nvidia.com/gpu")
    broken = evaluate(pod, snapshot=snapshot(container_gpus), now=NOW, mutate=False)
    assert [v.policy for v in broken.violations] == ["team-nlp"]
    assert judged(lab.resource_claim("shared", NS, gpus(8)), pod, items=(container_gpus,)).allowed
    assert not judged(lab.resource_claim("shared", NS, gpus(8)), pod, items=(spent("*"),)).allowed


@pytest.mark.parametrize("kind", ["ResourceClaim", "ResourceClaimTemplate"])
def test_the_fix_is_the_largest_count_that_fits_and_pasting_it_admits_the_claim(kind):
    make = lab.resource_claim if kind == "ResourceClaim" else lab.claim_template
    claim = make("shared", NS, gpus(8))
    pod = waiting(template=kind == "ResourceClaimTemplate")
    [found] = judged(claim, pod).violations
    assert "4 devices fit; or delete the pod first: kubectl delete pod -n ml trainer" in found.fix
    assert judged(apply_fix(claim, found.fix), pod).allowed
    five = copy.deepcopy(claim)
    spec = five["spec"] if kind == "ResourceClaim" else five["spec"]["spec"]
    spec["devices"]["requests"][0]["exactly"]["count"] = 5
    assert not judged(five, pod).allowed


def test_a_v1beta1_claim_gets_its_count_fixed_where_it_is():
    claim = lab.resource_claim("shared", NS, [{"name": "gpu", "deviceClassName": lab.GPU_CLASS, "count": 6}])
    claim["apiVersion"] = "resource.k8s.io/v1beta1"
    [found] = judged(claim, waiting()).violations
    assert "spec.devices.requests[0]:\n  count: 4" in found.fix
    assert judged(apply_fix(claim, found.fix), waiting()).allowed


def test_a_claim_no_count_can_fix_says_so_and_every_waiting_pod_is_named():
    """All of a class's devices: no count to lower. Two pods share the claim: each is named."""
    claim = lab.resource_claim("shared", NS, [lab.device_request("gpu", lab.GPU_CLASS, all_devices=True)])
    decision = judged(claim, waiting("a"), waiting("b"))
    assert not decision.allowed  # all of a GPU class counts as the largest node's 8
    assert [v.message.split(":")[0] for v in decision.violations] == ["pod a", "pod b"]
    assert decision.violations[0].fix.startswith("# ask for fewer devices in spec.devices.requests,")


# -- a template's claim made for the pod counts, even once the template is gone -------------------


def made_for_it(manifest: dict, claim: str = "trainer-gpus-x7k2") -> dict:
    """The pod as the API server has it once the resource claim controller made its claim."""
    return {**manifest, "status": {"phase": "Pending",
                                   "resourceClaimStatuses": [{"name": "gpus", "resourceClaimName": claim}]}}


def test_a_pods_claim_made_from_a_deleted_template_counts_what_it_asks():
    """Deleting the template after its claim was made must not turn 8 GPUs into 1 unresolved one:
    the operator's queue and the gate removal judge the pod with what it will really get."""
    pod = made_for_it(waiting(template=True))
    index = ClaimIndex([lab.resource_claim("trainer-gpus-x7k2", NS, gpus(8))])  # the template: gone
    found = pod_gpus(pod["spec"], namespace=NS, claims=index, generated=generated_claims(pod))
    assert found.total(None) == 8 and not found.notes
    gated = copy.deepcopy(pod)
    gated["spec"]["schedulingGates"] = [{"name": "example.com/wait"}]
    released = evaluate(pod, snapshot=replace(snapshot(left_one()), claims=index), now=NOW, mutate=False,
                        operation="UPDATE", old_object=gated)
    assert [v.policy for v in released.violations] == ["team-nlp"]


def test_without_its_claim_known_the_template_counts_and_a_missing_one_counts_1_gpu():
    pod = made_for_it(waiting(template=True))
    template = ClaimIndex([lab.claim_template("shared", NS, gpus(2))])
    made = generated_claims(pod)
    assert pod_gpus(pod["spec"], namespace=NS, claims=template, generated=made).total(None) == 2
    neither = pod_gpus(pod["spec"], namespace=NS, claims=ClaimIndex(), generated=generated_claims(pod))
    assert neither.total(None) == 1 and neither.notes


def test_metering_counts_the_claim_made_for_a_pending_pod():
    from controller.metering.usage import Counting, pod_record

    pod = made_for_it(waiting(template=True))
    index = ClaimIndex([lab.resource_claim("trainer-gpus-x7k2", NS, gpus(8))])
    record = pod_record(pod, counting=Counting(lookup=index))
    assert record is not None and record.gpus == 8


def test_a_claim_very_many_pods_wait_for_gets_the_plain_fix_without_searching_counts():
    from controller.engine import claims as module

    pods = [waiting(f"p{i:02}") for i in range(module.MAX_SEARCHED_PODS + 1)]
    decision = judged(lab.resource_claim("shared", NS, gpus(8)), *pods)
    assert not decision.allowed
    assert all(v.fix.startswith("# ask for fewer devices") for v in decision.violations)


def test_a_denial_names_the_first_pods_and_counts_the_others():
    """A claim a thousand pods wait for must not be answered with megabytes: the first
    MAX_NAMED_PODS pods are named, the others counted in one line."""
    from controller.engine import claims as module

    pods = [waiting(f"p{i:03}") for i in range(module.MAX_NAMED_PODS + 25)]
    decision = judged(lab.resource_claim("shared", NS, gpus(8)), *pods)
    assert [v.message.split(":")[0] for v in decision.violations[:-1]] == [
        f"pod p{i:03}" for i in range(module.MAX_NAMED_PODS)
    ]
    assert decision.violations[-1].message == (
        "25 more pods waiting for ResourceClaim shared: the same from max-four/gpu"
    )
    assert len(render_denial(decision)) < 8_000


# -- shapes no API server sends get a decision, not an exception ---------------------------------


def _claim(**changes) -> dict:
    return {**lab.resource_claim("shared", NS, gpus(8)), **changes}


@pytest.mark.parametrize(
    ("claim", "allowed"),
    [
        (_claim(metadata="shared"), True),  # no name to find its pods by: nothing waits for it
        (_claim(metadata=["shared"]), True),
        (_claim(spec={"devices": {"requests": 5}}), True),  # asks for nothing countable
        (_claim(spec={"devices": "gpus"}), True),
        (_claim(spec=["gpus"]), True),
    ],
    ids=["metadata a string", "metadata a list", "requests a number", "devices a string", "spec a list"],
)
def test_an_odd_claim_gets_a_decision(claim, allowed):
    assert judged(claim, waiting()).allowed is allowed


@pytest.mark.parametrize(
    "changes",
    [{"status": 5}, {"status": {"resourceClaimStatuses": 5}}, {"status": {"phase": ["Pending"]}}],
    ids=["status a number", "claim statuses a number", "phase a list"],
)
def test_a_waiting_pod_of_odd_status_is_still_judged(changes):
    """Its spec names the claim and no node: it waits for it, whatever its status says."""
    assert not judged(lab.resource_claim("shared", NS, gpus(8)), {**waiting(), **changes}).allowed
