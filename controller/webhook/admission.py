"""How an AdmissionReview becomes a response: the webhook's decision path.

`/mutate` returns the engine's JSON Patch and never denies; `/validate` judges the already mutated
object (and, at UPDATE, the object before it: the engine decides what the update introduces) and
denies with every violation in one message; `/scale` judges a `scale` subresource update as the
update of its workload's replica count; `/claim` judges a DRA ResourceClaim (or template) created
after the pods that name it, by what it adds to them. Every request gets an AdmissionReview or an
explicit HTTP error: a malformed one gets 400, and an internal error is answered per the
configured failure mode, never with a 500. See docs/crds.md#updates-and-scaling.

The app factory (`controller.webhook.app`) only wires these handlers to paths.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol

import orjson

from controller.webhook.metrics import WebhookMetrics
from controller.webhook.review import AdmissionRequest, MalformedReview, parse_review, response_body
from controller.webhook.settings import WebhookSettings

log = logging.getLogger(__name__)

FAILURE_WARNING = "comptroller: internal error, admitted by failure mode"
SCALE_UNREAD = "could not read the workload being scaled"
CLAIM_UNREAD = "could not list the pods waiting for this claim"
CLAIM_UNJUDGED = "could not judge the pods waiting for this claim in time"
CLAIM_BUSY = "the webhook is busy judging other claims"
CLAIM_NO_JUDGE = "could not start judging the pods waiting for this claim"
CLAIMS_UNREAD = "could not read the DRA claims this workload names"
MAX_CLAIM_JUDGES = 2
"""Claim reviews judged at once, each in its own thread of a pool of this size (a late one keeps its
thread until done): another waits JUDGE_WAIT_SECONDS at most for one to be free, then is answered by
the failure mode, never queued behind judgments that run late. A claim no pod waits for needs none."""
JUDGE_WAIT_SECONDS = 1.0
JUDGE_POLL_SECONDS = 0.01
SCALE_UNJUDGED_WARNING = f"comptroller: {SCALE_UNREAD}; admitted unjudged"
CLAIM_UNJUDGED_WARNING = f"comptroller: {CLAIM_UNREAD}; admitted unjudged"
_SKIPPED_OPERATIONS = frozenset({"DELETE", "CONNECT"})
PARENT_TIMEOUT_SECONDS = 1.5
"""How long a scale review waits for the workload it scales, and a claim review for the pods
waiting for the claim (the webhook's own timeout is 3 s)."""
REVIEW_DEADLINE_SECONDS = 2.5
"""When a claim review, judged off the event loop after its read, must have its answer: the
webhook's timeout is 3 s, and a late answer is the API server's failure policy, not ours."""


class NoApiAccess(RuntimeError):
    """The webhook serves policy files without API access: nothing can be read, by configuration
    (admitted with the warning whatever the failure mode: it is not a failure)."""

Reply = tuple[int, bytes]
"""An admission endpoint's answer: HTTP status and JSON body."""

FetchWorkload = Callable[[str, str, str, str, str], Mapping[str, Any] | None]
"""`(group, version, plural, namespace, name)` -> the object, None when it does not exist. Blocking."""

ListUnscheduled = Callable[[str], list[Mapping[str, Any]]]
"""`namespace` -> its pods not bound to a node yet (those a new claim may still decide). Blocking."""

FetchClaim = Callable[[str, str, str], Mapping[str, Any] | None]
"""`(namespace, kind, name)` -> the ResourceClaim or ResourceClaimTemplate, None when it does not
exist. Blocking."""


class PolicyView(Protocol):
    """What admission needs of the policy view: a consistent snapshot, and whether it is synced."""

    def snapshot(self) -> Any: ...

    def ready(self) -> bool: ...


class NotReady(RuntimeError):
    """The policy view has not completed its first sync: answered per the failure mode."""


class Admission:
    """The three admission reviews, their metrics and their failure mode."""

    def __init__(
        self,
        *,
        view: PolicyView,
        settings: WebhookSettings,
        metrics: WebhookMetrics,
        evaluate: Callable[..., Any],
        clock: Callable[[], datetime],
        fetch_workload: FetchWorkload | None = None,
        list_unscheduled: ListUnscheduled | None = None,
        fetch_claim: FetchClaim | None = None,
    ) -> None:
        from controller.engine.claims import (
            claim_update_judged,
            judge_claim,
            made_by_the_claim_controller,
            unresolved_claims,
            waiting_on,
            with_claims,
        )
        from controller.engine.fixing import explain
        from controller.engine.messages import render_denial, render_warning

        self.view = view
        self.settings = settings
        self.metrics = metrics
        self.evaluate = evaluate
        self.clock = clock
        self.fetch_workload = fetch_workload
        self.list_unscheduled = list_unscheduled
        self.fetch_claim = fetch_claim
        self._judge_claim = judge_claim
        self._made_by_the_claim_controller = made_by_the_claim_controller
        self._claim_update_judged = claim_update_judged
        self._waiting_on = waiting_on
        self._unresolved_claims = unresolved_claims
        self._with_claims = with_claims
        self._excluded = settings.excluded_namespaces
        self._render_denial = render_denial
        self._explain_denial = explain
        self._render_warning = render_warning
        self._judges = ThreadPoolExecutor(MAX_CLAIM_JUDGES, thread_name_prefix="comptroller-claim-judge")
        self._judging = 0  # judges taken: counted from the loop and the judges' own threads
        self._judging_lock = threading.Lock()

    # -- the endpoints -------------------------------------------------------------------------

    def validate(self, body: bytes) -> Reply | Awaitable[Reply]:
        if self.fetch_claim is not None and b'"resourceClaims"' in body:
            return self._validate_reading_claims(body)  # the rare review naming DRA claims
        return self._answer(body, "validate", self._validate)

    async def _validate_reading_claims(self, body: bytes) -> Reply:
        """`/validate` of a workload naming DRA claims: those the watch cache does not know yet (a
        claim created a moment before its pod, or a webhook just started) are read from the API
        server (off the event loop, with a deadline) before it is judged, so they count what they
        ask rather than 1 GPU each. Those that do not exist count 1 GPU, with the note (the claim
        webhook judges them when they are created); when they cannot be read, the failure mode
        decides: counted so too, or refused (`/claim` may never see this pod again)."""
        started = time.perf_counter()
        try:
            request = parse_review(body)
        except MalformedReview as error:
            return error_reply(400, str(error))
        snapshot = None
        if not self._passes_untouched(request) and self.view.ready():
            current = self.view.snapshot()
            try:
                missing = self._unresolved_claims(
                    request.object, snapshot=current, namespace=request.namespace
                )
            except Exception:  # a manifest the engine cannot read: judged (and answered) as any other
                log.exception("validate %s %s/%s: reading its claims", request.kind, request.namespace,
                              request.name)
                missing = []
            if missing:
                try:
                    found = await self._read_claims(request, missing)
                except Exception as error:  # API server away or slow: the failure mode decides
                    if self.settings.failure_mode == "deny":
                        return self._unjudged(request, "validate", started, CLAIMS_UNREAD, error)
                    log.warning("validate %s %s/%s: could not read its claims %s: %s", request.kind,
                                request.namespace, request.name, missing, error)
                    found = []  # counted as 1 GPU each, with the note
                try:
                    snapshot = self._with_claims(current, found, namespace=request.namespace)
                except Exception:  # an object read that is not a claim: counted as 1 GPU, as unread
                    log.exception("validate %s %s/%s: the claims read %s", request.kind, request.namespace,
                                  request.name, missing)
        return self._answer_parsed(request, "validate", lambda r: self._validate(r, snapshot), started)

    async def _read_claims(
        self, request: AdmissionRequest, missing: list[tuple[str, str]]
    ) -> list[Mapping[str, Any]]:
        fetch = self.fetch_claim
        assert fetch is not None

        def read() -> list[Mapping[str, Any]]:
            objects = (fetch(request.namespace, kind, name) for kind, name in missing)
            return [obj for obj in objects if obj is not None]

        return await asyncio.wait_for(asyncio.to_thread(read), PARENT_TIMEOUT_SECONDS)

    def mutate(self, body: bytes) -> Reply:
        return self._answer(body, "mutate", self._mutate)

    async def scale(self, body: bytes) -> Reply:
        """A `scale` subresource update: the workload it scales is read from the API server (off
        the event loop, with a deadline), then judged like a replica-count update of it."""
        return await self._answer_with_read(
            body,
            "scale",
            read=self._fetch_scaled,
            wanted=lambda r: not self._passes_untouched(r) and r.sub_resource == "scale",
            unread=SCALE_UNREAD,
            review=self._scale,
        )

    async def claim(self, body: bytes) -> Reply:
        """A DRA ResourceClaim or ResourceClaimTemplate created, or a ResourceClaim updated to be a
        pod's (`claim_update_judged`): the pods of its namespace not yet bound to a node are listed
        from the API server (off the event loop, with a deadline), and the engine judges what the
        claim adds to those whose devices it decides."""
        return await self._answer_with_read(
            body,
            "claim",
            read=self._waiting_for_claim,
            wanted=lambda r: not self._passes_untouched(r)
            and (r.operation == "CREATE" or self._claim_update_judged(r.old_object, r.object))
            and not self._made_by_the_claim_controller(r.object, r.username),
            unread=CLAIM_UNREAD,
            review=self._claim,
            off_loop=CLAIM_UNJUDGED,  # every pod waiting for the claim is judged: not on the loop
        )

    def noop(self, body: bytes) -> Reply:
        """The benchmark's ceiling: the same server, TLS and body read, a constant allowed review."""
        try:
            uid = orjson.loads(body)["request"]["uid"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            uid = None
        if not isinstance(uid, str):
            return error_reply(400, "malformed AdmissionReview")
        return 200, response_body(uid, allowed=True)

    # -- from body to reply --------------------------------------------------------------------

    def _answer(
        self, body: bytes, webhook: str, review: Callable[[AdmissionRequest], tuple[bytes, str]]
    ) -> Reply:
        started = time.perf_counter()
        try:
            request = parse_review(body)
        except MalformedReview as error:
            return error_reply(400, str(error))
        return self._answer_parsed(request, webhook, review, started)

    async def _answer_with_read(
        self,
        body: bytes,
        webhook: str,
        *,
        read: Callable[[AdmissionRequest], Any],
        wanted: Callable[[AdmissionRequest], bool],
        unread: str,
        review: Callable[[AdmissionRequest, Any], tuple[bytes, str]],
        off_loop: str = "",
    ) -> Reply:
        """A review that needs something read from the API server first: `read` runs off the event
        loop with a deadline when `wanted`, and `review` gets what it read (None when not wanted).
        When the read fails or is late, the failure mode answers (`unread` says what could not be
        done). With `off_loop` (what to say when it is late), `review` runs off the loop too, to be
        answered by REVIEW_DEADLINE_SECONDS."""
        started = time.perf_counter()
        try:
            request = parse_review(body)
        except MalformedReview as error:
            return error_reply(400, str(error))
        found = None
        if wanted(request):
            try:
                found = await asyncio.wait_for(asyncio.to_thread(read, request), PARENT_TIMEOUT_SECONDS)
            except Exception as error:  # API server away or slow: the failure mode decides
                return self._unjudged(request, webhook, started, unread, error)
        judge = functools.partial(self._decide, request, webhook, lambda r: review(r, found))
        if not off_loop or not found:  # nothing read, or nothing to judge: answered on the loop
            content, decision = judge()
        elif not await self._a_judge(started):
            return self._unjudged(request, webhook, started, CLAIM_BUSY, RuntimeError("all judges busy"))
        else:
            left = REVIEW_DEADLINE_SECONDS - (time.perf_counter() - started)
            # The judge is freed once: by the thread that judges, or here when none could be handed
            # the judgment (a pool shut down, or no thread to start; a queued one may still run).
            free = _Once(self._free_a_judge)
            try:
                judged = asyncio.get_running_loop().run_in_executor(self._judges, self._judged, judge, free)
            except Exception as error:
                free()
                return self._unjudged(request, webhook, started, CLAIM_NO_JUDGE, error)
            try:
                content, decision = await asyncio.wait_for(asyncio.shield(judged), max(left, 0.0))
            except TimeoutError as error:
                return self._unjudged(request, webhook, started, off_loop, error)
        self._count(request, decision, webhook, started)
        return 200, content

    async def _a_judge(self, started: float) -> bool:
        """Take a judge when one is free, or frees up within JUDGE_WAIT_SECONDS of the review's
        start (looked at every JUDGE_POLL_SECONDS: most judgments take milliseconds), leaving the
        rest of the deadline to the judgment; False when none did."""
        while True:
            with self._judging_lock:
                if self._judging < MAX_CLAIM_JUDGES:
                    self._judging += 1
                    return True
            if time.perf_counter() - started >= JUDGE_WAIT_SECONDS:
                return False
            await asyncio.sleep(JUDGE_POLL_SECONDS)

    @staticmethod
    def _judged(judge: Callable[[], tuple[bytes, str]], free: Callable[[], None]) -> tuple[bytes, str]:
        """`judge` in a judge's thread, which frees the judge when done (late or not)."""
        try:
            return judge()
        finally:
            free()

    def _free_a_judge(self) -> None:
        with self._judging_lock:
            self._judging -= 1

    def _unjudged(
        self, request: AdmissionRequest, webhook: str, started: float, what: str, error: Exception
    ) -> Reply:
        """What could not be read or judged in time: admitted with a warning (guardrails, not gates),
        or under `failureMode: deny` denied, as an internal error is. Serving policy files, with no
        API access by configuration, it is always admitted."""
        reason = str(error) or type(error).__name__
        log.warning("%s %s %s/%s: %s: %s", webhook, request.kind, request.namespace, request.name, what,
                    reason)
        self._count(request, "error", webhook, started)
        if self.settings.failure_mode == "deny" and not isinstance(error, NoApiAccess):
            message = f"comptroller: {what} ({reason}); denied by failure mode, try again"
            return 200, response_body(request.uid, allowed=False, code=500, message=message)
        warning = f"comptroller: {what}; admitted unjudged"
        return 200, response_body(request.uid, allowed=True, warnings=[warning])

    def _answer_parsed(
        self,
        request: AdmissionRequest,
        webhook: str,
        review: Callable[[AdmissionRequest], tuple[bytes, str]],
        started: float,
    ) -> Reply:
        content, decision = self._decide(request, webhook, review)
        self._count(request, decision, webhook, started)
        return 200, content

    def _decide(
        self,
        request: AdmissionRequest,
        webhook: str,
        review: Callable[[AdmissionRequest], tuple[bytes, str]],
    ) -> tuple[bytes, str]:
        """The review's answer and the decision it counts as; any error answered by the failure mode."""
        try:
            return review(request)
        except Exception as error:  # the catch-all: an admission answer, never a 500
            if isinstance(error, NotReady):
                log.warning("%s %s: %s", webhook, request.uid, error)
            else:
                log.exception("internal error judging %s %s", request.kind, request.uid)
            return self._failure(request, error), "error"

    def _count(self, request: AdmissionRequest, decision: str, webhook: str, started: float) -> None:
        self.metrics.admissions.count(
            request.operation, request.kind, decision, webhook, time.perf_counter() - started
        )

    def _failure(self, request: AdmissionRequest, error: Exception) -> bytes:
        if self.settings.failure_mode == "deny":
            return response_body(
                request.uid, allowed=False, code=500, message=f"comptroller: internal error: {error}"
            )
        return response_body(request.uid, allowed=True, warnings=[FAILURE_WARNING])

    # -- the reviews ---------------------------------------------------------------------------

    def _passes_untouched(self, request: AdmissionRequest) -> bool:
        if request.operation in _SKIPPED_OPERATIONS or request.object is None:
            return True
        if request.namespace in self._excluded:
            return True
        # An object on its way out (finalizers being removed) must never be blocked from leaving.
        metadata = request.object.get("metadata")
        return isinstance(metadata, dict) and bool(metadata.get("deletionTimestamp"))

    def _judge(
        self, request: AdmissionRequest, *, mutate: bool, explain: bool = False, snapshot: Any = None
    ) -> Any:
        if not self.view.ready():
            raise NotReady("policy view not synced with the API server yet")
        how = {
            "snapshot": snapshot if snapshot is not None else self.view.snapshot(),
            "now": self.clock(),
            "operation": request.operation,
            "namespace": request.namespace or None,
            "old_object": self._old(request),
        }
        how["gates_owned"] = self.settings.gates_owned(request.username)
        decision = self.evaluate(request.object, mutate=mutate, **how)
        if explain and not decision.allowed:
            # The joint fix (docs/fix-hints.md). On any failure each violation keeps its own fix:
            # a denial must never turn into an error.
            try:
                # A review is parsed JSON: no map in it appears twice (as a YAML alias can).
                self._explain_denial(decision, request.object, aliases=False, **how)
            except Exception:
                log.exception("joint fix for %s/%s failed", request.namespace, request.name)
        return decision

    def _validate(self, request: AdmissionRequest, snapshot: Any = None) -> tuple[bytes, str]:
        if self._passes_untouched(request):
            return response_body(request.uid, allowed=True), "skipped"
        return self._render(request, self._judge(request, mutate=False, explain=True, snapshot=snapshot))

    def _render(self, request: AdmissionRequest, decision: Any) -> tuple[bytes, str]:
        if decision.allowed and not decision.warnings and not decision.audit:
            return response_body(request.uid, allowed=True), "allowed"  # the common case
        self.metrics.count_violations(
            decision.all_violations, team=decision.team, snapshot=self.view.snapshot()
        )
        warnings = [line for v in decision.warnings for line in header_safe(self._render_warning(v))]
        if not decision.allowed:
            body = response_body(
                request.uid,
                allowed=False,
                message=self._render_denial(decision),
                warnings=warnings,
            )
            return body, "denied"
        label = "warned" if decision.warnings else "audited" if decision.audit else "allowed"
        return response_body(request.uid, allowed=True, warnings=warnings), label

    def _mutate(self, request: AdmissionRequest) -> tuple[bytes, str]:
        if self._passes_untouched(request):
            return response_body(request.uid, allowed=True), "skipped"
        decision = self._judge(request, mutate=True)
        patch = decision.patch
        return response_body(request.uid, allowed=True, patch=patch), "mutated" if patch else "unchanged"

    def _fetch_scaled(self, request: AdmissionRequest) -> Mapping[str, Any] | None:
        if self.fetch_workload is None:
            raise NoApiAccess("no API access to read the workload (webhook serving policy files)")
        group, version, plural = request.resource
        return self.fetch_workload(group, version, plural, request.namespace, request.name)

    def _waiting_for_claim(self, request: AdmissionRequest) -> list[Mapping[str, Any]]:
        """The unscheduled pods whose devices the claim decides: most claims are created before
        their pods, none waits, and they are answered at once without taking a judge."""
        if self.list_unscheduled is None:
            raise NoApiAccess("no API access to list pods (webhook serving policy files)")
        pods = self.list_unscheduled(request.namespace)
        namespace = request.namespace or None
        return self._waiting_on(request.object, pods, namespace=namespace, old=self._old(request))

    @staticmethod
    def _old(request: AdmissionRequest) -> Mapping[str, Any] | None:
        return request.old_object if request.operation == "UPDATE" else None

    def _claim(self, request: AdmissionRequest, pods: list[Mapping[str, Any]] | None) -> tuple[bytes, str]:
        if pods is None:  # nothing a pod may hold changed, or a claim made for one pod from its template
            return response_body(request.uid, allowed=True), "skipped"
        if not pods:  # no pod waits for it (the claim came first): nothing to judge, synced or not
            return response_body(request.uid, allowed=True), "allowed"
        if not self.view.ready():
            raise NotReady("policy view not synced with the API server yet")
        decision = self._judge_claim(
            request.object,
            pods,
            snapshot=self.view.snapshot(),
            now=self.clock(),
            namespace=request.namespace or None,
            old=self._old(request),
        )
        return self._render(request, decision)

    def _scale(self, request: AdmissionRequest, workload: Mapping[str, Any] | None) -> tuple[bytes, str]:
        from controller.engine.workloads import BUILTIN_KINDS, scaled

        if self._passes_untouched(request) or workload is None:
            return response_body(request.uid, allowed=True), "skipped"
        snapshot = self.view.snapshot() if self.view.ready() else None
        if snapshot is None:
            raise NotReady("policy view not synced with the API server yet")
        kinds = snapshot.kinds or BUILTIN_KINDS
        before = scaled(workload, _replicas(request.old_object), kinds)
        after = scaled(workload, _replicas(request.object), kinds)
        if before is None or after is None:  # a kind without a known replica path: nothing to judge
            return response_body(request.uid, allowed=True), "skipped"
        decision = self.evaluate(
            after,
            snapshot=snapshot,
            now=self.clock(),
            mutate=False,
            operation="UPDATE",
            namespace=request.namespace or None,
            old_object=before,
        )
        return self._render(request, decision)


class _Once:
    """`action` done the first time this is called, from whichever thread, and never again."""

    __slots__ = ("_action", "_lock")

    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Callable[[], None] | None = action
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            action, self._action = self._action, None
        if action is not None:
            action()


def _replicas(scale: Mapping[str, Any] | None) -> Any:
    """`spec.replicas` of an autoscaling/v1 Scale (absent means 0, as the API defaults it)."""
    spec = (scale or {}).get("spec")
    return spec.get("replicas", 0) if isinstance(spec, dict) else 0


def header_safe(text: str) -> list[str]:
    """Admission warnings travel as HTTP Warning headers: one line each, no control characters (a
    user's annotation value quoted in a warning is shown escaped, `\\x1b`, never sent raw)."""
    return [
        "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line.strip())
        for line in text.splitlines()
        if line.strip()
    ]


def error_reply(status: int, message: str) -> Reply:
    return status, json.dumps({"message": message}).encode()
