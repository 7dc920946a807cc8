"""The admission webhook's HTTP surface: AdmissionReview in, the engine's verdict out.

`/mutate` returns the engine's JSON Patch and never denies; `/validate` judges the already
mutated object and denies with every violation in one message. Both answer every request with an
AdmissionReview or an explicit HTTP error: a malformed request gets 400, an oversized one 413, and
an internal error is answered per the configured failure mode, never with a 500.

The app is FastAPI; the three admission paths are answered by a pure ASGI layer in front of its
router (`AdmissionEndpoints`), because they sit on the API server's critical path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.webhook.metrics import CONTENT_TYPE, WebhookMetrics
from controller.webhook.review import AdmissionRequest, MalformedReview, parse_review, response_body
from controller.webhook.settings import WebhookSettings

log = logging.getLogger(__name__)

JSON = "application/json"
FAILURE_WARNING = "comptroller: internal error, admitted by failure mode"
_SKIPPED_OPERATIONS = frozenset({"DELETE", "CONNECT"})
_JSON_HEADERS = [(b"content-type", JSON.encode())]

Reply = tuple[int, bytes]
"""An admission endpoint's answer: HTTP status and JSON body."""


class PolicyView(Protocol):
    """What the app needs of the policy view: a consistent snapshot, and whether it is synced."""

    def snapshot(self) -> Any: ...

    def ready(self) -> bool: ...


class NotReady(RuntimeError):
    """The policy view has not completed its first sync: answered per the failure mode."""


class BodyTooLarge(Exception):
    pass


