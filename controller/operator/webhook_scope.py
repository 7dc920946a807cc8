"""Keep the mutating webhook's matchCondition in step with the policy set.

The API server calls `/mutate` only when the engine's `mutation_condition(policies)` holds
(`controller.engine.mutation_scope`), so a pod that mutation would leave as it is costs one webhook
round trip at admission instead of two. The condition follows the policies: the active replica
recomputes it when a FinOpsPolicy changes and on every lifecycle tick (which also repairs a
`helm upgrade` or a hand edit that dropped it), and writes it only when it differs. Other
matchConditions on the webhook are left as they are. With `skip_settled_pods` off, ours is
removed instead, and every object goes to `/mutate`.

Syncs run one at a time on a thread of their own, so a long audit never delays one, and a burst
of policy events costs one more sync, not one each. Policies being deleted still count until
they are gone: the webhook keeps judging with them until then.

Two things the condition cannot know, both in the README's troubleshooting: while it lags behind
a new policy (well under a second), a pod lacking a label that policy has just started to default
is judged without the default; and a pod skipped in the first round is not sent again when a
later mutating webhook (Kyverno, Gatekeeper) turns it into an experiment. Both end in a denial
that says what to add, never in a wrong admission.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from controller import constants
from controller.engine.models import FinOpsPolicy
from controller.engine.mutation_scope import CONDITION_NAME, mutation_condition
from controller.k8s.workloads import JSON_PATCH, ApiError, ApiResource, Workloads

log = logging.getLogger(__name__)

MUTATING_CONFIGURATIONS = ApiResource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
    namespaced=False,
)
PATCH_ATTEMPTS = 3


def wanted_conditions(current: Iterable[dict[str, Any]], expression: str | None) -> list[dict[str, Any]]:
    """`current` with ours replaced (or added last, or removed when `expression` is None), everyone
    else's kept in place (pure)."""
    ours = {"name": CONDITION_NAME, "expression": expression}
    kept = [dict(c) if c.get("name") != CONDITION_NAME else ours for c in current]
    if expression is None:
        return [c for c in kept if c is not ours]
    return kept if ours in kept else [*kept, ours]


class WebhookScope:
    """Writes the condition on the named MutatingWebhookConfiguration."""

    def __init__(
        self,
        workloads: Workloads,
        configuration: str,
        policies: Callable[[], list[FinOpsPolicy]],
        *,
        skip_settled_pods: bool = True,
        queueing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.workloads = workloads
        self.configuration = configuration
        self.policies = policies
        self.queueing = queueing
        """Whether some GPUBudget queues (then every pod is sent to /mutate, to be gated)."""
        self.skip_settled_pods = skip_settled_pods
        self._executor = ThreadPoolExecutor(1, "webhook-scope")
        self._dirty = False
        self._draining: asyncio.Future[None] | None = None
        self._unsupported = False
        self._absent_logged = False

    # -- scheduling (event loop) -------------------------------------------------------------------

    def sync_soon(self) -> None:
        """Ask for a sync; requests made while one runs are served by one more, not one each."""
        self._dirty = True
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain())

    async def settle(self) -> None:
        """Wait for the syncs asked for so far (tests; a clean stop)."""
        if self._draining is not None:
            await self._draining

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            self._dirty = False
            try:
                await loop.run_in_executor(self._executor, self.sync)
            except ApiError as exc:
                log.warning("mutating webhook condition not updated, retried next tick: %s", exc)
            except Exception:
                log.exception("mutating webhook condition sync crashed, retried next tick")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the sync (its own thread) -----------------------------------------------------------------

    def sync(self) -> bool:
        """Bring the condition up to date; True when it was written."""
        if self._unsupported:
            return False
        for _ in range(PATCH_ATTEMPTS):
            config = self.workloads.get(MUTATING_CONFIGURATIONS, None, self.configuration)
            index = _our_webhook(config)
            if config is None or index is None:
                if not self._absent_logged:
                    log.warning(
                        "MutatingWebhookConfiguration %s (webhook %s) not found: /mutate is called for "
                        "every object until it exists",
                        self.configuration,
                        constants.MUTATING_WEBHOOK,
                    )
                    self._absent_logged = True
                return False
            self._absent_logged = False
            policies = self.policies()
            expression = (
                mutation_condition(policies, queueing=self.queueing()) if self.skip_settled_pods else None
            )
            current = config["webhooks"][index].get("matchConditions") or []
            wanted = wanted_conditions(current, expression)
            if current == wanted:
                return False
            # `test`s make a concurrent edit (helm upgrade, a hand edit) fail the patch instead of
            # being overwritten: then we read the new version and patch that.
            version = config["metadata"]["resourceVersion"]
            patch = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                {"op": "test", "path": f"/webhooks/{index}/name", "value": constants.MUTATING_WEBHOOK},
                {"op": "add", "path": f"/webhooks/{index}/matchConditions", "value": wanted},
            ]
            try:
                stored = self.workloads.patch(
                    MUTATING_CONFIGURATIONS, None, self.configuration, patch, content_type=JSON_PATCH
                )
            except ApiError as exc:
                if exc.status not in (409, 422):
                    raise
                log.info("%s changed while we patched it; retrying", self.configuration)
                continue
            kept = stored["webhooks"][index].get("matchConditions") or []
            if expression is not None and kept != wanted:
                # Kubernetes before 1.28 drops the field (alpha gate AdmissionWebhookMatchConditions).
                self._unsupported = True
                log.warning("the API server does not keep matchConditions (Kubernetes < 1.28?): /mutate "
                            "stays called for every object")
                return False
            log.info("mutating webhook condition %s (%d policies)",
                     "updated" if expression is not None else "removed", len(policies))
            if expression is not None and any(c.get("name") == CONDITION_NAME for c in current):
                # What Helm rendered (or last applied) is not what these policies need: say what to
                # set, so the next `helm upgrade` or GitOps sync applies it instead of undoing it.
                log.warning("the policies need a different %s than the one applied with the chart; to keep "
                            "Helm and GitOps in step, set webhook.mutating.matchCondition to: %s",
                            CONDITION_NAME, json.dumps(expression))
            return True
        raise ApiError(409, f"{self.configuration} kept changing; not patched in {PATCH_ATTEMPTS} attempts")


def _our_webhook(config: dict[str, Any] | None) -> int | None:
    for index, webhook in enumerate((config or {}).get("webhooks") or ()):
        if webhook.get("name") == constants.MUTATING_WEBHOOK:
            return index
    return None


@kopf.on.event(constants.GROUP, constants.VERSION, constants.BUDGET_PLURAL)
@kopf.on.event(constants.GROUP, constants.VERSION, constants.POLICY_PLURAL)
async def policy_changed(memo: Any, **_: Any) -> None:
    """Any change to a policy may change what mutation can do: sync soon."""
    lifecycle = getattr(memo, "lifecycle", None)
    if lifecycle is not None and lifecycle.webhook_scope is not None:
        lifecycle.webhook_scope.sync_soon()
