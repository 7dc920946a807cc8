"""Queueing budgets on the operator side: what `pod_record` reads of a gated pod, the pure release
planner (controller.metering.queue) and the sweep that removes gates and posts Events
(controller.operator.accounting.release_queue), against fakes of our client layer and pod cache."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering_fakes import FakeApi, FakeWatch, state_for

from controller import constants
from controller.engine.loading import build_snapshot
from controller.engine.models import FinOpsPolicy
from controller.k8s import workloads as workloads_api
from controller.k8s.ledgers import ledger_name
from controller.k8s.workloads import WriteScope
from controller.metering import queue
from controller.metering.budgets import Budget
from controller.metering.usage import Ledger, PodRecord, format_time, gang_of, pod_record
from controller.operator import accounting
from controller.operator.accounting import MeteringState

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
PERIOD = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
HOURS_TO_PERIOD_END = 492.0  # T0 to 2026-12-01T00:00Z
GATE = constants.BUDGET_GATE


# -- builders -----------------------------------------------------------------------------------------


def budget_body(name: str = "team-nlp", *, team: str = "nlp", hours: float = 100, uid: str | None = None,
                when: str = "Queue", admission: str = "Exhausted", **spec) -> dict:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "GPUBudget",
        "metadata": {"name": name, "uid": uid or f"uid-{name}", "generation": 1},
        "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": hours, "period": "Monthly",
                 "whenExhausted": when, "admission": admission, **spec},
        "status": {},
    }


def qbudget(name: str = "team-nlp", **kw) -> Budget:
    return Budget.from_object(budget_body(name, **kw))


def rec(uid: str, *, gpus: float = 1, team: str = "nlp", gated: bool = True, priority: int = 0,
        created: datetime | None = None, gang: str = "", hours: float | None = None,
        started: datetime | None = None, finished: datetime | None = None, namespace: str = "ml",
        deleted: datetime | None = None) -> PodRecord:
    """A pod record; `hours`: its expires_at, that many hours after T0 (None: no expires_at)."""
    return PodRecord(
        uid=uid, namespace=namespace, name=uid, labels={"team": team}, gpus=gpus, started=started,
        finished=finished, deleted=deleted, gated=gated, priority=priority,
        created=created or T0 - timedelta(hours=1), gang=gang,
        expires=None if hours is None else T0 + timedelta(hours=hours),
    )


def usage(used: float, end: datetime = PERIOD[1]) -> queue.Usage:
    return queue.Usage(used, end)


def plan(pods, budgets, used: dict[str, float], now: datetime = T0) -> queue.Plan:
    return queue.plan_release(pods, budgets, {k: usage(v) for k, v in used.items()}, now=now)


def uids(pods) -> list[str]:
    return [p.uid for p in pods]


def at(minutes: float) -> datetime:
    return T0 - timedelta(hours=5) + timedelta(minutes=minutes)


# -- pod_record: what the operator reads of a (gated) pod --------------------------------------------


def k8s_pod(*, labels: dict | None = None, owners: list | None = None, gates: list | None = None,
            priority=None, annotations: dict | None = None, namespace: str = "ml") -> dict:
    spec: dict = {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    if gates is not None:
        spec["schedulingGates"] = gates
    if priority is not None:
        spec["priority"] = priority
    metadata: dict = {"name": "p-0", "namespace": namespace, "uid": "u-0",
                      "creationTimestamp": "2026-11-10T11:30:00Z", "labels": labels or {}}
    if owners is not None:
        metadata["ownerReferences"] = owners
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
            "status": {"phase": "Pending"}}


def owner(kind: str, name: str, *, controller: bool = True, api: str = "batch/v1") -> dict:
    return {"apiVersion": api, "kind": kind, "name": name, "uid": f"{kind}-uid", "controller": controller}


def test_pod_record_reads_the_gate_priority_creation_and_expiry():
    record = pod_record(k8s_pod(gates=[{"name": "example.com/other"}, {"name": GATE}], priority=1000,
                                annotations={"expires_at": "2026-11-10T20:00:00Z"}))
    assert record.gated is True
    assert record.priority == 1000
    assert record.created == datetime(2026, 11, 10, 11, 30, tzinfo=UTC)
    assert record.expires == datetime(2026, 11, 10, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize("gates", [None, [], [{"name": "example.com/other"}]])
def test_pod_record_is_not_gated_without_our_gate(gates):
    record = pod_record(k8s_pod(gates=gates))
    assert record.gated is False and record.priority == 0 and record.expires is None


def test_pod_record_reads_a_label_form_expiry():
    record = pod_record(k8s_pod(labels={"expires_at": "2026-11-10T20-00-00Z"}))
    assert record.expires == datetime(2026, 11, 10, 20, 0, tzinfo=UTC)


def ttl_policy_object(name: str = "ttl-experiments", *, key: str = "ttl", **match) -> dict:
    """A FinOpsPolicy projecting the workloads it matches to their `key` (`spec.expiry.key`)."""
    spec: dict = {"expiry": {"key": key}}
    if match:
        spec["match"] = match
    return {"apiVersion": constants.API_VERSION, "kind": "FinOpsPolicy", "metadata": {"name": name},
            "spec": spec}


def ttl_policies(*objects: dict):
    return build_snapshot(policies=[FinOpsPolicy.from_object(o) for o in objects or [ttl_policy_object()]])


STALE = {"ttl": "2026-11-10T22-00-00Z", "expires_at": "2026-11-10T13-00-00Z"}
"""Labels of a pod a `ttl` policy governs, with an `expires_at` it does not enforce: T0+10h, T0+1h."""


def test_pod_record_reads_the_expiry_under_the_key_the_matching_policies_use():
    ttl, stale = T0 + timedelta(hours=10), T0 + timedelta(hours=1)
    policies = ttl_policies()
    assert pod_record(k8s_pod(labels=STALE), policies=policies).expires == ttl
    assert pod_record(k8s_pod(labels=STALE)).expires == stale  # no policies known: the default key
    listed = k8s_pod(labels=STALE)
    del listed["kind"], listed["apiVersion"]  # as the items of a pod list come
    assert pod_record(listed, policies=policies).expires == ttl
    # An annotation wins over a label of the same key, as everywhere.
    annotated = k8s_pod(labels=STALE, annotations={"ttl": "2026-11-10T18:00:00Z"})
    assert pod_record(annotated, policies=policies).expires == T0 + timedelta(hours=6)
    # The policy does not match the pod: its key is not the pod's.
    elsewhere = ttl_policies(ttl_policy_object(namespaces=["research-*"]))
    assert pod_record(k8s_pod(labels=STALE), policies=elsewhere).expires == stale
    selective = ttl_policies(ttl_policy_object(selector={"matchLabels": {"environment": "experiment"}}))
    assert pod_record(k8s_pod(labels=STALE), policies=selective).expires == stale
    assert pod_record(k8s_pod(labels={**STALE, "environment": "experiment"}),
                      policies=selective).expires == ttl
    # In an excluded namespace no policy applies.
    assert pod_record(k8s_pod(labels=STALE, namespace="kube-system"), policies=policies).expires == stale


def test_projected_reserves_a_released_pod_up_to_its_policys_expiry_key_not_a_stale_expires_at():
    budget = qbudget(admission="Projected", hours=100)
    running = k8s_pod(labels={**STALE, "team": "nlp"})
    running["metadata"].update(uid="run", name="run")
    running["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "2"
    running["spec"]["nodeName"] = "node-1"
    running["status"] = {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-10T11:00:00Z"}]}
    waiting = k8s_pod(labels={"team": "nlp", "ttl": "2026-11-10T17-00-00Z"}, gates=[{"name": GATE}])
    waiting["metadata"].update(uid="q0", name="q0")
    records = [pod_record(p, policies=ttl_policies()) for p in (running, waiting)]
    # 100 - 80 used - 2 GPUs x 10 h reserved (until its ttl) = 0 left: the 5 GPU-hour pod waits.
    # Read by the stale expires_at (1 h), 18 would be left and releasing it would overspend.
    result = plan(records, [budget], {"team-nlp": 80})
    assert result.reserved["team-nlp"] == pytest.approx(20)
    assert result.release == [] and uids(result.waiting["team-nlp"][0]) == ["q0"]
    assert queue.figures(budget, records, usage(80), now=T0) == (1, pytest.approx(20))


@pytest.mark.parametrize(
    ("labels", "owners", "gang"),
    [
        ({"jobset.sigs.k8s.io/jobset-name": "train"}, [owner("Job", "train-workers-0")], "JobSet/ml/train"),
        ({"leaderworkerset.sigs.k8s.io/name": "serve", "leaderworkerset.sigs.k8s.io/group-index": "2"},
         [owner("StatefulSet", "serve-2", api="apps/v1")], "LeaderWorkerSet/ml/serve/2"),
        ({"leaderworkerset.sigs.k8s.io/name": "serve", "leaderworkerset.sigs.k8s.io/group-index": "0"},
         None, "LeaderWorkerSet/ml/serve/0"),
        ({"ray.io/cluster": "rc"}, None, "RayCluster/ml/rc"),
        ({}, [owner("Job", "etl")], "Job/ml/etl"),
        ({}, [owner("PyTorchJob", "bert", api="kubeflow.org/v1")], "PyTorchJob/ml/bert"),
        ({}, [owner("ReplicaSet", "web-5f9c", api="apps/v1")], ""),
        ({}, [owner("Job", "etl", controller=False)], ""),  # not its controller
        ({}, None, ""),  # a bare pod
    ],
    ids=["jobset", "lws-group-2", "lws-group-0", "ray", "job", "pytorchjob", "replicaset", "non-controller",
         "bare"],
)
def test_pod_record_reads_the_gang(labels, owners, gang):
    assert pod_record(k8s_pod(labels=labels, owners=owners)).gang == gang
    assert gang_of(k8s_pod(labels=labels, owners=owners)["metadata"]) == gang


def test_two_lws_groups_are_two_gangs_and_two_namespaces_two_jobs():
    lws = {"leaderworkerset.sigs.k8s.io/name": "serve"}
    a = gang_of({"namespace": "ml", "labels": {**lws, "leaderworkerset.sigs.k8s.io/group-index": "0"}})
    b = gang_of({"namespace": "ml", "labels": {**lws, "leaderworkerset.sigs.k8s.io/group-index": "1"}})
    assert a != b
    job = [owner("Job", "etl")]
    assert gang_of({"namespace": "a", "ownerReferences": job}) != gang_of({"namespace": "b",
                                                                         "ownerReferences": job})


# -- the planner: order, gangs, strictness ------------------------------------------------------------


def test_the_queue_is_ordered_by_priority_then_age():
    budget = qbudget(admission="Projected", hours=100)
    pods = [
        rec("old-low", priority=0, created=at(0), hours=10),
        rec("new-high", priority=100, created=at(30), hours=10),
        rec("old-high", priority=100, created=at(10), hours=10),
        rec("newest-low", priority=0, created=at(40), hours=10),
    ]
    # 100 - 80 used = 20 GPU-hours left: two of the four 10-GPU-hour pods.
    result = plan(pods, [budget], {"team-nlp": 80})
    assert uids(result.release) == ["old-high", "new-high"]
    assert [uids(g) for g in result.waiting["team-nlp"]] == [["old-low"], ["newest-low"]]


def test_a_negative_priority_queues_behind_the_default():
    budget = qbudget(admission="Projected", hours=100)
    pods = [rec("neg", priority=-10, created=at(0), hours=10), rec("zero", created=at(50), hours=10)]
    assert uids(plan(pods, [budget], {"team-nlp": 90}).release) == ["zero"]


@pytest.mark.parametrize(("left", "released"), [(39, 0), (40, 4), (45, 4)])
def test_a_gang_is_released_whole_or_not_at_all(left, released):
    budget = qbudget(admission="Projected", hours=100)
    gang = [rec(f"w{i}", gang="Job/ml/train", hours=10, created=at(i)) for i in range(4)]
    result = plan(gang, [budget], {"team-nlp": 100 - left})
    assert len(result.release) == released
    if not released:
        assert [sorted(uids(g)) for g in result.waiting["team-nlp"]] == [["w0", "w1", "w2", "w3"]]


def test_a_gang_takes_the_place_of_its_highest_priority_oldest_member():
    budget = qbudget(admission="Projected", hours=100)
    pods = [
        rec("solo", created=at(5), hours=10),
        rec("g-late", gang="Job/ml/g", created=at(50), hours=10),
        rec("g-first", gang="Job/ml/g", priority=5, created=at(40), hours=10),
    ]
    result = plan(pods, [budget], {"team-nlp": 80})  # 20 left: the gang, not the older solo pod
    assert sorted(uids(result.release)) == ["g-first", "g-late"]
    assert [uids(g) for g in result.waiting["team-nlp"]] == [["solo"]]


def test_the_queue_is_strict_a_gang_that_does_not_fit_blocks_smaller_ones_behind_it():
    budget = qbudget(admission="Projected", hours=100)
    pods = [
        rec("big-0", gang="Job/ml/big", created=at(0), hours=10, gpus=4),
        rec("big-1", gang="Job/ml/big", created=at(0), hours=10, gpus=4),
        rec("small", created=at(10), hours=1),
    ]
    result = plan(pods, [budget], {"team-nlp": 70})  # 30 left: big needs 80, small 1
    assert result.release == []
    waiting = [sorted(uids(g)) for g in result.waiting["team-nlp"]]
    assert waiting == [["big-0", "big-1"], ["small"]]


def test_a_blocked_queue_does_not_block_another_budgets_queue():
    nlp, cv = qbudget(admission="Projected", hours=100), qbudget("team-cv", team="cv", hours=100)
    pods = [rec("big", gpus=8, hours=10, created=at(0)), rec("cv", team="cv", created=at(10))]
    result = plan(pods, [nlp, cv], {"team-nlp": 90, "team-cv": 0})
    assert uids(result.release) == ["cv"]
    assert set(result.waiting) == {"team-nlp"}


def test_a_pod_two_queueing_budgets_cover_is_released_only_when_both_have_room():
    team = qbudget("team-nlp", hours=100)
    everyone = Budget.from_object({**budget_body("all", hours=10), "spec": {
        "selector": {}, "gpuHours": 10, "period": "Monthly", "whenExhausted": "Queue"}})
    pods = [rec("p")]
    assert plan(pods, [team, everyone], {"team-nlp": 0, "all": 10}).release == []
    assert plan(pods, [team, everyone], {"team-nlp": 100, "all": 0}).release == []
    assert uids(plan(pods, [team, everyone], {"team-nlp": 0, "all": 0}).release) == ["p"]


# -- the planner: what fits -----------------------------------------------------------------------------


@pytest.mark.parametrize(("used", "released"), [(0, 20), (99.5, 20), (100, 0), (250, 0)])
def test_exhausted_releases_everything_with_room_and_nothing_without(used, released):
    budget = qbudget(hours=100)
    pods = [rec(f"p{i}", gpus=8, created=at(i)) for i in range(20)]  # far more than what remains
    result = plan(pods, [budget], {"team-nlp": used})
    assert len(result.release) == released
    assert sum(len(g) for g in result.waiting.get("team-nlp", ())) == 20 - released
    assert result.reserved == {}  # Exhausted keeps no reservations


def test_a_released_pod_relabelled_out_keeps_its_reservation_while_the_ledger_charges_it():
    """A relabel admission did not judge: the budget's ledger still charges the pod (`held_by`),
    so what it may still use stays reserved, and the next pod does not get its room."""
    budget = qbudget(admission="Projected", hours=100)
    pods = [rec("moved", team="scratch", gated=False, gpus=2, hours=10, started=T0 - timedelta(hours=1)),
            rec("q0", created=at(0), hours=10)]
    held = {"team-nlp": queue.Usage(80, PERIOD[1], frozenset({"moved"}))}
    result = queue.plan_release(pods, [budget], held, now=T0)
    assert result.reserved["team-nlp"] == pytest.approx(20) and result.release == []
    assert queue.figures(budget, pods, held["team-nlp"], now=T0) == (1, pytest.approx(20))
    # Not held (before): its reservation vanished with the relabel and q0 went past the budget.
    assert uids(plan(pods, [budget], {"team-nlp": 80}).release) == ["q0"]


def test_projected_reserves_the_worst_case_of_released_unfinished_pods():
    budget = qbudget(admission="Projected", hours=100)
    pods = [
        rec("running", gated=False, gpus=2, hours=10, started=T0 - timedelta(hours=1)),  # reserves 20
        rec("released", gated=False, gpus=1, hours=5),  # not scheduled yet: reserves 5
        rec("done", gated=False, gpus=8, hours=10, started=T0 - timedelta(hours=2), finished=T0),
        rec("gone", gated=False, gpus=8, hours=10, deleted=T0 - timedelta(minutes=1)),
        rec("cv", team="cv", gated=False, gpus=8, hours=10),  # not this budget's
        rec("q0", created=at(0), hours=10),
        rec("q1", created=at(1), hours=10),
        rec("q2", created=at(2), hours=10),
    ]
    # 100 - 50 used - 25 reserved = 25 left: two of the 10-GPU-hour pods.
    result = plan(pods, [budget], {"team-nlp": 50})
    assert uids(result.release) == ["q0", "q1"]
    assert result.reserved["team-nlp"] == pytest.approx(25 + 20)
    assert [uids(g) for g in result.waiting["team-nlp"]] == [["q2"]]


@pytest.mark.parametrize(
    ("hours", "need"),
    [(None, HOURS_TO_PERIOD_END), (10, 10), (-3, HOURS_TO_PERIOD_END), (5000, HOURS_TO_PERIOD_END)],
    ids=["no expiry: period end", "expires_at", "expired: period end", "past the period: capped"],
)
def test_a_worst_case_runs_until_expires_at_or_the_period_end(hours, need):
    budget = qbudget(admission="Projected", hours=1000)
    pod = rec("p", gpus=2, hours=hours)
    assert queue.worst_case(pod, budget, usage(0), T0) == pytest.approx(2 * need)
    fits = plan([pod], [budget], {"team-nlp": 1000 - 2 * need})
    assert uids(fits.release) == ["p"]
    assert plan([pod], [budget], {"team-nlp": 1000 - 2 * need + 0.01}).release == []


@pytest.mark.parametrize("fit", range(0, 21))
def test_released_pods_reserve_for_the_next_ones_in_the_same_plan(fit):
    need = 7.0  # each pod: 1 GPU x 7 h
    budget = qbudget(admission="Projected", hours=1000)
    pods = [rec(f"p{i:02d}", hours=need, created=at(i)) for i in range(20)]
    result = plan(pods, [budget], {"team-nlp": 1000 - fit * need})
    assert uids(result.release) == [f"p{i:02d}" for i in range(fit)]
    assert result.reserved["team-nlp"] == pytest.approx(fit * need)
    # What the pods released now reserve stops the next plan from releasing any more.
    after = [replace(p, gated=False) if p.uid in uids(result.release) else p for p in pods]
    assert plan(after, [budget], {"team-nlp": 1000 - fit * need}).release == []


def test_a_gated_pod_no_queueing_budget_covers_any_more_is_released():
    spent = {"team-nlp": 1000}
    pods = [rec("p")]
    assert plan(pods, [qbudget()], spent).release == []
    assert uids(plan(pods, [qbudget(when="Deny")], spent).release) == ["p"]  # switched to Deny
    assert uids(plan(pods, [], {}).release) == ["p"]  # deleted
    assert uids(plan([rec("p", team="cv")], [qbudget()], spent).release) == ["p"]  # relabelled
    nvidia = [replace(rec("p"), devices={"nvidia.com/gpu": 1.0})]
    assert uids(plan(nvidia, [qbudget(resources=["amd.com/gpu"])], spent).release) == ["p"]  # not counted
    assert plan(nvidia, [qbudget(resources=["nvidia.com/gpu"])], spent).release == []


def test_a_finops_exception_for_the_budget_releases_the_pods_it_covers():
    """A FinOpsException waiving a budget (rule `budget`) lets its pods past it, as admission would
    not have gated them: the operator releases them, in any namespace and team it covers only."""
    from controller.engine.evaluation import waived
    from controller.engine.models import FinOpsException

    def exception(namespace="ml", expires="2026-12-31T00:00:00Z", **spec):
        return FinOpsException.from_object({
            "apiVersion": constants.API_VERSION, "kind": "FinOpsException",
            "metadata": {"name": "e", "namespace": namespace},
            "spec": {"reason": "deadline", "expiresAt": expires, **spec}})

    spent = {"team-nlp": 1000}
    pods = [rec("p"), rec("other-ns", namespace="cv-ns"), rec("cv", team="cv")]
    budgets = [qbudget(), qbudget("team-cv", team="cv")]
    used = {k: usage(v) for k, v in {**spent, "team-cv": 1000}.items()}

    def released(*exceptions):
        def waives(pod, budget):
            return waived(exceptions, budget.name, "budget", namespace=pod.namespace, labels=pod.labels,
                          now=T0)
        return uids(queue.plan_release(pods, budgets, used, now=T0, waived=waives).release)

    assert released() == []
    assert released(exception(policies=["team-nlp"], rules=["budget"])) == ["p"]
    cv_only = {"matchLabels": {"team": "cv"}}
    assert released(exception(policies=["*"], rules=["*"], selector=cv_only)) == ["cv"]
    assert released(exception(policies=["team-nlp"], rules=["labels"])) == []  # another rule
    assert released(exception(policies=["team-nlp"], rules=["budget"], expires="2026-11-01T00:00:00Z")) == []
    assert released(exception(namespace="cv-ns", policies=["team-nlp"], rules=["budget"])) == ["other-ns"]


def test_a_queueing_budget_without_usage_yet_releases_nothing():
    pods = [rec("p0", created=at(0)), rec("p1", created=at(1))]
    for admission in ("Exhausted", "Projected"):
        result = plan(pods, [qbudget(admission=admission)], {})
        assert result.release == []
        assert [uids(g) for g in result.waiting["team-nlp"]] == [["p0"], ["p1"]]


def test_finished_or_deleted_gated_pods_are_not_planned():
    pods = [rec("done", finished=T0 - timedelta(minutes=1)), rec("gone", deleted=T0 - timedelta(seconds=1))]
    result = plan(pods, [qbudget()], {"team-nlp": 0})
    assert result.release == [] and result.waiting == {}


# -- the planner, by property -----------------------------------------------------------------------------


@st.composite
def queues(draw):
    """A Projected queueing budget, its released pods and its gated ones, in whole GPU-hours."""
    limit = draw(st.integers(0, 400))
    used = draw(st.integers(0, 400))
    running = [
        rec(f"r{i}", gated=False, gpus=draw(st.integers(1, 4)), hours=draw(st.integers(1, 30)))
        for i in range(draw(st.integers(0, 4)))
    ]
    gated = []
    for i in range(draw(st.integers(0, 20))):
        gated.append(rec(
            f"g{i:02d}",
            gpus=draw(st.integers(1, 4)),
            hours=draw(st.integers(1, 30)),
            priority=draw(st.sampled_from([0, 0, 10])),
            created=at(draw(st.integers(0, 60))),
            gang=draw(st.sampled_from(["", "", "", "Job/ml/a", "Job/ml/b", "JobSet/ml/c"])),
            team=draw(st.sampled_from(["nlp", "nlp", "nlp", "cv"])),
        ))
    return limit, used, running, gated


def _gangs(pods):
    found: dict[str, list[PodRecord]] = {}
    for p in pods:
        found.setdefault(p.gang or f"Pod/{p.uid}", []).append(p)
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queues())
def test_a_plan_never_reserves_more_than_remains_and_keeps_gangs_and_order(case):
    limit, used, running, gated = case
    budget = qbudget(admission="Projected", hours=limit)
    pods = running + gated
    result = plan(pods, [budget], {"team-nlp": used})
    u = usage(used)

    def need(p):
        return queue.worst_case(p, budget, u, T0)

    covered = [p for p in gated if p.labels["team"] == "nlp"]
    reserved_before = sum(need(p) for p in running)
    released = set(uids(result.release))
    # Pods of another team nobody queues any more are released; the rest only if they fit.
    assert {p.uid for p in gated if p.labels["team"] == "cv" and not any(
        q.labels["team"] == "nlp" for q in _gangs(gated)[p.gang or f"Pod/{p.uid}"])} <= released
    spent_now = sum(need(p) for p in covered if p.uid in released)
    assert spent_now <= max(limit - used - reserved_before, 0) + 1e-6
    assert result.reserved["team-nlp"] == pytest.approx(reserved_before + spent_now)
    # Gangs whole or not at all.
    for members in _gangs(gated).values():
        assert len({p.uid in released for p in members}) == 1
    # Strict: what waits is every covered gang not released, in queue order; after the first
    # waiting gang nothing on this budget is released.
    waiting = result.waiting.get("team-nlp", [])
    assert sorted(p.uid for g in waiting for p in g) == sorted(
        {p.uid for g in _gangs(gated).values() if any(q in covered for q in g) for p in g} - released)
    if waiting:
        first = waiting[0]
        assert sum(need(p) for p in first if p in covered) > limit - used - reserved_before - spent_now - 1e-6

        def place(members):
            top = min(members, key=lambda p: (-p.priority, p.created, p.name))
            return (-top.priority, top.created)

        for members in _gangs(gated).values():
            if any(p.uid in released for p in members) and any(p in covered for p in members):
                assert place(members) <= place(first)
    # Planning again once the released pods are ungated releases nothing more (nothing twice).
    after = [replace(p, gated=False) if p.uid in released else p for p in pods]
    again = plan(after, [budget], {"team-nlp": used})
    assert again.release == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 40)), max_size=20), st.integers(0, 300))
def test_one_gpu_hour_budget_fits_exactly_what_it_can(sizes, remaining):
    budget = qbudget(admission="Projected", hours=1000)
    pods = [rec(f"p{i:02d}", gpus=g, hours=h, created=at(i)) for i, (g, h) in enumerate(sizes)]
    result = plan(pods, [budget], {"team-nlp": 1000 - remaining})
    total, expected = 0, []
    for (g, h), p in zip(sizes, pods, strict=True):
        if total + g * h > remaining:
            break
        total += g * h
        expected.append(p.uid)
    assert uids(result.release) == expected
    assert result.reserved["team-nlp"] == pytest.approx(total) and total <= remaining


# -- figures and messages ---------------------------------------------------------------------------------


def test_figures_count_waiting_pods_and_reserved_hours():
    pods = [
        rec("q0"), rec("q1", gpus=2),
        rec("q-cv", team="cv"),
        rec("q-done", finished=T0 - timedelta(minutes=1)),
        rec("run", gated=False, gpus=2, hours=10, started=T0 - timedelta(hours=1)),
        rec("done", gated=False, gpus=2, hours=10, started=T0 - timedelta(hours=2), finished=T0),
    ]
    assert queue.figures(qbudget(admission="Projected"), pods, usage(0), now=T0) == (2, pytest.approx(20))
    assert queue.figures(qbudget(), pods, usage(0), now=T0) == (2, 0.0)  # Exhausted reserves nothing
    assert queue.figures(qbudget(when="Deny"), pods, usage(0), now=T0) == (0, 0.0)


def test_the_waiting_message_names_the_budget_the_place_and_the_reset():
    budget = qbudget(hours=100)
    message = queue.waiting_message(budget, usage(62.5), place=2, of=3, gang=[rec("p")])
    assert "GPU budget team-nlp" in message
    assert "place 2 of 3" in message
    assert "37.50 of 100 GPU-hours left" in message
    assert format_time(PERIOD[1]) in message
    gang = [rec(f"w{i}", gang="Job/ml/train") for i in range(4)]
    together = queue.waiting_message(budget, usage(120), place=1, of=1, gang=gang)
    assert "with the 4 pods of Job/ml/train" in together and "0.00 of 100" in together


# -- the operator: release_queue ---------------------------------------------------------------------------


def with_budgets(state: MeteringState, *budgets: tuple[Budget, float]) -> MeteringState:
    """The state a tick of each budget leaves: its spec, and a committed ledger of `used` GPU-hours."""
    for budget, used in budgets:
        state.budgets[budget.name] = budget
        ledger = Ledger(budget_uid=budget.uid, period_start=PERIOD[0], period_end=PERIOD[1],
                        base_gpu_hours=used)
        state.ledgers[budget.name] = (ledger, "1")
    return state


def run(coro):
    return asyncio.run(coro)


def queue_of_three():
    return [rec("a", hours=10, created=at(0)), rec("b", hours=10, created=at(1)),
            rec("c", hours=10, created=at(2))]


def test_release_queue_removes_the_gate_of_released_pods_only_and_tells_each_pod(executor):
    watch = FakeWatch(queue_of_three())
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0]),
                         (qbudget(admission="Projected", hours=100), 80))  # 20 left: two pods
    result = run(accounting.release_queue(state))
    assert uids(result.release) == ["a", "b"]
    assert api.released() == ["a", "b"]
    namespace, name, body, content_type = api.patches[0]
    assert (namespace, name) == ("ml", "a")
    assert content_type == "application/strategic-merge-patch+json"
    assert body == {"metadata": {"uid": "a"},
                    "spec": {"schedulingGates": [{"$patch": "delete", "name": GATE}]}}
    assert api.reasons(constants.REASON_RELEASED) == ["a", "b"]
    assert api.reasons(constants.REASON_QUEUED) == ["c"]
    (queued,) = [e for e in api.events if e["reason"] == constants.REASON_QUEUED]
    assert queued["type"] == "Warning" and queued["kind"] == "Pod"
    assert "team-nlp" in queued["message"] and "place 1 of 1" in queued["message"]
    assert format_time(PERIOD[1]) in queued["message"]
    released = {e["object"]: e["message"] for e in api.events if e["reason"] == constants.REASON_RELEASED}
    assert "after 5h00m" in released["a"] and "after 4h59m" in released["b"]  # created 5 h ago


def test_repeated_sweeps_release_nothing_twice_and_announce_each_waiting_pod_once(executor):
    watch = FakeWatch(queue_of_three())
    api = FakeApi(watch)
    clock = [T0]
    state = with_budgets(state_for(api, watch, executor, clock),
                         (qbudget(admission="Projected", hours=100), 80))
    run(accounting.release_queue(state))
    for minutes in (1, 2, 3):
        clock[0] = T0 + timedelta(minutes=minutes)
        assert run(accounting.release_queue(state)).release == []
    assert api.released() == ["a", "b"]
    assert api.reasons(constants.REASON_RELEASED) == ["a", "b"]
    assert api.reasons(constants.REASON_QUEUED) == ["c"]
    # The budget is raised: the last one goes, and is not told again that it waits.
    with_budgets(state, (qbudget(admission="Projected", hours=200), 80))
    assert uids(run(accounting.release_queue(state)).release) == ["c"]
    assert api.reasons(constants.REASON_RELEASED) == ["a", "b", "c"]
    assert api.reasons(constants.REASON_QUEUED) == ["c"]
    assert run(accounting.release_queue(state)).release == []
    assert api.released() == ["a", "b", "c"]


def test_a_sweep_on_a_cache_that_lags_does_not_release_the_same_pods_again(executor):
    watch = FakeWatch(queue_of_three())
    api = FakeApi(None)  # the cache does not see the patches (yet)
    state = with_budgets(state_for(api, watch, executor, [T0]),
                         (qbudget(admission="Projected", hours=100), 80))
    run(accounting.release_queue(state))
    run(accounting.release_queue(state))
    assert api.released() == ["a", "b"]
    assert api.reasons(constants.REASON_RELEASED) == ["a", "b"]


def test_an_exhausted_budget_with_room_releases_its_whole_queue(executor):
    watch = FakeWatch([rec(f"p{i}", gpus=8, created=at(i)) for i in range(5)])
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0]), (qbudget(hours=100), 99))
    assert len(run(accounting.release_queue(state)).release) == 5
    assert sorted(api.released()) == [f"p{i}" for i in range(5)]
    assert api.reasons(constants.REASON_QUEUED) == []


def test_a_spent_exhausted_budget_releases_nothing_and_numbers_the_places(executor):
    watch = FakeWatch([rec(f"p{i}", created=at(i)) for i in range(3)]
                      + [rec(f"w{i}", gang="Job/ml/w", created=at(10)) for i in range(2)])
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0]), (qbudget(hours=100), 100))
    run(accounting.release_queue(state))
    assert api.patches == [] and api.reasons(constants.REASON_RELEASED) == []
    places = {e["object"]: e["message"] for e in api.events}
    assert [f"place {n} of 4" in places[f"p{n - 1}"] for n in (1, 2, 3)] == [True] * 3
    assert "place 4 of 4" in places["w0"] and "with the 2 pods of Job/ml/w" in places["w1"]


def test_nothing_gated_means_nothing_to_do(executor):
    watch = FakeWatch([rec("run", gated=False, started=T0)])
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0]), (qbudget(), 0))
    assert run(accounting.release_queue(state)).release == []
    assert api.patches == [] and api.events == []


def test_dry_run_removes_no_gate_and_announces_no_release(executor):
    watch = FakeWatch(queue_of_three())
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0], dry_run=True),
                         (qbudget(admission="Projected", hours=100), 80))
    result = run(accounting.release_queue(state))
    assert uids(result.release) == ["a", "b"]  # what it would release
    assert api.patches == []
    assert api.reasons(constants.REASON_RELEASED) == []
    assert all(p.gated for p in watch.pods)
    # Dry-run only logs and emits Events (OperatorConfig.dry_run): the waiting pod is still told.
    assert api.reasons(constants.REASON_QUEUED) == ["c"]


def test_a_namespace_the_write_scope_refuses_is_left_alone(executor, monkeypatch):
    monkeypatch.setattr(workloads_api, "WRITES", WriteScope(["ml"], own="comptroller-system"))
    watch = FakeWatch([rec("mine", created=at(0)), rec("theirs", namespace="research", created=at(1)),
                       rec("system", namespace="kube-system", created=at(2))])
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0]), (qbudget(hours=100), 0))
    run(accounting.release_queue(state))
    assert api.released() == ["mine"]
    assert api.reasons(constants.REASON_RELEASED) == ["mine"]


def test_a_pod_gone_before_its_release_gets_no_event(executor):
    watch = FakeWatch([rec("gone-1", created=at(0)), rec("here", created=at(1))])
    api = FakeApi(watch)
    state = with_budgets(state_for(api, watch, executor, [T0]), (qbudget(hours=100), 0))
    run(accounting.release_queue(state))
    assert api.released() == ["gone-1", "here"]
    assert api.reasons(constants.REASON_RELEASED) == ["here"]


def test_a_restarted_operator_replans_from_the_pods_alone(executor):
    watch = FakeWatch(queue_of_three())
    api = FakeApi(watch)
    budget = qbudget(admission="Projected", hours=100)
    run(accounting.release_queue(with_budgets(state_for(api, watch, executor, [T0]), (budget, 80))))
    assert api.released() == ["a", "b"]
    # A new process: no memory of what it released. The released pods reserve by themselves.
    clock = [T0 + timedelta(minutes=5)]
    fresh = with_budgets(state_for(api, watch, executor, clock), (budget, 80))
    result = run(accounting.release_queue(fresh))
    assert result.release == []
    assert [uids(g) for g in result.waiting["team-nlp"]] == [["c"]]
    assert result.reserved["team-nlp"] == pytest.approx(2 * (10 - 5 / 60))
    assert api.released() == ["a", "b"]
    assert api.reasons(constants.REASON_QUEUED) == ["c", "c"]  # once per operator run


def test_after_a_restart_a_budget_not_yet_ticked_releases_nothing(executor):
    pods = [rec("cv-run", team="cv", gated=False, started=T0 - timedelta(hours=10)),  # 10 of 5: spent
            rec("cv-0", team="cv", created=at(0)), rec("nlp-0", created=at(1))]
    watch = FakeWatch(pods)
    api = FakeApi(watch)
    nlp, cv = budget_body(hours=100), budget_body("team-cv", team="cv", hours=5)
    api.listed["GPUBudget"] = [nlp, cv]

    async def sweep(state):
        await accounting.tick(state, nlp)
        await accounting.maybe_reconcile_finalizers(state)

    before = state_for(api, watch, executor, [T0])
    run(accounting.tick(before, cv))
    run(sweep(before))
    assert api.released() == ["nlp-0"]  # cv-0 waits: team-cv is spent
    # The operator restarts; team-nlp's daemon ticks first and its sweep runs before team-cv's tick.
    after = state_for(api, watch, executor, [T0 + timedelta(minutes=1)])
    run(sweep(after))
    assert api.released() == ["nlp-0"]


# -- the operator: the tick's status and the sweep ------------------------------------------------------


def test_the_tick_reports_queued_pods_and_reserved_hours(executor):
    pods = [
        rec("run", gated=False, gpus=2, hours=10, started=T0 - timedelta(hours=1)),
        rec("q0", created=at(0), hours=10), rec("q1", created=at(1), hours=10),
        rec("q-cv", team="cv"),
    ]
    watch = FakeWatch(pods)
    api = FakeApi(watch)
    state = state_for(api, watch, executor, [T0])
    ledger = run(accounting.tick(state, budget_body(admission="Projected", hours=100)))
    assert ledger.used_gpu_hours == pytest.approx(2.0)
    status = api.statuses["team-nlp"]
    assert status["queuedPods"] == 2
    assert status["reservedGPUHours"] == pytest.approx(20)
    run(accounting.tick(state, budget_body("team-cv", team="cv", when="Deny")))
    assert api.statuses["team-cv"]["queuedPods"] == 0


def test_the_sweep_after_a_tick_releases_what_fits(executor):
    pods = [rec("run", gated=False, gpus=1, started=T0 - timedelta(hours=40), hours=1),
            rec("q0", created=at(0), hours=10), rec("q1", created=at(1), hours=10)]
    watch = FakeWatch(pods)
    api = FakeApi(watch)
    state = state_for(api, watch, executor, [T0])
    body = budget_body(admission="Projected", hours=60)  # 40 used + 1 reserved: 19 left, one pod

    async def scenario():
        assert await accounting.tick(state, body) is not None
        task = accounting.maybe_reconcile_finalizers(state)
        await task

    run(scenario())
    assert api.released() == ["q0"]
    assert api.reasons(constants.REASON_RELEASED) == ["q0"]
    assert api.reasons(constants.REASON_QUEUED) == ["q1"]
    assert api.statuses["team-nlp"]["queuedPods"] == 2  # as the tick saw it, before the sweep
    assert json.loads(api.configmaps[ledger_name("team-nlp")]["data"][constants.LEDGER_KEY])["budgetUID"] == (
        "uid-team-nlp")


def test_the_operator_reads_pods_expiry_under_the_key_of_the_policies_it_lists(executor):
    """The pod cache's records take the key from the FinOpsPolicies the operator lists (those with a
    custom key only), so the queue reserves what admission projected."""
    watch = FakeWatch()
    api = FakeApi(watch)
    api.listed["FinOpsPolicy"] = [
        ttl_policy_object(),
        ttl_policy_object("plain", key="expires_at"),
        {**ttl_policy_object("broken"), "spec": {"expiry": {"key": "not a key!"}}},
    ]
    state = with_budgets(state_for(api, watch, executor, [T0]),
                         (qbudget(admission="Projected", hours=100), 80))
    make = accounting.record_maker(state.config.metering, state.expiry)
    assert make(k8s_pod(labels=STALE)).expires == T0 + timedelta(hours=1)  # nothing listed yet
    accounting.refresh_expiry_policies(state)
    assert state.expiry.snapshot is not None
    assert [p.name for p in state.expiry.snapshot.policies] == ["ttl-experiments"]
    running = k8s_pod(labels={**STALE, "team": "nlp"})
    running["metadata"].update(uid="run", name="run")
    running["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "2"
    waiting = k8s_pod(labels={"team": "nlp", "ttl": "2026-11-10T17-00-00Z"}, gates=[{"name": GATE}])
    waiting["metadata"].update(uid="q0", name="q0")
    watch.pods = [make(running), make(waiting)]
    assert watch.pods[0].expires == T0 + timedelta(hours=10)
    result = run(accounting.release_queue(state))
    assert result.reserved["team-nlp"] == pytest.approx(20)
    assert api.released() == [] and api.reasons(constants.REASON_QUEUED) == ["q0"]
    # No policy with a custom key: records read `expires_at`, with no snapshot to match against.
    api.listed["FinOpsPolicy"] = [ttl_policy_object("plain", key="expires_at")]
    accounting.refresh_expiry_policies(state)
    assert state.expiry.snapshot is None
    assert make(running).expires == T0 + timedelta(hours=1)
