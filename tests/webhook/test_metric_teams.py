"""The `team` label of the violation counters stays bounded (controller.metric_labels): a user who
puts arbitrary team values on denied objects cannot grow the webhook's series."""

from __future__ import annotations

import random
import re
import string

from webhook_fixtures import API, GOOD_LABELS, LABELS, make_client, pod, policy, review

from controller.engine.loading import snapshot_from_objects
from controller.metric_labels import MAX_UNLISTED_TEAMS, OTHER_TEAM, TeamLabels

VIOLATIONS = re.compile(r'^comptroller_admission_violations_total\{([^}]*)\} ', re.MULTILINE)
BUDGET = {
    "apiVersion": API,
    "kind": "GPUBudget",
    "metadata": {"name": "recsys"},
    "spec": {
        "selector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["recsys", "ads"]}]},
        "gpuHours": 100,
    },
}
# Any team matching the pattern passes this policy; the missing cost center denies the object.
PATTERN_TEAMS = policy("team-pattern", labels={"required": [
    {"key": "team", "pattern": "^[a-z][a-z0-9-]*$"},
    {"key": "cost_center", "pattern": "^cc-[0-9]{3}$"},
]})


def team_values(metrics: str) -> set[str]:
    return {dict(re.findall(r'(\w+)="([^"]*)"', labels))["team"] for labels in VIOLATIONS.findall(metrics)}


def random_team(rng: random.Random) -> str:
    alphabet = string.ascii_lowercase + string.digits + "-_."
    return rng.choice(string.ascii_lowercase) + "".join(rng.choices(alphabet, k=rng.randint(0, 40)))


def test_a_thousand_random_teams_on_denied_requests_make_a_bounded_number_of_series():
    client = make_client(PATTERN_TEAMS, BUDGET)
    rng = random.Random(19)
    teams: set[str] = set()
    while len(teams) < 1000:
        teams.add(random_team(rng))
    for team in sorted(teams):
        labels = {"team": team, "environment": "staging"}
        response = client.post("/validate", json=review(pod(labels=labels)))
        assert response.json()["response"]["allowed"] is False
    # Known teams (the budget's selector) always count under their own name, even after the flood.
    for team in ("recsys", "ads"):
        client.post("/validate", json=review(pod(labels={"team": team})))
    values = team_values(client.get("/metrics").text)
    assert len(teams) == 1000 > len(values)
    assert len(values) <= MAX_UNLISTED_TEAMS + len({"recsys", "ads", OTHER_TEAM})
    assert {"recsys", "ads", OTHER_TEAM} <= values


def test_teams_a_policy_refuses_are_other_and_its_allowed_values_are_themselves():
    client = make_client(policy("ml-platform", labels=LABELS))
    rng = random.Random(7)
    for _ in range(1000):
        client.post("/validate", json=review(pod(labels={**GOOD_LABELS, "team": random_team(rng),
                                                         "cost_center": "x"})))
    client.post("/validate", json=review(pod(labels={**GOOD_LABELS, "cost_center": "x"})))
    client.post("/validate", json=review(pod(labels={})))
    # Only the allowed `nlp`, `other` for every refused value, "" for no team label.
    assert team_values(client.get("/metrics").text) == {"nlp", OTHER_TEAM, ""}


def test_team_labels_learn_known_teams_from_budgets_and_policies():
    snapshot, errors = snapshot_from_objects([BUDGET, policy("ml-platform", labels=LABELS)])
    assert not errors
    teams = TeamLabels(limit=2)
    # `recsys` is known (the budget), but the policy refuses it: the policy's rule is a bound, not a
    # filter on known teams, which are few and listed by an administrator.
    assert [teams.label(t, snapshot) for t in ("recsys", "ads", "nlp", "vision", "")] == [
        "recsys", "ads", "nlp", "vision", ""]
    assert teams.label("finance", snapshot) == OTHER_TEAM  # not an allowed value


def test_unlisted_teams_are_themselves_up_to_the_limit_then_other():
    teams = TeamLabels(limit=3)
    snapshot, _ = snapshot_from_objects([PATTERN_TEAMS])
    assert [teams.label(t, snapshot) for t in ("a", "b", "a", "c", "d", "b", "Bad!")] == [
        "a", "b", "a", "c", OTHER_TEAM, "b", OTHER_TEAM]
    # Without any snapshot (no policy constrains `team`), a value must still be a label value.
    bare = TeamLabels(limit=5)
    assert bare.label("x" * 64) == OTHER_TEAM
    assert bare.label("ok") == "ok"
    assert bare.label(["not", "a", "string"]) == OTHER_TEAM  # type: ignore[arg-type]
