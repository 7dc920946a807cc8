"""The list+watch loop every cache of ours runs: list, then watch from the list's resourceVersion,
relist on `410 Gone`, at each resync period, and (with capped, jittered backoff) after any failure.

The caches own what a list and an event mean (`WatchCache` compiles CRs, `PodWatch` keeps GPU pod
records); this module owns only talking the watch protocol, so both read the stream the same way.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)


class Gone(Exception):
    """The resourceVersion we watch from is too old (HTTP 410): relist."""


def watch(
    list_fn: Callable[..., Any],
    resource_version: str,
    *,
    timeout: int,
    stop: threading.Event,
    on_event: Callable[[str, dict[str, Any]], None],
) -> str:
    """Watch `list_fn` from `resource_version` for up to `timeout` seconds, handing each ADDED,
    MODIFIED or DELETED event to `on_event(type, object)`; the resourceVersion to resume from.

    Bookmarks only move the resourceVersion on. Raises `Gone` when the server has compacted past
    `resource_version`, RuntimeError on any other ERROR event.
    """
    response = list_fn(
        watch=True,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=timeout,
        _preload_content=False,
        # A dead connection must not hang us forever: read timeout a bit past the server's.
        _request_timeout=(10, timeout + 15),
    )
    try:
        for line in iter_resp_lines(response):
            if stop.is_set():
                break
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone
                raise RuntimeError(f"watch error: {obj.get('message')}")
            resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
            if kind != "BOOKMARK":
                on_event(kind, obj)
    finally:
        response.release_conn()
    return resource_version


def list_and_watch(
    *,
    what: str,
    relist: Callable[[], str],
    watch_from: Callable[..., str],
    stop: threading.Event,
    resync_seconds: float,
    watch_timeout_seconds: int,
    max_backoff_seconds: float,
    describe_error: Callable[[Exception], str] = str,
) -> None:
    """Run until `stop` is set: `relist()` (returning its resourceVersion), then
    `watch_from(resource_version, timeout=seconds)` again and again until `resync_seconds` have passed.

    Any failure but `Gone` (network, 404 before the CRDs exist, 5xx, throttling) waits a backoff
    that doubles per consecutive failure, capped at `max_backoff_seconds` and jittered by ±20% so
    replicas do not retry in step; a successful list resets it.
    """
    failures = 0
    while not stop.is_set():
        try:
            resource_version = relist()
            failures = 0
            deadline = time.monotonic() + resync_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                timeout = max(1, min(watch_timeout_seconds, int(deadline - time.monotonic())))
                resource_version = watch_from(resource_version, timeout=timeout)
        except Gone:
            log.info("%s watch expired (410 Gone); relisting", what)
        except Exception as error:
            failures += 1
            delay = min(max_backoff_seconds, 0.5 * 2 ** min(failures, 10)) * random.uniform(0.8, 1.2)
            log.warning("%s list/watch failed (%s); retrying in %.1fs", what, describe_error(error), delay)
            stop.wait(delay)
