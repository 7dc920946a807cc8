"""The metering tick against a fake of our own client layer (`Workloads`) and pod cache:
ledger commits, compare-and-swap conflicts, restarts, threshold Events, finalizer plans."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from metering_fakes import FakeApi, FakeWatch, state_for

from controller import constants
from controller.k8s.ledgers import ledger_name
from controller.metering.budgets import Budget
from controller.metering.usage import Entry, Ledger, PodRecord
from controller.operator import accounting
from controller.operator.accounting import plan_finalizers, tick

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def pod(uid: str, gpus: int, since: datetime | None, *, team: str = "nlp", until: datetime | None = None,
        finalizer: bool = False) -> PodRecord:
    return PodRecord(uid=uid, namespace="ml", name=uid, labels={"team": team}, gpus=gpus, started=since,
                     finished=until, finalizer=finalizer)


def budget_body(name: str = "team-nlp", *, team: str = "nlp", hours: float = 10, uid: str = "b-1",
                status: dict | None = None) -> dict:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "GPUBudget",
        "metadata": {"name": name, "uid": uid, "generation": 1},
        "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": hours, "period": "Monthly",
                 "pricePerGPUHour": {"default": 2.0}},
        "status": status or {},
    }


def run(coro):
    return asyncio.run(coro)


def test_tick_commits_the_ledger_then_projects_the_status(executor):
    api, clock = FakeApi(), [T0 + timedelta(hours=1)]
    watch = FakeWatch([pod("a", 2, T0), pod("b", 1, T0 + timedelta(minutes=30)), pod("c", 8, T0, team="cv")])
    state = state_for(api, watch, executor, clock)
    committed = run(tick(state, budget_body()))
    assert committed.used_gpu_hours == pytest.approx(2.5)
    assert api.ledger("team-nlp")["budgetUID"] == "b-1"
    owner = api.configmaps[ledger_name("team-nlp")]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("GPUBudget", "b-1")
    status = api.statuses["team-nlp"]
    assert status["usedGPUHours"] == pytest.approx(2.5)
    assert status["runningGPUs"] == 3
    assert status["estimatedCost"] == pytest.approx(5.0)
    assert status["remainingGPUHours"] == pytest.approx(7.5)


def test_a_restarted_operator_continues_from_the_ledger_without_double_counting(executor):
    api, clock = FakeApi(), [T0 + timedelta(hours=1)]
    watch = FakeWatch([pod("a", 2, T0), pod("b", 1, T0)])
    run(tick(state_for(api, watch, executor, clock), budget_body()))
    # "b" is deleted while no operator runs and is not held by a finalizer: frozen at 1 h.
    watch.pods = [pod("a", 2, T0)]
    clock[0] = T0 + timedelta(hours=2)
    fresh = state_for(api, watch, executor, clock)  # nothing in memory
    committed = run(tick(fresh, budget_body()))
    assert committed.used_gpu_hours == pytest.approx(2 * 2 + 1)
    assert run(tick(fresh, budget_body())).used_gpu_hours == pytest.approx(5)


def test_a_budget_keeps_charging_a_running_pod_relabelled_out_of_it_until_it_ends(executor):
    """A relabel admission did not judge (the webhook down under failurePolicy Ignore) or an edit
    of the selector: the GPUs the pod holds stay charged to the budget that charged them, also
    across a restart (the ledger says so), until the pod ends; a new pod follows the labels."""
    api, clock = FakeApi(), [T0 + timedelta(hours=1)]
    watch = FakeWatch([pod("a", 2, T0), pod("b", 1, T0)])
    state = state_for(api, watch, executor, clock)
    assert run(tick(state, budget_body())).used_gpu_hours == pytest.approx(3)
    watch.pods = [pod("a", 2, T0, team="scratch"), pod("b", 1, T0), pod("c", 1, T0, team="scratch")]
    clock[0] = T0 + timedelta(hours=2)
    assert run(tick(state, budget_body())).used_gpu_hours == pytest.approx(6)
    assert api.statuses["team-nlp"]["runningGPUs"] == 3
    fresh = state_for(api, watch, executor, clock)
    clock[0] = T0 + timedelta(hours=3)
    assert run(tick(fresh, budget_body())).used_gpu_hours == pytest.approx(9)
    watch.pods = [pod("a", 2, T0, team="scratch", until=T0 + timedelta(hours=4)), pod("b", 1, T0)]
    clock[0] = T0 + timedelta(hours=5)
    ledger = run(tick(fresh, budget_body()))
    assert ledger.used_gpu_hours == pytest.approx(2 * 4 + 5) and "a" in ledger.folded
    # No budget covers its labels now: its days go in the cells of the budget that charged it.
    assert sum(hours for hours, _ in ledger.cells["scratch/"].values()) == pytest.approx(8)
    # Folded, it is not charged again, whatever its labels.
    clock[0] = T0 + timedelta(hours=6)
    assert run(tick(fresh, budget_body())).used_gpu_hours == pytest.approx(2 * 4 + 6)


def test_a_conflicting_writer_makes_the_tick_reread_and_recompute(executor):
    api, clock = FakeApi(), [T0 + timedelta(hours=1)]
    watch = FakeWatch([pod("a", 1, T0)])
    mine = state_for(api, watch, executor, clock)
    run(tick(mine, budget_body()))
    peer = state_for(api, watch, executor, clock)  # a second replica during a hand-over
    clock[0] = T0 + timedelta(hours=2)
    run(tick(peer, budget_body()))
    assert run(tick(mine, budget_body())) is None  # stale resourceVersion: refused
    assert "team-nlp" not in mine.ledgers
    clock[0] = T0 + timedelta(hours=3)
    assert run(tick(mine, budget_body())).used_gpu_hours == pytest.approx(3.0)


def test_each_threshold_is_announced_once_even_across_restarts(executor):
    api, clock = FakeApi(), [T0 + timedelta(hours=5)]
    watch = FakeWatch([pod("a", 1, T0)])
    run(tick(state_for(api, watch, executor, clock), budget_body()))
    assert [e["message"].split(" reached ")[1][:3] for e in api.events] == ["50%"]
    clock[0] = T0 + timedelta(hours=5, minutes=1)
    run(tick(state_for(api, watch, executor, clock), budget_body()))  # restarted
    assert len(api.events) == 1
    clock[0] = T0 + timedelta(hours=10)
    run(tick(state_for(api, watch, executor, clock), budget_body()))
    assert [(e["reason"], e["type"]) for e in api.events[1:]] == [
        (constants.REASON_BUDGET_THRESHOLD, "Normal"), (constants.REASON_BUDGET_THRESHOLD, "Warning")]
    conditions = {c["type"]: c for c in api.statuses["team-nlp"]["conditions"]}
    assert conditions["Exhausted"]["status"] == "True"
    assert conditions["ThresholdReached"]["reason"] == "100"


def test_an_unreadable_ledger_restarts_from_visible_pods(executor):
    api, clock = FakeApi(), [T0 + timedelta(hours=1)]
    watch = FakeWatch([pod("a", 1, T0)])
    run(tick(state_for(api, watch, executor, clock), budget_body()))
    api.configmaps[ledger_name("team-nlp")]["data"][constants.LEDGER_KEY] = json.dumps({"entries": {}})
    committed = run(tick(state_for(api, watch, executor, clock), budget_body()))
    assert committed.used_gpu_hours == pytest.approx(1.0)


def test_a_ledger_from_a_newer_comptroller_is_neither_metered_nor_overwritten(executor, caplog):
    """After a rollback, an operator that cannot read the ledger's format leaves it, and the pods
    it matches keep their finalizer: recounting from visible pods would drop what ended. The
    budget's daemon retries once an interval, not at the pace of a conflict."""
    from dataclasses import replace
    from types import SimpleNamespace

    from controller.operator import metrics

    api, clock = FakeApi(), [T0 + timedelta(hours=1)]
    done = pod("a", 1, T0, until=T0 + timedelta(minutes=30), finalizer=True)
    watch = FakeWatch([done])
    run(tick(state_for(api, watch, executor, clock), budget_body()))
    newer = {**api.ledger("team-nlp"), "format": 3, "somethingNew": [1, 2]}
    api.configmaps[ledger_name("team-nlp")]["data"][constants.LEDGER_KEY] = json.dumps(newer)
    old = state_for(api, watch, executor, clock)
    old.config = replace(old.config, metering=replace(old.config.metering, interval=30))
    clock[0] = T0 + timedelta(hours=2)

    class Stopped:  # kopf's DaemonStopped: stops the daemon after its third wait
        reason = None

        def __init__(self) -> None:
            self.waits: list[float] = []

        def __bool__(self) -> bool:
            return len(self.waits) >= 3

        async def wait(self, timeout: float) -> None:
            self.waits.append(timeout)

    watch.pods.append(pod("new", 2, T0 + timedelta(hours=1, minutes=30)))  # started during the rollback
    old.listed = [Budget.from_object(budget_body())]
    old.listed_at = time.monotonic()
    refused = metrics.METERING_TICKS.labels("refused")
    before = refused._value.get()
    stopped = Stopped()

    async def daemon() -> None:
        await accounting.meter_budget(name="team-nlp", body=budget_body(), stopped=stopped,
                                      memo=SimpleNamespace(metering=old), logger=accounting.log)
        if old.sweep_task is not None:
            await old.sweep_task

    run(daemon())
    assert all(wait > 29 for wait in stopped.waits), stopped.waits
    assert refused._value.get() == before + 3
    # The sweep still runs: the new pod is protected by the finalizer, the ended one stays held.
    finalized = [name for _, name, body, _ in api.patches if "finalizers" in body["metadata"]]
    assert finalized == ["new"]
    assert "written in ledger format 3, by a newer Comptroller" in caplog.text
    assert f"ConfigMap comptroller-system/{ledger_name('team-nlp')}" in caplog.text
    assert api.ledger("team-nlp") == newer
    assert not run(accounting.reconcile_finalizers(old)).release


