from datetime import timedelta

import pytest
from engine_cases import NOW, budget, deployment, pod, snapshot

from controller.engine import evaluate
from controller.engine.budgets import current_usage, period_bounds
from controller.engine.expiry import format_annotation
from controller.engine.rules.budget import format_gpu_hours

NLP = {"team": "nlp"}
END = "2026-12-01T00:00:00Z"  # NOW is 2026-11-22T12:00Z: 204 hours left in the month


def nlp_budget(**kw):
    spec = {"selector": {"matchLabels": NLP}, "gpuHours": 500, "period": "Monthly", **kw.pop("spec", {})}
    return budget("team-nlp", period_end=END, **kw, **spec)


def judge(manifest, *budgets, operation="CREATE", old=None):
    return evaluate(manifest, snapshot=snapshot(*budgets), now=NOW, operation=operation, old_object=old)


def expiring(hours):
    return {"expires_at": format_annotation(NOW + timedelta(hours=hours))}


@pytest.mark.parametrize(
    ("manifest", "used", "mode", "allowed"),
    [
        (pod(NLP, gpus=1), 499.9, "Exhausted", True),
        (pod(NLP, gpus=1), 500, "Exhausted", False),
        (pod(NLP, gpus=1), 600, "Exhausted", False),
        (pod(NLP, gpus=0), 600, "Exhausted", True),  # CPU-only: never
        (pod({"team": "vision"}, gpus=1), 600, "Exhausted", True),  # another team's budget
        # Projected: GPUs x replicas x hours until expires_at
        (pod(NLP, gpus=1, annotations=expiring(10)), 490, "Projected", True),  # 10 <= 10
        (pod(NLP, gpus=1, annotations=expiring(11)), 490, "Projected", False),
        (deployment(NLP, gpus=2, replicas=3, annotations=expiring(10)), 440, "Projected", True),  # 60 <= 60
        (deployment(NLP, gpus=2, replicas=3, annotations=expiring(10)), 441, "Projected", False),
        # no expires_at: until the period ends (204 h)
        (pod(NLP, gpus=1), 296, "Projected", True),
        (pod(NLP, gpus=1), 297, "Projected", False),
        # an expires_at past the period end only draws until the period end
        (pod(NLP, gpus=1, annotations=expiring(1000)), 296, "Projected", True),
    ],
)
def test_budget_admission(manifest, used, mode, allowed):
    decision = judge(manifest, nlp_budget(used=used, spec={"admission": mode}))
    assert decision.allowed is allowed
    assert all(v.rule == "budget" and v.policy == "team-nlp" for v in decision.violations)


def test_projected_message_says_what_remains_and_what_fits():
    decision = judge(
        deployment(NLP, gpus=4, replicas=2, annotations=expiring(12)),
        nlp_budget(used=480, spec={"admission": "Projected"}),
    )
    (violation,) = decision.violations
    assert "worst case 8 GPUs x 12.0h = 96.0 GPU-hours" in violation.message
    assert "20.0 GPU-hours left in budget team-nlp" in violation.message
    assert "8 GPUs fit until 2026-11-22T14:30:00Z (2h30m)" in violation.message
    assert "1 GPU fits for the requested 12h" in violation.message
    assert 'expires_at: "2026-11-22T14:30:00Z"' in violation.fix


def test_exhausted_message_says_when_it_resets():
    (violation,) = judge(pod(NLP, gpus=1), nlp_budget(used=500)).violations
    assert "exhausted: 500 of 500 GPU-hours" in violation.message and END in violation.message


@pytest.mark.parametrize(
    ("enforcement", "bucket"), [("Enforce", "violations"), ("Warn", "warnings"), ("Audit", "audit")]
)
def test_budget_enforcement(enforcement, bucket):
    decision = judge(pod(NLP, gpus=1), nlp_budget(used=500, spec={"enforcement": enforcement}))
    assert len(getattr(decision, bucket)) == 1
    assert decision.allowed is (enforcement != "Enforce")


def test_stale_usage_from_a_closed_period_does_not_count():
    stale = budget(
        "b", used=500, period_end="2026-11-01T00:00:00Z", selector={"matchLabels": NLP}, gpuHours=500
    )
    assert current_usage(stale, NOW)[0] == 0.0
    assert judge(pod(NLP, gpus=1), stale).allowed


@pytest.mark.parametrize(
    ("old_gpus", "new_gpus", "allowed"),
    [(2, 2, True), (2, 1, True), (2, 3, False), (None, 2, False)],
)
def test_updates_judge_only_more_gpus(old_gpus, new_gpus, allowed):
    old = None if old_gpus is None else pod(NLP, gpus=old_gpus)
    decision = judge(pod(NLP, gpus=new_gpus), nlp_budget(used=500), operation="UPDATE", old=old)
    assert decision.allowed is allowed


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("Daily", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z"),
        ("Weekly", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),  # ISO weeks start on Monday
        ("Monthly", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ],
)
def test_period_bounds(period, start, end):
    bounds = period_bounds(period, NOW)
    assert tuple(format_annotation(b) for b in bounds) == (start, end)


def test_period_bounds_roll_over_the_year():
    december = NOW.replace(month=12, day=31, hour=23)
    assert format_annotation(period_bounds("Monthly", december)[1]) == "2027-01-01T00:00:00Z"
    assert format_annotation(period_bounds("Daily", december)[1]) == "2027-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0.0"), (0.02, "0.02"), (0.0163, "0.016"), (0.5, "0.5"), (1, "1.0"), (12.46, "12.5"),
     (99.9, "99.9"), (480, "480"), (12345.6, "12,346")],
)
def test_gpu_hours_stay_readable_at_every_scale(value, text):
    assert format_gpu_hours(value) == text
