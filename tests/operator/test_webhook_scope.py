"""The operator keeps the mutating webhook's matchCondition in step with the policy set."""

from __future__ import annotations

import asyncio
import copy

import jsonpatch

from controller import constants
from controller.engine.mutation_scope import CONDITION_NAME, mutation_condition
from controller.operator.lifecycle import Lifecycle
from controller.operator.settings import OperatorConfig
from controller.operator.webhook_scope import WebhookScope, wanted_conditions
from tests.engine.engine_cases import policy

THEIRS = {"name": "not-ours", "expression": "true"}
DEFAULTING = policy("env", labels={"required": [{"key": "env", "default": "dev"}]})
EXPIRING = policy("exp", expiry={"requiredWhen": {}, "default": "24h"})


class Configurations:
    """The API server's MutatingWebhookConfigurations, as far as `get` and JSON `patch` go."""

    def __init__(self, *webhooks: dict) -> None:
        self.stored = {"comptroller": {"metadata": {"name": "comptroller"}, "webhooks": list(webhooks)}}
        self.patches: list[list[dict]] = []

    def get(self, resource, namespace, name):
        assert resource.kind == "MutatingWebhookConfiguration" and namespace is None
        return copy.deepcopy(self.stored.get(name))

    def patch(self, resource, namespace, name, body, *, content_type):
        assert content_type == "application/json-patch+json"
        self.patches.append(body)
        self.stored[name] = jsonpatch.apply_patch(self.stored[name], body)  # a failed `test` raises
        return self.stored[name]


def hooks(*extra_conditions: dict) -> list[dict]:
    validating_like = {"name": "someone-elses.example.com"}
    ours = {"name": constants.MUTATING_WEBHOOK}
    if extra_conditions:
        ours["matchConditions"] = list(extra_conditions)
    return [validating_like, ours]


def conditions(api: Configurations) -> list[dict]:
    return api.stored["comptroller"]["webhooks"][1].get("matchConditions")


def test_ours_is_replaced_in_place_and_theirs_kept():
    ours = {"name": CONDITION_NAME, "expression": "old"}
    assert wanted_conditions([THEIRS], "new") == [THEIRS, {"name": CONDITION_NAME, "expression": "new"}]
    assert wanted_conditions([ours, THEIRS], "new") == [{"name": CONDITION_NAME, "expression": "new"}, THEIRS]
    assert wanted_conditions([], "x") == [{"name": CONDITION_NAME, "expression": "x"}]


def test_sync_writes_only_when_the_policy_set_changes_what_mutation_can_do():
    api = Configurations(*hooks(THEIRS))
    current = [DEFAULTING]
    scope = WebhookScope(api, "comptroller", policies=lambda: list(current))

    assert scope.sync() is True
    ours = {"name": CONDITION_NAME, "expression": mutation_condition([DEFAULTING])}
    assert conditions(api) == [THEIRS, ours]
    # The patch names our webhook by index and pins it with a `test`.
    pin = {"op": "test", "path": "/webhooks/1/name", "value": constants.MUTATING_WEBHOOK}
    assert api.patches[0][0] == pin

    assert scope.sync() is False and len(api.patches) == 1  # nothing changed, nothing written

    current.append(EXPIRING)
    assert scope.sync() is True
    assert conditions(api)[1]["expression"] == mutation_condition([DEFAULTING, EXPIRING])
    assert conditions(api)[0] == THEIRS


def test_a_removed_condition_is_put_back():
    api = Configurations(*hooks())
    scope = WebhookScope(api, "comptroller", policies=lambda: [DEFAULTING])
    scope.sync()
    api.stored["comptroller"]["webhooks"][1].pop("matchConditions")  # a helm upgrade, a hand edit
    assert scope.sync() is True
    assert conditions(api)[0]["name"] == CONDITION_NAME


def test_a_missing_configuration_or_webhook_is_left_alone():
    assert WebhookScope(Configurations(), "absent", policies=lambda: [DEFAULTING]).sync() is False
    api = Configurations({"name": "someone-elses.example.com"})
    assert WebhookScope(api, "comptroller", policies=lambda: [DEFAULTING]).sync() is False
    assert api.patches == []


def test_the_lifecycle_syncs_on_its_tick_and_at_once_on_request():
    api = Configurations(*hooks())
    lifecycle = Lifecycle.build(OperatorConfig(webhook_configuration="comptroller"), api)
    synced = []
    lifecycle.webhook_scope.sync = lambda: synced.append("sync")  # type: ignore[method-assign]

    async def scenario() -> None:
        await lifecycle.run_now("webhook-scope")
        assert synced == ["sync"]
        lifecycle.sweep_expiry = lifecycle.sweep_idle = lifecycle.sweep_audit = lambda: None
        await lifecycle.tick()
        await lifecycle.settle()

    asyncio.run(scenario())
    assert synced == ["sync", "sync"]
    assert Lifecycle.build(OperatorConfig(), api).webhook_scope is None
