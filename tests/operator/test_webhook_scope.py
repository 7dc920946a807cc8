"""The operator keeps the mutating webhook's matchCondition in step with the policy set."""

from __future__ import annotations

import asyncio
import copy

import jsonpatch

from controller import constants
from controller.engine.mutation_scope import CONDITION_NAME, mutation_condition
from controller.k8s.workloads import ApiError
from controller.operator.lifecycle import Lifecycle
from controller.operator.settings import OperatorConfig
from controller.operator.webhook_scope import WebhookScope, wanted_conditions
from tests.engine.engine_cases import policy

THEIRS = {"name": "not-ours", "expression": "true"}
DEFAULTING = policy("env", labels={"required": [{"key": "env", "default": "dev"}]})
EXPIRING = policy("exp", expiry={"requiredWhen": {}, "default": "24h"})


class Configurations:
    """The API server's MutatingWebhookConfigurations, as far as `get` and JSON `patch` go.
    `drops_conditions`: an API server before 1.28, which silently drops matchConditions."""

    def __init__(self, *webhooks: dict, drops_conditions: bool = False) -> None:
        metadata = {"name": "comptroller", "resourceVersion": "1"}
        self.stored = {"comptroller": {"metadata": metadata, "webhooks": list(webhooks)}}
        self.patches: list[list[dict]] = []
        self.drops_conditions = drops_conditions
        self.after_get = lambda: None

    def get(self, resource, namespace, name):
        assert resource.kind == "MutatingWebhookConfiguration" and namespace is None
        found = copy.deepcopy(self.stored.get(name))
        self.after_get()
        return found

    def patch(self, resource, namespace, name, body, *, content_type):
        assert content_type == "application/json-patch+json"
        self.patches.append(body)
        try:
            stored = jsonpatch.apply_patch(self.stored[name], body)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise ApiError(422, str(exc)) from exc
        if self.drops_conditions:
            for hook in stored["webhooks"]:
                hook.pop("matchConditions", None)
        self.bump(stored)
        self.stored[name] = stored
        return copy.deepcopy(stored)

    @staticmethod
    def bump(config: dict) -> None:
        config["metadata"]["resourceVersion"] = str(int(config["metadata"]["resourceVersion"]) + 1)


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
    # The patch names our webhook by index and pins it, and the version it read, with `test`s.
    assert api.patches[0][:2] == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "test", "path": "/webhooks/1/name", "value": constants.MUTATING_WEBHOOK},
    ]

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


def test_an_edit_made_while_we_patch_is_kept():
    api = Configurations(*hooks())
    scope = WebhookScope(api, "comptroller", policies=lambda: [DEFAULTING])

    def someone_adds_a_condition():
        api.after_get = lambda: None
        api.stored["comptroller"]["webhooks"][1]["matchConditions"] = [THEIRS]
        api.bump(api.stored["comptroller"])

    api.after_get = someone_adds_a_condition
    assert scope.sync() is True
    assert len(api.patches) == 2  # the first failed its resourceVersion test
    assert conditions(api)[1] == {"name": CONDITION_NAME, "expression": mutation_condition([DEFAULTING])}
    assert conditions(api)[0] == THEIRS


def test_switched_off_ours_is_removed_and_theirs_kept():
    api = Configurations(*hooks({"name": CONDITION_NAME, "expression": "old"}, THEIRS))
    assert WebhookScope(api, "comptroller", policies=lambda: [DEFAULTING], skip_settled_pods=False).sync()
    assert conditions(api) == [THEIRS]


def test_an_api_server_that_drops_the_field_is_not_patched_forever():
    api = Configurations(*hooks(), drops_conditions=True)
    scope = WebhookScope(api, "comptroller", policies=lambda: [DEFAULTING])
    assert scope.sync() is False
    assert scope.sync() is False
    assert len(api.patches) == 1


def test_the_lifecycle_syncs_on_every_tick_and_bursts_cost_one_more_sync():
    api = Configurations(*hooks())
    lifecycle = Lifecycle.build(OperatorConfig(webhook_configuration="comptroller"), api)
    scope = lifecycle.webhook_scope
    synced = []
    scope.sync = lambda: synced.append("sync")  # type: ignore[method-assign]

    async def scenario() -> None:
        lifecycle.sweep_expiry = lifecycle.sweep_idle = lifecycle.sweep_audit = lambda: None
        await lifecycle.tick()
        await lifecycle.settle()
        await scope.settle()
        assert synced == ["sync"]
        for _ in range(10):  # ten policy events at once
            scope.sync_soon()
        await scope.settle()

    asyncio.run(scenario())
    assert 2 <= len(synced) <= 3
    assert Lifecycle.build(OperatorConfig(), api).webhook_scope is None


def test_the_condition_the_chart_renders_is_kept_for_the_default_policies(caplog):
    """The chart renders `comptroller-may-mutate` for the default policy set, so with those policies the
    operator writes nothing (no drift for Helm or GitOps); with others it rewrites it and logs the
    expression to set in `webhook.mutating.matchCondition`."""
    from pathlib import Path

    from controller.check import load_snapshot

    root = Path(__file__).resolve().parents[2]
    rendered = (root / "charts/comptroller/files/mutation-condition.cel").read_text().strip()
    snapshot, errors = load_snapshot([root / "policies/default"])
    assert not errors
    assert rendered == mutation_condition(snapshot.policies), (
        "charts/comptroller/files/mutation-condition.cel is stale: regenerate it with\n"
        "python -c \"from controller.check import load_snapshot; "
        "from controller.engine.mutation_scope import mutation_condition; "
        "print(mutation_condition(load_snapshot(['policies/default'])[0].policies))\""
        " > charts/comptroller/files/mutation-condition.cel"
    )
    api = Configurations(*hooks({"name": CONDITION_NAME, "expression": rendered}))
    assert WebhookScope(api, "comptroller", policies=lambda: list(snapshot.policies)).sync() is False
    assert api.patches == []

    with caplog.at_level("WARNING"):
        assert WebhookScope(api, "comptroller", policies=lambda: [DEFAULTING]).sync() is True
    assert "set webhook.mutating.matchCondition to:" in caplog.text
