"""Idle GPUs in batch workloads: notice first, suspension only where the policy opts in, never a
deletion, wake resumes. Against fakes of our client layer and of Prometheus, on a fake clock."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from lifecycle_fakes import FakeWorkloads

from controller import constants
from controller.engine.models import FinOpsPolicy
from controller.k8s.prometheus import PrometheusError, Series
from controller.operator import lifecycle, metrics
from controller.operator.effector import Effector, is_suspended
from controller.operator.idle import (
    DEFAULT_IDLE_QUERY,
    Notice,
    batch_skip_reason,
    effective_action,
    idle_rules,
    idle_verdict,
    query_step,
    suspend_window,
    sweep_idle,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)
API_VERSIONS = {
    "Job": "batch/v1",
    "JobSet": "jobset.x-k8s.io/v1alpha2",
    "PyTorchJob": "kubeflow.org/v1",
    "TFJob": "kubeflow.org/v1",
    "MPIJob": "kubeflow.org/v2beta1",
    "RayJob": "ray.io/v1",
}
FLAG_PATHS = {
    "Job": ("spec", "suspend"),
    "JobSet": ("spec", "suspend"),
    "PyTorchJob": ("spec", "runPolicy", "suspend"),
    "TFJob": ("spec", "runPolicy", "suspend"),
    "MPIJob": ("spec", "runPolicy", "suspend"),
    "RayJob": ("spec", "suspend"),
}


def policy(action=None, *, kinds=("Job", "JobSet", "PyTorchJob", "TFJob", "MPIJob", "RayJob"), query=None):
    idle = {
        "kinds": list(kinds),
        "idleAfter": "30m",
        "notifyBefore": "15m",
        "prometheus": {"url": "http://prom.example:9090", "threshold": 5},
    }
    if action:
        idle["action"] = action
    if query:
        idle["prometheus"]["query"] = query
    return FinOpsPolicy.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": f"idle-{(action or 'default').lower()}"},
            "spec": {"match": {"namespaces": ["ml"]}, "idle": idle},
        }
    )


def workload(kind, name, *, labels=None, annotations=None, spec=None, status=None, owner=None):
    obj = {
        "apiVersion": API_VERSIONS.get(kind, "apps/v1"),
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{kind}-{name}",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": spec if spec is not None else {},
    }
    if status:
        obj["status"] = status
    if owner:
        obj["metadata"]["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return obj


def flag(obj, path):
    value = obj
    for key in path:
        value = (value or {}).get(key)
    return value


class FakePrometheus:
    """Per workload name: a constant, a function of unix seconds (None: no sample then), None for
    "unreachable"; the series starts at `since` (default: long ago). Names absent: no data."""

    def __init__(self, values: dict, *, since: dict | None = None) -> None:
        self.values = values
        self.since = since or {}
        self.queries: list[tuple[str, datetime, datetime]] = []

    def __call__(self, url, *, timeout):
        return self

    def query_range(self, query, *, start, end, step_seconds):
        self.queries.append((query, start, end))
        for name, value in self.values.items():
            if f'pod=~"{name}-.*"' not in query:
                continue
            if value is None:
                raise PrometheusError("http://prom.example:9090 is unreachable: connection refused")
            fn = value if callable(value) else (lambda _t, v=value: v)
            t = max(start.timestamp(), self.since.get(name, T0 - timedelta(days=1)).timestamp())
            samples = []
            while t <= end.timestamp():
                v = fn(t)
                if v is not None:
                    samples.append((t, float(v)))
                t += step_seconds
            return [Series({}, samples)] if samples else []
        return []


class Cluster:
    """One fake cluster and one effector, swept at chosen times."""

    def __init__(self, *objects, prometheus, policies, dry_run=False):
        self.fake = FakeWorkloads(*objects)
        self.prometheus = prometheus
        self.policies = policies
        self.effector = Effector(self.fake, dry_run=dry_run)
        self.memory: dict | None = {} if dry_run else None
        self.counted: list = []

    def sweep(self, at):
        return sweep_idle(
            rules=idle_rules(self.policies),
            workloads=self.fake,
            effector=self.effector,
            now=at,
            grace_period=GRACE,
            prometheus_for=self.prometheus,
            memory=self.memory,
            on_scaled=lambda o: self.counted.append(("scaled", o.target)),
            on_suspended=lambda o: self.counted.append(("suspended", o.target)),
        )

    def get(self, kind, name):
        return self.fake.objects[(kind, "ml", name)]

    def annotations(self, kind, name):
        return self.get(kind, name)["metadata"].get("annotations") or {}

    def reasons(self, name=None):
        return [e["reason"] for e in self.fake.events if name is None or e["object"].endswith(f"/{name}")]


# -- the policy: kinds, action, notifyBefore, the default query --------------------------------------


def test_the_model_accepts_batch_kinds_and_defaults_to_no_action_and_a_15m_notice():
    spec = policy().spec.idle
    assert spec.action is None
    assert spec.notify_before == timedelta(minutes=15)
    assert spec.prometheus.query is None
    (rule,) = idle_rules([policy()])
    assert rule.query == DEFAULT_IDLE_QUERY
    assert rule.kinds == ("Job", "JobSet", "PyTorchJob", "TFJob", "MPIJob", "RayJob")


@pytest.mark.parametrize(
    ("action", "kind", "expected"),
    [
        (None, "Deployment", "scale"),
        (None, "StatefulSet", "scale"),
        ("Suspend", "Deployment", "scale"),
        ("Notify", "Deployment", "notify"),
        (None, "PyTorchJob", "notify"),
        ("Notify", "Job", "notify"),
        ("Suspend", "RayJob", "suspend"),
    ],
)
def test_what_the_action_means_per_kind(action, kind, expected):
    assert effective_action(action, kind) == expected


def test_the_default_query_is_the_busiest_gpu_of_the_workloads_pods_by_dcgm_labels():
    prometheus = FakePrometheus({"bert": 1})
    Cluster(workload("PyTorchJob", "bert"), prometheus=prometheus, policies=[policy()]).sweep(T0)
    (query, start, end) = prometheus.queries[0]
    assert query == 'max(DCGM_FI_DEV_GPU_UTIL{namespace="ml", pod=~"bert-.*"})'
    assert (start, end) == (T0 - timedelta(minutes=30), T0)


def test_a_query_the_policy_gives_is_used_instead():
    prometheus = FakePrometheus({"bert": 1})
    custom = 'avg(my_gpu_busy{ns="$namespace", pod=~"$name-.*"})'
    Cluster(workload("Job", "bert"), prometheus=prometheus, policies=[policy(query=custom)]).sweep(T0)
    assert prometheus.queries[0][0] == 'avg(my_gpu_busy{ns="ml", pod=~"bert-.*"})'


# -- Suspend: notice first, then suspension, never deletion -----------------------------------------


def test_an_idle_job_gets_its_notice_first_and_is_suspended_only_after_notify_before():
    cluster = Cluster(
        workload("PyTorchJob", "bert"), prometheus=FakePrometheus({"bert": 1}), policies=[policy("Suspend")]
    )
    (outcome,) = cluster.sweep(T0)
    assert outcome.action == "notify" and outcome.done
    annotations = cluster.annotations("PyTorchJob", "bert")
    assert annotations[constants.IDLE_NOTIFIED_ANNOTATION] == "2026-11-22T12:00:00Z"
    assert annotations[constants.IDLE_SUSPEND_AT_ANNOTATION] == "2026-11-22T12:15:00Z"
    assert not is_suspended(cluster.get("PyTorchJob", "bert"))
    assert cluster.reasons() == ["GPUIdle"]
    (event,) = cluster.fake.events
    assert event["type"] == "Warning"
    assert "will be suspended at 2026-11-22T12:15:00Z (in 15m)" in event["message"]
    assert "comptroller wake PyTorchJob/bert -n ml" in event["message"]

    # Within the notice: nothing more, however often it sweeps.
    for minutes in (1, 5, 14):
        assert cluster.sweep(T0 + timedelta(minutes=minutes)) == []
    assert not is_suspended(cluster.get("PyTorchJob", "bert"))
    assert cluster.reasons() == ["GPUIdle"]

    (outcome,) = cluster.sweep(T0 + timedelta(minutes=15))
    assert outcome.action == "suspend" and outcome.done
    job = cluster.get("PyTorchJob", "bert")
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["metadata"]["annotations"][constants.IDLE_SUSPENDED_ANNOTATION] == "2026-11-22T12:15:00Z"
    assert cluster.reasons() == ["GPUIdle", "IdleSuspended"]
    assert "comptroller wake PyTorchJob/bert -n ml" in cluster.fake.events[-1]["message"]
    assert cluster.counted == [("suspended", "PyTorchJob/ml/bert")]
    # Never deleted; and once suspended, left alone.
    assert cluster.sweep(T0 + timedelta(hours=2)) == []
    assert not [c for c in cluster.fake.calls if c[0] == "delete"]
    assert ("PyTorchJob", "ml", "bert") in cluster.fake.objects


def test_the_suspension_is_judged_on_idle_after_plus_the_whole_notice_period():
    prometheus = FakePrometheus({"bert": 1})
    cluster = Cluster(workload("PyTorchJob", "bert"), prometheus=prometheus, policies=[policy("Suspend")])
    cluster.sweep(T0)
    cluster.sweep(T0 + timedelta(minutes=20))
    _, start, end = prometheus.queries[-1]
    # From idleAfter before the notice (stamped in whole seconds, so from the end of its second).
    second = timedelta(seconds=1)
    assert (start, end) == (T0 - timedelta(minutes=30) + second, T0 + timedelta(minutes=20))
    notice = Notice.of(cluster.annotations("PyTorchJob", "bert"))
    assert suspend_window(
        notice,
        idle_after=timedelta(minutes=30),
        notify_before=timedelta(minutes=15),
        now=T0 + timedelta(hours=1),
    ) == timedelta(minutes=90) - second


def test_the_suspension_window_never_starts_before_the_data_the_notice_judged():
    """Stamps are whole seconds: a notice given at 12:00:04.9, on data from 11:59:56.9 on, reads back
    as 12:00:04. The window one sweep later must not start before 11:59:57, or it would find the
    data short, clear the notice and give a new one with a later suspension."""
    notice = Notice(notified_at=datetime(2026, 11, 10, 12, 0, 4, tzinfo=UTC),
                    suspend_at=datetime(2026, 11, 10, 12, 0, 12, tzinfo=UTC), suspended_at=None)
    now = datetime(2026, 11, 10, 12, 0, 5, 900000, tzinfo=UTC)
    window = suspend_window(notice, idle_after=timedelta(seconds=8), notify_before=timedelta(seconds=8),
                            now=now)
    assert now - window == datetime(2026, 11, 10, 11, 59, 57, tzinfo=UTC)
    # The first sample as late as the notice allowed: 2 steps of slack after 11:59:56.9.
    first = datetime(2026, 11, 10, 11, 59, 58, 900000, tzinfo=UTC).timestamp()
    samples = [(first + i, 0.0) for i in range(8)]
    assert idle_verdict(samples, threshold=5, idle_after=window, now=now, step=query_step(window))
    from_the_stamp = now - notice.notified_at + timedelta(seconds=8)  # the window before this fix
    assert not idle_verdict(samples, threshold=5, idle_after=from_the_stamp, now=now,
                            step=query_step(from_the_stamp))


def test_a_busy_job_is_never_suspended_nor_noted():
    cluster = Cluster(
        workload("PyTorchJob", "busy"),
        workload("Job", "steady"),
        prometheus=FakePrometheus({"busy": 60, "steady": 5}),  # exactly the threshold is not below it
        policies=[policy("Suspend")],
    )
    for minutes in range(0, 120, 5):
        assert cluster.sweep(T0 + timedelta(minutes=minutes)) == []
    assert cluster.fake.mutations() == [] and cluster.fake.events == []


def test_one_busy_gpu_keeps_the_job_running_even_when_the_others_are_idle():
    """The default query takes the busiest GPU; a custom query returning per-GPU series is judged on
    every series (any sample at or above the threshold is not idle)."""

    class PerGpu(FakePrometheus):
        def query_range(self, query, *, start, end, step_seconds):
            self.queries.append((query, start, end))
            t, idle, busy = start.timestamp(), [], []
            while t <= end.timestamp():
                idle.append((t, 0.0))
                busy.append((t, 40.0 if t > end.timestamp() - 120 else 0.0))
                t += step_seconds
            return [Series({"gpu": "0"}, idle), Series({"gpu": "1"}, busy)]

    custom = 'DCGM_FI_DEV_GPU_UTIL{namespace="$namespace", pod=~"$name-.*"}'
    cluster = Cluster(
        workload("PyTorchJob", "bert"), prometheus=PerGpu({}), policies=[policy("Suspend", query=custom)]
    )
    assert cluster.sweep(T0) == []
    assert cluster.fake.mutations() == []


def test_a_busy_moment_during_the_notice_cancels_the_suspension_even_between_sweeps():
    burst = (T0 + timedelta(minutes=7)).timestamp()
    prometheus = FakePrometheus({"bert": lambda t: 50 if abs(t - burst) < 30 else 1})
    cluster = Cluster(workload("PyTorchJob", "bert"), prometheus=prometheus, policies=[policy("Suspend")])
    cluster.sweep(T0)  # notice (the burst is still ahead)
    assert constants.IDLE_SUSPEND_AT_ANNOTATION in cluster.annotations("PyTorchJob", "bert")
    # No sweep saw the burst while it happened; the suspension's window still covers it.
    (outcome,) = cluster.sweep(T0 + timedelta(minutes=15))
    assert outcome.action == "clear"
    assert not is_suspended(cluster.get("PyTorchJob", "bert"))
    annotations = cluster.annotations("PyTorchJob", "bert")
    assert constants.IDLE_NOTIFIED_ANNOTATION not in annotations
    assert constants.IDLE_SUSPEND_AT_ANNOTATION not in annotations
    # Idle again for a whole idleAfter after the burst: a fresh notice, with a fresh deadline.
    assert cluster.sweep(T0 + timedelta(minutes=20)) == []  # the burst is within the last 30m
    (outcome,) = cluster.sweep(T0 + timedelta(minutes=40))
    assert outcome.action == "notify"
    assert (
        cluster.annotations("PyTorchJob", "bert")[constants.IDLE_SUSPEND_AT_ANNOTATION]
        == "2026-11-22T12:55:00Z"
    )
    assert cluster.reasons() == ["GPUIdle", "GPUIdle"]


# -- Notify (the default for batch kinds): an Event and an annotation, nothing else -----------------


def test_notify_never_changes_anything_but_its_annotation_and_notifies_once_per_idle_stretch():
    job = workload("Job", "train", spec={"parallelism": 2, "template": {"spec": {"containers": []}}})
    busy_from = (T0 + timedelta(hours=1)).timestamp()
    busy_until = (T0 + timedelta(hours=1, minutes=10)).timestamp()
    prometheus = FakePrometheus({"train": lambda t: 80 if busy_from <= t <= busy_until else 0})
    cluster = Cluster(job, prometheus=prometheus, policies=[policy()])  # no action: Notify
    spec_before = copy.deepcopy(cluster.get("Job", "train")["spec"])
    for minutes in range(0, 60, 5):
        cluster.sweep(T0 + timedelta(minutes=minutes))
    assert cluster.reasons() == ["GPUIdle"]
    event = cluster.fake.events[0]
    assert "Nothing is changed" in event["message"] and "suspended" not in event["message"]
    annotations = cluster.annotations("Job", "train")
    assert annotations[constants.IDLE_NOTIFIED_ANNOTATION] == "2026-11-22T12:00:00Z"
    assert constants.IDLE_SUSPEND_AT_ANNOTATION not in annotations
    # Busy for a while: the notice is withdrawn; idle for a whole idleAfter again: a second notice.
    cluster.sweep(T0 + timedelta(hours=1, minutes=5))
    assert constants.IDLE_NOTIFIED_ANNOTATION not in cluster.annotations("Job", "train")
    for minutes in range(70, 180, 5):
        cluster.sweep(T0 + timedelta(minutes=minutes))
    assert cluster.reasons() == ["GPUIdle", "GPUIdle"]
    # Only ever annotations: the spec as it was, never a suspend flag, never a deletion.
    assert cluster.get("Job", "train")["spec"] == spec_before
    for call in cluster.fake.mutations():
        assert call[0] == "patch" and set(call[4]) == {"metadata"}, call
        assert set(call[4]["metadata"]) == {"annotations", "resourceVersion"}
    assert cluster.counted == []


def test_notify_on_an_endpoint_leaves_its_replicas_and_suspend_scales_it_to_zero_as_before():
    deployment = workload("Deployment", "llm", spec={"replicas": 2, "template": {"spec": {"containers": []}}})
    notify = Cluster(
        deployment, prometheus=FakePrometheus({"llm": 0}), policies=[policy("Notify", kinds=("Deployment",))]
    )
    (outcome,) = notify.sweep(T0)
    assert outcome.action == "notify"
    assert notify.get("Deployment", "llm")["spec"]["replicas"] == 2
    assert notify.reasons() == ["GPUIdle"]
    scale = Cluster(
        deployment, prometheus=FakePrometheus({"llm": 0}), policies=[policy("Suspend", kinds=("Deployment",))]
    )
    (outcome,) = scale.sweep(T0)
    assert outcome.action == "scale"
    assert scale.get("Deployment", "llm")["spec"]["replicas"] == 0
    assert scale.reasons() == ["ScaledToZero"]
    assert scale.counted == [("scaled", "Deployment/ml/llm")]


# -- dry-run: Events marked [dry-run], the same story once, no change ------------------------------


def test_dry_run_tells_the_story_once_and_changes_nothing():
    cluster = Cluster(
        workload("RayJob", "tune"),
        prometheus=FakePrometheus({"tune": 0}),
        policies=[policy("Suspend")],
        dry_run=True,
    )
    (outcome,) = cluster.sweep(T0)
    assert outcome.action == "notify" and outcome.dry_run and not outcome.done
    assert cluster.sweep(T0 + timedelta(minutes=5)) == []
    (outcome,) = cluster.sweep(T0 + timedelta(minutes=15))
    assert outcome.action == "suspend" and outcome.dry_run and not outcome.done
    assert cluster.sweep(T0 + timedelta(minutes=30)) == []
    assert cluster.reasons() == ["GPUIdle", "IdleSuspended"]
    assert all(e["message"].startswith("[dry-run] ") for e in cluster.fake.events)
    assert cluster.fake.mutations() == []
    assert cluster.counted == []
    # A workload that is gone is forgotten.
    del cluster.fake.objects[("RayJob", "ml", "tune")]
    cluster.sweep(T0 + timedelta(minutes=31))
    assert cluster.memory == {}


# -- each kind: its own suspend flag; wake resumes ----------------------------------------------------


@pytest.mark.parametrize("kind", list(FLAG_PATHS))
def test_each_kind_is_suspended_by_its_own_flag_and_wake_resumes_it(kind):
    path = FLAG_PATHS[kind]
    assert constants.SUSPENDABLE_KINDS[kind][1] == path
    cluster = Cluster(
        workload(kind, "run"), prometheus=FakePrometheus({"run": 0}), policies=[policy("Suspend")]
    )
    cluster.sweep(T0)
    cluster.sweep(T0 + timedelta(minutes=15))
    patch = cluster.fake.mutations()[-1]
    expected = {"metadata": {"annotations": {constants.IDLE_SUSPENDED_ANNOTATION: "2026-11-22T12:15:00Z"}}}
    body = {k: v for k, v in patch[4].items() if k != "metadata"}
    wanted = {"spec": {"suspend": True}} if len(path) == 2 else {"spec": {"runPolicy": {"suspend": True}}}
    assert body == wanted
    assert patch[4]["metadata"]["annotations"] == expected["metadata"]["annotations"]
    obj = cluster.get(kind, "run")
    assert flag(obj, path) is True

    woken_at = T0 + timedelta(hours=1)
    outcome = cluster.effector.wake(obj, now=woken_at)
    assert outcome.action == "restore" and outcome.detail == "resumed"
    obj = cluster.get(kind, "run")
    assert flag(obj, path) is False
    annotations = obj["metadata"]["annotations"]
    assert annotations[constants.WOKEN_AT_ANNOTATION] == "2026-11-22T13:00:00Z"
    for key in (
        constants.IDLE_NOTIFIED_ANNOTATION,
        constants.IDLE_SUSPEND_AT_ANNOTATION,
        constants.IDLE_SUSPENDED_ANNOTATION,
    ):
        assert key not in annotations
    assert cluster.reasons()[-1] == "Woken"
    # Still idle, but woken: the grace period holds the idle loop off, then a fresh notice comes.
    assert cluster.sweep(woken_at + GRACE - timedelta(minutes=1)) == []
    (outcome,) = cluster.sweep(woken_at + GRACE)
    assert outcome.action == "notify"


def test_wake_never_undoes_a_suspension_it_did_not_make():
    job = workload("Job", "queued", spec={"suspend": True}, annotations={constants.WAKE_ANNOTATION: "now"})
    fake = FakeWorkloads(job)
    outcome = Effector(fake).wake(fake.get(fake.resolve("Job"), "ml", "queued"), now=T0)
    assert outcome.detail == "nothing to restore"
    assert fake.objects[("Job", "ml", "queued")]["spec"]["suspend"] is True


def test_wake_during_the_notice_keeps_it_running_for_the_grace_period():
    cluster = Cluster(
        workload("JobSet", "ft"), prometheus=FakePrometheus({"ft": 0}), policies=[policy("Suspend")]
    )
    cluster.sweep(T0)
    cluster.effector.wake(cluster.get("JobSet", "ft"), now=T0 + timedelta(minutes=5))
    assert Notice.of(cluster.annotations("JobSet", "ft")) == Notice(None, None, None)
    assert cluster.sweep(T0 + timedelta(minutes=20)) == []
    assert not is_suspended(cluster.get("JobSet", "ft"))


def test_a_job_resumed_by_hand_starts_over_with_a_fresh_notice():
    job = workload(
        "Job",
        "train",
        spec={"suspend": False},
        annotations={
            constants.IDLE_NOTIFIED_ANNOTATION: "2026-11-22T10:00:00Z",
            constants.IDLE_SUSPEND_AT_ANNOTATION: "2026-11-22T10:15:00Z",
            constants.IDLE_SUSPENDED_ANNOTATION: "2026-11-22T10:15:00Z",
        },
    )
    cluster = Cluster(job, prometheus=FakePrometheus({"train": 0}), policies=[policy("Suspend")])
    (outcome,) = cluster.sweep(T0)
    assert outcome.action == "clear"
    assert cluster.annotations("Job", "train") == {}
    (outcome,) = cluster.sweep(T0 + timedelta(minutes=1))
    assert outcome.action == "notify"  # not suspended on the old notice
    assert not is_suspended(cluster.get("Job", "train"))


# -- no data, gaps, errors: never idle -----------------------------------------------------------------


def test_no_data_a_gap_a_short_history_or_an_unreachable_prometheus_is_never_idle():
    gap = ((T0 - timedelta(minutes=5)).timestamp(), (T0 + timedelta(minutes=1)).timestamp())
    prometheus = FakePrometheus(
        {"gappy": lambda t: None if gap[0] < t < gap[1] else 0, "young": 0, "down": None},
        since={"young": T0 - timedelta(minutes=10)},
    )
    cluster = Cluster(
        workload("Job", "silent"),
        workload("Job", "gappy"),
        workload("Job", "young"),
        workload("PyTorchJob", "down"),
        prometheus=prometheus,
        policies=[policy("Suspend")],
    )
    for minutes in (0, 5, 15):
        assert cluster.sweep(T0 + timedelta(minutes=minutes)) == []
    assert cluster.fake.mutations() == [] and cluster.fake.events == []
    # With 30 minutes of data, all of it idle, the young one gets its notice; the others still nothing.
    (outcome,) = cluster.sweep(T0 + timedelta(minutes=20))
    assert outcome.target == "Job/ml/young" and outcome.action == "notify"


def test_an_unreachable_prometheus_neither_suspends_nor_withdraws_a_notice():
    values = {"bert": 0}
    prometheus = FakePrometheus(values)
    cluster = Cluster(workload("PyTorchJob", "bert"), prometheus=prometheus, policies=[policy("Suspend")])
    cluster.sweep(T0)
    values["bert"] = None  # Prometheus goes away
    assert cluster.sweep(T0 + timedelta(minutes=20)) == []
    annotations = cluster.annotations("PyTorchJob", "bert")
    assert constants.IDLE_SUSPEND_AT_ANNOTATION in annotations
    assert not is_suspended(cluster.get("PyTorchJob", "bert"))


# -- what is left alone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (
            workload("Job", "done", status={"conditions": [{"type": "Complete", "status": "True"}]}),
            "finished",
        ),
        (
            workload("Job", "failed", status={"conditions": [{"type": "Failed", "status": "True"}]}),
            "finished",
        ),
        (
            workload("PyTorchJob", "ok", status={"conditions": [{"type": "Succeeded", "status": "True"}]}),
            "finished",
        ),
        (workload("RayJob", "ray", status={"jobDeploymentStatus": "Complete"}), "finished"),
        (workload("Job", "held", spec={"suspend": True}), "suspended"),
        (workload("MPIJob", "held", spec={"runPolicy": {"suspend": True}}), "suspended"),
        (workload("Job", "child", owner=("JobSet", "ft")), "run by its JobSet ft"),
        (workload("Job", "submitter", owner=("RayJob", "tune")), "run by its RayJob tune"),
        (workload("Job", "gone", annotations={constants.WAKE_ANNOTATION: "x"}), "a wake is pending"),
    ],
)
def test_batch_workloads_left_alone(obj, reason):
    assert batch_skip_reason(obj, now=T0, grace_period=GRACE) == reason
    cluster = Cluster(
        obj, prometheus=FakePrometheus({obj["metadata"]["name"]: 0}), policies=[policy("Suspend")]
    )
    assert cluster.sweep(T0) == [] and cluster.prometheus.queries == []


def test_a_cronjobs_job_is_a_run_of_its_own():
    job = workload("Job", "nightly-28930", owner=("CronJob", "nightly"))
    assert batch_skip_reason(job, now=T0, grace_period=GRACE) is None


def test_a_job_kueue_admits_only_gets_the_notice():
    job = workload("Job", "queued", labels={constants.KUEUE_QUEUE_LABEL: "team-a"})
    cluster = Cluster(job, prometheus=FakePrometheus({"queued": 0}), policies=[policy("Suspend")])
    for minutes in range(0, 90, 5):
        cluster.sweep(T0 + timedelta(minutes=minutes))
    assert cluster.reasons() == ["GPUIdle"]
    assert "Kueue manages its suspension" in cluster.fake.events[0]["message"]
    assert not is_suspended(cluster.get("Job", "queued"))


def test_kinds_the_cluster_does_not_serve_are_skipped():
    fake = FakeWorkloads(served=False)
    assert (
        sweep_idle(
            rules=idle_rules([policy("Suspend")]),
            workloads=fake,
            effector=Effector(fake),
            now=T0,
            grace_period=GRACE,
            prometheus_for=FakePrometheus({}),
        )
        == []
    )


# -- the operator's wiring -----------------------------------------------------------------------------


def test_wake_is_watched_on_every_kind_the_idle_loop_suspends():
    watched = {(group, plural) for group, _, plural in lifecycle.WAKE_KINDS}
    for kind, (group, _) in constants.SUSPENDABLE_KINDS.items():
        assert (group, kind.lower() + "s") in watched


def test_suspensions_have_a_counter_of_their_own():
    names = {m.name for m in metrics.REGISTRY.collect()}
    assert "comptroller_idle_suspended" in names


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_operators_wiring_counts_real_suspensions_and_remembers_dry_run_ones(monkeypatch, dry_run):
    """Through the Lifecycle the operator builds: its dry-run memory, and the suspension counter."""
    from controller.operator.settings import IdleSettings, OperatorConfig

    policy_object = {
        "apiVersion": constants.API_VERSION,
        "kind": "FinOpsPolicy",
        "metadata": {"name": "idle-suspend"},
        "spec": {
            "match": {"namespaces": ["ml"]},
            "idle": {
                "kinds": ["RayJob"],
                "idleAfter": "30m",
                "action": "Suspend",
                "prometheus": {"url": "http://prom.example:9090"},
            },
        },
    }
    fake = FakeWorkloads(policy_object, workload("RayJob", "tune"))
    prometheus = FakePrometheus({"tune": 0})
    real_sweep = lifecycle.sweep_idle
    monkeypatch.setattr(lifecycle, "sweep_idle", lambda **kw: real_sweep(**kw, prometheus_for=prometheus))
    config = OperatorConfig(dry_run=dry_run, idle=IdleSettings(grace_period=3600))
    loops = lifecycle.Lifecycle.build(config, fake)
    before = metrics.IDLE_SUSPENDED._value.get()
    for minutes in (0, 5, 15, 20):
        loops.clock = lambda m=minutes: T0 + timedelta(minutes=m)
        loops.sweep_idle()
    assert [e["reason"] for e in fake.events] == ["GPUIdle", "IdleSuspended"]
    assert all(e["message"].startswith("[dry-run] ") == dry_run for e in fake.events)
    suspended = is_suspended(fake.objects[("RayJob", "ml", "tune")])
    if dry_run:
        assert fake.mutations() == [] and not suspended
        assert metrics.IDLE_SUSPENDED._value.get() == before
        assert set(loops._idle_memory) == {"uid-RayJob-tune"}
    else:
        assert suspended
        assert metrics.IDLE_SUSPENDED._value.get() == before + 1
        assert loops._idle_memory == {}
