"""The lifecycle scheduler (each sweep at most once per interval, never twice at a time), reading
inputs, and wake with retries; against a fake of our own client layer, no kopf loop."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from lifecycle_fakes import FakeWorkloads

from controller import constants
from controller.operator.lifecycle import Lifecycle, read_inputs, read_policies
from controller.operator.settings import AuditSettings, ExpirySettings, IdleSettings, OperatorConfig

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def config(**intervals: float) -> OperatorConfig:
    return OperatorConfig(
        expiry=ExpirySettings(interval=intervals.get("expiry", 30)),
        idle=IdleSettings(interval=intervals.get("idle", 60), grace_period=600),
        audit=AuditSettings(interval=intervals.get("audit", 300)),
    )


class Counting(Lifecycle):
    """Sweeps replaced by counters; `gate` holds a sweep running until released."""

    runs: dict[str, int]
    gate: threading.Event

    def sweep_expiry(self) -> None:
        self.gate.wait(5)
        self.runs["expiry"] += 1

    def sweep_idle(self) -> None:
        self.runs["idle"] += 1

    def sweep_audit(self) -> None:
        self.runs["audit"] += 1


def lifecycle(cfg: OperatorConfig, fake: FakeWorkloads | None = None) -> Counting:
    built = Lifecycle.build(cfg, fake or FakeWorkloads())
    counting = Counting(
        config=cfg,
        workloads=built.workloads,
        effector=built.effector,
        expiry=built.expiry,
        auditor=built.auditor,
        clock=lambda: NOW,
    )
    counting.runs = {"expiry": 0, "idle": 0, "audit": 0}
    counting.gate = threading.Event()
    counting.gate.set()
    return counting


def test_each_sweep_runs_once_per_interval_whatever_the_number_of_policy_daemons():
    loops = lifecycle(config(expiry=3600, idle=3600, audit=10))

    async def many_daemons_tick() -> None:
        await asyncio.gather(*(loops.tick() for _ in range(5)))
        await loops.settle()
        await loops.tick()
        await loops.settle()

    asyncio.run(many_daemons_tick())
    # Expiry and idle at once; the first audit waits a little (here its 10 s interval).
    assert loops.runs == {"expiry": 1, "idle": 1, "audit": 0}
    loops._started -= 10
    asyncio.run(many_daemons_tick())
    assert loops.runs == {"expiry": 1, "idle": 1, "audit": 1}


def test_a_slow_sweep_is_not_started_twice_and_does_not_hold_up_the_daemon():
    loops = lifecycle(config(expiry=0, idle=3600, audit=3600))
    loops.gate.clear()

    async def scenario() -> None:
        await asyncio.wait_for(loops.tick(), timeout=1)  # returns while the sweep still runs
        await asyncio.sleep(0.1)
        await loops.tick()  # interval elapsed, but the first expiry sweep still runs: skipped
        loops.gate.set()
        await loops.settle()

    asyncio.run(scenario())
    assert loops.runs["expiry"] == 1
    assert loops.tick_every == 0.5  # a zero interval never spins the daemons


def test_read_inputs_skips_broken_and_deleted_policies_and_excludes_our_namespace():
    good = {
        "apiVersion": constants.API_VERSION,
        "kind": "FinOpsPolicy",
        "metadata": {"name": "b"},
        "spec": {"expiry": {}},
    }
    broken = {
        "apiVersion": constants.API_VERSION,
        "kind": "FinOpsPolicy",
        "metadata": {"name": "a"},
        "spec": {"expiry": {"notifyBefore": "soon"}},
    }
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "ml", "labels": {"team": "nlp"}},
    }
    deleted = {**good, "metadata": {"name": "c", "deletionTimestamp": "2026-11-22T11:00:00Z"}}
    inputs = read_inputs(FakeWorkloads(good, broken, deleted, namespace), own_namespace="comptroller")
    assert [p.name for p in inputs.policies] == ["b"]
    assert inputs.namespace_labels == {"ml": {"team": "nlp"}}
    assert inputs.excluded_namespaces == frozenset({"kube-system", "comptroller"})


def test_the_operator_reads_policies_through_the_engines_loader():
    """What admission leaves out (a policy or exception that does not compile) the sweeps leave out
    too, with policies ordered by name; the webhook scope also sees policies being deleted."""
    policies = [
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": name, **extra},
            "spec": {"expiry": {}},
        }
        for name, extra in (("z", {}), ("a", {}), ("m", {"deletionTimestamp": "2026-11-22T11:00:00Z"}))
    ]
    exception = {
        "apiVersion": constants.API_VERSION,
        "kind": "FinOpsException",
        "metadata": {"name": "ok", "namespace": "ml"},
        "spec": {
            "policies": ["a"],
            "rules": ["expiry"],
            "selector": {"matchLabels": {"team": "nlp"}},
            "expiresAt": "2030-01-01T00:00:00Z",
            "reason": "a demo",
        },
    }
    broken = {**exception, "metadata": {"name": "broken", "namespace": "ml"}, "spec": {"reason": "no rules"}}
    fake = FakeWorkloads(*policies, exception, broken)
    inputs = read_inputs(fake, own_namespace="comptroller")
    assert [p.name for p in inputs.policies] == ["a", "z"]
    assert [e.name for e in inputs.exceptions] == ["ok"]
    assert inputs.snapshot.policies == inputs.policies
    assert [p.name for p in read_policies(fake, with_deleting=True)] == ["a", "m", "z"]


def asleep_deployment(annotations: dict[str, str]) -> dict:
    """Deployment ml/llm scaled to zero, at resourceVersion 1."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "llm",
            "namespace": "ml",
            "uid": "u",
            "resourceVersion": "1",
            "annotations": annotations,
        },
        "spec": {"replicas": 0},
    }


def test_wake_retries_on_a_concurrent_change():
    asleep = asleep_deployment({constants.WAKE_ANNOTATION: "", constants.ORIGINAL_REPLICAS_ANNOTATION: "3"})
    fake = FakeWorkloads(asleep)
    fake.objects[("Deployment", "ml", "llm")]["metadata"]["resourceVersion"] = "2"  # changed since the event
    loops = lifecycle(config(), fake)
    outcome = loops.wake(asleep)
    stored = fake.objects[("Deployment", "ml", "llm")]
    assert outcome is not None and outcome.done
    assert stored["spec"]["replicas"] == 3
    assert "neither idle nor expiry puts it back to sleep before 2026-11-22T12:10:00Z" in outcome.detail


def test_wake_of_an_already_woken_workload_is_a_no_op():
    asleep = asleep_deployment({constants.WAKE_ANNOTATION: ""})
    fake = FakeWorkloads(asleep)
    stored = fake.objects[("Deployment", "ml", "llm")]
    stored["metadata"]["resourceVersion"] = "2"
    stored["metadata"]["annotations"] = {}  # someone else already handled it
    assert lifecycle(config(), fake).wake(asleep) is None
    assert stored["spec"]["replicas"] == 0 and stored["metadata"]["annotations"] == {}
