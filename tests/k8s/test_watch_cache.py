"""WatchCache against a scripted fake of our own client layer (the list functions): first sync,
events, broken policies, 410 Gone, reconnects."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

import pytest

from controller.k8s.cache import Resource, WatchCache

API = "finops.comptroller.dev/v1alpha1"


def fop(name: str, *, rv: str = "1", pattern: str = "^cc-[0-9]{3}$") -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FinOpsPolicy",
        "metadata": {"name": name, "resourceVersion": rv},
        "spec": {"labels": {"required": [{"key": "cost_center", "pattern": pattern}]}},
    }


def namespace(name: str, labels: dict[str, str], rv: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "resourceVersion": rv},
    }


class Response:
    def __init__(self, *, data: bytes = b"", lines: list[bytes] | None = None) -> None:
        self.data = data
        self._lines = lines or []
        self.released = False

    def stream(self, amt=None, decode_content=False):
        yield from self._lines

    def release_conn(self) -> None:
        self.released = True


class FakeKind:
    """One resource on a fake API server: a list result and a queue of scripted watch answers.

    A watch answer is a list of events (then the stream ends, as at a server-side timeout) or an
    exception to raise. With the queue empty, a watch waits a little and returns nothing.
    """

    def __init__(self, kind: str, items: list[dict] | None = None, rv: str = "10") -> None:
        self.kind = kind
        self.items = items or []
        self.rv = rv
        self.list_errors: deque[Exception] = deque()
        self.watches: deque[Any] = deque()
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> Response:
        with self.lock:
            self.calls.append(kwargs)
            if not kwargs.get("watch"):
                if self.list_errors:
                    raise self.list_errors.popleft()
                payload = {"items": self.items, "metadata": {"resourceVersion": self.rv}}
                return Response(data=json.dumps(payload).encode())
            script = self.watches.popleft() if self.watches else None
        if script is None:
            time.sleep(0.01)
            return Response()
        if isinstance(script, Exception):
            raise script
        return Response(lines=[json.dumps(event).encode() + b"\n" for event in script])

    @property
    def lists(self) -> int:
        return sum(1 for call in self.calls if not call.get("watch"))

    def resource(self) -> Resource:
        return Resource(self.kind, self)


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
def api():
    kinds = {
        "FinOpsPolicy": FakeKind("FinOpsPolicy", [fop("a"), fop("b")]),
        "GPUBudget": FakeKind("GPUBudget"),
        "FinOpsException": FakeKind("FinOpsException"),
        "Namespace": FakeKind("Namespace", [namespace("ml", {"team": "nlp"})]),
    }
    return kinds


@pytest.fixture
def make_cache(api):
    caches = []

    def make(**kwargs: Any) -> WatchCache:
        kwargs.setdefault("max_backoff_seconds", 0.05)
        cache = WatchCache(resources=[k.resource() for k in api.values()], **kwargs)
        caches.append(cache)
        cache.start()
        return cache

    yield make
    for cache in caches:
        cache.stop()


def names(cache: WatchCache) -> list[str]:
    return [p.name for p in cache.snapshot().policies]


def test_ready_after_every_kind_is_listed_once(api, make_cache):
    from kubernetes.client import ApiException

    # The CRD for exceptions is not installed yet: 404 twice, then it appears.
    api["FinOpsException"].list_errors.extend([ApiException(status=404), ApiException(status=404)])
    cache = make_cache()
    assert cache.wait_ready(5)
    assert api["FinOpsException"].lists == 3
    assert names(cache) == ["a", "b"]
    assert cache.snapshot().namespace_labels == {"ml": {"team": "nlp"}}


def test_not_ready_while_a_kind_cannot_be_listed(api, make_cache):
    api["GPUBudget"].list_errors.extend([RuntimeError("connection refused")] * 1000)
    cache = make_cache()
    wait_for(lambda: api["GPUBudget"].lists >= 3)
    assert not cache.ready()
    assert names(cache) == ["a", "b"]  # what is listed is still kept


def test_watch_starts_from_the_list_and_resumes_from_the_last_event(api, make_cache):
    api["FinOpsPolicy"].watches.append(
        [
            {"type": "ADDED", "object": fop("c", rv="11")},
            {"type": "BOOKMARK", "object": {"kind": "FinOpsPolicy", "metadata": {"resourceVersion": "15"}}},
        ]
    )
    make_cache()
    wait_for(lambda: sum(1 for c in api["FinOpsPolicy"].calls if c.get("watch")) >= 2)
    watches = [c for c in api["FinOpsPolicy"].calls if c.get("watch")]
    assert watches[0]["resource_version"] == "10"
    assert watches[1]["resource_version"] == "15"
    assert watches[0]["allow_watch_bookmarks"] is True


def patterns(cache: WatchCache) -> dict[str, str]:
    return {p.name: p.spec.labels.required[0].pattern for p in cache.snapshot().policies}


# Each case ends in a state the list alone does not give (a, b with ^cc-[0-9]{3}$), so a cache that
# ignored the events would fail it.
@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (
            [{"type": "ADDED", "object": fop("c")}],
            {"a": "^cc-[0-9]{3}$", "b": "^cc-[0-9]{3}$", "c": "^cc-[0-9]{3}$"},
        ),
        ([{"type": "DELETED", "object": fop("a")}], {"b": "^cc-[0-9]{3}$"}),
        ([{"type": "MODIFIED", "object": fop("b", pattern="^x$")}], {"a": "^cc-[0-9]{3}$", "b": "^x$"}),
        (
            [
                {"type": "ADDED", "object": fop("c")},
                {"type": "DELETED", "object": fop("c")},
                {"type": "MODIFIED", "object": fop("a", pattern="^y$")},
            ],
            {"a": "^y$", "b": "^cc-[0-9]{3}$"},
        ),
    ],
    ids=["added", "deleted", "modified", "added-then-deleted"],
)
def test_events_update_the_snapshot(api, make_cache, events, expected):
    api["FinOpsPolicy"].watches.append(events)
    cache = make_cache()
    wait_for(lambda: not api["FinOpsPolicy"].watches)
    wait_for(lambda: patterns(cache) == expected)


def test_a_broken_policy_is_left_out_and_reported_and_the_others_serve(api, make_cache):
    api["FinOpsPolicy"].items.append(fop("broken", pattern="("))
    api["FinOpsPolicy"].watches.append([{"type": "MODIFIED", "object": fop("broken")}])
    cache = make_cache()
    assert cache.wait_ready(5)
    # Listed broken, then fixed by the watch event.
    wait_for(lambda: names(cache) == ["a", "b", "broken"])
    assert cache.errors() == {}


def test_errors_name_the_broken_policy(api, make_cache):
    api["FinOpsPolicy"].items.append(fop("broken", pattern="("))
    cache = make_cache()
    assert cache.wait_ready(5)
    assert names(cache) == ["a", "b"]
    assert list(cache.errors()) == ["FinOpsPolicy/broken"]
    assert "pattern" in cache.errors()["FinOpsPolicy/broken"]


def test_gone_relists_and_the_relist_replaces_what_was_missed(api, make_cache):
    kind = api["FinOpsPolicy"]
    cache = make_cache()
    assert cache.wait_ready(5)
    with kind.lock:
        kind.items = [fop("b"), fop("z")]  # "a" was deleted while we were not watching
        kind.watches.append(
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}]
        )
    wait_for(lambda: kind.lists >= 2)
    wait_for(lambda: names(cache) == ["b", "z"])


def test_a_broken_connection_reconnects(api, make_cache):
    kind = api["Namespace"]
    kind.watches.extend(
        [ConnectionResetError("reset"), [{"type": "ADDED", "object": namespace("cv", {"team": "vision"})}]]
    )
    cache = make_cache()
    wait_for(lambda: "cv" in cache.snapshot().namespace_labels)
    assert cache.snapshot().namespace_labels["cv"] == {"team": "vision"}


def test_periodic_resync_relists(api, make_cache):
    make_cache(resync_seconds=0.05)
    wait_for(lambda: api["FinOpsPolicy"].lists >= 3)


def test_snapshots_are_immutable_values(api, make_cache):
    cache = make_cache()
    assert cache.wait_ready(5)
    before = cache.snapshot()
    with api["FinOpsPolicy"].lock:
        api["FinOpsPolicy"].watches.append([{"type": "ADDED", "object": fop("c")}])
    wait_for(lambda: names(cache) == ["a", "b", "c"])
    assert [p.name for p in before.policies] == ["a", "b"]  # a reader's snapshot never changes under it
