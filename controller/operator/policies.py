"""FinOpsPolicy status: `Ready` True when the engine compiles the policy, else False with the
engine's error (which names the field path), so `kubectl get fop` shows a broken policy at once.

The webhook leaves a policy that does not compile out of admission; this is where users see why.
Written only when it changes, so the handler does not feed itself events.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from controller import constants
from controller.engine.models import FinOpsPolicy, PolicyError
from controller.metering.usage import format_time

MAX_MESSAGE = 1024


def policy_status(obj: Mapping[str, Any], *, now: datetime) -> dict[str, Any] | None:
    """The status patch for a FinOpsPolicy, or None when its status already says it (pure)."""
    metadata = obj.get("metadata") or {}
    try:
        FinOpsPolicy.from_object(dict(obj))
    except PolicyError as error:
        # The engine prefixes `FinOpsPolicy/<name>: `; the condition is already on that object.
        detail = "; ".join(f"{path}: {message}" if path else message for path, message in error.problems)
        ready = ("False", "InvalidSpec", detail[:MAX_MESSAGE])
    else:
        ready = ("True", "Compiled", "the policy compiled and applies at admission and in the audit")
    generation = metadata.get("generation")
    status = obj.get("status") or {}
    conditions = [dict(c) for c in status.get("conditions") or ()]
    old = next((c for c in conditions if c.get("type") == "Ready"), None)
    if (
        old is not None
        and (old.get("status"), old.get("reason"), old.get("message")) == ready
        and status.get("observedGeneration") == generation
    ):
        return None
    keep_since = old is not None and old.get("status") == ready[0] and old.get("lastTransitionTime")
    condition = {
        "type": "Ready",
        "status": ready[0],
        "reason": ready[1],
        "message": ready[2],
        "lastTransitionTime": old["lastTransitionTime"] if keep_since else format_time(now),
        "observedGeneration": generation,
    }
    others = [c for c in conditions if c.get("type") != "Ready"]
    return {"observedGeneration": generation, "conditions": [condition, *others]}


@kopf.on.event(constants.GROUP, constants.VERSION, constants.POLICY_PLURAL)
def report_policy_readiness(type: str, body: Any, patch: Any, logger: Any, **_: Any) -> None:
    if type == "DELETED":
        return
    status = policy_status(body, now=datetime.now(UTC))
    if status is None:
        return
    ready = status["conditions"][0]
    if ready["status"] == "False":
        logger.error("FinOpsPolicy %s does not compile: %s", body["metadata"]["name"], ready["message"])
    patch.status.update(status)
