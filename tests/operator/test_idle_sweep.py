"""The idle sweep against fakes of our client layer and of the Prometheus client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lifecycle_fakes import FakeWorkloads

from controller import constants
from controller.engine.models import FinOpsPolicy
from controller.k8s.prometheus import PrometheusError, Series
from controller.operator.effector import Effector
from controller.operator.idle import idle_rules, sweep_idle

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POLICY = FinOpsPolicy.from_object(
    {
        "apiVersion": constants.API_VERSION,
        "kind": "FinOpsPolicy",
        "metadata": {"name": "dev-endpoints"},
        "spec": {
            "match": {"namespaces": ["ml-dev"]},
            "idle": {
                "selector": {"matchLabels": {"environment": "development", "workload_type": "inference"}},
                "idleAfter": "10m",
                "prometheus": {
                    "url": "http://prom.example:9090",
                    "query": 'avg(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace", pod=~"$name-.*"})',
                    "threshold": 5,
                },
            },
        },
    }
)
LABELS = {"environment": "development", "workload_type": "inference"}


def deployment(name, *, labels=LABELS, namespace="ml-dev", replicas=2):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "annotations": {}},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": []}},
        },
    }


class FakePrometheus:
    """Answers per workload name (found in the rendered query); `None` = unreachable."""

    def __init__(self, utilisation: dict[str, float | None]) -> None:
        self.utilisation = utilisation
        self.queries: list[str] = []

    def __call__(self, url, *, timeout):
        self.url = url
        return self

    def query_range(self, query, *, start, end, step_seconds):
        self.queries.append(query)
        for name, value in self.utilisation.items():
            if f'pod=~"{name}-.*"' in query:
                if value is None:
                    raise PrometheusError("prom.example:9090 is unreachable: connection refused")
                t, samples = start.timestamp(), []
                while t <= end.timestamp():
                    samples.append((t, value))
                    t += step_seconds
                return [Series({}, samples)]
        return []


def run(fake, prometheus, **kwargs):
    return sweep_idle(
        rules=idle_rules([POLICY]),
        workloads=fake,
        effector=Effector(fake),
        now=NOW,
        grace_period=timedelta(hours=1),
        prometheus_for=prometheus,
        **kwargs,
    )


def test_only_the_idle_selected_endpoint_is_scaled_to_zero():
    fake = FakeWorkloads(
        deployment("idle"),
        deployment("busy"),
        deployment("silent"),
        deployment("down"),
        deployment("not-selected", labels={"environment": "production", "workload_type": "inference"}),
        deployment("other-ns", namespace="ml-prod"),
    )
    prometheus = FakePrometheus(
        {"idle": 2.0, "busy": 60.0, "down": None, "not-selected": 0.0, "other-ns": 0.0}
    )
    outcomes = run(fake, prometheus)
    assert [o.target for o in outcomes] == ["Deployment/ml-dev/idle"]
    replicas = {name: obj["spec"]["replicas"] for (_, _, name), obj in fake.objects.items()}
    assert replicas == {"idle": 0, "busy": 2, "silent": 2, "down": 2, "not-selected": 2, "other-ns": 2}
    assert (
        fake.objects[("Deployment", "ml-dev", "idle")]["metadata"]["annotations"][
            constants.ORIGINAL_REPLICAS_ANNOTATION
        ]
        == "2"
    )
    assert [e["reason"] for e in fake.events] == ["ScaledToZero"]
    # Only selected workloads were measured at all.
    assert len(prometheus.queries) == 4


def test_prometheus_url_override_is_used():
    prometheus = FakePrometheus({"idle": 1.0})
    run(FakeWorkloads(deployment("idle")), prometheus, prometheus_url_override="http://127.0.0.1:9999")
    assert prometheus.url == "http://127.0.0.1:9999"


def test_woken_workload_is_left_alone_during_the_grace_period():
    woken = deployment("idle")
    woken["metadata"]["annotations"][constants.WOKEN_AT_ANNOTATION] = "2026-11-22T11:30:00Z"
    fake = FakeWorkloads(woken)
    prometheus = FakePrometheus({"idle": 1.0})
    assert run(fake, prometheus) == []
    assert prometheus.queries == [] and fake.mutations() == []


def test_hpa_with_min_zero_owns_scaling():
    hpa = {
        "metadata": {"name": "h"},
        "spec": {"minReplicas": 0, "scaleTargetRef": {"kind": "Deployment", "name": "idle"}},
    }
    fake = FakeWorkloads(deployment("idle"), hpas=[hpa])
    assert run(fake, FakePrometheus({"idle": 1.0})) == []
    assert fake.mutations() == []