def create_app(
    *,
    view: PolicyView,
    settings: WebhookSettings,
    evaluate: Callable[..., Any] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """Build the webhook app. `evaluate` defaults to the engine's; tests inject a failing one."""
    from controller.engine import evaluate as engine_evaluate
    from controller.engine.messages import render_denial, render_warning

    evaluate = evaluate or engine_evaluate
    clock = clock or partial(datetime.now, UTC)
    metrics = WebhookMetrics()
    excluded = settings.excluded_namespaces

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
    app.state.settings = settings

    def passes_untouched(request: AdmissionRequest) -> bool:
        if request.operation in _SKIPPED_OPERATIONS or request.object is None:
            return True
        if request.namespace in excluded:
            return True
        # An object on its way out (finalizers being removed) must never be blocked from leaving.
        metadata = request.object.get("metadata")
        return isinstance(metadata, dict) and bool(metadata.get("deletionTimestamp"))

    def judge(request: AdmissionRequest, *, mutate: bool, manifest: dict | None = None) -> Any:
        if not view.ready():
            raise NotReady("policy view not synced with the API server yet")
        return evaluate(
            request.object if manifest is None else manifest,
            snapshot=view.snapshot(),
            now=clock(),
            mutate=mutate,
            operation=request.operation,
            namespace=request.namespace or None,
        )

    def validate_review(request: AdmissionRequest) -> tuple[bytes, str]:
        if passes_untouched(request):
            return response_body(request.uid, allowed=True), "skipped"
        decision = judge(request, mutate=False)
        if decision.allowed and not decision.warnings and not decision.audit:
            return response_body(request.uid, allowed=True), "allowed"  # the common case
        if not decision.allowed and request.operation == "UPDATE" and request.old_object:
            decision = grandfather(decision, judge(request, mutate=False, manifest=request.old_object))
        metrics.count_violations(decision.all_violations, team=decision.team)
        warnings = [line for v in decision.warnings for line in _header_safe(render_warning(v))]
        if not decision.allowed:
            body = response_body(
                request.uid, allowed=False, message=render_denial(decision), warnings=warnings
            )
            return body, "denied"
        label = "warned" if decision.warnings else "audited" if decision.audit else "allowed"
        return response_body(request.uid, allowed=True, warnings=warnings), label

    def mutate_review(request: AdmissionRequest) -> tuple[bytes, str]:
        if passes_untouched(request) or _owned_controller(request):
            return response_body(request.uid, allowed=True), "skipped"
        decision = judge(request, mutate=True)
        patch = decision.patch
        return response_body(request.uid, allowed=True, patch=patch), "mutated" if patch else "unchanged"

    def failure_review(request: AdmissionRequest, error: Exception) -> bytes:
        if settings.failure_mode == "deny":
            return response_body(
                request.uid, allowed=False, code=500, message=f"comptroller: internal error: {error}"
            )
        return response_body(request.uid, allowed=True, warnings=[FAILURE_WARNING])

    def answer(body: bytes, webhook: str, review: Callable[[AdmissionRequest], tuple[bytes, str]]) -> Reply:
        started = time.perf_counter()
        try:
            admission = parse_review(body)
        except MalformedReview as error:
            return _error(400, str(error))
        try:
            content, decision = review(admission)
        except Exception as error:  # the catch-all: an admission answer, never a 500
            if isinstance(error, NotReady):
                log.warning("%s %s: %s", webhook, admission.uid, error)
            else:
                log.exception("internal error judging %s %s", admission.kind, admission.uid)
            content, decision = failure_review(admission, error), "error"
        metrics.admissions.count(
            admission.operation, admission.kind, decision, webhook, time.perf_counter() - started
        )
        return 200, content

    def noop(body: bytes) -> Reply:
        """The benchmark's ceiling: the same server, TLS and body read, a constant allowed review."""
        try:
            uid = orjson.loads(body)["request"]["uid"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            uid = None
        if not isinstance(uid, str):
            return _error(400, "malformed AdmissionReview")
        return 200, response_body(uid, allowed=True)

    app.add_middleware(
        AdmissionEndpoints,
        handlers={
            "/validate": partial(answer, webhook="validate", review=validate_review),
            "/mutate": partial(answer, webhook="mutate", review=mutate_review),
            "/noop": noop,
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
    """Pure ASGI middleware answering `POST /validate`, `/mutate` and `/noop` ahead of FastAPI.

    These are called by the API server on every pod create, most often on a process that has been
    idle since the last one, so every line they run is run with cold caches: FastAPI's routing,
    dependency solving and Request/Response objects cost 0.1 ms warm and about 1 ms cold, as much
    as parsing and judging the review. Each handler takes the body and returns (status, JSON);
    health, readiness and metrics stay ordinary FastAPI routes.
    """

    def __init__(
        self, app: ASGIApp, *, handlers: dict[str, Callable[[bytes], Reply]], max_body_bytes: int
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
            status, content = _error(405, "admission reviews are POSTed")
            headers = [*headers, (b"allow", b"POST")]
        else:
            try:
                body = await _read_body(scope, receive, limit=self.max_body_bytes)
            except BodyTooLarge:
                status, content = _error(413, f"request body larger than {self.max_body_bytes} bytes")
            except ClientGone:
                return
            else:
                status, content = handler(body)
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


def _error(status: int, message: str) -> Reply:
    return status, json.dumps({"message": message}).encode()


def grandfather(decision: Any, old: Any) -> Any:
    """On UPDATE, deny only what the update introduces; what the old object already violated is
    warned about, so a workload admitted before a policy existed can still be updated (as Kyverno
    does for pre-existing violations)."""
    preexisting = {(v.policy, v.rule, v.key) for v in old.violations}
    carried = [v for v in decision.violations if (v.policy, v.rule, v.key) in preexisting]
    if not carried:
        return decision
    introduced = [v for v in decision.violations if (v.policy, v.rule, v.key) not in preexisting]
    return dataclasses.replace(
        decision, allowed=not introduced, violations=introduced, warnings=[*decision.warnings, *carried]
    )


def _owned_controller(request: AdmissionRequest) -> bool:
    """A controller object made by another controller (a Deployment's ReplicaSet, a JobSet's Job).

    Its parent was mutated already; patching the child's template would make the parent see a
    template that differs from its own and roll out a new child, again and again. Pods are still
    mutated: nothing compares a pod with its template.
    """
    if request.kind == "Pod":
        return False
    owners = (request.object.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(o, dict) and o.get("controller") for o in owners)


def _header_safe(text: str) -> list[str]:
    """Admission warnings travel as HTTP Warning headers: one line each, no control characters (a
    user's annotation value quoted in a warning is shown escaped, `\\x1b`, never sent raw)."""
    return [
        "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line.strip())
        for line in text.splitlines()
        if line.strip()
    ]