def budgets(*teams: str) -> list[Budget]:
    return [Budget.from_object(budget_body(f"team-{t}", team=t, uid=f"b-{t}")) for t in teams]


def closed(uid: str) -> Ledger:
    return Ledger(budget_uid="x", period_start=T0 - timedelta(days=9), period_end=T0 + timedelta(days=20),
                  base_gpu_hours=1.0, folded=frozenset({uid}))


def charging(uid: str) -> Ledger:
    return Ledger(budget_uid="b-nlp", period_start=T0 - timedelta(days=9), period_end=T0 + timedelta(days=20),
                  entries={uid: Entry(1.0, 2.0)})


NOW = T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("record", "teams", "ledgers", "protect", "add", "release"),
    [
        (pod("a", 1, T0), ["nlp"], {}, True, True, False),
        (pod("a", 1, T0), ["nlp"], {}, False, False, False),  # dry run / finalizer disabled
        (pod("a", 1, T0), ["cv"], {}, True, False, False),  # no budget draws on it
        (pod("a", 1, None), ["nlp"], {}, True, False, False),  # Pending
        (pod("a", 1, T0, until=NOW, finalizer=True), ["nlp"], {"team-nlp": closed("a")}, True, False, True),
        (pod("a", 1, T0, until=NOW, finalizer=True), ["nlp"], {}, True, False, False),  # not committed yet
        (pod("a", 1, T0, until=NOW, finalizer=True), ["cv"], {"team-cv": closed("x")}, True, False,
         True),  # nobody meters it
        (pod("a", 1, T0, finalizer=True), ["nlp"], {"team-nlp": closed("a")}, True, False, False),  # running
        # Running, but its budget is gone: nothing would ever release it.
        (pod("a", 1, T0, finalizer=True), ["cv"], {"team-cv": closed("x")}, True, False, True),
        # ... unless a budget's ledger is not loaded yet: it may be one that charges the pod.
        (pod("a", 1, T0, finalizer=True), ["cv"], {}, True, False, False),
        (pod("a", 1, T0, finalizer=True), [], {}, True, False, True),
        # Relabelled out, but the budget's ledger charges it: it waits for its final charge.
        (pod("a", 1, T0, team="cv", finalizer=True), ["nlp"], {"team-nlp": charging("a")}, True, False,
         False),
        (pod("a", 1, T0, team="cv", until=NOW, finalizer=True), ["nlp"], {"team-nlp": charging("a")}, True,
         False, False),
    ],
)
def test_plan_finalizers(record, teams, ledgers, protect, add, release):
    plan = plan_finalizers([record], budgets(*teams), ledgers.get, now=NOW, protect=protect)
    assert (record in plan.add, record in plan.release) == (add, release)


