"""Keep the mutating webhook's matchCondition in step with the policy set.

The API server calls `/mutate` only when the engine's `mutation_condition(policies)` holds
(`controller.engine.mutation_scope`), so a pod that mutation would leave as it is costs one webhook
round trip at admission instead of two. The condition follows the policies: the active replica
recomputes it when a FinOpsPolicy changes and on every lifecycle tick (which also repairs a
`helm upgrade` or a hand edit that dropped it), and writes it only when it differs. Other
matchConditions on the webhook are left as they are.

While the condition lags behind a new policy (well under a second when the operator runs), a pod
lacking a label that policy has just started to default is judged without the default, so
validation asks for it. A configuration without the condition sends every pod, so an install
without the operator is only slower, never wrong.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import kopf

from controller import constants
from controller.engine.models import FinOpsPolicy
from controller.engine.mutation_scope import CONDITION_NAME, mutation_condition
from controller.k8s.workloads import JSON_PATCH, ApiResource, Workloads

log = logging.getLogger(__name__)

MUTATING_CONFIGURATIONS = ApiResource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
    namespaced=False,
)


def wanted_conditions(current: Iterable[dict[str, Any]], expression: str) -> list[dict[str, Any]]:
    """`current` with ours replaced (or added last), everyone else's kept in place (pure)."""
    ours = {"name": CONDITION_NAME, "expression": expression}
    kept = [dict(c) if c.get("name") != CONDITION_NAME else ours for c in current]
    return kept if ours in kept else [*kept, ours]


class WebhookScope:
    """Writes the condition on the named MutatingWebhookConfiguration. Syncs are serialized, and
    each reads the policies after the one before it wrote, so the last sync always wins with the
    newest policy set."""

    def __init__(
        self, workloads: Workloads, configuration: str, policies: Callable[[], list[FinOpsPolicy]]
    ) -> None:
        self.workloads = workloads
        self.configuration = configuration
        self.policies = policies
        self._lock = threading.Lock()
        self._missing_logged = False

    def sync(self) -> bool:
        """Bring the condition up to date; True when it was written."""
        with self._lock:
            config = self.workloads.get(MUTATING_CONFIGURATIONS, None, self.configuration)
            if config is None:
                if not self._missing_logged:
                    log.warning("MutatingWebhookConfiguration %s not found: /mutate is called for every "
                                "object until it exists", self.configuration)
                    self._missing_logged = True
                return False
            self._missing_logged = False
            policies = self.policies()
            expression = mutation_condition(policies)
            for index, webhook in enumerate(config.get("webhooks") or ()):
                if webhook.get("name") != constants.MUTATING_WEBHOOK:
                    continue
                current = webhook.get("matchConditions") or []
                wanted = wanted_conditions(current, expression)
                if current == wanted:
                    return False
                # `test` pins the index to our webhook, should the list change under us.
                patch = [
                    {"op": "test", "path": f"/webhooks/{index}/name", "value": constants.MUTATING_WEBHOOK},
                    {"op": "add", "path": f"/webhooks/{index}/matchConditions", "value": wanted},
                ]
                self.workloads.patch(
                    MUTATING_CONFIGURATIONS, None, self.configuration, patch, content_type=JSON_PATCH
                )
                log.info("mutating webhook condition updated for %d policies", len(policies))
                return True
            return False


@kopf.on.event(constants.GROUP, constants.VERSION, constants.POLICY_PLURAL)
async def policy_changed(memo: Any, **_: Any) -> None:
    """Any change to a policy may change what mutation can do: sync at once."""
    lifecycle = getattr(memo, "lifecycle", None)
    if lifecycle is not None:
        await lifecycle.run_now("webhook-scope")
