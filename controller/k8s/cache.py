"""The webhook's in-memory view of the cluster: FinOpsPolicies, GPUBudgets (with their status),
FinOpsExceptions, GPUEquivalences, Namespace labels and DRA ResourceClaim(Template)s, kept by
list+watch so admission never calls the API server.

One thread per resource lists, then watches from the list's resourceVersion. A `410 Gone` relists
at once; any other failure reconnects with capped exponential backoff; every `resync_seconds` the
thread relists anyway, so a missed event cannot outlive one resync period. Missing CRDs are just a
failure that keeps retrying: the cache is not ready until every resource has been listed once.

Each change recompiles only the object that changed and publishes a new immutable Snapshot by one
attribute assignment, so readers (the admission hot path) never take a lock. An object that does
not validate is left out of the snapshot and its error kept in `errors()`: one broken policy does
not stop the others.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from controller import constants
from controller.engine.accelerators import CLAIM_KINDS, ClaimIndex
from controller.engine.api import Snapshot
from controller.engine.loading import build_snapshot, compile_object, object_key
from controller.k8s import watching

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    kind: str
    list_fn: Callable[..., Any]
    required: bool = True
    """Admission waits for it to be listed once. GPUEquivalences (built-in table until listed) and
    DRA claims (a cluster without DRA serves none) are not waited for."""


def api_resources(api_client: client.ApiClient) -> tuple[Resource, ...]:
    """The list functions (list, and watch with `watch=True`) of everything the cache keeps."""
    custom = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)

    def custom_list(
        plural: str, group: str = constants.GROUP, version: str = constants.VERSION
    ) -> Callable[..., Any]:
        def list_fn(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(group, version, plural, **kwargs)

        return list_fn

    return (
        Resource("FinOpsPolicy", custom_list(constants.POLICY_PLURAL)),
        Resource("GPUBudget", custom_list(constants.BUDGET_PLURAL)),
        Resource("FinOpsException", custom_list(constants.EXCEPTION_PLURAL)),
        Resource("Namespace", core.list_namespace),
        Resource("GPUEquivalence", custom_list("gpuequivalences"), required=False),
        Resource("ResourceClaimTemplate", custom_list("resourceclaimtemplates", "resource.k8s.io", "v1"),
                 required=False),
        Resource("ResourceClaim", custom_list("resourceclaims", "resource.k8s.io", "v1"), required=False),
    )


class WatchCache:
    """list+watch of everything admission decides with. `start()` it, then read `snapshot()`."""

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        *,
        excluded_namespaces: Iterable[str] = (),
        resync_seconds: float = 300.0,
        watch_timeout_seconds: int = 240,
        max_backoff_seconds: float = 30.0,
        resources: Sequence[Resource] | None = None,
    ) -> None:
        """`resources` replaces the API calls (tests fake at this, our own client layer)."""
        self._excluded = frozenset(excluded_namespaces)
        self._resync_seconds = resync_seconds
        self._watch_timeout = watch_timeout_seconds
        self._max_backoff = max_backoff_seconds
        self._resources = tuple(resources) if resources is not None else api_resources(api_client)
        self._models: dict[str, dict[str, Any]] = {r.kind: {} for r in self._resources}
        self._claims = ClaimIndex()
        """DRA claims and templates: updated in place, never republishing the snapshot (a claim is
        made for every pod of a template; the policies did not change)."""
        self._errors: dict[str, str] = {}
        self._listed: set[str] = set()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()
        self._snapshot = self._build()

    # -- readers (lock-free) ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def errors(self) -> dict[str, str]:
        """Objects left out of the snapshot because they do not validate: `Kind/name` -> error."""
        return dict(self._errors)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for resource in self._resources:
            thread = threading.Thread(
                target=self._run, args=(resource,), name=f"watch-{resource.kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 1.0) -> None:
        # Watches end at the server-side timeout at the latest; threads are daemons, so a process
        # exit never waits on them.
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    # -- the per-resource loop ----------------------------------------------------------------

    def _run(self, resource: Resource) -> None:
        watching.list_and_watch(
            what=resource.kind,
            relist=functools.partial(self._list, resource),
            watch_from=functools.partial(self._watch, resource),
            stop=self._stop,
            resync_seconds=self._resync_seconds,
            watch_timeout_seconds=self._watch_timeout,
            max_backoff_seconds=self._max_backoff,
            describe_error=_short,
        )

    def _list(self, resource: Resource) -> str:
        response = resource.list_fn(_preload_content=False, _request_timeout=30)
        payload = json.loads(response.data)
        items = payload.get("items") or []
        if resource.kind in CLAIM_KINDS:
            for obj in items:
                obj["kind"] = resource.kind
            self._claims.reset(resource.kind, items)
            with self._write_lock:
                self._listed.add(resource.kind)
            log.info("listed %d %ss", len(items), resource.kind)
            return payload["metadata"]["resourceVersion"]
        compiled = {}
        errors = {}
        for obj in items:
            obj.setdefault("kind", resource.kind)
            key, model, error = self._compile(resource.kind, obj)
            if error is None:
                compiled[key] = model
            else:
                errors[key] = error
        with self._write_lock:
            self._models[resource.kind] = compiled
            prefix = f"{resource.kind}/"
            self._errors = {k: v for k, v in self._errors.items() if not k.startswith(prefix)} | errors
            self._listed.add(resource.kind)
            self._publish()
        log.info("listed %d %s (%d invalid)", len(items), resource.kind, len(errors))
        return payload["metadata"]["resourceVersion"]

    def _watch(self, resource: Resource, resource_version: str, *, timeout: int) -> str:
        def on_event(event_type: str, obj: dict[str, Any]) -> None:
            obj.setdefault("kind", resource.kind)
            self._apply(resource.kind, event_type, obj)

        return watching.watch(
            resource.list_fn, resource_version, timeout=timeout, stop=self._stop, on_event=on_event
        )

    def _apply(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        if kind in CLAIM_KINDS:
            obj["kind"] = kind
            if event_type == "DELETED":
                self._claims.remove(obj)
            else:
                self._claims.put(obj)
            return
        key, model, error = (
            (object_key(kind, obj), None, None) if event_type == "DELETED" else self._compile(kind, obj)
        )
        with self._write_lock:
            models = dict(self._models[kind])
            errors = dict(self._errors)
            models.pop(key, None)
            errors.pop(key, None)
            if event_type != "DELETED":
                if error is None:
                    models[key] = model
                else:
                    errors[key] = error
            self._models[kind] = models
            self._errors = errors
            self._publish()

    def _compile(self, kind: str, obj: dict[str, Any]) -> tuple[str, Any, str | None]:
        key = object_key(kind, obj)
        if kind == "Namespace":
            return key, dict((obj.get("metadata") or {}).get("labels") or {}), None
        try:
            return key, compile_object(kind, obj), None
        except Exception as error:  # a bad CR is data about that CR, not a reason to stop serving
            log.error("%s is left out of admission: %s", key, error)
            return key, None, str(error)

    def _publish(self) -> None:
        self._snapshot = self._build()
        required = {r.kind for r in self._resources if r.required}
        if required <= self._listed and not self._ready.is_set():
            self._ready.set()
            log.info("policy view synced: %s", self.summary())

    def _build(self) -> Snapshot:
        return build_snapshot(
            policies=self._models.get("FinOpsPolicy", {}).values(),
            budgets=self._models.get("GPUBudget", {}).values(),
            exceptions=self._models.get("FinOpsException", {}).values(),
            equivalences=self._models.get("GPUEquivalence", {}).values(),
            claims=self._claims,
            namespace_labels={
                key.partition("/")[2]: v for key, v in self._models.get("Namespace", {}).items()
            },
            excluded_namespaces=self._excluded,
        )

    def summary(self) -> str:
        snap = self._snapshot
        return (
            f"{len(snap.policies)} policies, {len(snap.budgets)} budgets, {len(snap.exceptions)} exceptions, "
            f"{len(snap.namespace_labels)} namespaces, {len(self._errors)} invalid"
        )


def _short(error: Exception) -> str:
    if isinstance(error, client.ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
