"""Budgets that queue instead of refuse (GPUBudget `whenExhausted: Queue`, docs/queueing.md), on the
real control plane: the session's webhook gates pods at creation, the real scheduler leaves them
`SchedulingGated`, and the session's operator (chart RBAC, 2 s ticks) releases them.

- a spent budget: a Job's pod waits SchedulingGated, holding no GPU; raising `gpuHours` releases it
  within 30 s and it runs;
- a 4-pod Job (a gang) under `Projected` is released whole or not at all;
- priorities order the queue;
- the operator killed while pods wait: a user taking the gate off by hand is refused, and after
  its restart every pod is released once;
- a Kueue pod a spent budget cannot pay for waits for the budget's gate too; a user writing Kueue's
  label and gate on their own pod cannot take that gate off: only Kueue's controller can, and the
  pod then waits for the operator; the label alone does not skip the queue;
- a FinOpsException waiving the budget releases its queued pods;
- under `Projected`, the queue reserves up to the expiry key the matching policy uses;
- 20 submissions at once under `Projected`: the operator releases exactly what the budget can
  pay for, however the webhook replicas interleaved them (no overshoot).
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from e2e.helpers import COMPLIANT_LABELS, get_json, policy, wait_until

pytestmark = pytest.mark.timeout(300)

GATE = "finops.comptroller.dev/budget"
CONFIGURATION = "comptroller"


def apply(cluster, obj: dict, *extra: str):
    return cluster.kubectl("apply", "-f", "-", *extra, input=yaml.safe_dump(obj), check=False)


def labels(team: str) -> dict[str, str]:
    return {**COMPLIANT_LABELS, "team": team, "environment": "production"}


def queue_budget(team: str, hours: float, *, admission: str = "Exhausted") -> dict:
    return {
        "apiVersion": "finops.comptroller.dev/v1alpha1",
        "kind": "GPUBudget",
        "metadata": {"name": f"queue-{team}"},
        "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": hours, "period": "Monthly",
                 "admission": admission, "whenExhausted": "Queue"},
    }


def expires_in(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name: str, namespace: str, team: str, *, pods: int = 1, priority_class: str = "",
        expires: str | None = None, annotations: dict[str, str] | None = None) -> dict:
    spec: dict = {
        "restartPolicy": "Never",
        "nodeSelector": {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
        "containers": [{"name": "train", "image": "train:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
    }
    if priority_class:
        spec["priorityClassName"] = priority_class
    template: dict = {"metadata": {"labels": labels(team)}, "spec": spec}
    if expires or annotations:
        template["metadata"]["annotations"] = {**({"expires_at": expires} if expires else {}),
                                               **(annotations or {})}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels(team)},
            "spec": {"parallelism": pods, "completions": pods, "backoffLimit": 0, "template": template}}


def pods_of(cluster, namespace: str, job_name: str) -> list[dict]:
    found = get_json(cluster, "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job_name}")
    return (found or {}).get("items", [])


def gated(pod: dict) -> bool:
    return any(g.get("name") == GATE for g in pod["spec"].get("schedulingGates") or ())


def scheduling_gated(pod: dict) -> bool:
    """What `kubectl get pods` shows as SchedulingGated: PodScheduled False, reason SchedulingGated."""
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "PodScheduled" and c.get("reason") == "SchedulingGated" for c in conditions)


def mutation_sends_every_pod(cluster) -> bool:
    """The operator widened /mutate's matchCondition: a pod may need the budget's gate."""
    config = get_json(cluster, "mutatingwebhookconfiguration", CONFIGURATION) or {}
    for webhook in config.get("webhooks", []):
        for condition in webhook.get("matchConditions") or ():
            if condition.get("name") == "comptroller-may-mutate":
                return condition.get("expression") == "true"
    return False


def events(cluster, namespace: str, reason: str) -> list[dict]:
    found = get_json(cluster, "events", "-n", namespace, "--field-selector", f"reason={reason}") or {}
    return found.get("items", [])


@pytest.fixture
def team(stack, cluster):
    """A team with a queueing budget (made by the test) and the webhook ready to gate its pods."""
    name = f"q-{uuid.uuid4().hex[:6]}"
    yield name
    cluster.kubectl("delete", "gpubudget", f"queue-{name}", "--ignore-not-found", "--wait=false", check=False)


def test_a_spent_budget_queues_a_job_and_releases_it_when_raised(stack, cluster, namespace, team):
    assert apply(cluster, queue_budget(team, 0)).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    created = apply(cluster, job("train", namespace, team))
    assert created.returncode == 0, created.stderr
    pod = wait_until(
        lambda: next((p for p in pods_of(cluster, namespace, "train") if scheduling_gated(p)), None),
        timeout=30, what="the Job's pod SchedulingGated")
    assert gated(pod) and not pod["spec"].get("nodeName")
    assert f"queue-{team}" in pod["metadata"]["annotations"]["finops.comptroller.dev/queued"]
    listed = cluster.kubectl("get", "pods", "-n", namespace).stdout
    assert "SchedulingGated" in listed, listed
    queued = wait_until(lambda: events(cluster, namespace, "BudgetQueued"), timeout=30,
                        what="the BudgetQueued Event")
    assert f"GPU budget queue-{team}: place 1 of 1" in queued[0]["message"], queued[0]["message"]
    status = wait_until(lambda: (get_json(cluster, "gpubudget", f"queue-{team}") or {}).get("status", {})
                        .get("queuedPods") == 1 or None, timeout=30, what="status.queuedPods 1")
    assert status

    raised = datetime.now(UTC)
    assert apply(cluster, queue_budget(team, 100)).returncode == 0

    def running() -> dict | None:
        pods = pods_of(cluster, namespace, "train")
        return pods[0] if pods and pods[0].get("status", {}).get("phase") == "Running" else None

    pod = wait_until(running, timeout=30, what="the released pod running within 30 s")
    assert not gated(pod)
    took = (datetime.now(UTC) - raised).total_seconds()
    print(f"released and running {took:.1f}s after gpuHours was raised")
    assert len(events(cluster, namespace, "BudgetReleased")) == 1


def test_a_gang_is_released_whole_or_not_at_all_and_priorities_order_the_queue(stack, cluster, namespace,
                                                                                 team):
    for name, value in (("queue-high", 1000), ("queue-low", 10)):
        apply(cluster, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                        "metadata": {"name": name}, "value": value})
    # Each pod may use 1 GPU for 1 h: the 4-pod gang needs 4 GPU-hours.
    assert apply(cluster, queue_budget(team, 3.5, admission="Projected")).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    expires = expires_in(1)
    assert apply(cluster, job("gang", namespace, team, pods=4, expires=expires)).returncode == 0
    wait_until(lambda: len([p for p in pods_of(cluster, namespace, "gang") if gated(p)]) == 4, timeout=30,
               what="the gang's 4 pods gated")
    wait_until(lambda: events(cluster, namespace, "BudgetQueued"), timeout=30, what="the gang told it waits")
    assert all(gated(p) for p in pods_of(cluster, namespace, "gang")), "3.5 GPU-hours may not start 3 of 4"

    # Nothing fits; a low-priority job is queued, then a high-priority one.
    assert apply(cluster, queue_budget(team, 0.5, admission="Projected")).returncode == 0
    low = job("low", namespace, team, priority_class="queue-low", expires=expires)
    assert apply(cluster, low).returncode == 0
    wait_until(lambda: pods_of(cluster, namespace, "low"), timeout=30, what="the low job's pod")
    assert apply(cluster, job("high", namespace, team, priority_class="queue-high",
                              expires=expires)).returncode == 0
    wait_until(lambda: pods_of(cluster, namespace, "high"), timeout=30, what="the high job's pod")

    def released(name: str) -> int:
        return sum(not gated(p) for p in pods_of(cluster, namespace, name))

    # Room for one GPU-hour: the high-priority job overtakes the older low one.
    assert apply(cluster, queue_budget(team, 1.5, admission="Projected")).returncode == 0
    wait_until(lambda: released("high") == 1, timeout=30, what="the high-priority job released")
    assert released("low") == 0 and released("gang") == 0
    # One more: the low job (priority 10) is ahead of the gang (priority 0), which needs 4.
    assert apply(cluster, queue_budget(team, 2.5, admission="Projected")).returncode == 0
    wait_until(lambda: released("low") == 1, timeout=30, what="the low-priority job released")
    assert released("gang") == 0, "3 of the gang's 4 pods must not start"
    assert apply(cluster, queue_budget(team, 6.5, admission="Projected")).returncode == 0
    wait_until(lambda: released("gang") == 4, timeout=30, what="the whole gang released")
    status = wait_until(lambda: (lambda s: s if s.get("queuedPods") == 0 else None)(
        (get_json(cluster, "gpubudget", f"queue-{team}") or {}).get("status") or {}), timeout=30,
        what="nothing queued any more")
    assert status["reservedGPUHours"] + status["usedGPUHours"] <= 6.5 + 1e-6


def test_pods_queued_while_the_operator_is_down_are_released_once_after_it_restarts(stack, cluster, namespace,
                                                                                     team):
    assert apply(cluster, queue_budget(team, 0)).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    assert apply(cluster, job("waits", namespace, team, pods=2)).returncode == 0
    wait_until(lambda: len([p for p in pods_of(cluster, namespace, "waits") if gated(p)]) == 2, timeout=30,
               what="two pods gated")
    cluster.stop_process("operator")
    try:
        assert apply(cluster, queue_budget(team, 100)).returncode == 0
        assert all(gated(p) for p in pods_of(cluster, namespace, "waits")), "nobody releases while it is down"
        # The budget has room now, but the gate is the operator's to take off, in turn: not the user's.
        first = pods_of(cluster, namespace, "waits")[0]["metadata"]["name"]
        by_hand = cluster.kubectl("patch", "pod", first, "-n", namespace, "--type=json", "-p",
                                  '[{"op": "remove", "path": "/spec/schedulingGates"}]', check=False)
        assert by_hand.returncode != 0, by_hand.stdout
        assert "taken off by Comptroller's operator" in by_hand.stderr, by_hand.stderr
        assert all(gated(p) for p in pods_of(cluster, namespace, "waits"))
    finally:
        stack.start_operator()
    wait_until(lambda: not any(gated(p) for p in pods_of(cluster, namespace, "waits")), timeout=60,
               what="both pods released after the restart")
    released = events(cluster, namespace, "BudgetReleased")
    assert sorted(e["involvedObject"]["name"] for e in released) == sorted(
        p["metadata"]["name"] for p in pods_of(cluster, namespace, "waits"))


KUEUE_GATE = "kueue.x-k8s.io/admission"
KUEUE = "system:serviceaccount:kueue-system:kueue-controller-manager"


def kueue_pod(name: str, namespace: str, team: str, *, gates: list[str]) -> dict:
    """A plain one-GPU Pod with Kueue's queue-name label, as a user can write it (no Kueue here)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**labels(team), "kueue.x-k8s.io/queue-name": "user-queue"},
                     "annotations": {"expires_at": expires_in(2)}},  # 2 GPU-hours, if it runs that long
        "spec": {"schedulingGates": [{"name": gate} for gate in gates],
                 "nodeSelector": {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
                 "containers": [{"name": "train", "image": "train:1",
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    }


def test_the_kueue_label_alone_does_not_skip_the_queue(stack, cluster, namespace, team):
    """Under `Projected` the operator releases every pod in turn against the reservations: a Pod
    with Kueue's label but no Kueue gating it (Kueue not installed, or not managing the namespace)
    is gated by our mutating webhook as any other and released by the operator."""
    assert apply(cluster, queue_budget(team, 100, admission="Projected")).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    created = cluster.kubectl("create", "-f", "-", "-o", "json", check=False,
                              input=yaml.safe_dump(kueue_pod("label-only", namespace, team, gates=[])))
    assert created.returncode == 0, created.stderr
    assert [g["name"] for g in json.loads(created.stdout)["spec"]["schedulingGates"]] == [GATE]

    def released() -> bool:
        return not get_json(cluster, "pod", "label-only", "-n", namespace)["spec"].get("schedulingGates")

    wait_until(released, timeout=30, what="the operator to release the pod")
    released_events = events(cluster, namespace, "BudgetReleased")
    assert [e["involvedObject"]["name"] for e in released_events] == ["label-only"]


def test_a_kueue_pod_waits_for_the_budget_too_and_only_kueue_ungates_it(stack, cluster, namespace, team):
    """A user can write Kueue's queue-name label and admission gate on their own pod: the pod is
    then taken as Kueue's, but Kueue's quota is not a GPU-hour budget, so a spent budget gates it
    too. Taking Kueue's gate off by hand is refused; Kueue's controller (impersonated here, with
    the RBAC it has in a Kueue install) takes its own off, and the pod still waits for the
    budget's operator, which releases it when the budget has room."""
    assert apply(cluster, queue_budget(team, 0)).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    created = apply(cluster, kueue_pod("claims-kueue", namespace, team, gates=[KUEUE_GATE]))
    assert created.returncode == 0, created.stderr
    assert "Kueue admits this pod, and it also waits SchedulingGated" in created.stderr, created.stderr

    def gates() -> list[str]:
        current = get_json(cluster, "pod", "claims-kueue", "-n", namespace)
        return [g["name"] for g in current["spec"].get("schedulingGates") or ()]

    assert gates() == [KUEUE_GATE, GATE]
    # Kueue's gate only (index 0, tested first so the patch cannot take another one).
    ungate = ("patch", "pod", "claims-kueue", "-n", namespace, "--type=json", "-p",
              json.dumps([{"op": "test", "path": "/spec/schedulingGates/0/name", "value": KUEUE_GATE},
                          {"op": "remove", "path": "/spec/schedulingGates/0"}]))
    by_hand = cluster.kubectl(*ungate, check=False)
    assert by_hand.returncode != 0, by_hand.stdout
    assert f"gate {KUEUE_GATE} is taken off by Kueue, not by hand" in by_hand.stderr, by_hand.stderr
    assert gates() == [KUEUE_GATE, GATE]

    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kueue-pods", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch", "update"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "kueue-pods", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kueue-pods"},
               "subjects": [{"kind": "ServiceAccount", "name": "kueue-controller-manager",
                             "namespace": "kueue-system"}]}
    for obj in (role, binding):
        assert apply(cluster, obj).returncode == 0

    def released_by_kueue() -> bool:
        return cluster.kubectl(*ungate, f"--as={KUEUE}", check=False).returncode == 0

    wait_until(released_by_kueue, timeout=15, what="Kueue's release (once its RoleBinding is in effect)")
    assert gates() == [GATE], "Kueue admitting it does not start it past the spent budget"
    assert apply(cluster, queue_budget(team, 100)).returncode == 0
    wait_until(lambda: gates() == [], timeout=60, what="the operator to release it once the budget has room")


def test_projected_reserves_a_pod_up_to_the_expiry_key_its_policy_uses(stack, cluster, namespace, team):
    """Admission and the operator's queue project a pod to the same expiry: under a policy's
    `expiry: {key: ttl}`, a stale `expires_at` no policy enforces is not what the queue reserves by.
    3 GPU-hours: the first 1-GPU pod (ttl in 2 h) reserves 2; the second (ttl in 2 h, a stale
    `expires_at` in 6 minutes) needs 2 more, so it waits (read under `expires_at`, it fitted)."""
    ttl_policy = policy(f"ttl-{team}", {"match": {"namespaces": [namespace]}, "expiry": {"key": "ttl"}})
    assert apply(cluster, ttl_policy).returncode == 0
    try:
        assert apply(cluster, queue_budget(team, 3, admission="Projected")).returncode == 0
        wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
        time.sleep(5)  # the operator lists the policies' expiry keys once per metering interval (2 s)
        first = job("first", namespace, team, annotations={"ttl": expires_in(2)})
        assert apply(cluster, first).returncode == 0
        wait_until(lambda: [p for p in pods_of(cluster, namespace, "first") if not gated(p)], timeout=30,
                   what="the first pod released")
        stale = {"ttl": expires_in(2), "expires_at": expires_in(0.1)}
        second = job("second", namespace, team, annotations=stale)
        assert apply(cluster, second).returncode == 0
        wait_until(lambda: [p for p in pods_of(cluster, namespace, "second") if gated(p)], timeout=30,
                   what="the second pod gated")
        time.sleep(10)  # five metering intervals: it would have been released by now
        assert all(gated(p) for p in pods_of(cluster, namespace, "second")), "released past the budget"
        status = get_json(cluster, "gpubudget", f"queue-{team}")["status"]
        assert 1.8 <= status["reservedGPUHours"] + status["usedGPUHours"] <= 2.1, status
        assert status["queuedPods"] == 1, status
    finally:
        cluster.kubectl("delete", "finopspolicy", f"ttl-{team}", "--ignore-not-found", check=False)


def test_a_finops_exception_for_the_budget_releases_its_queued_pods(stack, cluster, namespace, team):
    assert apply(cluster, queue_budget(team, 0)).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    assert apply(cluster, job("deadline", namespace, team)).returncode == 0
    wait_until(lambda: [p for p in pods_of(cluster, namespace, "deadline") if gated(p)], timeout=30,
               what="the pod gated by the spent budget")
    exception = {"apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "FinOpsException",
                 "metadata": {"name": "paper-deadline", "namespace": namespace},
                 "spec": {"policies": [f"queue-{team}"], "rules": ["budget"], "reason": "paper deadline",
                          "expiresAt": expires_in(24)}}
    assert apply(cluster, exception).returncode == 0
    wait_until(lambda: all(not gated(p) for p in pods_of(cluster, namespace, "deadline")), timeout=30,
               what="the operator to release the pod under the exception")
    released = events(cluster, namespace, "BudgetReleased")
    assert [e["involvedObject"]["name"] for e in released] == [
        p["metadata"]["name"] for p in pods_of(cluster, namespace, "deadline")]


def test_twenty_concurrent_projected_submissions_never_overspend(stack, cluster, namespace, team):
    # 20 one-GPU pods for one hour each; the budget pays for 5.
    assert apply(cluster, queue_budget(team, 5.5, admission="Projected")).returncode == 0
    wait_until(lambda: mutation_sends_every_pod(cluster), timeout=30, what="/mutate to see every pod")
    expires = expires_in(1)

    def submit(i: int):
        return apply(cluster, job(f"burst-{i:02d}", namespace, team, expires=expires))

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(submit, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]

    def pods() -> list[dict]:
        found = get_json(cluster, "pods", "-n", namespace, "-l", f"team={team}") or {}
        return found.get("items", [])

    wait_until(lambda: len(pods()) == 20, timeout=60, what="20 pods created")
    wait_until(lambda: sum(not gated(p) for p in pods()) == 5, timeout=60, what="5 pods released")
    time.sleep(6)  # a few more sweeps: still 5
    assert sum(not gated(p) for p in pods()) == 5
    status = get_json(cluster, "gpubudget", f"queue-{team}")["status"]
    print(json.dumps({k: status.get(k) for k in ("reservedGPUHours", "queuedPods", "usedGPUHours")}))
    assert status["reservedGPUHours"] + status["usedGPUHours"] <= 5.5 + 1e-6
    assert status["queuedPods"] == 15