def test_reconcile_patches_only_our_finalizer_and_tolerates_gone_pods(executor):
    api, clock = FakeApi(), [NOW]
    watch = FakeWatch([pod("new", 1, T0), pod("gone-1", 1, T0),
                       pod("done", 1, T0, until=NOW, finalizer=True)])
    state = state_for(api, watch, executor, clock)
    state.budgets = {b.name: b for b in budgets("nlp")}
    state.ledgers = {"team-nlp": (closed("done"), "1")}
    plan = run(accounting.reconcile_finalizers(state))
    assert {p.uid for p in plan.add} == {"new", "gone-1"} and [p.uid for p in plan.release] == ["done"]
    bodies = {name: body for _, name, body, _ in api.patches}
    assert bodies["new"]["metadata"]["finalizers"] == [constants.METERING_FINALIZER]
    assert bodies["done"]["metadata"]["$deleteFromPrimitiveList/finalizers"] == [constants.METERING_FINALIZER]
    assert bodies["new"]["metadata"]["uid"] == "new"  # never a namesake


def test_a_listed_budget_that_has_not_ticked_yet_holds_the_pods_it_matches(executor):
    """After a restart, one budget's daemon ticks first: the finalizer of a pod another matching
    budget has not charged yet stays until that one has committed it."""
    api, clock = FakeApi(), [NOW]
    done = pod("done", 1, T0, until=NOW, finalizer=True)
    state = state_for(api, FakeWatch([done]), executor, clock)
    first, second = Budget.from_object(budget_body("a-first", team="nlp", uid="b-a")), \
        Budget.from_object(budget_body("b-second", team="nlp", uid="b-b"))
    state.budgets = {first.name: first}
    state.listed = [first, second]
    state.ledgers = {"a-first": (closed("done"), "1")}
    assert not run(accounting.reconcile_finalizers(state)).release
    state.ledgers["b-second"] = (closed("done"), "1")
    assert [p.uid for p in run(accounting.reconcile_finalizers(state)).release] == ["done"]


