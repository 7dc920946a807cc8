"""GPU-equivalents on the real control plane (README "GPU-equivalents").

Pods ask for GPUs the ways real clusters hand them out (MIG slices in both strategies, time-sliced
replicas with and without renaming, whole GPUs, DRA claims for GPUs, for MIG devices, for an AMD
partition and for a share of a GPU's consumable capacity that the real scheduler allocates, a KAI
fraction), on the kwok nodes of the accelerator lab (e2e/accelerators.py), and the session's
operator and webhook (chart RBAC) count them:

- metering: one GPUBudget per form, each charged within 1 % of the truth worked out here from the
  pods' own `PodScheduled` times and the share of a GPU each form is;
- admission: a budget spent by MIG slices refuses the next MIG pod, through the API server;
- the operator's queue counts a gated pod's DRA claim as admission does (what its template asks),
  so a `Projected` budget releases only what it can pay for;
- a claim for admin access (monitoring) to every GPU of a node is admitted and metered as 0;
- a claim created after the pods that name it is judged by what it gives them: a Pod owner
  reference a user writes on it skips nothing, and a template is judged for a Job's pods together.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from e2e import accelerators as acc
from e2e.accelerators import LAB
from e2e.helpers import (
    COMPLIANT_LABELS,
    admissions_answered,
    fresh_namespace,
    get_json,
    team_budget,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 0.01
RUN_SECONDS = 30


def stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def budget(name: str, selector: dict[str, str], hours: float = 1000) -> dict:
    return {
        "apiVersion": "finops.comptroller.dev/v1alpha1",
        "kind": "GPUBudget",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": selector}, "gpuHours": hours, "period": "Monthly",
                 "enforcement": "Audit"},
    }


def forms(namespace: str, run: str) -> dict[str, tuple[list[dict], str | None, float]]:
    """Form -> (objects to create: claim templates, then the pod), node it must run on, and the
    GPU-equivalents it holds."""
    a100_single = {acc.PRODUCT: "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"}
    shared = {acc.PRODUCT: "NVIDIA-H100-80GB-HBM3-SHARED"}
    whole = {acc.PRODUCT: "NVIDIA-H100-80GB-HBM3"}
    gpus = acc.claim_template("two-gpus", namespace, [acc.device_request("gpus", acc.GPU_CLASS, count=2)])
    mig = acc.claim_template("one-3g", namespace, [acc.device_request(
        "mig", acc.MIG_CLASS, selectors=[acc.profile_selector("3g.40gb")])])

    share = acc.device_request("gpu", acc.EXAMPLE_CLASS)
    share["exactly"]["capacity"] = {"requests": {"memory": "16Gi", "compute": "20"}}  # of 80Gi and 100
    gpu_share = acc.claim_template("gpu-share", namespace, [share])
    partition = acc.claim_template("one-partition", namespace, [acc.device_request(
        "p", acc.AMD_CLASS, selectors=['device.attributes["gpu.amd.com"].type == "amdgpu-partition"'])])

    def pod(form: str, **kwargs) -> dict:
        return acc.pod(form, namespace, labels={"run": run, "form": form}, **kwargs)

    kai = pod("kai-fraction", node_selector={"kubernetes.io/hostname": LAB.whole})
    kai["metadata"]["annotations"] = {"gpu-fraction": "0.5"}
    return {
        "mig-mixed": ([pod("mig-mixed", limits={"nvidia.com/mig-1g.10gb": 2})], LAB.mig_mixed_1g, 2 / 7),
        "mig-single": ([pod("mig-single", limits={"nvidia.com/gpu": 1}, node_selector=a100_single)],
                       LAB.mig_single, 1 / 7),
        "shared-renamed": ([pod("shared-renamed", limits={"nvidia.com/gpu.shared": 1})],
                           LAB.shared_renamed, 1 / 4),
        "shared": ([pod("shared", limits={"nvidia.com/gpu": 1}, node_selector=shared)], LAB.shared, 1 / 4),
        "whole": ([pod("whole", limits={"nvidia.com/gpu": 2}, node_selector=whole)], LAB.whole, 2.0),
        "dra-gpus": ([gpus, acc.template_pod("dra-gpus", namespace, "two-gpus",
                                             labels={"run": run, "form": "dra-gpus"})], LAB.dra_gpu, 2.0),
        "dra-mig": ([mig, acc.template_pod("dra-mig", namespace, "one-3g",
                                           labels={"run": run, "form": "dra-mig"})], LAB.dra_mig, 3 / 7),
        "dra-shared": ([gpu_share, acc.template_pod("dra-shared", namespace, "gpu-share",
                                                    labels={"run": run, "form": "dra-shared"})],
                       LAB.dra_shared, 0.2),
        "dra-amd-partition": ([partition, acc.template_pod("dra-amd-partition", namespace, "one-partition",
                                                           labels={"run": run, "form": "dra-amd-partition"})],
                              LAB.dra_amd, 1 / acc.AMD_CPX_PARTITIONS),
        "kai-fraction": ([kai], LAB.whole, 0.5),
    }


def scheduled_at(cluster, namespace: str, name: str) -> float | None:
    pod = get_json(cluster, "pod", "-n", namespace, name) or {}
    if pod.get("status", {}).get("phase") != "Running":
        return None
    condition = next((c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), {})
    return stamp(condition["lastTransitionTime"]) if condition.get("status") == "True" else None


def test_every_form_of_gpu_is_metered_within_one_percent(stack, cluster, accelerator_lab):
    """Each form's budget is charged its GPU-equivalents x the time since the pod was bound."""
    namespace = fresh_namespace(cluster, "gpueq")
    run = uuid.uuid4().hex[:6]
    cases = forms(namespace, run)
    budgets = {form: f"gpueq-{run}-{form}" for form in cases}
    try:
        cluster.apply([budget(name, {"run": run, "form": form}) for form, name in budgets.items()])
        cluster.apply([obj for objects, _, _ in cases.values() for obj in objects])
        started = {
            form: wait_until(lambda f=form: scheduled_at(cluster, namespace, f), timeout=60,
                             what=f"pod {form} to run")
            for form in cases
        }
        for form, (_, node, _) in cases.items():
            pod = get_json(cluster, "pod", "-n", namespace, form)
            assert pod["spec"]["nodeName"] == node, (form, pod["spec"]["nodeName"])

        def metered(form: str) -> tuple[float, float] | None:
            status = (get_json(cluster, "gpubudget", budgets[form]) or {}).get("status") or {}
            at = status.get("lastMeteredAt")
            if not at or stamp(at) < started[form] + RUN_SECONDS:
                return None
            return float(status["usedGPUHours"]), stamp(at)

        for form, (_, _, equivalents) in cases.items():
            used, at = wait_until(lambda f=form: metered(f), timeout=RUN_SECONDS + 60,
                                  what=f"budget of {form} metered {RUN_SECONDS}s into the run")
            truth = equivalents * (at - started[form]) / 3600
            print(f"{form}: {equivalents:.4f} GPU-equivalents, charged {used:.6f} GPU-hours, truth "
                  f"{truth:.6f} ({100 * (used - truth) / truth:+.3f} %)")
            assert used == pytest.approx(truth, rel=TOLERANCE), (form, used, truth)
    finally:
        # Pods first: their metering finalizer goes once their budgets committed the final charge.
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudgets", *budgets.values(), "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def apply(cluster, obj: dict, *extra: str):
    return cluster.kubectl("apply", "-f", "-", *extra, input=yaml.safe_dump(obj), check=False)


