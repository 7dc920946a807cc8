"""API calls on workloads of every kind: list (paginated), get, patch, delete, Events, HPAs.

Everything goes through one thin REST helper on the ApiClient instead of the typed APIs: the
operator treats Pods, Deployments and Kubeflow/Ray/JobSet CRDs alike as plain JSON, and skipping
the typed models' deserialization matters when a sweep pages through 10,000 Pods (it is several
times faster and keeps memory flat). Kinds not built in are found by API discovery, once.

Errors come back as `ApiError` with the HTTP status; `NotFound` and `Conflict` are the two the
callers act on (already gone; someone changed the object since we read it).

Every write passes `WRITES` first (`WriteScope`): nothing is ever written in kube-system, and with
`--write-namespaces` only in those namespaces and Comptroller's own. A refused write raises
`NotWritable` without reaching the API server, whose RBAC the chart narrows the same way.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


class ApiError(Exception):
    """A request the API server refused; `status` is the HTTP status (0: no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class NotWritable(ApiError):
    """A write outside the namespaces the operator may write in (refused before it is sent)."""

    def __init__(self, namespace: str) -> None:
        super().__init__(403, f"namespace {namespace} is not one the operator writes in (--write-namespaces)")
        self.namespace = namespace


NEVER_WRITTEN = frozenset({"kube-system"})


class WriteScope:
    """Where the operator may write: every namespace but kube-system, or (`namespaces` given) only
    those and its own. Cluster-scoped objects (our own CRs, the webhook configuration) are always
    writable; the chart's RBAC decides which."""

    def __init__(self, namespaces: Iterable[str] | None = None, *, own: str | None = None) -> None:
        self.namespaces = None if namespaces is None else frozenset(namespaces) | ({own} if own else set())
        self.own = own

    def allows(self, namespace: str | None) -> bool:
        if not namespace:
            return True
        if namespace in NEVER_WRITTEN and namespace != self.own:
            return False
        return self.namespaces is None or namespace in self.namespaces


WRITES = WriteScope()
"""The process's write scope; the operator sets it once at startup (`configure_writes`)."""


def configure_writes(namespaces: Iterable[str] | None, *, own: str | None) -> None:
    global WRITES
    WRITES = WriteScope(namespaces, own=own)


def _namespace_of(path: str) -> str | None:
    parts = path.split("/")
    for index, part in enumerate(parts[:-1]):
        if part == "namespaces" and index + 1 < len(parts) and index >= 2:
            return parts[index + 1]
    return None


def _error_for(status: int, message: str) -> ApiError:
    if status == 404:
        return NotFound(status, message)
    if status == 409:
        return Conflict(status, message)
    return ApiError(status, message)


@dataclass(frozen=True)
class ApiResource:
    """Where a kind is served: enough to build its REST paths."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


BUILTIN_RESOURCES: dict[str, ApiResource] = {
    r.kind: r
    for r in (
        ApiResource("", "v1", "pods", "Pod"),
        ApiResource("apps", "v1", "deployments", "Deployment"),
        ApiResource("apps", "v1", "statefulsets", "StatefulSet"),
        ApiResource("apps", "v1", "replicasets", "ReplicaSet"),
        ApiResource("apps", "v1", "daemonsets", "DaemonSet"),
        ApiResource("batch", "v1", "jobs", "Job"),
        ApiResource("batch", "v1", "cronjobs", "CronJob"),
        ApiResource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
        ApiResource("", "v1", "namespaces", "Namespace", namespaced=False),
    )
}


def object_ref(obj: Mapping[str, Any]) -> str:
    """`Kind/namespace/name`, how logs and Events name an object."""
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{metadata.get('namespace', '')}/{metadata.get('name', '?')}"


NOT_SERVED_RECHECK_SECONDS = 60.0
"""How long a kind found not served is believed so before discovery asks again."""


class Workloads:
    """The operator's client for workloads. Thread-safe: kopf runs sync handlers in a pool."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        page_size: int = 500,
        timeout: float = 30.0,
        component: str = "comptroller",
    ) -> None:
        self.api = api
        self.page_size = page_size
        self.timeout = timeout
        self.component = component
        self._discovered: dict[tuple[str, str], tuple[ApiResource | None, float]] = {}
        self._lock = threading.Lock()
        self.clock = time.monotonic

    # -- the one REST helper ---------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> Any:
        if method != "GET":
            namespace = _namespace_of(path)
            if not WRITES.allows(namespace):
                raise NotWritable(namespace or "")
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        query_params = [(k, v) for k, v in (query or {}).items() if v is not None]
        _, url, headers, body, _ = self.api.param_serialize(
            method,
            path,
            query_params=query_params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=self.timeout
            )
            data = response.read()
        except ApiException as exc:  # raised by the REST layer on some transport failures
            raise _error_for(exc.status or 0, str(exc.reason)) from exc
        except Exception as exc:  # urllib3 errors: connection refused, timeouts
            raise ApiError(0, f"{method} {path}: {exc}") from exc
        if not 200 <= response.status < 300:
            message = data.decode(errors="replace") if data else response.reason
            try:
                message = json.loads(message).get("message", message)
            except (ValueError, AttributeError):
                pass
            raise _error_for(response.status, f"{method} {path}: {message}")
        return json.loads(data) if data else None

    # -- discovery -------------------------------------------------------------------------------

    def resolve(
        self, kind: str, *, group: str | None = None, version: str | None = None
    ) -> ApiResource | None:
        """Where `kind` is served, or None when the cluster does not serve it (CRD not installed).

        Where a kind is served is remembered; that it is not, only for `NOT_SERVED_RECHECK_SECONDS`,
        so a CRD installed after the operator started (PolicyReport, an ML kind) is found without
        a restart.
        """
        builtin = BUILTIN_RESOURCES.get(kind)
        if builtin and (group is None or group == builtin.group):
            return builtin
        key = (group or "", kind)
        now = self.clock()
        with self._lock:
            cached = self._discovered.get(key)
        if cached is not None and (cached[0] is not None or now - cached[1] < NOT_SERVED_RECHECK_SECONDS):
            return cached[0]
        resource = self._discover(kind, group=group or "", version=version)
        with self._lock:
            self._discovered[key] = (resource, now)
        return resource

    def _discover(self, kind: str, *, group: str, version: str | None) -> ApiResource | None:
        try:
            if not version:
                version = self.request("GET", f"/apis/{group}")["preferredVersion"]["version"]
            listing = self.request("GET", f"/apis/{group}/{version}")
        except NotFound:
            log.debug("%s.%s is not served by this cluster; skipping it", kind, group)
            return None
        for entry in listing.get("resources", []):
            if entry.get("kind") == kind and "/" not in entry.get("name", "/"):
                return ApiResource(group, version, entry["name"], kind, bool(entry.get("namespaced")))
        log.debug("%s/%s serves no kind %s; skipping it", group, version, kind)
        return None

    # -- reads -----------------------------------------------------------------------------------

    def iter_objects(
        self,
        resource: ApiResource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every object of a kind, a page at a time, with `kind`/`apiVersion` filled in.

        A list's items carry no kind; callers pass objects on to the engine, which needs it.
        `metadata_only` asks the API server for PartialObjectMetadata (no spec, no status): a
        fraction of the bytes to send and decode when labels and annotations are all we need.
        """
        token: str | None = None
        while True:
            page = self.request(
                "GET",
                resource.path(namespace),
                query={
                    "limit": self.page_size,
                    "continue": token,
                    "labelSelector": label_selector,
                    "fieldSelector": field_selector,
                },
                accept=METADATA_ONLY if metadata_only else "application/json",
            )
            for item in page.get("items") or ():
                item["kind"] = resource.kind
                item["apiVersion"] = resource.api_version
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def list_objects(self, resource: ApiResource, **kwargs: Any) -> list[dict[str, Any]]:
        return list(self.iter_objects(resource, **kwargs))

    def get(self, resource: ApiResource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj = self.request("GET", resource.path(namespace, name))
        except NotFound:
            return None
        obj.setdefault("kind", resource.kind)
        obj.setdefault("apiVersion", resource.api_version)
        return obj

    def hpas_targeting(self, namespace: str, *, kind: str, name: str) -> list[dict[str, Any]]:
        """HorizontalPodAutoscalers in `namespace` whose scaleTargetRef is kind/name."""
        hpas = self.list_objects(BUILTIN_RESOURCES["HorizontalPodAutoscaler"], namespace=namespace)
        return [
            hpa
            for hpa in hpas
            if (hpa.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == kind
            and hpa["spec"]["scaleTargetRef"].get("name") == name
        ]

    # -- writes ----------------------------------------------------------------------------------

    def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        return self.request("PATCH", resource.path(namespace, name), body=body, content_type=content_type)

    def delete(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete one object; False when it was already gone (or replaced by a namesake)."""
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": propagation,
        }
        if uid:
            # Never delete a namesake created after we decided: the precondition pins the object.
            options["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", resource.path(namespace, name), body=options)
        except NotFound:
            return False
        except Conflict:
            return False
        return True

    def emit_event(
        self,
        obj: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        now: datetime | None = None,
    ) -> None:
        """A core/v1 Event on `obj` (what `kubectl describe` and `kubectl get events` show).

        Events are advisory: failing to post one is logged, never raised.
        """
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata.get('name', 'object')}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.request("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/events", body=event)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in exc.message:
                # The namespace is being deleted: the Event would go with it. Not an RBAC problem.
                log.debug("Event %s on %s not posted: its namespace is being deleted", reason,
                          object_ref(obj))
                return
            log.warning("could not post Event %s on %s: %s", reason, object_ref(obj), exc)
