"""Pods for metering: a list+watch cache of GPU pods, the metering finalizer, node instance types.

Why a cache of our own rather than a kopf index: kopf relists after a watch disconnect (or a
peering pause) without telling the index which objects vanished meanwhile, so a pod deleted
during the gap would stay "running" in it and be over-charged. Here every (re)list replaces
the whole store. The cache is read-only and keeps running while a replica is on standby, so a
replica that takes over meters from a warm, complete view at once.

Only what `transform` returns for a pod is kept (one small record per GPU pod), never the
objects themselves: 5,000 GPU pods cost a few MiB.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from controller import constants
from controller.engine.accelerators import ClaimIndex
from controller.k8s import watching
from controller.k8s.workloads import BUILTIN_RESOURCES, ApiError, ApiResource, NotFound, Workloads

log = logging.getLogger(__name__)

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PODS = BUILTIN_RESOURCES["Pod"]
NODES = ApiResource("", "v1", "nodes", "Node", namespaced=False)
RESOURCE_CLAIMS = ApiResource("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim")
RESOURCE_CLAIM_TEMPLATES = ApiResource(
    "resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate"
)
CLAIM_RESOURCES = (RESOURCE_CLAIM_TEMPLATES, RESOURCE_CLAIMS)
RESOURCE_SLICES = ApiResource("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", namespaced=False)
GPU_EQUIVALENCES = ApiResource(
    constants.GROUP, constants.VERSION, "gpuequivalences", "GPUEquivalence", namespaced=False
)


@dataclass(frozen=True)
class Tombstone:
    """A pod seen deleted: its last record, kept a while so metering can close its charge."""

    record: Any
    observed: float
    """time.time() when the DELETED event arrived."""


class PodWatch:
    """list+watch of every pod, keeping `transform(pod)` of those it returns a record for.

    `start()` it, `wait_ready()`, then read `records()` (a tuple, rebuilt only after changes) and
    `tombstones()`. `on_deleted(obj, now)` turns a deleted pod's last state into its final record
    (e.g. ending a still-running record at the time the deletion was seen).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        transform: Callable[[dict[str, Any]], Any | None],
        on_deleted: Callable[[Any, datetime], Any] | None = None,
        tombstone_ttl: float = 120.0,
        page_size: int = 500,
        resync_seconds: float = 900.0,
        watch_timeout_seconds: int = 300,
        max_backoff_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self._transform = transform
        self._on_deleted = on_deleted or (lambda record, now: record)
        self._tombstone_ttl = tombstone_ttl
        self._page_size = page_size
        self._resync_seconds = resync_seconds
        self._watch_timeout = watch_timeout_seconds
        self._max_backoff = max_backoff_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, Any] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._snapshot: tuple[Any, ...] | None = ()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0
        """Watch events applied so far (for logs and benchmarks)."""

    # -- readers ----------------------------------------------------------------------------------

    def records(self) -> tuple[Any, ...]:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = tuple(self._records.values())
            return self._snapshot

    def tombstones(self) -> tuple[Tombstone, ...]:
        now = self._clock()
        with self._lock:
            expired = [uid for uid, t in self._tombstones.items() if now - t.observed > self._tombstone_ttl]
            for uid in expired:
                del self._tombstones[uid]
            return tuple(self._tombstones.values())

    def uids(self) -> frozenset[str]:
        """Uids of every pod in view: cached, or seen deleted within the tombstone TTL."""
        with self._lock:
            return frozenset((*self._records, *self._tombstones))

    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watch-pods", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        watching.list_and_watch(
            what="pod",
            relist=self._list,
            watch_from=self._watch,
            stop=self._stop,
            resync_seconds=self._resync_seconds,
            watch_timeout_seconds=self._watch_timeout,
            max_backoff_seconds=self._max_backoff,
        )

    def _list(self) -> str:
        records: dict[str, Any] = {}
        token: str | None = None
        total = 0
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size, "_preload_content": False,
                                      "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            page = json.loads(self._core.list_pod_for_all_namespaces(**kwargs).data)
            for obj in page.get("items") or ():
                total += 1
                record = self._transform(obj)
                if record is not None:
                    records[record.uid] = record
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                resource_version = metadata["resourceVersion"]
                break
        with self._lock:
            vanished = set(self._records) - set(records)
            self._records = records
            self._snapshot = None
        if vanished:
            # Deleted while the watch was down and not held by our finalizer: their charge stays
            # at the last committed tick (see metering.py).
            log.info("relist: %d GPU pods vanished while the watch was disconnected", len(vanished))
        log.info("listed %d pods, %d request GPUs", total, len(records))
        self._ready.set()
        return resource_version

    def _watch(self, resource_version: str, *, timeout: int) -> str:
        return watching.watch(
            self._core.list_pod_for_all_namespaces,
            resource_version,
            timeout=timeout,
            stop=self._stop,
            on_event=self._apply,
        )

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        record = self._transform(obj)
        with self._lock:
            self.events += 1
            if kind == "DELETED":
                known = self._records.pop(uid, None)
                final = record if record is not None else known
                if final is not None:
                    now = self._clock()
                    final = self._on_deleted(final, datetime.fromtimestamp(now, UTC))
                    self._tombstones[uid] = Tombstone(final, now)
                    self._snapshot = None
                return
            if record is None:
                if self._records.pop(uid, None) is not None:
                    self._snapshot = None
                return
            if self._records.get(uid) != record:
                self._records[uid] = record
                self._snapshot = None