def test_a_budget_spent_on_mig_slices_refuses_the_next_mig_pod(stack, cluster, accelerator_lab, namespace):
    """Before GPU-equivalents a MIG slice was no GPU at all to a budget: a team could run on slices
    past its budget. Seven 1g.10gb slices are one GPU; once they spent the budget, the webhook
    refuses even one more slice."""
    team = f"mig-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    hours = 0.003  # ~11 s of one GPU
    assert apply(cluster, team_budget(team, hours)).returncode == 0
    try:
        slices = acc.pod("slices", namespace, limits={"nvidia.com/mig-1g.10gb": 7}, labels=labels)
        created = apply(cluster, slices)
        assert created.returncode == 0, created.stderr
        wait_until(lambda: scheduled_at(cluster, namespace, "slices"), timeout=60, what="the slices to run")

        def spent() -> bool:
            status = (get_json(cluster, "gpubudget", f"team-{team}") or {}).get("status") or {}
            return float(status.get("usedGPUHours") or 0) >= hours

        wait_until(spent, timeout=90, what=f"team-{team} to be spent on MIG slices")
        one_more = acc.pod("one-more", namespace, limits={"nvidia.com/mig-1g.10gb": 1}, labels=labels)
        refused = wait_until(
            lambda: (r := apply(cluster, one_more)).returncode != 0 and r,
            timeout=30, what="the webhook to see the budget spent",
        )
        assert f"GPU budget team-{team} is exhausted" in refused.stderr, refused.stderr
        status = get_json(cluster, "gpubudget", f"team-{team}")["status"]
        assert status["runningGPUs"] == pytest.approx(1.0)  # seven slices: one GPU
    finally:
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)


