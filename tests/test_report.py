"""`comptroller report`: the showback built from budget objects and pod records, and its renderings."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from controller import constants
from controller.metering.usage import PodRecord
from controller.report import CSV_FIELDS, build_report, render_csv, render_table

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def budget(name: str, team: str, *, used: float, limit: float = 100, exhausted: bool = False,
           reached: str | None = None, prices: dict | None = None) -> dict:
    conditions = [{"type": "Exhausted", "status": "True" if exhausted else "False"},
                  {"type": "ThresholdReached", "status": "True" if reached else "False",
                   "reason": reached or "BelowThresholds"}]
    return {
        "apiVersion": constants.API_VERSION, "kind": "GPUBudget",
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": limit, "period": "Monthly",
                 "pricePerGPUHour": prices or {"default": 2.0}},
        "status": {"usedGPUHours": used, "runningGPUs": 4, "estimatedCost": used * 2,
                   "period": {"start": "2026-11-01T00:00:00Z"}, "conditions": conditions},
    }


def pod(name: str, team: str | None, gpus: int, hours: float, *, cc: str = "cc-100", running: bool = True,
        workload: str = "", itype: str = "") -> PodRecord:
    labels = {"cost_center": cc, **({"team": team} if team else {})}
    return PodRecord(uid=name, namespace=f"ml-{team}", name=name, labels=labels, gpus=gpus,
                     started=NOW - timedelta(hours=hours), finished=None if running else NOW,
                     workload=workload or f"Pod/{name}", instance_type=itype)


BUDGETS = [
    budget("team-nlp", "nlp", used=80, reached="80"),
    budget("team-cv", "cv", used=120, exhausted=True, prices={"default": 1.0, "p4d": 4.0}),
]
PODS = [
    pod("bert-0", "nlp", 4, 10, workload="Job/bert"),
    pod("bert-1", "nlp", 4, 10, workload="Job/bert"),
    pod("serve", "nlp", 1, 2, cc="cc-200", workload="Deployment/serve"),
    pod("yolo", "cv", 8, 1, running=False, itype="p4d"),
    pod("stray", None, 2, 1),
    pod("old", "cv", 8, 24 * 20, running=False),  # started in October, ended now
]


def report(**kwargs):
    return build_report(BUDGETS, PODS, now=NOW, **kwargs)


def test_budgets_come_from_status_with_a_state():
    rows = {b["name"]: b for b in report()["budgets"]}
    assert rows["team-nlp"]["state"] == "Reached 80%"
    assert rows["team-nlp"]["usedPercent"] == 80.0
    assert rows["team-cv"]["state"] == "Exhausted"
    assert rows["team-cv"]["remainingGPUHours"] == 0.0


def test_teams_sum_gpu_hours_and_price_with_their_budget():
    teams = {t["name"]: t for t in report()["teams"]}
    assert teams["nlp"]["gpuHours"] == pytest.approx(4 * 10 * 2 + 2)
    assert teams["nlp"]["estimatedCost"] == pytest.approx(82 * 2.0)
    assert teams["nlp"]["runningGPUs"] == 9
    assert teams["nlp"]["budgets"] == [{"name": "team-nlp", "usedPercent": 80.0, "state": "Reached 80%"}]
    # "old" ran since October: only November's part counts (9.5 days)
    assert teams["cv"]["gpuHours"] == pytest.approx(8 * 1 + 8 * (9 * 24 + 12))
    assert teams["cv"]["estimatedCost"] == pytest.approx(8 * 4.0 + 8 * (9 * 24 + 12) * 1.0)
    assert teams["(none)"]["estimatedCost"] == 0  # no budget covers it: no price
    assert [t["name"] for t in report()["teams"]][0] == "cv"  # biggest first


def test_cost_centers_and_top_workloads():
    data = report(top=2)
    centers = {c["name"]: c for c in data["costCenters"]}
    assert centers["cc-200"]["gpuHours"] == pytest.approx(2.0)
    assert centers["cc-100"]["teams"] == ["(none)", "cv", "nlp"]
    top = data["topWorkloads"]
    assert len(top) == 2
    assert (top[1]["namespace"], top[1]["workload"], top[1]["pods"]) == ("ml-nlp", "Job/bert", 2)


def test_period_choice_changes_the_window():
    daily = {t["name"]: t for t in report(period="Daily")["teams"]}
    assert daily["cv"]["gpuHours"] == pytest.approx(8 * 1 + 8 * 12)
    assert report(period="Daily")["period"]["start"] == "2026-11-10T00:00:00Z"


def test_table_names_every_section_and_shows_budget_state():
    text = render_table(report())
    for heading in ("BUDGETS", "BY TEAM", "BY COST CENTER", "TOP 5 WORKLOADS"):
        assert heading in text
    line = next(line for line in text.splitlines() if line.startswith("team-cv"))
    assert "Exhausted" in line and "120.00" in line


def test_json_is_serializable_and_csv_has_one_row_per_item():
    data = report()
    assert json.loads(json.dumps(data))["totals"]["runningGPUs"] == 11
    rows = list(csv.DictReader(io.StringIO(render_csv(data))))
    scopes = [r["scope"] for r in rows]
    assert (scopes.count("budget"), scopes.count("team"), scopes.count("workload")) == (2, 3, 5)
    budget_row = next(r for r in rows if r["name"] == "team-cv")
    assert (budget_row["state"], budget_row["budget_used_percent"]) == ("Exhausted", "120.0")


def test_empty_cluster_renders():
    empty = build_report([], [], now=NOW)
    assert "(no GPUBudgets)" in render_table(empty)
    assert render_csv(empty).strip() == ",".join(CSV_FIELDS)