# -- writes -----------------------------------------------------------------------------------------


def add_finalizer(api: Workloads, *, namespace: str, name: str, uid: str) -> bool:
    """Add the metering finalizer; False when the pod is gone (or is a namesake: uid differs).

    A strategic merge patch unions `finalizers`, so nobody else's finalizer is touched.
    """
    return _patch(api, namespace, name, {"metadata": {"uid": uid,
                                                      "finalizers": [constants.METERING_FINALIZER]}})


def remove_finalizer(api: Workloads, *, namespace: str, name: str, uid: str | None = None) -> bool:
    """Remove the metering finalizer (only ours); False when the pod is already gone."""
    body: dict[str, Any] = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": [constants.METERING_FINALIZER]}
    }
    if uid:
        body["metadata"]["uid"] = uid
    return _patch(api, namespace, name, body)


def remove_gate(api: Workloads, *, namespace: str, name: str, uid: str) -> bool:
    """Release a pod from a queueing budget: remove our scheduling gate (only ours; the API server
    lets gates be removed, never added, after creation). False when the pod is gone."""
    body = {
        "metadata": {"uid": uid},
        "spec": {"schedulingGates": [{"$patch": "delete", "name": constants.BUDGET_GATE}]},
    }
    return _patch(api, namespace, name, body)


def _patch(api: Workloads, namespace: str, name: str, body: dict[str, Any]) -> bool:
    """A strategic merge patch of a pod; False when it is gone (or, with a uid in the body, when a
    namesake replaced it)."""
    try:
        api.patch(PODS, namespace, name, body, content_type=STRATEGIC_MERGE_PATCH)
    except NotFound:
        return False
    return True


def pods_with_finalizer(api: Workloads) -> Iterable[dict[str, Any]]:
    """Every pod carrying the metering finalizer (for `--release-finalizers`)."""
    for pod in api.iter_objects(PODS):
        if constants.METERING_FINALIZER in ((pod.get("metadata") or {}).get("finalizers") or ()):
            yield pod


def node_labels(api: Workloads, keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """Node name -> those of its labels named in `keys` (what metering reads of nodes)."""
    keys = frozenset(keys)
    return {
        node["metadata"]["name"]: {
            k: v for k, v in ((node.get("metadata") or {}).get("labels") or {}).items() if k in keys
        }
        for node in api.iter_objects(NODES)
    }


def allocated_claims(claims: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ResourceClaims of `claims` the scheduler allocated; the others count what they ask
    (`claim_index`)."""
    return [c for c in claims if (c.get("status") or {}).get("allocation")]


def claim_index(api: Workloads, *, claims: Iterable[Mapping[str, Any]] | None = None,
                strict: bool = False) -> ClaimIndex:
    """The DRA ResourceClaimTemplates and ResourceClaims, as the engine's claim lookup, so the audit
    and metering count what a claim not allocated yet asks for as admission does. `claims`: the
    ResourceClaims listed already (None: listed here). A kind that is not served (or not readable)
    is left out, its claims counted as unresolved, 1 GPU each; `strict` raises the ApiError instead."""
    index = ClaimIndex()
    for resource in CLAIM_RESOURCES:
        try:
            given = claims if resource is RESOURCE_CLAIMS else None
            for obj in api.iter_objects(resource) if given is None else given:
                index.put(obj)
        except ApiError as error:
            if strict:
                raise
            log.debug("%s not readable: %s", resource.kind, error)
    return index


def slice_devices(api: Workloads) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(driver, pool, device) -> the device as its ResourceSlice publishes it (`attributes`,
    `capacity`), from every ResourceSlice."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for slice_ in api.iter_objects(RESOURCE_SLICES):
        spec = slice_.get("spec") or {}
        driver, pool = str(spec.get("driver", "")), str((spec.get("pool") or {}).get("name", ""))
        for device in spec.get("devices") or ():
            if isinstance(device, dict):
                found[(driver, pool, str(device.get("name", "")))] = device
    return found


def node_instance_types(api: Workloads, keys: Iterable[str]) -> dict[str, str]:
    """Node name -> instance type (the first of `keys` a node is labeled with)."""
    keys = tuple(keys)
    types: dict[str, str] = {}
    for node in api.iter_objects(NODES):
        labels = (node.get("metadata") or {}).get("labels") or {}
        for key in keys:
            if labels.get(key):
                types[node["metadata"]["name"]] = labels[key]
                break
    return types