def test_claims_that_look_smaller_than_what_the_scheduler_gives_are_counted_as_given(
        stack, cluster, accelerator_lab, namespace):
    """Two DRA decoys that counted 0 GPUs: a `firstAvailable` whose first alternative can never be
    satisfied (the real scheduler falls through to 2 whole GPUs), and a MIG selector naming a
    worthless profile beside the one it selects. Without a budget the scheduler really allocates
    the fallback; under a spent budget both pods are refused."""
    team = f"dra-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    fallback = {"name": "gpus", "firstAvailable": [
        {"name": "never", "deviceClassName": acc.GPU_CLASS, "count": 1,
         "selectors": [{"cel": {"expression": "false"}}]},
        {"name": "real", "deviceClassName": acc.GPU_CLASS, "count": 2},
    ]}
    decoy = acc.device_request("mig", acc.MIG_CLASS, selectors=[
        f"'0g.0gb' != '' && {acc.profile_selector('3g.40gb')}"])
    templates = [acc.claim_template("fallback", namespace, [fallback]),
                 acc.claim_template("decoy", namespace, [decoy])]
    for template in templates:
        created = apply(cluster, template)
        assert created.returncode == 0, created.stderr
    try:
        # No budget: the scheduler gives the fallback alternative, two whole GPUs.
        free = acc.template_pod("free", namespace, "fallback",
                                labels={**COMPLIANT_LABELS, "team": f"{team}-x"})
        updates = admissions_answered(stack, "ResourceClaim", "UPDATE")
        assert apply(cluster, free).returncode == 0
        wait_until(lambda: scheduled_at(cluster, namespace, "free"), timeout=60, what="the fallback to run")
        claims = get_json(cluster, "resourceclaims", "-n", namespace)["items"]
        # The scheduler updates the claim it allocates (its finalizer): the claim webhook's
        # matchCondition keeps those off the webhook, as every claim scheduled would be.
        protected = ["resource.kubernetes.io/delete-protection"]
        assert [c["metadata"].get("finalizers") for c in claims] == [protected]
        assert admissions_answered(stack, "ResourceClaim", "UPDATE") == updates
        results = [r for c in claims for r in ((c.get("status") or {}).get("allocation") or {})
                   .get("devices", {}).get("results", [])]
        assert [r["request"] for r in results] == ["gpus/real", "gpus/real"], results

        assert apply(cluster, team_budget(team, 0)).returncode == 0
        for name, template in (("fallback", "fallback"), ("decoy", "decoy")):
            refused = wait_until(
                lambda t=template, n=name: (r := apply(cluster, acc.template_pod(
                    f"{n}-pod", namespace, t, labels=labels))).returncode != 0 and r,
                timeout=30, what=f"the {name} pod refused by the spent budget")
            assert f"GPU budget team-{team} is exhausted" in refused.stderr, refused.stderr
    finally:
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)


