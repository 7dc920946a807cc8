"""Idle scale-to-zero on a real control plane with a real Prometheus: a development inference
Deployment at 2 % GPU utilisation is scaled to zero, one at 60 % and one without metrics are not;
wake (CLI or annotation) restores replicas, the grace period holds, an HPA-targeted one works.
"""

from __future__ import annotations

import time

import pytest

from controller import constants
from e2e.helpers import (
    OperatorProcess,
    cpu_hpa,
    deployment,
    events,
    fresh_namespace,
    get_json,
    install_crds,
    policy,
    unique,
    wait_until,
    wake,
)

IDLE_AFTER = 8
GRACE = 12
LABELS = {"environment": "development", "workload_type": "inference"}

# These tests run operators of their own; the stack's must not act on their objects meanwhile.
pytestmark = pytest.mark.usefixtures("quiet_stack_operator")


@pytest.fixture(scope="module")
def setup(cluster, prometheus):
    install_crds(cluster)
    namespace = fresh_namespace(cluster, "e2e-idle")
    name = unique("e2e-idle")
    cluster.apply(
        [
            policy(
                name,
                {
                    "match": {"namespaces": [namespace]},
                    "idle": {
                        "selector": {"matchLabels": LABELS},
                        "kinds": ["Deployment", "StatefulSet"],
                        "idleAfter": f"{IDLE_AFTER}s",
                        "prometheus": {
                            "url": prometheus.url,
                            "threshold": 5,
                            "query": 'avg(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace", pod=~"$name-.*"})',
                        },
                    },
                },
            )
        ]
    )
    yield namespace
    cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)



def endpoint(name: str, namespace: str, *, replicas: int = 1, labels: dict | None = None) -> dict:
    return deployment(name, namespace, replicas=replicas, labels=labels or LABELS, instance_type="g5.xlarge",
                      image="vllm")


def replicas(cluster, namespace: str, name: str) -> int:
    return get_json(cluster, "deployment", name, "-n", namespace)["spec"]["replicas"]


def test_idle_endpoints_sleep_busy_and_unmeasured_ones_do_not_and_wake_restores(cluster, setup, prometheus):
    namespace = setup
    for name, utilisation in (("idle", 2), ("busy", 60), ("hpa", 1), ("prod", 0)):
        prometheus.exporter.set(namespace, f"{name}-0", utilisation)
    cluster.apply(
        [
            endpoint("idle", namespace),
            endpoint("busy", namespace),
            endpoint("silent", namespace),
            endpoint("hpa", namespace, replicas=2),
            # Idle too, but not what the policy's idle selector picks (a production endpoint).
            endpoint("prod", namespace, labels={"environment": "production", "workload_type": "inference"}),
            cpu_hpa("hpa", namespace, min_replicas=2, max_replicas=4),
        ]
    )
    prometheus.wait_for_series(f'DCGM_FI_DEV_GPU_UTIL{{namespace="{namespace}"}}', count=4)
    with OperatorProcess(
        cluster,
        "--idle-interval",
        "2",
        "--wake-grace-period",
        str(GRACE),
        "--expiry-interval",
        "3600",
        "--audit-interval",
        "3600",
    ) as operator:
        wait_until(
            lambda: replicas(cluster, namespace, "idle") == 0 and replicas(cluster, namespace, "hpa") == 0,
            timeout=IDLE_AFTER + 40,
            what="the idle endpoints to be scaled to zero",
        )
        time.sleep(5)  # more sweeps: the others stay up
        assert {n: replicas(cluster, namespace, n) for n in ("busy", "silent", "prod")} == {
            "busy": 1,
            "silent": 1,
            "prod": 1,
        }

        idle = get_json(cluster, "deployment", "idle", "-n", namespace)
        assert idle["metadata"]["annotations"][constants.ORIGINAL_REPLICAS_ANNOTATION] == "1"
        assert events(cluster, namespace, reason="ScaledToZero", name="idle")
        assert not events(cluster, namespace, reason="ScaledToZero", name="busy")
        log = operator.log()
        assert "busy is not idle: value 60" in log
        assert "silent is not idle: no data in Prometheus" in log

        # The HPA is left as it was: it stops acting on a target at zero and resumes after wake.
        hpa_target = get_json(cluster, "deployment", "hpa", "-n", namespace)
        assert hpa_target["metadata"]["annotations"][constants.ORIGINAL_REPLICAS_ANNOTATION] == "2"
        assert hpa_target["metadata"]["annotations"][constants.HPA_ANNOTATION] == "hpa:2"
        assert get_json(cluster, "hpa", "hpa", "-n", namespace)["spec"]["minReplicas"] == 2

        # Wake by hand (annotation) and by the CLI.
        cluster.kubectl("annotate", "deployment", "hpa", "-n", namespace, f"{constants.WAKE_ANNOTATION}=now")
        woken = wake(cluster, "deploy/idle", namespace)
        assert woken.returncode == 0, woken.stderr
        woken_at = time.monotonic()
        wait_until(lambda: replicas(cluster, namespace, "hpa") == 2, timeout=20, what="the HPA target's wake")
        assert replicas(cluster, namespace, "idle") == 1
        assert events(cluster, namespace, reason="Woken", name="idle")

        # Still idle in Prometheus, but within the grace period it stays up; after it, it sleeps again.
        time.sleep(max(GRACE - 4 - (time.monotonic() - woken_at), 0))
        assert replicas(cluster, namespace, "idle") == 1
        wait_until(
            lambda: replicas(cluster, namespace, "idle") == 0,
            timeout=GRACE + 30,
            what="the idle endpoint to sleep again after the grace period",
        )


def test_unreachable_prometheus_is_never_idle(cluster, setup, prometheus):
    namespace = setup
    prometheus.exporter.set(namespace, "lonely-0", 0)
    cluster.apply([endpoint("lonely", namespace)])
    with OperatorProcess(
        cluster,
        "--idle-interval",
        "1",
        "--prometheus-url",
        "http://127.0.0.1:9",
        "--prometheus-timeout",
        "1",
        "--expiry-interval",
        "3600",
        "--audit-interval",
        "3600",
    ) as operator:
        wait_until(
            lambda: "lonely is not idle" in operator.log() and "unreachable" in operator.log(),
            timeout=30,
            what="the operator to report Prometheus unreachable",
        )
        time.sleep(3)
    assert replicas(cluster, namespace, "lonely") == 1
