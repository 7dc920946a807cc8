"""The expiry sweep end to end against a fake of our client layer: brake, dry-run, owners."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lifecycle_fakes import FakeWorkloads

from controller import constants
from controller.engine.models import FinOpsPolicy
from controller.operator.brake import Brake
from controller.operator.effector import Effector
from controller.operator.expiry import ExpirySweeper

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POLICY = FinOpsPolicy.from_object(
    {
        "apiVersion": constants.API_VERSION,
        "kind": "FinOpsPolicy",
        "metadata": {"name": "experiments"},
        "spec": {"match": {"namespaces": ["ml-*"]}, "expiry": {"notifyBefore": "15m"}},
    }
)


def pod(name, expires, *, namespace="ml-a"):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "annotations": {"expires_at": expires},
        },
        "spec": {"containers": [{"name": "c"}]},
    }


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sweeper(fake, *, limit=100, dry_run=False, clock=None):
    return ExpirySweeper(
        workloads=fake,
        effector=Effector(fake, dry_run=dry_run),
        brake=Brake(limit=limit),
        monotonic=clock or Clock(),
    )


def test_expired_pods_go_soon_expiring_get_one_notice_the_rest_stay():
    fake = FakeWorkloads(
        pod("old", "2026-11-22T11:00:00Z"),
        pod("soon", "2026-11-22T12:05:00Z"),
        pod("later", "2026-11-23"),
        pod("elsewhere", "2026-11-22T11:00:00Z", namespace="prod"),
    )
    s = sweeper(fake)
    first = s.sweep(policies=[POLICY], now=NOW)
    second = s.sweep(policies=[POLICY], now=NOW)
    assert (first.terminated, first.notified) == (1, 1)
    assert (second.terminated, second.notified) == (0, 0)  # noticed once; the expired one is gone
    assert sorted(name for (_, _, name) in fake.objects) == ["elsewhere", "later", "soon"]
    assert sorted((e["object"], e["reason"]) for e in fake.events) == [
        ("Pod/old", "Expired"),
        ("Pod/soon", "ExpiringSoon"),
    ]


def test_the_brake_holds_and_releases_with_time():
    fake = FakeWorkloads(*(pod(f"p{i}", "2026-11-22T11:00:00Z") for i in range(5)))
    clock = Clock()
    s = sweeper(fake, limit=2, clock=clock)
    reports = [s.sweep(policies=[POLICY], now=NOW)]
    clock.t += 30
    reports.append(s.sweep(policies=[POLICY], now=NOW))
    clock.t += 31
    reports.append(s.sweep(policies=[POLICY], now=NOW))
    assert [(r.terminated, r.held_back) for r in reports] == [(2, 3), (0, 3), (2, 1)]
    assert len(fake.objects) == 1


def test_dry_run_changes_nothing_and_reports_each_workload_once():
    fake = FakeWorkloads(pod("old", "2026-11-22T11:00:00Z"), pod("soon", "2026-11-22T12:05:00Z"))
    s = sweeper(fake, dry_run=True)
    s.sweep(policies=[POLICY], now=NOW)
    s.sweep(policies=[POLICY], now=NOW)
    assert fake.mutations() == []
    assert len(fake.objects) == 2
    assert sorted(e["reason"] for e in fake.events) == ["Expired", "ExpiringSoon"]
    assert all(e["message"].startswith("[dry-run]") for e in fake.events)


def test_expired_deployment_is_scaled_via_its_pods_owner_chain_once():
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ml-a", "uid": "dep"},
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"annotations": {"expires_at": "2026-11-22"}},
                "spec": {"containers": []},
            },
        },
    }
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "d-1",
            "namespace": "ml-a",
            "uid": "rs",
            "ownerReferences": [{"kind": "Deployment", "name": "d", "uid": "dep", "controller": True}],
        },
        "spec": {"replicas": 3, "template": dep["spec"]["template"]},
    }
    pods = [pod(f"d-1-{i}", "2026-11-22") for i in range(3)]
    for p in pods:
        p["metadata"]["ownerReferences"] = [
            {"kind": "ReplicaSet", "name": "d-1", "uid": "rs", "controller": True}
        ]
    fake = FakeWorkloads(dep, rs, *pods)
    report = sweeper(fake).sweep(policies=[POLICY], now=NOW)
    assert report.terminated == 1
    assert [c[:4] for c in fake.mutations()] == [("patch", "Deployment", "ml-a", "d")]
    stored = fake.objects[("Deployment", "ml-a", "d")]
    assert stored["spec"]["replicas"] == 0
    assert stored["metadata"]["annotations"][constants.ORIGINAL_REPLICAS_ANNOTATION] == "3"


@pytest.mark.parametrize("namespace", ["kube-system", "comptroller"])
def test_excluded_namespaces_are_never_touched(namespace):
    everything = FinOpsPolicy.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": "all"},
            "spec": {"expiry": {}},
        }
    )
    fake = FakeWorkloads(pod("old", "2026-11-22T11:00:00Z", namespace=namespace))
    report = sweeper(fake).sweep(
        policies=[everything], now=NOW, excluded_namespaces=frozenset({"kube-system", "comptroller"})
    )
    assert report.terminated == 0 and fake.mutations() == []
