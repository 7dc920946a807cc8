"""Gated pods whose DRA claims come from ResourceClaimTemplates, as metering and the queue see them.

A gated pod is never scheduled, so its claim is never allocated: the operator resolves it from the
ResourceClaimTemplates and ResourceClaims it lists (`refresh_claims`, the engine's `ClaimIndex`) and
counts what it asks, as admission does, so a `Projected` queue reserves what the pod will use. A
request whose `firstAvailable` alternatives are of two DeviceClasses counts, for a budget whose
`resources` name only the smaller one's class, that one (`PodRecord.choices`, as `PodGPUs.total`).
Once allocated, a claim counts its allocation only; a template known to nobody counts 1 GPU."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from metering_fakes import FakeApi, FakeWatch, state_for

from controller import constants
from controller.engine.accelerators import UNRESOLVED_CLAIM, ClaimIndex, allocated_gpus, equivalence_of
from controller.engine.models import GPUEquivalence
from controller.k8s.workloads import ApiError
from controller.metering import queue
from controller.metering.budgets import Budget
from controller.metering.usage import Counting, Ledger, PodRecord, format_time, pod_record
from controller.operator import accounting
from controller.operator.accounting import MeteringState

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
PERIOD = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
NS = "ml"
GPU_CLASS = "gpu.nvidia.com"
BIG_CLASS = "big.example.com"
BIG_TABLE = equivalence_of([GPUEquivalence.from_object({
    "apiVersion": constants.API_VERSION, "kind": "GPUEquivalence", "metadata": {"name": "big"},
    "spec": {"deviceClasses": {BIG_CLASS: {}}},
})])
BIG_OR_TWO = {"name": "gpu", "firstAvailable": [
    {"name": "big", "deviceClassName": BIG_CLASS, "allocationMode": "ExactCount", "count": 8},
    {"name": "two", "deviceClassName": GPU_CLASS, "allocationMode": "ExactCount", "count": 2},
]}
"""8 devices of a class, else 2 nvidia GPUs (admission counts 2 under a budget on gpu.nvidia.com)."""
EIGHT = {"name": "gpu", "exactly": {"deviceClassName": GPU_CLASS, "allocationMode": "ExactCount", "count": 8}}
"""8 nvidia GPUs."""
CLAIM = "p-0-gpu-x7k2"


def run(coro):
    return asyncio.run(coro)


def template(request: dict, name: str = "t") -> dict:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"spec": {"devices": {"requests": [request]}}}}


def gated_pod(name: str = "p-0", *, generated: bool = False, hours: float | None = None,
              minute: int = 0) -> dict:
    """A pod of team nlp, gated by a queueing budget, with a claim from template `t`; `generated`:
    the controller-manager made its ResourceClaim already; `hours`: its expires_at after T0."""
    status: dict = {"phase": "Pending"}
    if generated:
        status["resourceClaimStatuses"] = [{"name": "gpu", "resourceClaimName": CLAIM}]
    metadata: dict = {"name": name, "namespace": NS, "uid": f"u-{name}", "labels": {"team": "nlp"},
                      "creationTimestamp": f"2026-11-10T11:{minute:02d}:00Z"}
    if hours is not None:
        metadata["annotations"] = {"expires_at": format_time(T0 + timedelta(hours=hours))}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"containers": [{"name": "c", "resources": {"claims": [{"name": "gpu"}]}}],
                 "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "t"}],
                 "schedulingGates": [{"name": constants.BUDGET_GATE}]},
        "status": status,
    }


def resource_claim(*, allocated: bool) -> dict:
    """The pod's ResourceClaim (generated from `t`); `allocated`: one device of the `two` alternative."""
    claim: dict = {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": CLAIM, "namespace": NS},
        "spec": {"devices": {"requests": [BIG_OR_TWO]}},
    }
    if allocated:
        claim["status"] = {"allocation": {"devices": {"results": [
            {"request": "gpu/two", "driver": GPU_CLASS, "pool": "n", "device": "gpu-0"},
        ]}}}
    return claim


def queue_budget(admission: str, resources: list[str] | None = None, hours: float = 100) -> Budget:
    spec: dict = {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": hours, "period": "Monthly",
                  "whenExhausted": "Queue", "admission": admission}
    if resources is not None:
        spec["resources"] = resources
    return Budget.from_object({
        "apiVersion": constants.API_VERSION, "kind": "GPUBudget",
        "metadata": {"name": "team-nlp", "uid": "uid-team-nlp", "generation": 1},
        "spec": spec, "status": {},
    })


