"""Metering is pure: pods and ledgers in, charges out. Times are explicit; no cluster."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controller import constants
from controller.engine.accelerators import pod_gpus, resource_filter
from controller.metering.usage import (
    Entry,
    Ledger,
    PodRecord,
    days_of,
    format_time,
    group_key,
    meter,
    needs_finalizer,
    new_ledger,
    parse_time,
    pod_record,
    releasable,
    roll_over,
)

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
MONTH = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
KEYS = ("node.kubernetes.io/instance-type", "karpenter.k8s.aws/instance-type")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def gpu(n: int | str, *, limits: bool = False) -> dict:
    key = "limits" if limits else "requests"
    return {"resources": {key: {"nvidia.com/gpu": str(n)}}}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"containers": [{}]}, 0),
        ({"containers": [gpu(1)]}, 1),
        ({"containers": [gpu(2, limits=True)]}, 2),  # a limit alone sets the request
        ({"containers": [gpu(2), gpu(3)]}, 5),
        ({"containers": [gpu(1)], "initContainers": [gpu(4)]}, 4),  # the init peak wins
        ({"containers": [gpu(2)], "initContainers": [gpu(1), gpu(1)]}, 2),
        # a sidecar runs next to the app containers and to the init containers after it
        ({"containers": [gpu(1)], "initContainers": [{**gpu(1), "restartPolicy": "Always"}, gpu(1)]}, 2),
        ({"containers": [gpu(1)], "overhead": {"nvidia.com/gpu": "1"}}, 2),
        ({"containers": [{"resources": {"requests": {"amd.com/gpu": "2"}}}]}, 0),
        ({"containers": [{"resources": {"requests": {"nvidia.com/gpu": "bogus"}}}]}, 0),
    ],
)
def test_pod_gpus_counts_like_the_scheduler(spec, expected):
    assert pod_gpus(spec).total(resource_filter(["nvidia.com/gpu"])) == expected


def test_pod_gpus_sums_every_configured_resource():
    spec = {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2", "amd.com/gpu": "1"}}}]}
    assert pod_gpus(spec).total(resource_filter(["nvidia.com/gpu", "amd.com/gpu"])) == 3
    assert pod_gpus(spec).total() == 3  # `*`: every accelerator


def pod(
    *,
    phase: str = "Running",
    gpus: int = 1,
    started: str | None = "2026-11-10T12:00:00Z",
    finished: str | None = None,
    deletion: str | None = None,
    finalizers: tuple[str, ...] = (),
    node_selector: dict | None = None,
    owner: dict | None = None,
    start_time: str | None = None,
) -> dict:
    if finished:
        state = {"terminated": {"startedAt": started, "finishedAt": finished, "exitCode": 0}}
    elif started:
        state = {"running": {"startedAt": started}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    metadata = {
        "name": "train-0",
        "namespace": "ml-nlp",
        "uid": "uid-1",
        "labels": {"team": "nlp"},
        "finalizers": list(finalizers),
    }
    if deletion:
        metadata["deletionTimestamp"] = deletion
    if owner:
        metadata["ownerReferences"] = [{**owner, "controller": True}]
    status = {"phase": phase, "containerStatuses": [{"name": "main", "state": state}]}
    if start_time:
        status["startTime"] = start_time
    return {
        "metadata": metadata,
        "spec": {"nodeName": "node-a", "nodeSelector": node_selector or {}, "containers": [gpu(gpus)]},
        "status": status,
    }


@pytest.mark.parametrize(
    ("obj", "started", "finished", "deleted"),
    [
        (pod(phase="Pending", started=None), None, None, None),
        # Pending while images pull: kubelet's startTime is not yet consumption
        (pod(phase="Pending", started=None, start_time="2026-11-10T11:00:00Z"), None, None, None),
        (pod(), "2026-11-10T12:00:00Z", None, None),
        (pod(finished="2026-11-10T13:00:00Z", phase="Succeeded"), "2026-11-10T12:00:00Z",
         "2026-11-10T13:00:00Z", None),
        (pod(finished="2026-11-10T13:00:00Z", phase="Failed"), "2026-11-10T12:00:00Z",
         "2026-11-10T13:00:00Z", None),
        # deleted, and the kubelet reported the containers terminated: finishedAt is the end
        (pod(finished="2026-11-10T12:30:00Z", deletion="2026-11-10T12:30:30Z"), "2026-11-10T12:00:00Z",
         "2026-11-10T12:30:00Z", "2026-11-10T12:30:30Z"),
        # deleted, containers never reported terminated (kwok, lost node): no finish, a deletion
        (pod(deletion="2026-11-10T12:45:00Z"), "2026-11-10T12:00:00Z", None, "2026-11-10T12:45:00Z"),
        # a running state rewritten away: kubelet's startTime is the fallback
        (pod(started=None, start_time="2026-11-10T11:59:00Z"), "2026-11-10T11:59:00Z", None, None),
    ],
)
def test_pod_record_reads_start_and_end_from_status(obj, started, finished, deleted):
    record = pod_record(obj)
    assert record is not None
    assert record.started == parse_time(started)
    assert record.finished == parse_time(finished)
    assert record.deleted == parse_time(deleted)


def test_terminal_pod_without_finish_times_ends_at_its_last_condition():
    obj = pod(phase="Failed")
    obj["status"]["containerStatuses"] = [{"name": "main", "state": {"terminated": {"exitCode": 137}}}]
    obj["status"]["startTime"] = "2026-11-10T12:00:00Z"
    obj["status"]["conditions"] = [{"type": "Ready", "status": "False",
                                    "lastTransitionTime": "2026-11-10T12:20:00Z"}]
    record = pod_record(obj)
    assert record.started == parse_time("2026-11-10T12:00:00Z")
    assert record.finished == parse_time("2026-11-10T12:20:00Z")


def test_pod_record_is_none_without_gpus():
    obj = pod()
    obj["spec"]["containers"] = [{"resources": {"requests": {"cpu": "4"}}}]
    assert pod_record(obj) is None


@pytest.mark.parametrize(
    ("node_selector", "affinity", "expected"),
    [
        ({"node.kubernetes.io/instance-type": "p4d.24xlarge"}, None, "p4d.24xlarge"),
        ({"karpenter.k8s.aws/instance-type": "g5.xlarge"}, None, "g5.xlarge"),
        ({}, {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g6.12xlarge"]},
         "g6.12xlarge"),
        # two allowed types: which one it got is not known from the pod
        ({}, {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["a", "b"]}, ""),
        ({"team": "nlp"}, None, ""),
    ],
)
def test_instance_type_from_node_selector_or_affinity(node_selector, affinity, expected):
    obj = pod(node_selector=node_selector)
    if affinity:
        obj["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [affinity]}]}}}
    assert pod_record(obj, instance_type_keys=KEYS).instance_type == expected


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (None, "Pod/train-0"),
        ({"kind": "ReplicaSet", "name": "serve-7d9f8c"}, "Deployment/serve"),
        ({"kind": "Job", "name": "nightly-29012345"}, "CronJob/nightly"),
        ({"kind": "Job", "name": "train"}, "Job/train"),
        ({"kind": "PyTorchJob", "name": "bert"}, "PyTorchJob/bert"),
    ],
)
def test_workload_names_the_controller(owner, expected):
    assert pod_record(pod(owner=owner)).workload == expected


def test_pod_record_sees_our_finalizer():
    assert pod_record(pod(finalizers=(constants.METERING_FINALIZER,))).finalizer
    assert not pod_record(pod(finalizers=("other/finalizer",))).finalizer


def rec(uid: str = "a", *, gpus: int = 1, started: float | None = 0, finished: float | None = None,
        deleted: float | None = None, itype: str = "", finalizer: bool = False) -> PodRecord:
    return PodRecord(
        uid=uid, namespace="ns", name=uid, labels={"team": "nlp"}, gpus=gpus,
        started=None if started is None else at(started),
        finished=None if finished is None else at(finished),
        deleted=None if deleted is None else at(deleted),
        instance_type=itype, finalizer=finalizer,
    )


@pytest.mark.parametrize(
    ("record", "now", "hours"),
    [
        (rec(gpus=4), at(30), 2.0),
        (rec(gpus=4, started=None), at(30), 0.0),  # Pending
        (rec(gpus=2, finished=15), at(60), 0.5),  # stopped counting at finishedAt
        (rec(gpus=2, deleted=30), at(60), 1.0),  # grace period over: ends at deletionTimestamp
        (rec(gpus=2, deleted=90), at(60), 2.0),  # still within its grace period: running
        (rec(gpus=1, started=-60 * 24 * 30), at(0), 9 * 24 + 12.0),  # clipped to the period start
        (rec(gpus=1, started=90), at(60), 0.0),  # starts in the future (clock skew)
    ],
)
def test_gpu_hours_within_the_period(record, now, hours):
    assert record.gpu_hours(*MONTH, now=now) == pytest.approx(hours)


def ledger(**kwargs) -> Ledger:
    return Ledger(budget_uid="b", period_start=MONTH[0], period_end=MONTH[1], **kwargs)


def test_meter_charges_gpus_times_run_time_and_cost():
    pods = [rec("a", gpus=2, itype="p4d.24xlarge"), rec("b", gpus=1, started=30)]
    result = meter(ledger(), pods, now=at(60), prices={"default": 2.0, "p4d.24xlarge": 4.0})
    assert result.used_gpu_hours == pytest.approx(2.5)
    assert result.cost == pytest.approx(2 * 4.0 + 0.5 * 2.0)
    assert result.metered_at == at(60)
    assert set(result.entries) == {"a", "b"} and not result.folded


def test_meter_is_idempotent_so_a_repeated_tick_never_double_counts():
    pods = [rec("a", gpus=4), rec("b", gpus=1, finished=20)]
    once = meter(ledger(), pods, now=at(60))
    twice = meter(once, pods, now=at(60))
    assert twice.used_gpu_hours == pytest.approx(once.used_gpu_hours) == pytest.approx(4 + 20 / 60)


def test_a_start_seen_late_is_charged_from_the_start():
    early = meter(ledger(), [rec("a", started=None)], now=at(10))  # still Pending in our view
    assert early.used_gpu_hours == 0
    late = meter(early, [rec("a", started=5)], now=at(20))  # status caught up: ran since minute 5
    assert late.used_gpu_hours == pytest.approx(15 / 60)


def test_an_end_seen_late_is_refunded():
    running = meter(ledger(), [rec("a", gpus=2)], now=at(60))
    assert running.used_gpu_hours == pytest.approx(2.0)
    finished = meter(running, [rec("a", gpus=2, finished=45)], now=at(61))
    assert finished.used_gpu_hours == pytest.approx(1.5)
    assert "a" in finished.folded and "a" not in finished.entries  # folded: final


def test_a_vanished_pod_keeps_its_charge_frozen():
    first = meter(ledger(), [rec("a", gpus=2), rec("b")], now=at(30))
    second = meter(first, [rec("b")], now=at(60))  # "a" was deleted without a finalizer
    assert second.base_gpu_hours == pytest.approx(1.0)
    assert "a" not in second.entries
    assert second.used_gpu_hours == pytest.approx(1.0 + 1.0)
    # and it is not charged twice if a later tick still does not see it
    assert meter(second, [rec("b")], now=at(60)).used_gpu_hours == pytest.approx(2.0)


def test_pods_that_ran_only_before_the_period_are_not_remembered():
    old = rec("a", started=-60 * 24 * 20, finished=-60 * 24 * 15)
    assert meter(ledger(), [old], now=at(0)).entries == {}
    # ...unless it still carries our finalizer, which is released once the ledger folded it
    kept = meter(ledger(), [rec("a", started=-60 * 24 * 20, finished=-60 * 24 * 15, finalizer=True)],
                 now=at(0))
    assert kept.folded == {"a"} and kept.used_gpu_hours == 0


def test_meter_past_the_period_end_stops_at_the_end():
    late = rec("a", started=60 * 24 * 20 + 60 * 11)  # starts an hour before December
    result = meter(ledger(), [late], now=MONTH[1] + timedelta(hours=5))
    assert result.used_gpu_hours == pytest.approx(1.0)
    assert result.metered_at == MONTH[1]


def test_roll_over_closes_the_period_into_history():
    full = meter(ledger(), [rec("a", gpus=3)], now=at(60))
    december = (MONTH[1], datetime(2027, 1, 1, tzinfo=UTC))
    rolled = roll_over(full, period=december)
    assert rolled.used_gpu_hours == 0 and rolled.entries == {}
    assert rolled.history[-1] == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
                                  "usedGPUHours": 3.0, "estimatedCost": 0.0}
    many = ledger(history=tuple({"n": i} for i in range(12)))
    assert len(roll_over(many, period=december).history) == 12
    assert roll_over(many, period=december).history[0] == {"n": 1}


def test_ledger_round_trips_through_json():
    original = meter(ledger(thresholds=(50,), history=({"start": "x"},)),
                     [rec("a", gpus=2, finished=30), rec("b")], now=at(45), prices={"default": 1.5})
    restored = Ledger.from_json(original.to_json())
    assert restored == original


def test_a_ledger_says_its_format_and_one_from_a_newer_comptroller_is_refused():
    from controller.metering.usage import LEDGER_FORMAT, NewerLedgerFormat

    data = meter(ledger(), [rec("a")], now=at(45)).to_json()
    assert data["format"] == LEDGER_FORMAT
    assert Ledger.from_json({k: v for k, v in data.items() if k != "format"}).entries  # format 1: no key
    with pytest.raises(NewerLedgerFormat, match=f"ledger format {LEDGER_FORMAT + 1}, by a newer"):
        Ledger.from_json({**data, "format": LEDGER_FORMAT + 1})
    with pytest.raises(ValueError, match="ledger format '2' is not a number") as broken:
        Ledger.from_json({**data, "format": "2"})
    assert not isinstance(broken.value, NewerLedgerFormat)  # broken, not newer: restarted as before


def test_ledger_without_period_is_rejected():
    with pytest.raises(ValueError):
        Ledger.from_json({"entries": {}})


@pytest.mark.parametrize(
    ("record", "ledgers", "expected"),
    [
        (rec("a"), [], False),  # still running
        (rec("a", finished=10), [], True),  # no budget draws on it
        (rec("a", finished=10), [None], False),  # a matching budget has no committed ledger yet
        (rec("a", finished=10), [ledger(folded=frozenset({"a"}))], True),
        (rec("a", finished=10), [ledger(entries={"a": Entry(0.2, 0)})], False),  # charged while open
        (rec("a", finished=10), [ledger(folded=frozenset({"a"})), ledger()], False),
        (rec("a", started=-60 * 24 * 20, finished=-60 * 24 * 15), [ledger()], True),  # before the period
    ],
)
def test_releasable_only_when_every_budget_holds_the_final_charge(record, ledgers, expected):
    assert releasable(record, ledgers, now=at(60)) is expected


@pytest.mark.parametrize(
    ("record", "matched", "expected"),
    [
        (rec("a"), True, True),
        (rec("a"), False, False),
        (rec("a", started=None), True, False),  # Pending: nothing to protect yet
        (rec("a", finalizer=True), True, False),
        (rec("a", deleted=90), True, False),  # being deleted: adding a finalizer would be refused
        (rec("a", finished=10), True, False),
    ],
)
def test_needs_finalizer(record, matched, expected):
    assert needs_finalizer(record, matched=matched, now=at(60)) is expected


def simulate(pods: list[PodRecord], ticks: list[float], *, crashes: frozenset[int] = frozenset(),
             visible=lambda pod, now: True) -> Ledger:
    """Tick at each time; a crash throws the tick's result away before it is committed."""
    committed = new_ledger(budget_uid="b", period=MONTH)
    for index, minute in enumerate(ticks):
        now = at(minute)
        seen = [p for p in pods if visible(p, now)]
        result = meter(committed, seen, now=now)
        if index not in crashes:
            committed = result
    return committed


