"""The pod cache: only GPU pods are kept, deletions leave tombstones with an end, and a relist
replaces the store (so pods deleted during a disconnect do not linger as running)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

from controller.k8s.pods import PodWatch
from controller.metering.usage import pod_record
from controller.operator.accounting import end_at_deletion


def pod(name: str, gpus: int = 1, *, phase: str = "Running") -> dict:
    resources = {"requests": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "labels": {"team": "nlp"}},
        "spec": {"containers": [{"name": "main", "resources": resources}]},
        "status": {"phase": phase, "containerStatuses": [
            {"name": "main", "state": {"running": {"startedAt": "2026-11-10T12:00:00Z"}}}]},
    }


class FakeCore:
    """Pages of a pod list, as `list_pod_for_all_namespaces(_preload_content=False)` returns them."""

    def __init__(self, pages: list[list[dict]], resource_version: str = "42") -> None:
        self.pages = pages
        self.resource_version = resource_version
        self.calls: list[dict] = []

    def list_pod_for_all_namespaces(self, **kwargs):
        self.calls.append(kwargs)
        index = int(kwargs.get("_continue") or 0)
        metadata = {"resourceVersion": self.resource_version}
        if index + 1 < len(self.pages):
            metadata["continue"] = str(index + 1)
        return SimpleNamespace(data=json.dumps({"items": self.pages[index], "metadata": metadata}))


SEEN = datetime(2026, 11, 10, 12, 30, tzinfo=UTC)


def watch_with(pages: list[list[dict]], *, now: float = SEEN.timestamp()) -> PodWatch:
    clock = [now]
    watch = PodWatch(None, transform=pod_record, on_deleted=end_at_deletion, tombstone_ttl=60,
                     clock=lambda: clock[0])
    watch._core = FakeCore(pages)
    watch.clock = clock  # the test moves time through this list
    return watch


def test_list_keeps_only_gpu_pods_across_pages():
    watch = watch_with([[pod("a"), pod("cpu", gpus=0)], [pod("b", 4)]])
    assert watch._list() == "42"
    assert watch.ready()
    assert sorted(r.name for r in watch.records()) == ["a", "b"]
    assert [c.get("_continue") for c in watch._core.calls] == [None, "1"]


def test_relist_drops_pods_deleted_while_disconnected():
    watch = watch_with([[pod("a"), pod("b")]])
    watch._list()
    watch._core.pages = [[pod("b")]]
    watch._list()
    assert [r.name for r in watch.records()] == ["b"]


def test_events_update_the_store_and_deletions_leave_tombstones():
    watch = watch_with([[]])
    watch._list()
    watch._apply("ADDED", pod("a", 2))
    watch._apply("ADDED", pod("cpu", 0))
    assert [(r.name, r.gpus) for r in watch.records()] == [("a", 2)]
    watch._apply("DELETED", pod("a", 2))
    assert watch.records() == ()
    (tombstone,) = watch.tombstones()
    # it vanished while running in our view: it ended when we saw it go
    assert tombstone.record.finished == SEEN
    watch.clock[0] += 61
    assert watch.tombstones() == ()


def test_a_pod_that_stops_requesting_gpus_leaves_the_store():
    watch = watch_with([[pod("a")]])
    watch._list()
    watch._apply("MODIFIED", pod("a", 0))
    assert watch.records() == ()


def test_records_snapshot_is_reused_until_something_changes():
    watch = watch_with([[pod("a")]])
    watch._list()
    first = watch.records()
    watch._apply("MODIFIED", pod("a"))  # identical record: no change
    assert watch.records() is first
    watch._apply("MODIFIED", pod("a", 3))
    assert watch.records() is not first
