"""FinOpsPolicy status: Ready from the engine's compile result, written only on change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller import constants
from controller.operator.policies import policy_status

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def policy(spec: dict, *, status: dict | None = None, generation: int = 2) -> dict:
    obj = {"apiVersion": constants.API_VERSION, "kind": "FinOpsPolicy",
           "metadata": {"name": "ml", "generation": generation}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


GOOD = {"enforcement": "Enforce", "labels": {"required": [{"key": "team"}]}}
BAD = {"enforcement": "Sometimes"}


@pytest.mark.parametrize(
    ("spec", "ready", "reason", "message_part"),
    [
        (GOOD, "True", "Compiled", "compiled"),
        (BAD, "False", "InvalidSpec", "enforcement"),
    ],
)
def test_ready_condition_reflects_the_engine(spec, ready, reason, message_part):
    status = policy_status(policy(spec), now=NOW)
    condition = status["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Ready", ready, reason)
    assert message_part in condition["message"]
    assert status["observedGeneration"] == 2


def test_unchanged_status_is_not_rewritten():
    first = policy_status(policy(GOOD), now=NOW)
    assert policy_status(policy(GOOD, status=first), now=NOW) is None
    # a new generation is observed even when the verdict is the same
    again = policy_status(policy(GOOD, status=first, generation=3), now=NOW)
    assert again["observedGeneration"] == 3
    assert again["conditions"][0]["lastTransitionTime"] == first["conditions"][0]["lastTransitionTime"]


def test_other_conditions_are_kept():
    status = {"conditions": [{"type": "Audited", "status": "True"}]}
    out = policy_status(policy(GOOD, status=status), now=NOW)
    assert [c["type"] for c in out["conditions"]] == ["Ready", "Audited"]