def test_crashes_and_restarts_neither_drop_nor_double_count():
    pods = [rec("a", gpus=4, finished=50), rec("b", gpus=2, started=10, finished=95), rec("c", started=40)]
    truth = (4 * 50 + 2 * 85 + 1 * 80) / 60
    ticks = [i * 0.5 for i in range(241)]
    clean = simulate(pods, ticks)
    crashy = simulate(pods, ticks, crashes=frozenset(range(20, 160, 3)))
    # a long outage: nothing committed between minute 30 and 100
    down = simulate(pods, ticks, crashes=frozenset(range(60, 200)))
    assert clean.used_gpu_hours == pytest.approx(truth)
    assert crashy.used_gpu_hours == pytest.approx(truth)
    assert down.used_gpu_hours == pytest.approx(truth)


def test_pods_kept_by_the_finalizer_are_metered_exactly_after_an_outage():
    # "a" is deleted at minute 50 while no operator runs; the finalizer keeps it visible until
    # it is metered, after which it is released (gone) and its charge stays in the ledger.
    pods = [rec("a", gpus=4, deleted=50, finalizer=True)]
    committed = new_ledger(budget_uid="b", period=MONTH)
    committed = meter(committed, pods, now=at(30))
    committed = meter(committed, pods, now=at(100))  # first tick after the outage
    assert releasable(pods[0], [committed], now=at(100))
    committed = meter(committed, [], now=at(130))  # released and gone
    assert committed.used_gpu_hours == pytest.approx(4 * 50 / 60)