def test_end_at_deletion_closes_a_pod_that_vanished_running():
    seen = T0 + timedelta(minutes=20)
    assert accounting.end_at_deletion(pod("a", 1, T0), seen).finished == seen
    ended = pod("a", 1, T0, until=T0 + timedelta(minutes=5))
    assert accounting.end_at_deletion(ended, seen) == ended
    assert accounting.end_at_deletion(pod("a", 1, None), seen).finished is None


def test_with_instance_types_resolves_from_nodes_only_when_unknown():
    pods = [PodRecord(uid="a", namespace="", name="a", labels={}, gpus=1, started=T0, node="n1"),
            PodRecord(uid="b", namespace="", name="b", labels={}, gpus=1, started=T0, node="n1",
                      instance_type="p5.48xlarge")]
    out = accounting.with_instance_types(pods, {"n1": "g5.xlarge"})
    assert [p.instance_type for p in out] == ["g5.xlarge", "p5.48xlarge"]


def test_state_call_runs_blocking_calls_off_the_loop(executor):
    state = state_for(FakeApi(), FakeWatch(), executor, [T0])
    import threading

    main = threading.get_ident()
    assert run(state.call(threading.get_ident)) != main


def test_finalizer_sweeps_run_in_the_background_at_most_once_per_interval(executor):
    api, clock = FakeApi(), [NOW]
    state = state_for(api, FakeWatch([pod("new", 1, T0)]), executor, clock)
    state.budgets = {b.name: b for b in budgets("nlp")}

    async def scenario():
        first = accounting.maybe_reconcile_finalizers(state)
        second = accounting.maybe_reconcile_finalizers(state)  # one is running (and was just started)
        await first
        third = accounting.maybe_reconcile_finalizers(state)  # within the interval of the last one
        return first, second, third

    first, second, third = run(scenario())
    assert first is not None and second is None and third is None
    assert [name for _, name, *_ in api.patches] == ["new"]