def record(request: dict = BIG_OR_TWO, *, known: bool = True, **kw) -> PodRecord:
    """The pod's record, counted with template `t` asking `request` (`known`) in the index."""
    pod = gated_pod(**kw.pop("pod", {}))
    lookup = ClaimIndex([template(request)] if known else [])
    found = pod_record(pod, counting=Counting(table=BIG_TABLE, lookup=lookup, **kw))
    assert found is not None
    return found


def spent(used: float) -> dict[str, queue.Usage]:
    return {"team-nlp": queue.Usage(used, PERIOD[1])}


# -- pod_record ---------------------------------------------------------------------------------------


def test_a_gated_pod_counts_what_its_claim_template_asks():
    pod = record(EIGHT)
    assert pod.gated and pod.devices == {GPU_CLASS: 8.0} and pod.choices == ()
    assert pod.gpus == pod.gpus_of(None) == pod.gpus_of((GPU_CLASS,)) == 8.0
    assert pod.gpus_of((BIG_CLASS,)) == 0.0


def test_a_template_known_to_nobody_counts_as_one_unresolved_claim_under_every_resources_list():
    pod = record(known=False)
    assert pod.devices == {UNRESOLVED_CLAIM: 1.0} and pod.choices == ()
    assert pod.gpus_of((GPU_CLASS,)) == pod.gpus_of((BIG_CLASS,)) == pod.gpus_of(None) == pod.gpus == 1.0
    assert pod.gpus_of(("amd.com/gpu",)) == 1.0  # an unresolved claim: every budget counts it


def test_a_first_available_choice_counts_the_largest_alternative_a_resources_list_counts():
    pod = record()
    assert pod.devices == {BIG_CLASS: 8.0}
    assert [claim for claim, _ in pod.choices] == [""]  # the pod's own claim, from a template
    assert pod.gpus == pod.gpus_of(None) == pod.gpus_of(("*",)) == 8.0
    assert pod.gpus_of((BIG_CLASS,)) == pod.gpus_of((BIG_CLASS, GPU_CLASS)) == 8.0
    assert pod.gpus_of((GPU_CLASS,)) == pod.gpus_of(("gpu.*",)) == 2.0  # what the scheduler may give
    assert pod.gpus_of(("amd.com/gpu",)) == 0.0  # neither alternative, as at admission


def test_the_operators_gpu_resources_count_the_choice_too():
    pod = pod_record(gated_pod(), gpu_resources=(GPU_CLASS,),
                     counting=Counting(table=BIG_TABLE, lookup=ClaimIndex([template(BIG_OR_TWO)])))
    assert pod is not None and pod.gpus == pod.gpus_of(None) == 2.0


@pytest.mark.parametrize("admission", ["Exhausted", "Projected"])
@pytest.mark.parametrize("resources", [[GPU_CLASS], [BIG_CLASS]])
def test_a_spent_queueing_budget_on_either_class_holds_the_gated_pod(admission, resources):
    pod, budget = record(), queue_budget(admission, resources)
    assert budget.draws_on(pod)
    held = queue.plan_release([pod], [budget], spent(100.0), now=T0)
    assert held.release == [] and held.waiting == {budget.name: [[pod]]}
    fresh = queue.plan_release([pod], [budget], spent(0.0), now=T0)
    expected = [pod] if admission == "Exhausted" else []  # Projected: 2 or 8 GPUs to the period's end
    assert fresh.release == expected


def test_a_projected_queue_reserves_the_choice_its_resources_count():
    pods = [record(pod={"name": f"p-{i}", "hours": 2, "minute": i}) for i in range(3)]
    budget = queue_budget("Projected", [GPU_CLASS])
    plan = queue.plan_release(pods, [budget], spent(95.0), now=T0)  # 5 left: 2 GPUs x 2 h, once
    assert [p.name for p in plan.release] == ["p-0"] and plan.reserved == {"team-nlp": 4.0}


def test_a_projected_queue_releases_only_what_the_templates_gpus_fit():
    pods = [record(EIGHT, pod={"name": f"p-{i}", "hours": 2, "minute": i}) for i in range(3)]
    budget = queue_budget("Projected")
    plan = queue.plan_release(pods, [budget], spent(80.0), now=T0)  # 20 left: 8 GPUs x 2 h, once
    assert [p.name for p in plan.release] == ["p-0"]
    assert plan.reserved == {"team-nlp": 16.0}
    assert [[p.name for p in gang] for gang in plan.waiting["team-nlp"]] == [["p-1"], ["p-2"]]


def test_once_allocated_the_claim_counts_its_allocation_only():
    held = allocated_gpus(resource_claim(allocated=True), BIG_TABLE)
    assert held == {GPU_CLASS: 1.0}
    pod = record(pod={"generated": True}, claims={(NS, CLAIM): held})
    assert pod.claims == (CLAIM,) and pod.devices == {GPU_CLASS: 1.0} and pod.choices == ()
    assert pod.gpus == pod.gpus_of(None) == pod.gpus_of((GPU_CLASS,)) == 1.0
    assert pod.gpus_of((BIG_CLASS,)) == 0.0