def test_format_time_round_trips():
    stamp = datetime(2026, 11, 10, 12, 0, 1, 250000, tzinfo=UTC)
    assert parse_time(format_time(stamp)) == stamp
    assert format_time(T0) == "2026-11-10T12:00:00Z"
    assert parse_time("not a time") is None


def test_pod_record_keeps_gpus_per_resource():
    obj = pod()
    obj["spec"]["containers"] = [{"resources": {"limits": {"nvidia.com/gpu": "2", "amd.com/gpu": "1"}}}]
    record = pod_record(obj, gpu_resources=["nvidia.com/gpu", "amd.com/gpu"])
    assert record.gpus == 3
    assert record.gpus_of(["amd.com/gpu"]) == 1
    assert record.gpus_of(None) == 3


# -- folding: what the ledger persists grows with teams and days, not with pods ------------------


def by_team(pod: PodRecord) -> str:
    return group_key(pod.labels)


def test_an_ended_pod_is_folded_once_into_base_and_its_days():
    pods = [rec("a", gpus=2, started=-60 * 13, finished=60), rec("b", started=0)]  # "a": 23:00 day before
    first = meter(ledger(), pods, now=at(90), cell_of=by_team)
    assert first.folded == {"a"} and set(first.entries) == {"b"}
    assert first.cells == {"nlp/": {"2026-11-09": (2.0, 0.0), "2026-11-10": (26.0, 0.0)}}
    again = meter(first, pods, now=at(120), cell_of=by_team)  # still visible: not counted twice
    assert again.base_gpu_hours == pytest.approx(28.0) and again.cells == first.cells
    assert again.used_gpu_hours == pytest.approx(28.0 + 2.0)