def test_a_projected_queue_reserves_what_a_gated_pods_claim_template_asks(stack, cluster, accelerator_lab,
                                                                          namespace):
    """Gated pods are never scheduled, so their claims are never allocated: the operator counts what
    the template asks (4 GPUs), not one unresolved GPU. 3 pods x 4 GPUs x 2 h = 24 GPU-hours against
    20: two are released, the youngest waits (counted as 1 GPU each, all three went). Deleting the
    template then changes nothing: the claim made from it for the waiting pod counts."""
    team = f"claims-{uuid.uuid4().hex[:6]}"
    name = f"queue-{team}"
    queued = {**team_budget(team, 20, admission="Projected"), "metadata": {"name": name}}
    queued["spec"]["whenExhausted"] = "Queue"
    template = acc.claim_template("four", namespace, [acc.device_request("gpus", acc.GPU_CLASS, count=4)])
    expires = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        for obj in (template, queued):
            created = apply(cluster, obj)
            assert created.returncode == 0, created.stderr

        def every_pod_sent_to_mutate() -> bool:
            config = get_json(cluster, "mutatingwebhookconfiguration", "comptroller") or {}
            return any(c.get("name") == "comptroller-may-mutate" and c.get("expression") == "true"
                       for w in config.get("webhooks", []) for c in w.get("matchConditions") or ())

        wait_until(every_pod_sent_to_mutate, timeout=30, what="/mutate to see every pod")
        for index in range(3):
            labels = {**COMPLIANT_LABELS, "team": team}
            pod = acc.template_pod(f"four-{index}", namespace, "four", labels=labels)
            pod["metadata"]["annotations"] = {"expires_at": expires}
            created = apply(cluster, pod)
            assert created.returncode == 0, created.stderr
            time.sleep(1.1)  # creation order is the queue's order (oldest first)

        def gated() -> list[str]:
            pods = get_json(cluster, "pods", "-n", namespace)["items"]
            return sorted(p["metadata"]["name"] for p in pods if any(
                g["name"] == "finops.comptroller.dev/budget" for g in p["spec"].get("schedulingGates") or ()))

        wait_until(lambda: gated() == ["four-2"], timeout=30, what="the two oldest pods released")

        def waiting_status() -> dict | None:
            status = (get_json(cluster, "gpubudget", name) or {}).get("status") or {}
            return status if status.get("queuedPods") == 1 and status.get("reservedGPUHours") else None

        status = wait_until(waiting_status, timeout=20, what="status: one pod queued, two reserved")
        assert 15 <= status["reservedGPUHours"] + status["usedGPUHours"] <= 20, status
        time.sleep(5)  # a few more sweeps: the third still waits
        assert gated() == ["four-2"]

        # The template deleted once its claim was made for the gated pod: that claim still asks 4
        # GPUs, and the pod still waits (counted as 1 unresolved GPU, it went at once).
        def made() -> str | None:
            pod = get_json(cluster, "pod", "four-2", "-n", namespace) or {}
            statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or ()
            return next((s.get("resourceClaimName") for s in statuses if s.get("resourceClaimName")), None)

        claim = wait_until(made, timeout=30, what="the claim made for the gated pod")
        assert get_json(cluster, "resourceclaim", claim, "-n", namespace) is not None
        cluster.kubectl("delete", "resourceclaimtemplate", "four", "-n", namespace)
        time.sleep(8)  # claims are listed again within 2 s of an unresolved one, sweeps every second
        assert gated() == ["four-2"]
    finally:
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudget", name, "--ignore-not-found", check=False)