# -- the operator: the claim index, the recount and the sweep -------------------------------------------


class ListingApi(FakeApi):
    """FakeApi that records what is listed, and fails listing the kinds in `failing`."""

    def __init__(self, watch: FakeWatch) -> None:
        super().__init__(watch)
        self.listings: list[str] = []
        self.failing: set[str] = set()

    def iter_objects(self, resource, **kw):
        self.listings.append(resource.kind)
        if resource.kind in self.failing:
            raise ApiError(503, "unavailable")
        return super().iter_objects(resource, **kw)


def operator(executor, pods: list[dict], *, used: float | None = None, budget: Budget | None = None,
             table=BIG_TABLE) -> tuple[MeteringState, ListingApi]:
    """An operator whose pod cache holds `pods` (recorded as its watch does: no claim known), and,
    with `used`, the committed ledger a tick of `budget` leaves."""
    watch = FakeWatch([pod_record(p) for p in pods])
    api = ListingApi(watch)
    state = state_for(api, watch, executor, [T0])
    state.table = table
    if budget is not None and used is not None:
        state.budgets[budget.name] = budget
        ledger = Ledger(budget_uid=budget.uid, period_start=PERIOD[0], period_end=PERIOD[1],
                        base_gpu_hours=used)
        state.ledgers[budget.name] = (ledger, "1")
    return state, api


def refresh(state: MeteringState) -> None:
    state.claims_at = float("-inf")  # the interval has passed
    run(accounting.refresh_claims(state, accounting.visible_pods(state)))


def test_the_sweep_releases_one_eight_gpu_pod_per_sweep_where_twenty_gpu_hours_are_left(executor):
    budget = queue_budget("Projected")
    pods = [gated_pod(f"p-{i}", hours=2, minute=i) for i in range(3)]
    state, api = operator(executor, pods, used=80.0, budget=budget)
    assert all(p.devices == {UNRESOLVED_CLAIM: 1.0} for p in state.watch.records())  # as recorded
    api.listed["ResourceClaimTemplate"] = [template(EIGHT)]
    refresh(state)
    first = run(accounting.release_queue(state))
    assert [p.name for p in first.release] == ["p-0"] and api.released() == ["p-0"]
    assert first.reserved == {"team-nlp": 16.0}
    assert [p.gpus_of(None) for p in accounting.counted(state, state.watch.records())] == [8.0] * 3
    second = run(accounting.release_queue(state))  # p-0 reserves 16 of the 20: nothing else fits
    assert second.release == [] and api.released() == ["p-0"]
    assert second.reserved == {"team-nlp": 16.0}


def test_a_template_listed_after_the_last_refresh_is_listed_again_before_a_release(executor):
    """The sweep does not release on the 1-GPU guess for a claim its last listing did not know: it
    lists again first (throttled to CLAIMS_RELIST seconds, for a template that never comes)."""
    budget = queue_budget("Projected")
    pods = [gated_pod(f"p-{i}", hours=2, minute=i) for i in range(3)]
    state, api = operator(executor, pods, used=80.0, budget=budget)
    state.config = replace(state.config, metering=replace(state.config.metering, interval=30))
    refresh(state)  # listed before the template existed: every claim unresolved
    api.listed["ResourceClaimTemplate"] = [template(EIGHT)]
    state.claims_at = time.monotonic() - accounting.CLAIMS_RELIST  # well within the half interval
    plan = run(accounting.release_queue(state))
    assert [p.name for p in plan.release] == ["p-0"] and plan.reserved == {"team-nlp": 16.0}


def test_a_spent_queue_on_the_smaller_class_holds_the_gated_pod(executor):
    budget = queue_budget("Exhausted", [GPU_CLASS])
    state, api = operator(executor, [gated_pod()], used=100.0, budget=budget)
    api.listed["ResourceClaimTemplate"] = [template(BIG_OR_TWO)]
    refresh(state)
    (pod,) = accounting.counted(state, state.watch.records())
    assert pod.gpus_of((GPU_CLASS,)) == 2.0 and pod.gpus_of((BIG_CLASS,)) == 8.0
    plan = run(accounting.release_queue(state))
    assert plan.release == [] and api.released() == []
    assert api.reasons(constants.REASON_QUEUED) == ["p-0"]