def test_a_folded_pod_is_forgotten_once_gone_from_the_cluster():
    done = rec("a", finished=30)
    folded = meter(ledger(), [done], now=at(60))
    assert folded.folded == {"a"}
    still_there = meter(folded, [], now=at(70), present={"a"})  # relabelled out, still in the cluster
    assert still_there.folded == {"a"} and still_there.used_gpu_hours == pytest.approx(0.5)
    back = meter(still_there, [done], now=at(80))  # relabelled back: not charged twice
    assert back.used_gpu_hours == pytest.approx(0.5)
    assert meter(folded, [], now=at(70), present=set()).folded == frozenset()  # deleted


def test_cells_go_to_the_covering_budget_only():
    pods = [rec("a", finished=60)]
    other = meter(ledger(), pods, now=at(90), cell_of=lambda pod: None)
    assert other.used_gpu_hours == pytest.approx(1.0) and other.cells == {}


def test_persisted_size_does_not_grow_with_deleted_pods():
    def size(n: int) -> int:
        pods = [rec(f"p{i}", started=i % 600, finished=i % 600 + 5) for i in range(n)]
        folded = meter(ledger(), pods, now=at(700), cell_of=by_team)
        return len(json.dumps(meter(folded, [], now=at(710), present=set(), cell_of=by_team).to_json()))
    assert size(10) == size(5000)


