"""The effector against a fake of our own client layer: what each kind gets, dry-run, wake."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lifecycle_fakes import FakeWorkloads

from controller import constants
from controller.k8s.workloads import Conflict
from controller.operator.effector import Effector, restored_replicas, termination_of

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EXPIRED_AT = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)


def obj(kind, name="w", *, api_version="v1", spec=None, annotations=None, status=None):
    o = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "annotations": annotations or {}},
        "spec": spec or {},
    }
    if status:
        o["status"] = status
    return o


@pytest.mark.parametrize(
    ("workload", "action", "mutations"),
    [
        (obj("Pod"), "delete", [("delete", "Pod", "ml", "w", "Background")]),
        (obj("Job", api_version="batch/v1"), "delete", [("delete", "Job", "ml", "w", "Background")]),
        (
            obj("PyTorchJob", api_version="kubeflow.org/v1"),
            "delete",
            [("delete", "PyTorchJob", "ml", "w", "Background")],
        ),
        (
            obj("Deployment", api_version="apps/v1", spec={"replicas": 3}),
            "scale",
            [
                (
                    "patch",
                    "Deployment",
                    "ml",
                    "w",
                    {
                        "metadata": {
                            "annotations": {
                                constants.EXPIRED_ANNOTATION: "2026-11-22T12:00:00Z",
                                constants.ORIGINAL_REPLICAS_ANNOTATION: "3",
                            },
                            "resourceVersion": "1",
                        },
                        "spec": {"replicas": 0},
                    },
                )
            ],
        ),
        (
            obj("CronJob", api_version="batch/v1", status={"active": [{"name": "w-1", "uid": "j1"}]}),
            "suspend",
            [
                (
                    "patch",
                    "CronJob",
                    "ml",
                    "w",
                    {
                        "metadata": {
                            "annotations": {constants.EXPIRED_ANNOTATION: "2026-11-22T12:00:00Z"},
                            "resourceVersion": "1",
                        },
                        "spec": {"suspend": True},
                    },
                ),
                ("delete", "Job", "ml", "w-1", "Background"),
            ],
        ),
        (
            obj("DaemonSet", api_version="apps/v1"),
            "park",
            [
                (
                    "patch",
                    "DaemonSet",
                    "ml",
                    "w",
                    {
                        "metadata": {
                            "annotations": {constants.EXPIRED_ANNOTATION: "2026-11-22T12:00:00Z"},
                            "resourceVersion": "1",
                        },
                        "spec": {
                            "template": {"spec": {"nodeSelector": {constants.EXPIRED_ANNOTATION: "true"}}}
                        },
                    },
                )
            ],
        ),
    ],
)
def test_terminate_each_kind(workload, action, mutations):
    fake = FakeWorkloads(workload, obj("Job", "w-1", api_version="batch/v1"))
    outcome = Effector(fake).terminate(workload, expires_at=EXPIRED_AT, policy="p", now=NOW)
    assert (outcome.action, outcome.done, outcome.dry_run) == (action, True, False)
    assert fake.mutations() == mutations
    assert [e["reason"] for e in fake.events] == [constants.REASON_EXPIRED]
    assert "expired at 2026-11-22T11:00:00Z under policy p" in fake.events[0]["message"]


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "CronJob", "DaemonSet"])
def test_dry_run_changes_nothing_but_says_what_it_would_do(kind):
    workload = obj(kind, api_version="v1" if kind == "Pod" else "apps/v1", spec={"replicas": 2})
    fake = FakeWorkloads(workload)
    effector = Effector(fake, dry_run=True)
    outcome = effector.terminate(workload, expires_at=EXPIRED_AT, policy="p", now=NOW)
    notice = effector.notify_expiring(workload, expires_at=EXPIRED_AT, policy="p", now=NOW)
    woken = effector.wake(workload, now=NOW)
    assert fake.mutations() == []
    assert not outcome.done and outcome.dry_run and str(outcome).startswith("would ")
    assert not notice.done and not woken.done
    assert all(e["message"].startswith("[dry-run] ") for e in fake.events)
    assert [e["reason"] for e in fake.events] == ["Expired", "ExpiringSoon", "Woken"]


def test_scaling_never_overwrites_a_remembered_replica_count():
    # A second sweep (or a crash between steps) must not replace the real size by 0.
    workload = obj(
        "Deployment",
        api_version="apps/v1",
        spec={"replicas": 0},
        annotations={constants.ORIGINAL_REPLICAS_ANNOTATION: "4"},
    )
    fake = FakeWorkloads(workload)
    Effector(fake).scale_to_zero(workload, reason="idle", now=NOW)
    annotations = fake.objects[("Deployment", "ml", "w")]["metadata"]["annotations"]
    assert annotations[constants.ORIGINAL_REPLICAS_ANNOTATION] == "4"


def test_scale_to_zero_records_the_hpa_and_wake_restores_at_least_its_minimum():
    workload = obj("Deployment", api_version="apps/v1", spec={"replicas": 1})
    hpa = {
        "metadata": {"name": "llm-hpa"},
        "spec": {"minReplicas": 2, "scaleTargetRef": {"kind": "Deployment", "name": "w"}},
    }
    fake = FakeWorkloads(workload, hpas=[hpa])
    effector = Effector(fake)
    effector.scale_to_zero(workload, reason="idle", now=NOW)
    stored = fake.objects[("Deployment", "ml", "w")]
    assert stored["spec"]["replicas"] == 0
    assert stored["metadata"]["annotations"][constants.HPA_ANNOTATION] == "llm-hpa:2"
    assert [e["reason"] for e in fake.events] == ["ScaledToZero"]

    effector.wake(stored, now=NOW)
    stored = fake.objects[("Deployment", "ml", "w")]
    assert stored["spec"]["replicas"] == 2
    assert stored["metadata"]["annotations"] == {constants.WOKEN_AT_ANNOTATION: "2026-11-22T12:00:00Z"}


@pytest.mark.parametrize(
    ("kind", "spec", "annotations", "restored_spec"),
    [
        ("Deployment", {"replicas": 0}, {constants.ORIGINAL_REPLICAS_ANNOTATION: "3"}, {"replicas": 3}),
        ("StatefulSet", {"replicas": 0}, {constants.ORIGINAL_REPLICAS_ANNOTATION: "2"}, {"replicas": 2}),
        ("CronJob", {"suspend": True}, {constants.EXPIRED_ANNOTATION: "x"}, {"suspend": False}),
        (
            "DaemonSet",
            {"template": {"spec": {"nodeSelector": {constants.EXPIRED_ANNOTATION: "true", "a": "b"}}}},
            {constants.EXPIRED_ANNOTATION: "x"},
            {"template": {"spec": {"nodeSelector": {"a": "b"}}}},
        ),
        # Not ours to restore: only the annotations are cleaned up.
        ("Deployment", {"replicas": 0}, {}, {"replicas": 0}),
        ("CronJob", {"suspend": True}, {}, {"suspend": True}),
    ],
)
def test_wake_restores_what_was_taken(kind, spec, annotations, restored_spec):
    workload = obj(
        kind, api_version="apps/v1", spec=spec, annotations={constants.WAKE_ANNOTATION: "", **annotations}
    )
    fake = FakeWorkloads(workload)
    outcome = Effector(fake).wake(workload, now=NOW)
    stored = fake.objects[(kind, "ml", "w")]
    assert outcome.done
    assert stored["spec"] == restored_spec
    assert constants.WAKE_ANNOTATION not in stored["metadata"]["annotations"]
    assert stored["metadata"]["annotations"][constants.WOKEN_AT_ANNOTATION] == "2026-11-22T12:00:00Z"
    assert [e["reason"] for e in fake.events] == ["Woken"]


def test_a_concurrent_change_is_refused_not_overwritten():
    workload = obj("Deployment", api_version="apps/v1", spec={"replicas": 3})
    fake = FakeWorkloads(workload)
    fake.objects[("Deployment", "ml", "w")]["metadata"]["resourceVersion"] = "7"  # someone else wrote
    with pytest.raises(Conflict):
        Effector(fake).scale_to_zero(workload, reason="idle", now=NOW)
    assert fake.objects[("Deployment", "ml", "w")]["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("annotations", "replicas"),
    [
        ({constants.ORIGINAL_REPLICAS_ANNOTATION: "3"}, 3),
        ({constants.ORIGINAL_REPLICAS_ANNOTATION: "0"}, 1),
        ({constants.ORIGINAL_REPLICAS_ANNOTATION: "junk"}, 1),
        ({constants.ORIGINAL_REPLICAS_ANNOTATION: "1", constants.HPA_ANNOTATION: "h:3"}, 3),
        ({constants.ORIGINAL_REPLICAS_ANNOTATION: "5", constants.HPA_ANNOTATION: "h:3"}, 5),
        ({constants.ORIGINAL_REPLICAS_ANNOTATION: "5", constants.HPA_ANNOTATION: "h:junk"}, 5),
        ({}, 1),
    ],
)
def test_restored_replicas(annotations, replicas):
    assert restored_replicas(annotations) == replicas


@pytest.mark.parametrize(
    ("kind", "how"),
    [
        ("Pod", "delete"),
        ("Job", "delete"),
        ("RayJob", "delete"),
        ("Deployment", "scale"),
        ("ReplicaSet", "scale"),
        ("StatefulSet", "scale"),
        ("CronJob", "suspend"),
        ("DaemonSet", "park"),
    ],
)
def test_termination_of(kind, how):
    assert termination_of(kind) == how
