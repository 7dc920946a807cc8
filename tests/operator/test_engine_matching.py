"""The operator asks the engine which policies select a workload and how many GPUs it has, with
each policy's own `gpu.resources`: expiry, idle and metering select exactly what admission judges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller import constants
from controller.engine import Snapshot, matching_policies
from controller.engine.expiry import format_annotation
from controller.engine.models import FinOpsException, FinOpsPolicy
from controller.metering.budgets import Budget
from controller.metering.usage import pod_record
from controller.operator.expiry import expiry_terms
from controller.operator.idle import idle_rules

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PAST = format_annotation(NOW - timedelta(hours=1))
SOON = format_annotation(NOW + timedelta(hours=5))


def policy(name, **spec):
    return FinOpsPolicy.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def gpu_job(resource="nvidia.com/gpu", *, expires=PAST, labels=None):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "train",
            "namespace": "ml",
            "uid": "uid-train",
            "annotations": {"expires_at": expires},
        },
        "spec": {
            "template": {
                "metadata": {"labels": labels or {"team": "nlp"}},
                "spec": {"containers": [{"name": "c", "resources": {"limits": {resource: 1}}}]},
            }
        },
    }


def test_a_gpu_only_expiry_policy_after_another_one_still_terminates():
    """Defect: the GPUs were counted once, from the first policy's gpuOnly flag (0 for a policy
    that is not gpuOnly), and that 0 was reused for the gpuOnly policy after it."""
    everything = policy("a-everything", expiry={"notifyBefore": "1h"}, match={"namespaces": ["other"]})
    gpu_only = policy("b-gpu-experiments", expiry={"notifyBefore": "1h"}, match={"gpuOnly": True})
    terms = expiry_terms(gpu_job(), [everything, gpu_only], now=NOW)
    assert terms is not None and terms.policy == "b-gpu-experiments"


def test_expiry_counts_gpus_with_the_policys_own_resources():
    amd_only = policy("amd", expiry={}, match={"gpuOnly": True}, gpu={"resources": ["amd.com/gpu"]})
    assert expiry_terms(gpu_job("amd.com/gpu"), [amd_only], now=NOW) is not None
    assert expiry_terms(gpu_job("nvidia.com/gpu"), [amd_only], now=NOW) is None


def test_idle_selects_with_the_policys_own_resources():
    idle = {
        "selector": {"matchLabels": {"team": "nlp"}},
        "idleAfter": "1h",
        "prometheus": {"url": "http://prom:9090", "query": "up", "threshold": 1},
    }
    mig = policy(
        "mig-endpoints", idle=idle, match={"gpuOnly": True}, gpu={"resources": ["nvidia.com/mig-1g.10gb"]}
    )
    (rule,) = idle_rules([mig])
    assert rule.matches(gpu_job("nvidia.com/mig-1g.10gb"))
    assert not rule.matches(gpu_job("nvidia.com/gpu"))
    assert not rule.matches(gpu_job("nvidia.com/mig-1g.10gb", labels={"team": "vision"}))


def record_missing():
    raise AssertionError("an AMD GPU pod has no metering record")


def test_metering_charges_a_budget_for_the_resources_it_names():
    """An operator told to count only nvidia.com/gpu (`--gpu-resource`) still records every
    accelerator a pod asks for, so a budget naming amd.com/gpu is charged for it; by default
    every accelerator counts."""
    pod = {
        "metadata": {"uid": "u", "namespace": "ml", "name": "p", "labels": {"team": "nlp"}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"amd.com/gpu": "2"}}}]},
        "status": {"phase": "Running", "containerStatuses": [{"state": {"running": {"startedAt": PAST}}}]},
    }
    assert (pod_record(pod) or record_missing()).gpus == 2
    record = pod_record(pod, gpu_resources=("nvidia.com/gpu",))
    assert record is not None and record.gpus == 0
    budget = Budget.from_object(
        {
            "metadata": {"name": "team-nlp"},
            "spec": {
                "selector": {"matchLabels": {"team": "nlp"}},
                "gpuHours": 10,
                "resources": ["amd.com/gpu"],
            },
        }
    )
    assert record.gpus_of(budget.resources) == 2
    assert record.gpu_hours(NOW - timedelta(hours=2), NOW, now=NOW, resources=budget.resources) == 2.0


def test_matching_policies_answers_like_evaluate():
    labels_everywhere = policy("labels", labels={"required": [{"key": "team"}]})
    amd_gpu_only = policy(
        "amd", match={"gpuOnly": True}, gpu={"resources": ["amd.com/gpu"], "maxGPUsPerPod": 8}
    )
    vision = policy(
        "vision", match={"selector": {"matchLabels": {"team": "vision"}}}, labels={"required": []}
    )
    snapshot = Snapshot(policies=(labels_everywhere, amd_gpu_only, vision))
    found = matching_policies(gpu_job("amd.com/gpu"), snapshot=snapshot, now=NOW)
    # Every accelerator counts by default: the AMD GPU is a GPU to the labels policy too.
    assert [(m.policy.name, m.gpus) for m in found] == [("labels", 1), ("amd", 1)]
    assert (
        matching_policies(
            gpu_job("amd.com/gpu"),
            snapshot=Snapshot(policies=(labels_everywhere,), excluded_namespaces=frozenset({"ml"})),
            now=NOW,
        )
        == []
    )


def test_matching_policies_says_what_a_live_exception_waives():
    expiring = policy("expiring", expiry={})
    exception = FinOpsException.from_object(
        {
            "apiVersion": constants.API_VERSION,
            "kind": "FinOpsException",
            "metadata": {"name": "e", "namespace": "ml"},
            "spec": {
                "policies": ["expiring"],
                "rules": ["expiry"],
                "selector": {"matchLabels": {"team": "nlp"}},
                "expiresAt": SOON,
                "reason": "demo",
            },
        }
    )
    snapshot = Snapshot(policies=(expiring,), exceptions=(exception,))
    (match,) = matching_policies(gpu_job(), snapshot=snapshot, now=NOW)
    assert match.waived == {"expiry"}
    (later,) = matching_policies(gpu_job(), snapshot=snapshot, now=NOW + timedelta(hours=6))
    assert later.waived == frozenset()
    assert expiry_terms(gpu_job(), [expiring], now=NOW, exceptions=[exception]) is None