def test_a_claim_created_after_its_pod_is_judged_by_what_it_gives_the_pod(stack, cluster, accelerator_lab,
                                                                          namespace):
    """A pod may name a ResourceClaim (or a template) that does not exist yet: it is admitted counting
    it as 1 GPU. The claim created next decides what the pod holds, so the claim webhook judges it
    by what it adds: 16 GPUs for 2 h against a Projected budget of 20 GPU-hours is refused with the
    count that fits (10), through the API server; 8 is admitted."""
    team = f"later-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    expires = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert apply(cluster, team_budget(team, 20, admission="Projected")).returncode == 0

    def gpus(count: int) -> list[dict]:
        return [acc.device_request("gpus", acc.GPU_CLASS, count=count)]

    cases = [
        ("ResourceClaim", {"resourceClaimName": "later"}, acc.resource_claim, "later"),
        ("ResourceClaimTemplate", {"resourceClaimTemplateName": "later-t"}, acc.claim_template, "later-t"),
    ]
    try:
        for kind, source, make, claim in cases:
            # Counted as 1 GPU of any kind, the pod must pin an allowed instance type.
            pod = acc.pod(f"waits-for-{claim}", namespace, claims={"gpus": source}, labels=labels,
                          node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"})
            pod["metadata"]["annotations"] = {"expires_at": expires}
            created = apply(cluster, pod)
            assert created.returncode == 0, created.stderr
            assert f"{kind} {claim} is not known here: counted as 1 GPU" in created.stderr
            sixteen = make(claim, namespace, gpus(16))
            refused = wait_until(
                lambda obj=sixteen: (r := apply(cluster, obj)).returncode != 0 and r,
                timeout=30, what=f"the {kind} of 16 GPUs refused",
            )
            assert 'admission webhook "claim.finops.comptroller.dev" denied the request' in refused.stderr
            assert f"pod waits-for-{claim}: worst case 16 GPUs" in refused.stderr, refused.stderr
            assert "count: 10" in refused.stderr, refused.stderr
            assert get_json(cluster, kind.lower(), claim, "-n", namespace) is None
            admitted = apply(cluster, make(claim, namespace, gpus(8)))
            assert admitted.returncode == 0, admitted.stderr

        # The usual order, one file applied at once: the claim first (no pod waits for it), then
        # the pod, judged with what the claim asks (read from the API server if the webhook's
        # cache has not seen it yet), not as 1 GPU.
        together = {"apiVersion": "v1", "kind": "List", "items": [
            acc.resource_claim("together", namespace, gpus(16)),
            {**acc.pod("with-together", namespace, claims={"gpus": {"resourceClaimName": "together"}},
                       labels=labels, node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"}),
             "metadata": {"name": "with-together", "namespace": namespace, "labels": labels,
                          "annotations": {"expires_at": expires}}},
        ]}
        applied = apply(cluster, together)
        assert applied.returncode != 0
        assert "worst case 16 GPUs" in applied.stderr, applied.stderr
        assert "not known here" not in applied.stderr
    finally:
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "resourceclaims,resourceclaimtemplates", "--all", "-n", namespace,
                        "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)


def test_a_pod_owner_written_on_a_claim_does_not_skip_its_judgment(stack, cluster, accelerator_lab,
                                                                    namespace):
    """Only the resource claim controller's claims for one pod skip the claim webhook: a claim of 16
    GPUs for 2 h that a user creates with a Pod ownerReference to the admitted pod that names it (a
    Projected budget of 20 GPU-hours) is refused as any other, through the API server; so is one
    created for a pod's template entry, which the resource claim controller takes as the pod's."""
    team = f"owner-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    expires = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = acc.shared_claim_pod("waits-for-owned", namespace, "owned", labels=labels,
                               node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"})
    pod["metadata"]["annotations"] = {"expires_at": expires}
    try:
        assert apply(cluster, team_budget(team, 20, admission="Projected")).returncode == 0
        created = apply(cluster, pod)
        assert created.returncode == 0, created.stderr
        uid = get_json(cluster, "pod", pod["metadata"]["name"], "-n", namespace)["metadata"]["uid"]
        owned = acc.resource_claim("owned", namespace, [acc.device_request("gpus", acc.GPU_CLASS, count=16)])
        owned["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": uid}
        ]
        refused = wait_until(lambda: (r := apply(cluster, owned)).returncode != 0 and r,
                             timeout=30, what="the pod-owned claim of 16 GPUs refused")
        assert 'admission webhook "claim.finops.comptroller.dev" denied the request' in refused.stderr
        assert "pod waits-for-owned: worst case 16 GPUs" in refused.stderr, refused.stderr
        assert get_json(cluster, "resourceclaim", "owned", "-n", namespace) is None

        # A pod naming a template that does not exist yet: the resource claim controller takes any
        # claim whose controller is the pod and whose annotation names the entry, as the claim
        # made from the template, whoever created it. So such a claim is judged for the pod.
        per_pod = acc.template_pod("waits-for-template", namespace, "not-yet", labels=labels,
                                   node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"})
        per_pod["metadata"]["annotations"] = {"expires_at": expires}
        assert apply(cluster, per_pod).returncode == 0
        pod_uid = get_json(cluster, "pod", "waits-for-template", "-n", namespace)["metadata"]["uid"]

        def for_entry(name: str, count: int, owner_name: str = "waits-for-template") -> dict:
            asked = [acc.device_request("gpus", acc.GPU_CLASS, count=count)]
            made = acc.resource_claim(name, namespace, asked)
            made["metadata"]["annotations"] = {"resource.kubernetes.io/pod-claim-name": "gpus"}
            owner = {"apiVersion": "v1", "kind": "Pod", "name": owner_name, "uid": pod_uid}
            made["metadata"]["ownerReferences"] = [{**owner, "controller": True}]
            return made

        # The controller finds a pod's claims by its uid alone: another name changes nothing.
        for claim in (for_entry("by-hand", 16), for_entry("by-hand", 16, owner_name="someone-else")):
            refused = apply(cluster, claim)
            assert refused.returncode != 0
            assert "pod waits-for-template: worst case 16 GPUs" in refused.stderr, refused.stderr

        # Created plain, no pod waits for it; patched then to be the pod's, it would be taken as
        # made from the template: the update is judged as the creation would have been. Other
        # updates (this label) never reach the webhook: the matchCondition sends only those that
        # make a claim a pod's.
        sixteen = [acc.device_request("gpus", acc.GPU_CLASS, count=16)]
        plain = acc.resource_claim("patched", namespace, sixteen)
        assert apply(cluster, plain).returncode == 0
        made_the_pods = {"metadata": for_entry("patched", 16)["metadata"]}
        patched = cluster.kubectl("patch", "resourceclaim", "patched", "-n", namespace, "--type=merge",
                                  "-p", json.dumps(made_the_pods), check=False)
        assert patched.returncode != 0
        assert 'admission webhook "claim.finops.comptroller.dev" denied the request' in patched.stderr
        assert "pod waits-for-template: worst case 16 GPUs" in patched.stderr, patched.stderr

        # The other updates that make a claim the pod's reach the webhook too: its Pod reference
        # becoming the controller, and its annotation coming to name the pod's entry. Created so,
        # neither is the pod's yet: admitted, as plain ones are.
        half = for_entry("half-made", 16)
        half["metadata"]["ownerReferences"][0]["controller"] = False
        other = for_entry("other-entry", 16)
        other["metadata"]["annotations"] = {"resource.kubernetes.io/pod-claim-name": "other"}
        for made in (half, other):
            name = made["metadata"]["name"]
            created = apply(cluster, made)
            assert created.returncode == 0, created.stderr
            patch = {"metadata": for_entry(name, 16)["metadata"]}
            patched = cluster.kubectl("patch", "resourceclaim", name, "-n", namespace, "--type=merge",
                                      "-p", json.dumps(patch), check=False)
            assert patched.returncode != 0, f"{name}: {patched.stdout}"
            assert "pod waits-for-template: worst case 16 GPUs" in patched.stderr, patched.stderr
            cluster.kubectl("delete", "resourceclaim", name, "-n", namespace, check=False)
        reviewed = admissions_answered(stack, "ResourceClaim", "UPDATE")
        labelled = cluster.kubectl("label", "resourceclaim", "patched", "-n", namespace, "reviewed=yes",
                                   check=False)
        assert labelled.returncode == 0, labelled.stderr
        assert admissions_answered(stack, "ResourceClaim", "UPDATE") == reviewed
        assert not (get_json(cluster, "resourceclaim", "patched", "-n", namespace) or {}).get(
            "metadata", {}).get("ownerReferences")
        cluster.kubectl("delete", "resourceclaim", "patched", "-n", namespace, check=False)
        assert apply(cluster, for_entry("by-hand", 8)).returncode == 0
        taken = wait_until(
            lambda: [s for s in (get_json(cluster, "pod", "waits-for-template", "-n", namespace) or {})
                     .get("status", {}).get("resourceClaimStatuses") or () if s.get("resourceClaimName")],
            timeout=30, what="the resource claim controller taking the claim made by hand")
        assert taken == [{"name": "gpus", "resourceClaimName": "by-hand"}]
        assert admissions_answered(stack, "ResourceClaim", "UPDATE") == reviewed
    finally:
        cluster.kubectl("delete", "pods,resourceclaims", "--all", "-n", namespace, "--wait=false",
                        check=False)
        cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)


def test_a_template_created_after_a_jobs_pods_is_judged_for_all_of_them(stack, cluster, accelerator_lab,
                                                                       namespace):
    """A Job of 4 pods names a ResourceClaimTemplate that does not exist yet: the Job and each of
    its pods are admitted counting it as 1 GPU (4 GPUs for 2 h, in a Projected budget of 9
    GPU-hours). A template of 2 GPUs then fits each pod alone (4 GPU-hours), not the 16 GPU-hours
    the 4 pods would hold together: it is refused, naming the pods past the budget, with the count
    that fits (1), which is admitted."""
    team = f"job-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    expires = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    template = acc.pod("train", namespace, claims={"gpus": {"resourceClaimTemplateName": "per-pod"}},
                       labels=labels, node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"})
    template["spec"]["restartPolicy"] = "Never"
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "four", "namespace": namespace, "labels": labels},
        "spec": {"parallelism": 4, "completions": 4, "backoffLimit": 0, "template": {
            "metadata": {"labels": labels, "annotations": {"expires_at": expires}},
            "spec": template["spec"]}},
    }

    def per_pod(count: int) -> dict:
        gpus = [acc.device_request("gpus", acc.GPU_CLASS, count=count)]
        return acc.claim_template("per-pod", namespace, gpus)

    try:
        assert apply(cluster, team_budget(team, 9, admission="Projected")).returncode == 0
        created = apply(cluster, job)
        assert created.returncode == 0, created.stderr
        pods = ("pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=four")
        wait_until(lambda: len((get_json(cluster, *pods) or {}).get("items", [])) == 4,
                   timeout=60, what="the Job's 4 pods")
        refused = wait_until(lambda: (r := apply(cluster, per_pod(2))).returncode != 0 and r,
                             timeout=30, what="the template of 2 GPUs per pod refused")
        assert 'admission webhook "claim.finops.comptroller.dev" denied the request' in refused.stderr
        # The two youngest pods: the two oldest take 2 x 2 GPUs x 2 h = 8 of the 9 GPU-hours first.
        assert refused.stderr.count("GPU-hours of the pods judged with it") == 2, refused.stderr
        assert "count: 1" in refused.stderr, refused.stderr
        assert get_json(cluster, "resourceclaimtemplate", "per-pod", "-n", namespace) is None
        reviewed = admissions_answered(stack, "ResourceClaim", "CREATE")
        admitted = apply(cluster, per_pod(1))
        assert admitted.returncode == 0, admitted.stderr
        # The resource claim controller makes each pod its claim; the claim webhook's
        # matchCondition keeps the API server from sending those (no pod names them).
        claims = ("resourceclaims", "-n", namespace)
        wait_until(lambda: len((get_json(cluster, *claims) or {}).get("items", [])) == 4,
                   timeout=60, what="the 4 claims made from the template")
        assert admissions_answered(stack, "ResourceClaim", "CREATE") == reviewed
    finally:
        cluster.kubectl("delete", "jobs,pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "resourceclaims,resourceclaimtemplates", "--all", "-n", namespace,
                        "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)


def test_a_claim_for_admin_access_is_worth_nothing_at_admission_and_metering(stack, cluster, accelerator_lab):
    """A monitoring pod's claim for admin access to all the node's GPUs (dra-example-driver's
    admin-access example, in a namespace labelled for it) takes no GPU from anyone: under a
    `Projected` budget of 1 GPU-hour it is admitted (as `All` devices it would be 8 GPUs for 2 h),
    the real scheduler allocates it every GPU of the node with admin access, and metering charges
    nothing for it while the budget is metered."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace, labels={"resource.kubernetes.io/admin-access": "true"})
    team = f"admin-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    expires = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    watch = acc.device_request("watch", acc.GPU_CLASS, all_devices=True)
    watch["exactly"]["adminAccess"] = True
    pod = acc.template_pod("gpu-monitor", namespace, "watch-all", labels=labels,
                           node_selector={"kubernetes.io/hostname": LAB.dra_gpu})
    pod["metadata"]["annotations"] = {"expires_at": expires}
    try:
        assert apply(cluster, team_budget(team, 1, admission="Projected")).returncode == 0
        assert apply(cluster, acc.claim_template("watch-all", namespace, [watch])).returncode == 0
        created = apply(cluster, pod)
        assert created.returncode == 0, created.stderr
        assert "all gpu.nvidia.com devices" not in created.stderr  # nothing was assumed
        scheduled = wait_until(lambda: scheduled_at(cluster, namespace, "gpu-monitor"), timeout=60,
                               what="the monitoring pod to run")
        [status] = get_json(cluster, "pod", "-n", namespace, "gpu-monitor")["status"]["resourceClaimStatuses"]
        claim = get_json(cluster, "resourceclaim", "-n", namespace, status["resourceClaimName"])
        results = claim["status"]["allocation"]["devices"]["results"]
        assert len(results) == acc.DRA_GPUS and all(r.get("adminAccess") for r in results), results

        def metered_since_running() -> dict | None:
            status = (get_json(cluster, "gpubudget", f"team-{team}") or {}).get("status") or {}
            at = status.get("lastMeteredAt")
            return status if at and stamp(at) > scheduled + 10 else None

        status = wait_until(metered_since_running, timeout=60, what="the budget metered 10 s into the run")
        assert float(status.get("usedGPUHours", 0)) == 0.0, status
    finally:
        cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