def test_roll_over_puts_running_pods_share_of_the_closing_period_in_cells():
    running = rec("a", gpus=2, started=60 * 24 * 20 + 60 * 10)  # Nov 30 22:00
    november = meter(ledger(), [running], now=MONTH[1], cell_of=by_team)
    december = (MONTH[1], datetime(2027, 1, 1, tzinfo=UTC))
    rolled = roll_over(november, period=december, pods=[running], cell_of=by_team)
    assert rolled.cells == {"nlp/": {"2026-11-30": (4.0, 0.0)}}
    ended = replace(running, finished=MONTH[1] + timedelta(hours=3))
    later = meter(rolled, [ended], now=MONTH[1] + timedelta(hours=5), cell_of=by_team)
    assert later.used_gpu_hours == pytest.approx(6.0)  # December's share only
    assert later.cells["nlp/"]["2026-12-01"] == pytest.approx((6.0, 0.0))


def test_a_pod_that_ends_after_the_period_is_not_folded_into_the_closing_one():
    crossing = rec("a", started=60 * 24 * 20 + 60 * 11, finished=60 * 24 * 20 + 60 * 13)  # 23:00 -> 01:00
    closing = meter(ledger(), [crossing], now=MONTH[1] + timedelta(hours=2))
    assert closing.entries == {"a": Entry(1.0, 0.0)} and not closing.folded


def test_cells_keep_the_current_and_previous_month():
    old = ledger(cells={"nlp/": {"2026-09-30": (1.0, 0.0), "2026-10-01": (2.0, 0.0)}})
    assert meter(old, [], now=at(0)).cells == {"nlp/": {"2026-10-01": (2.0, 0.0)}}


def test_a_ledger_written_before_folding_is_read_with_its_closed_rows_folded():
    old = {"budgetUID": "b", "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
           "base": [1.0, 2.0], "entries": {"a": [0.5, 1.0, 1], "b": [0.25, 0.5, 0]}}
    restored = Ledger.from_json(old)
    assert restored.folded == {"a"} and restored.entries == {"b": Entry(0.25, 0.5)}
    assert restored.used_gpu_hours == pytest.approx(1.75) and restored.cost == pytest.approx(3.5)


def test_days_of_splits_at_utc_midnight():
    assert list(days_of(at(-60 * 13), at(60))) == [("2026-11-09", 3600.0), ("2026-11-10", 13 * 3600.0)]
