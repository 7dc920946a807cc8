"""GPUBudget periods, status projection and threshold alerts: pure, table-driven."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from controller.constants import API_VERSION
from controller.metering.budgets import Budget, advance, period_bounds, project_status
from controller.metering.usage import Ledger, PodRecord


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("Daily", utc(2026, 11, 10, 12, 30), utc(2026, 11, 10), utc(2026, 11, 11)),
        ("Daily", utc(2026, 12, 31, 23, 59), utc(2026, 12, 31), utc(2027, 1, 1)),
        ("Weekly", utc(2026, 11, 12, 8), utc(2026, 11, 9), utc(2026, 11, 16)),  # Thursday -> Monday
        ("Weekly", utc(2026, 11, 9, 0), utc(2026, 11, 9), utc(2026, 11, 16)),  # Monday 00:00 itself
        ("Weekly", utc(2026, 12, 30), utc(2026, 12, 28), utc(2027, 1, 4)),  # across the year
        ("Monthly", utc(2026, 11, 30, 23, 59, 59), utc(2026, 11, 1), utc(2026, 12, 1)),
        ("Monthly", utc(2026, 12, 1), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("Monthly", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
    ],
)
def test_period_bounds_are_utc_calendar_periods(period, now, start, end):
    assert period_bounds(period, now) == (start, end)


def test_period_bounds_converts_other_timezones_to_utc():
    from datetime import timezone

    tokyo = timezone(timedelta(hours=9))
    # 08:00 on Dec 1 in Tokyo is still November in UTC
    assert period_bounds("Monthly", datetime(2026, 12, 1, 8, tzinfo=tokyo))[0] == utc(2026, 11, 1)


def test_unknown_period_is_an_error():
    with pytest.raises(ValueError, match="Yearly"):
        period_bounds("Yearly", utc(2026, 1, 1))


def budget(**spec) -> Budget:
    obj = {
        "metadata": {"name": "team-nlp", "uid": "b-1", "generation": 3},
        "spec": {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": 10, "period": "Monthly", **spec},
    }
    return Budget.from_object(obj)


def test_budget_from_object_defaults():
    b = budget()
    assert b.thresholds == (50, 80, 100)
    assert b.selector.matches({"team": "nlp"}) and not b.selector.matches({"team": "cv"})
    assert budget(alertThresholds=[100, 80, 80]).thresholds == (80, 100)
    assert budget(alertThresholds=[]).thresholds == ()
    with pytest.raises(ValueError, match="spec.period"):
        budget(period="Hourly")


def running(uid: str, gpus: int, since: datetime, *, until: datetime | None = None) -> PodRecord:
    return PodRecord(uid=uid, namespace="ns", name=uid, labels={"team": "nlp"}, gpus=gpus,
                     started=since, finished=until)


NOV = utc(2026, 11, 10, 12)


def test_advance_starts_a_ledger_and_meters_visible_pods_from_the_period_start():
    pods = [running("a", 2, NOV - timedelta(hours=1))]
    ledger, announce = advance(budget(), None, pods, now=NOV)
    assert (ledger.period_start, ledger.period_end) == (utc(2026, 11, 1), utc(2026, 12, 1))
    assert ledger.used_gpu_hours == pytest.approx(2.0)
    assert announce == ()  # 20 % of 10


def test_advance_announces_each_threshold_once_per_period():
    b = budget()
    pods = [running("a", 4, NOV)]
    ledger, announce = advance(b, None, pods, now=NOV + timedelta(hours=1.25))  # 5 of 10: 50 %
    assert announce == (50,)
    ledger, announce = advance(b, ledger, pods, now=NOV + timedelta(hours=1.3))
    assert announce == ()
    ledger, announce = advance(b, ledger, pods, now=NOV + timedelta(hours=3))  # 12 of 10
    assert announce == (80, 100)
    assert ledger.thresholds == (50, 80, 100)
    ledger, announce = advance(b, ledger, pods, now=NOV + timedelta(hours=4))
    assert announce == ()


def test_advance_rolls_over_and_splits_usage_at_the_boundary():
    b = budget(period="Daily")
    start = utc(2026, 11, 10, 22)
    pods = [running("a", 1, start)]
    ledger, _ = advance(b, None, pods, now=start + timedelta(hours=1))
    # the operator was down across midnight; it comes back at 03:00
    ledger, announce = advance(b, ledger, pods, now=utc(2026, 11, 11, 3))
    assert ledger.history[-1]["usedGPUHours"] == pytest.approx(2.0)  # 22:00 -> 24:00
    assert ledger.used_gpu_hours == pytest.approx(3.0)  # 00:00 -> 03:00
    assert ledger.period_start == utc(2026, 11, 11)
    assert announce == ()  # 3 of 10; the old period's thresholds do not carry over


def test_advance_restarts_for_a_namesake_budget():
    old = Ledger(budget_uid="someone-else", period_start=utc(2026, 11, 1), period_end=utc(2026, 12, 1),
                 base_gpu_hours=99.0)
    ledger, _ = advance(budget(), old, [], now=NOV)
    assert ledger.budget_uid == "b-1" and ledger.used_gpu_hours == 0


def test_advance_follows_a_period_change():
    monthly, _ = advance(budget(), None, [running("a", 1, utc(2026, 11, 10))], now=NOV)
    daily, _ = advance(budget(period="Daily"), monthly, [running("a", 1, utc(2026, 11, 10))], now=NOV)
    assert daily.period_start == utc(2026, 11, 10) and daily.period_end == utc(2026, 11, 11)
    assert daily.history[-1]["usedGPUHours"] == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("used", "exhausted", "threshold", "remaining"),
    [
        (0.0, "False", "BelowThresholds", 10.0),
        (5.0, "False", "50", 5.0),
        (9.0, "False", "80", 1.0),
        (10.0, "True", "100", 0.0),
        (12.5, "True", "100", 0.0),
    ],
)
def test_status_conditions(used, exhausted, threshold, remaining):
    ledger = Ledger(budget_uid="b-1", period_start=utc(2026, 11, 1), period_end=utc(2026, 12, 1),
                    metered_at=NOV, base_gpu_hours=used, base_cost=used * 2.5)
    status = project_status(budget(), ledger, running_gpus=3, previous=None, now=NOV)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Exhausted"]["status"] == exhausted
    assert conditions["ThresholdReached"]["reason"] == threshold
    assert status["remainingGPUHours"] == pytest.approx(remaining)
    assert status["usedGPUHours"] == pytest.approx(used)
    assert status["estimatedCost"] == pytest.approx(used * 2.5)
    assert status["runningGPUs"] == 3
    assert status["observedGeneration"] == 3
    assert status["period"] == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    assert status["lastMeteredAt"] == "2026-11-10T12:00:00Z"


def test_condition_transition_time_moves_only_when_status_flips():
    ledger = Ledger(budget_uid="b-1", period_start=utc(2026, 11, 1), period_end=utc(2026, 12, 1),
                    base_gpu_hours=1.0)
    first = project_status(budget(), ledger, running_gpus=0, previous=None, now=NOV)
    later = project_status(budget(), ledger, running_gpus=0, previous=first, now=NOV + timedelta(hours=1))
    assert later["conditions"] == first["conditions"]
    exhausted = Ledger(**{**ledger.__dict__, "base_gpu_hours": 11.0})
    flipped = project_status(budget(), exhausted, running_gpus=0, previous=later,
                             now=NOV + timedelta(hours=2))
    assert flipped["conditions"][0]["lastTransitionTime"] == "2026-11-10T14:00:00Z"


def test_a_budget_counts_only_its_resources():
    both = PodRecord(uid="a", namespace="ns", name="a", labels={"team": "nlp"}, gpus=3, started=NOV,
                     devices={"nvidia.com/gpu": 2, "amd.com/gpu": 1})
    nvidia = budget(resources=["nvidia.com/gpu"])
    ledger, _ = advance(nvidia, None, [both], now=NOV + timedelta(hours=1))
    assert ledger.used_gpu_hours == pytest.approx(2.0)
    everything, _ = advance(budget(), None, [both], now=NOV + timedelta(hours=1))
    assert everything.used_gpu_hours == pytest.approx(3.0)


def test_status_has_remaining_percent_for_the_printer_column():
    ledger = Ledger(budget_uid="b-1", period_start=utc(2026, 11, 1), period_end=utc(2026, 12, 1),
                    base_gpu_hours=2.5)
    status = project_status(budget(), ledger, running_gpus=0, previous=None, now=NOV)
    assert status["remainingPercent"] == pytest.approx(75.0)


def test_a_budget_created_while_a_pod_runs_never_takes_its_cells_over():
    """A Daily budget holds a pod's cells (its roll-overs put each day's share in them); a Monthly
    one that sorts first by name but is created while the pod runs must not take them over, or the
    pod's first days would be in both ledgers' cells (and the report would count them twice)."""
    from controller.metering.budgets import first_covering
    from controller.metering.usage import group_key

    def budget_(name: str, period: str, created: datetime) -> Budget:
        return Budget.from_object({
            "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created.isoformat()},
            "spec": {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": 1000, "period": period},
        })

    start, end = utc(2026, 11, 1, 6), utc(2026, 11, 5, 18)
    daily = budget_("b-daily", "Daily", utc(2026, 10, 1))
    monthly = budget_("a-monthly", "Monthly", utc(2026, 11, 3, 12))
    labels = {"team": "nlp", "cost_center": "cc-1"}
    ledgers: dict[str, Ledger | None] = {daily.name: None, monthly.name: None}
    now = start
    while now <= end + timedelta(hours=1):
        pod = PodRecord(uid="p", namespace="ns", name="p", labels=labels, gpus=2, started=start,
                        finished=end if now >= end else None)
        existing = [b for b in (daily, monthly) if b.created <= now]
        for b in existing:
            def cell_of(record: PodRecord, b: Budget = b, existing: list[Budget] = existing) -> str | None:
                owner = first_covering(record, existing)
                return group_key(record.labels) if owner is not None and owner.name == b.name else None

            ledgers[b.name], _ = advance(b, ledgers[b.name], [pod], now=now, cell_of=cell_of, present={"p"})
        now += timedelta(hours=1)

    cells = {name: sum(h for days in ledger.cells.values() for h, _ in days.values())
             for name, ledger in ledgers.items() if ledger is not None}
    truth = 2 * (end - start).total_seconds() / 3600
    assert cells == {daily.name: pytest.approx(truth), monthly.name: 0}
    assert first_covering(pod, [daily, monthly]) is daily
    # Both budgets were created before this pod started: the first by name holds its cells.
    later = PodRecord(uid="q", namespace="ns", name="q", labels=labels, gpus=1, started=utc(2026, 11, 4))
    assert first_covering(later, [daily, monthly]) is monthly
    # A budget without a creationTimestamp (built by hand) counts as older than every pod.
    assert first_covering(pod, [daily, Budget(**{**monthly.__dict__, "created": None})]).name == "a-monthly"


def test_a_daily_budget_down_across_days_keeps_the_running_pods_days_in_cells():
    """No operator ran from Nov 10 noon to Nov 13 noon: the Daily budget's totals for Nov 11 and 12
    are gone (nobody metered those periods), but the report's cells still hold every day the pods
    ran, the one that ended while nobody watched included."""
    from controller.metering.usage import group_key

    daily = Budget.from_object({
        "metadata": {"name": "team-nlp", "uid": "b-1"},
        "spec": {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": 1000, "period": "Daily"},
    })
    labels = {"team": "nlp", "cost_center": "cc-1"}

    def pods(end_long: datetime | None) -> list[PodRecord]:
        return [PodRecord(uid="long", namespace="ns", name="long", labels=labels, gpus=1,
                          started=utc(2026, 11, 10, 6), finished=end_long),
                PodRecord(uid="gap", namespace="ns", name="gap", labels=labels, gpus=2,
                          started=utc(2026, 11, 10, 8), finished=utc(2026, 11, 11, 12)),
                # Started while nobody metered: one still runs, one is a finished Job's pod.
                PodRecord(uid="late", namespace="ns", name="late", labels=labels, gpus=4,
                          started=utc(2026, 11, 11, 6), finished=end_long),
                PodRecord(uid="job", namespace="ns", name="job", labels=labels, gpus=8,
                          started=utc(2026, 11, 11, 18), finished=utc(2026, 11, 12, 6))]

    def cell_of(pod: PodRecord) -> str:
        return group_key(pod.labels)

    ledger, _ = advance(daily, None, pods(None), now=utc(2026, 11, 10, 12), cell_of=cell_of)
    ledger, _ = advance(daily, ledger, pods(None), now=utc(2026, 11, 13, 12), cell_of=cell_of)
    ledger, _ = advance(daily, ledger, pods(utc(2026, 11, 13, 18)), now=utc(2026, 11, 13, 19),
                        cell_of=cell_of)
    days = {day: hours for day, (hours, _) in ledger.cells["nlp/cc-1"].items()}
    assert days == {"2026-11-10": pytest.approx(18 + 2 * 16),
                    "2026-11-11": pytest.approx(24 + 2 * 12 + 4 * 18 + 8 * 6),
                    "2026-11-12": pytest.approx(24 + 4 * 24 + 8 * 6),
                    "2026-11-13": pytest.approx(18 + 4 * 18)}
    assert ledger.used_gpu_hours == pytest.approx(18 + 4 * 18)  # today's period only


def test_a_period_switched_to_a_longer_one_puts_no_day_in_cells_twice():
    """Daily to Monthly on Nov 15: the new period starts on Nov 1, but the Daily roll-overs already
    put Nov 1 to 14 of the running pod in the cells; folding it must add only what follows, and the
    report counts the running pod from there too."""
    from controller.metering.usage import group_key
    from controller.report import build_report

    def body(period: str) -> dict:
        return {"metadata": {"name": "team-nlp", "uid": "b-1"},
                "spec": {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": 1000, "period": period}}

    labels = {"team": "nlp", "cost_center": "cc-1"}

    def running(until: datetime | None = None) -> list[PodRecord]:
        return [PodRecord(uid="p", namespace="ns", name="p", labels=labels, gpus=1, started=utc(2026, 11, 1),
                          finished=until)]

    def cell_of(pod: PodRecord) -> str:
        return group_key(pod.labels)

    def cells(ledger: Ledger) -> float:
        return sum(h for days in ledger.cells.values() for h, _ in days.values())

    ledger = None
    now = utc(2026, 11, 1, 6)
    while now < utc(2026, 11, 15, 10):
        ledger, _ = advance(Budget.from_object(body("Daily")), ledger, running(), now=now, cell_of=cell_of)
        now += timedelta(hours=6)
    assert ledger is not None and cells(ledger) == pytest.approx(14 * 24)
    monthly = Budget.from_object(body("Monthly"))
    ledger, _ = advance(monthly, ledger, running(), now=utc(2026, 11, 15, 12), cell_of=cell_of)
    assert ledger.cells_start == utc(2026, 11, 15)
    assert Ledger.from_json(json.loads(json.dumps(ledger.to_json()))) == ledger
    report = build_report([{**body("Monthly"), "apiVersion": API_VERSION,
                            "kind": "GPUBudget"}], running(), now=utc(2026, 11, 15, 12),
                          ledgers={"team-nlp": ledger})
    assert report["teams"][0]["gpuHours"] == pytest.approx(14 * 24 + 12)
    ended = running(utc(2026, 11, 16))
    ledger, _ = advance(monthly, ledger, ended, now=utc(2026, 11, 16, 1), cell_of=cell_of)
    assert cells(ledger) == pytest.approx(15 * 24)
    # The budget's own total: the pods in the cluster from Nov 1 (this one ran throughout).
    assert ledger.used_gpu_hours == pytest.approx(15 * 24)


def test_a_clock_behind_the_last_commit_never_takes_the_ledger_back_a_period():
    """At a hand-over the new active replica's clock is 7 s behind, across midnight: its tick must
    not reopen the day the ledger closed, or that day would be closed (and put in cells) twice."""
    from controller.metering.usage import group_key

    daily = Budget.from_object({
        "metadata": {"name": "team-nlp", "uid": "b-1"},
        "spec": {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": 1000, "period": "Daily"},
    })
    pods = [PodRecord(uid="p", namespace="ns", name="p", labels={"team": "nlp"}, gpus=1,
                      started=utc(2026, 11, 3))]

    def cell_of(pod: PodRecord) -> str:
        return group_key(pod.labels)

    ledger, _ = advance(daily, None, pods, now=utc(2026, 11, 3, 12), cell_of=cell_of)
    ledger, _ = advance(daily, ledger, pods, now=utc(2026, 11, 4, 0, 0, 5), cell_of=cell_of)
    behind, _ = advance(daily, ledger, pods, now=utc(2026, 11, 3, 23, 59, 58), cell_of=cell_of)
    assert behind.period_start == utc(2026, 11, 4)
    assert behind.history == ledger.history and behind.cells == ledger.cells
    assert behind.used_gpu_hours == pytest.approx(ledger.used_gpu_hours)
    later, _ = advance(daily, behind, pods, now=utc(2026, 11, 4, 1), cell_of=cell_of)
    assert later.cells == {"nlp/": {"2026-11-03": (24.0, 0.0)}}
    assert later.used_gpu_hours == pytest.approx(1.0)