def test_a_claim_counts_what_it_asks_until_allocated_then_its_allocation_only(executor):
    state, api = operator(executor, [gated_pod(generated=True)])
    api.listed["ResourceClaimTemplate"] = [template(BIG_OR_TWO)]
    api.listed["ResourceClaim"] = [resource_claim(allocated=False)]
    refresh(state)
    assert state.claims == {}
    (pod,) = accounting.counted(state, state.watch.records())
    assert pod.devices == {BIG_CLASS: 8.0} and len(pod.choices) == 1
    assert pod.gpus_of((GPU_CLASS,)) == 2.0
    api.listed["ResourceClaim"] = [resource_claim(allocated=True)]
    refresh(state)
    assert state.claims == {(NS, CLAIM): {GPU_CLASS: 1.0}}
    (pod,) = accounting.counted(state, state.watch.records())
    assert pod.devices == {GPU_CLASS: 1.0} and pod.choices == ()
    assert pod.gpus == pod.gpus_of((GPU_CLASS,)) == 1.0 and pod.gpus_of((BIG_CLASS,)) == 0.0


@pytest.mark.parametrize("generated", [False, True])
def test_a_template_created_after_the_pod_was_counted_is_picked_up_at_the_next_refresh(executor, generated):
    state, api = operator(executor, [gated_pod(generated=generated)], table=BIG_TABLE)
    refresh(state)
    (pod,) = accounting.counted(state, state.watch.records())
    assert pod.devices == {UNRESOLVED_CLAIM: 1.0} and pod.gpus == 1.0
    version = state.claim_index_version
    api.listed["ResourceClaimTemplate"] = [template(EIGHT)]
    assert accounting.counted(state, state.watch.records())[0].gpus == 1.0  # not listed yet
    refresh(state)
    assert state.claim_index_version > version  # the recount's memo key changed
    (pod,) = accounting.counted(state, state.watch.records())
    assert pod.devices == {GPU_CLASS: 8.0} and pod.gpus == 8.0


def test_the_claims_are_listed_at_most_once_per_interval(executor):
    state, api = operator(executor, [gated_pod()])
    api.listed["ResourceClaimTemplate"] = [template(EIGHT)]
    refresh(state)
    assert api.listings == ["ResourceClaim", "ResourceClaimTemplate"]  # the claims once, for both uses
    run(accounting.refresh_claims(state, accounting.visible_pods(state)))
    assert api.listings == ["ResourceClaim", "ResourceClaimTemplate"]


def test_a_failed_template_listing_keeps_the_last_index_and_warns(executor, caplog):
    state, api = operator(executor, [gated_pod()])
    api.listed["ResourceClaimTemplate"] = [template(EIGHT)]
    refresh(state)
    index, version = state.claim_index, state.claim_index_version
    api.failing.add("ResourceClaimTemplate")
    with caplog.at_level(logging.WARNING, logger=accounting.__name__):
        refresh(state)
    assert "could not list DRA ResourceClaimTemplates" in caplog.text
    assert state.claim_index is index and state.claim_index_version == version
    assert accounting.counted(state, state.watch.records())[0].gpus == 8.0


def test_pods_without_claims_list_no_claims_and_are_not_recounted(executor):
    plain = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "plain", "namespace": NS, "uid": "u-plain", "labels": {"team": "nlp"}},
             "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
             "status": {"phase": "Pending"}}
    state, api = operator(executor, [plain])
    refresh(state)
    assert api.listings == [] and state.claim_index_version == 0
    (record_,) = state.watch.records()
    (counted_,) = accounting.counted(state, [record_])
    assert counted_ is record_ and state.recounts == {}


def test_a_claim_holding_a_share_of_a_device_counts_the_share_its_slice_sizes(executor):
    """Consumable capacity: the allocation consumed 16Gi of memory and 20 of compute of a device
    whose ResourceSlice publishes 80Gi and 100, so the operator lists the slices and counts 0.2.
    Without the slice (not listed yet), the whole device."""
    state, api = operator(executor, [gated_pod(generated=True)])
    claim = resource_claim(allocated=True)
    [result] = claim["status"]["allocation"]["devices"]["results"]
    result["consumedCapacity"] = {"memory": "16Gi", "compute": "20"}
    api.listed["ResourceClaim"] = [claim]
    refresh(state)
    assert state.claims == {(NS, CLAIM): {GPU_CLASS: 1.0}}
    api.listed["ResourceSlice"] = [{"spec": {"driver": GPU_CLASS, "pool": {"name": "n"}, "devices": [
        {"name": "gpu-0", "allowMultipleAllocations": True,
         "capacity": {"memory": {"value": "80Gi"}, "compute": {"value": "100"}}}]}}]
    refresh(state)
    assert state.claims == {(NS, CLAIM): {GPU_CLASS: pytest.approx(0.2)}}
    assert "ResourceSlice" in api.listings
