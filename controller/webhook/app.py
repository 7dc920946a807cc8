"""The admission webhook's HTTP surface: it wires the admission reviews to their paths.

How a review becomes a response is `controller.webhook.admission`; this module builds the app
around it. The app is FastAPI; the admission paths are answered by a pure ASGI layer in front of
its router (`AdmissionEndpoints`), because they sit on the API server's critical path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.webhook.admission import (
    FAILURE_WARNING,
    Admission,
    FetchClaim,
    FetchWorkload,
    ListUnscheduled,
    NotReady,
    PolicyView,
    Reply,
    error_reply,
    header_safe,
)
from controller.webhook.metrics import CONTENT_TYPE, WebhookMetrics
from controller.webhook.settings import WebhookSettings

__all__ = ["FAILURE_WARNING", "NotReady", "PolicyView", "create_app", "header_safe"]

log = logging.getLogger(__name__)

JSON = "application/json"
_JSON_HEADERS = [(b"content-type", JSON.encode())]


class BodyTooLarge(Exception):
    pass


def create_app(
    *,
    view: PolicyView,
    settings: WebhookSettings,
    evaluate: Callable[..., Any] | None = None,
    clock: Callable[[], datetime] | None = None,
    fetch_workload: FetchWorkload | None = None,
    list_unscheduled: ListUnscheduled | None = None,
    fetch_claim: FetchClaim | None = None,
) -> FastAPI:
    """Build the webhook app. `evaluate` defaults to the engine's; tests inject a failing one.
    `fetch_workload` reads the workload a `scale` review scales, `list_unscheduled` the pods a
    `claim` review judges the claim for (None: such reviews are admitted with a warning, as when
    the webhook serves policy files without API access), and `fetch_claim` the DRA claims a
    reviewed workload names that the view does not know yet (None: they count 1 GPU each)."""
    from controller.engine import evaluate as engine_evaluate

    metrics = WebhookMetrics()
    admission = Admission(
        view=view,
        settings=settings,
        metrics=metrics,
        evaluate=evaluate or engine_evaluate,
        clock=clock or partial(datetime.now, UTC),
        fetch_workload=fetch_workload,
        list_unscheduled=list_unscheduled,
        fetch_claim=fetch_claim,
    )

    app = FastAPI(
        title="comptroller admission webhook",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Prometheus metrics are our own (/metrics). FastAPI's OpenTelemetry hooks would otherwise
        # look up the global providers, through environment variables, on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.metrics = metrics
    app.state.admission = admission  # what answers the admission paths, to look into when debugging
    app.state.settings = settings
    app.add_middleware(
        AdmissionEndpoints,
        handlers={
            "/validate": admission.validate,
            "/mutate": admission.mutate,
            "/scale": admission.scale,
            "/claim": admission.claim,
            "/noop": admission.noop,
        },
        max_body_bytes=settings.max_body_bytes,
    )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok\n", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        if view.ready():
            return Response(b"ok\n", media_type="text/plain")
        return Response(b"policy view not synced yet\n", status_code=503, media_type="text/plain")

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app


class AdmissionEndpoints:
    """Pure ASGI middleware answering the admission `POST`s (`/validate`, `/mutate`, ...) ahead of FastAPI.

    These are called by the API server on every pod create, most often on a process that has been
    idle since the last one, so every line they run is run with cold caches: FastAPI's routing,
    dependency solving and Request/Response objects cost 0.1 ms warm and about 1 ms cold, as much
    as parsing and judging the review. Each handler takes the body and returns (status, JSON);
    health, readiness and metrics stay ordinary FastAPI routes.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        handlers: dict[str, Callable[[bytes], Reply | Awaitable[Reply]]],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        headers = _JSON_HEADERS
        if scope["method"] != "POST":
            status, content = error_reply(405, "admission reviews are POSTed")
            headers = [*headers, (b"allow", b"POST")]
        else:
            try:
                body = await _read_body(scope, receive, limit=self.max_body_bytes)
            except BodyTooLarge:
                status, content = error_reply(413, f"request body larger than {self.max_body_bytes} bytes")
            except ClientGone:
                return
            else:
                # The hot paths are plain calls; what waits on the API server (`/scale`, `/claim`,
                # a review naming DRA claims the cache does not know) returns a coroutine.
                reply = handler(body)
                status, content = await reply if inspect.isawaitable(reply) else reply
        headers = [*headers, (b"content-length", b"%d" % len(content))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


async def _read_body(scope: Scope, receive: Receive, *, limit: int) -> bytes:
    """Read the body, refusing early by Content-Length and again while streaming (chunked bodies)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)

