"""The operator's metric names (Prometheus naming: units in names, ratios 0-1, counters `_total`)
and its bounded `team` label."""

from __future__ import annotations

import uuid

from prometheus_client import generate_latest

from controller.engine.loading import snapshot_from_objects
from controller.metric_labels import OTHER_TEAM
from controller.operator import metrics

API = "finops.comptroller.dev/v1alpha1"


def exposition() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_budget_gauges_carry_their_units_and_the_threshold_as_a_ratio():
    budget = f"b-{uuid.uuid4().hex[:8]}"
    metrics.observe_budget(budget, used=12.5, limit=100, running=4, cost=31.25, threshold=80)
    text = exposition()
    for line in (
        f'comptroller_budget_used_gpu_hours{{budget="{budget}"}} 12.5',
        f'comptroller_budget_limit_gpu_hours{{budget="{budget}"}} 100.0',
        f'comptroller_budget_running_gpus{{budget="{budget}"}} 4.0',
        f'comptroller_budget_estimated_cost{{budget="{budget}"}} 31.25',
        f'comptroller_budget_threshold_reached_ratio{{budget="{budget}"}} 0.8',
    ):
        assert line in text
    metrics.forget_budget(budget)
    assert f'budget="{budget}"' not in exposition()


def test_counters_end_in_total_and_no_name_is_shared_with_the_webhook():
    names = {m.name + ("_total" if m.type == "counter" else "") for m in metrics.REGISTRY.collect()}
    assert {
        "comptroller_metering_ticks_total", "comptroller_expired_terminated_total",
        "comptroller_idle_scaled_to_zero_total", "comptroller_audit_violations_found_total",
    } <= names
    assert "comptroller_policy_violations_total" not in names
    assert "comptroller_admission_violations_total" not in names  # the webhook's


def test_audit_findings_count_refused_teams_as_other():
    policy = {
        "apiVersion": API, "kind": "FinOpsPolicy", "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}"},
        "spec": {"labels": {"required": [{"key": "team", "allowedValues": ["nlp"]}]}},
    }
    snapshot, _ = snapshot_from_objects([policy])
    metrics.AUDIT_TEAMS.learn(snapshot)
    name = policy["metadata"]["name"]
    for i in range(200):
        metrics.count_audit_finding(name, "labels", f"random-{i}")
    metrics.count_audit_finding(name, "labels", "nlp")
    teams = {
        s.labels["team"] for m in metrics.REGISTRY.collect() for s in m.samples
        if s.name == "comptroller_audit_violations_found_total" and s.labels["policy"] == name
    }
    assert teams == {"nlp", OTHER_TEAM}
