"""GPU-hour metering on the real control plane with kwok GPU nodes.

Ground truth comes from the pods' own status timestamps (container `startedAt`; `finishedAt` of
pods that finished; `deletionTimestamp` of pods deleted with `--grace-period=0 --force`, which
the API server sets at the delete), so budgets are compared with what the cluster recorded.

Each test runs its own operator process (`--standalone`, 2 s ticks) so it can kill it; an
operator the session's stack runs is stopped for the test and started again afterwards.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from e2e.cluster.plane import REPO, free_port
from e2e.helpers import install_crds

pytestmark = pytest.mark.timeout(300)

COMPTROLLER = Path(sys.executable).parent / "comptroller"
OWN_NAMESPACE = "comptroller-system"
IGNORE_LABEL = "finops.comptroller.dev/ignore"
INTERVAL = 2.0
TOLERANCE = 0.01

def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Operator:
    """`comptroller operator` as a child process we can SIGKILL and restart."""

    def __init__(self, cluster, log: Path, *, peering: tuple[str, int] | None = None,
                 kubeconfig: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.log = log
        self.peering = peering
        self.kubeconfig = kubeconfig or Path(cluster.kubeconfig)
        self.extra = extra
        self.process: subprocess.Popen | None = None
        self.liveness_port = free_port()
        self.metrics_port = free_port()

    def start(self) -> None:
        if self.peering:
            name, priority = self.peering
            ha = ["--peering", name, "--priority", str(priority)]
        else:
            ha = ["--standalone"]
        argv = [str(COMPTROLLER), "operator", "--kubeconfig", str(self.kubeconfig), *ha,
                "--namespace", OWN_NAMESPACE, "--metering-interval", str(INTERVAL),
                "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port),
                *self.extra]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def get(self, port: int, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()

    def serving(self) -> bool:
        """Whether its metrics endpoint answers (a busy machine can take seconds to start it)."""
        try:
            return self.get(self.metrics_port, "/metrics")[0] == 200
        except OSError:
            return False

    def committed_ticks(self) -> float:
        return self.ticks("committed")

    def ticks(self, outcome: str) -> float:
        _, text = self.get(self.metrics_port, "/metrics")
        for line in text.splitlines():
            if line.startswith(f'comptroller_metering_ticks_total{{outcome="{outcome}"}}'):
                return float(line.split()[-1])
        return 0.0

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def metering_cluster(cluster):
    """The plane with the CRDs metering needs and Comptroller's namespace."""
    install_crds(cluster)
    cluster.create_namespace(OWN_NAMESPACE)
    return cluster


@pytest.fixture
def operator(metering_cluster, quiet_stack_operator, tmp_path) -> Iterator[Operator]:
    own = Operator(metering_cluster, tmp_path / "operator.log")  # one metering operator at a time
    try:
        yield own
    finally:
        if own.process and own.process.poll() is None:
            own.process.kill()
            own.process.wait(10)


def kubectl_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def wait_for(what: str, predicate: Callable[[], object], *, timeout: float, operator: Operator | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    log = f"\noperator log:\n{operator.tail()}" if operator else ""
    raise AssertionError(f"timed out waiting for {what}{log}")


def labels(team: str) -> dict[str, str]:
    """Labels that satisfy the default policies, should the webhook be registered."""
    return {"team": team, "project": "metering", "model_id": "bert-base", "environment": "production",
            "lifecycle_phase": "training", "cost_center": "cc-100"}


def gpu_pod(name: str, namespace: str, team: str, gpus: int, instance_type: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(team)},
        "spec": {
            "nodeSelector": {"node.kubernetes.io/instance-type": instance_type},
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": "train:latest",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
    }


def budget(name: str, team: str, gpu_hours: float, **spec) -> dict:
    return {"apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "GPUBudget", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": gpu_hours, "period": "Monthly",
                     "pricePerGPUHour": {"default": 2.0}, **spec}}


def budgeted_team(cluster, prefix: str) -> str:
    """A fresh team with a namespace of its own (the webhook leaves it alone) and a GPUBudget of
    1,000 GPU-hours, all three named alike."""
    team = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(team, labels={IGNORE_LABEL: "true"})
    cluster.apply([budget(team, team, 1000)])
    return team


def peers(cluster, peering: str) -> dict:
    return kubectl_json(cluster, "get", "clusterkopfpeering", peering).get("status") or {}


def started_at(cluster, namespace: str, name: str) -> float | None:
    """When the pod started holding its GPUs: bound to its node (its PodScheduled condition, as
    docs/metering.md defines it), once a container runs; None before."""
    pod = kubectl_json(cluster, "get", "pod", "-n", namespace, name)
    status = pod.get("status") or {}
    states = [s.get("state") or {} for s in status.get("containerStatuses") or ()]
    stamps = [(s.get("running") or s.get("terminated") or {}).get("startedAt") for s in states]
    stamps = [parse(s) for s in stamps if s]
    if not stamps:
        return None
    scheduled = [c.get("lastTransitionTime") for c in status.get("conditions") or ()
                 if c.get("type") == "PodScheduled" and c.get("status") == "True"]
    return parse(scheduled[0]) if scheduled and scheduled[0] else min(stamps)


def finish(cluster, namespace: str, name: str) -> float:
    """Make kwok terminate the pod's containers (Succeeded); returns their finishedAt."""
    cluster.kubectl("annotate", "pod", "-n", namespace, name, "e2e.comptroller.dev/finish=Succeeded")

    def finished():
        pod = kubectl_json(cluster, "get", "pod", "-n", namespace, name)
        if pod["status"].get("phase") != "Succeeded":
            return None
        return max(parse(s["state"]["terminated"]["finishedAt"]) for s in pod["status"]["containerStatuses"])

    return wait_for(f"{name} to finish", finished, timeout=30)


def delete_now(cluster, namespace: str, name: str) -> float:
    """Delete with no grace period; returns the deletionTimestamp the API server set (the pod is
    held by the metering finalizer until metered; if it is already gone, our own clock)."""
    before = time.time()
    cluster.kubectl("delete", "pod", "-n", namespace, name, "--grace-period=0", "--force", "--wait=false")
    got = cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "jsonpath={.metadata.deletionTimestamp}",
                          check=False)
    return parse(got.stdout) if got.returncode == 0 and got.stdout else float(int(before))


def delete_budgets(cluster, *names: str) -> None:
    """Delete budgets while the operator runs (kopf's finalizer on them goes with their daemon);
    their ledgers, owned by them, are garbage-collected."""
    cluster.kubectl("delete", "gpubudget", *names, "--timeout=30s")
    for name in names:
        wait_for(f"ledger of {name} garbage-collected", lambda n=name: cluster.kubectl(
            "get", "configmap", "-n", OWN_NAMESPACE, f"comptroller-ledger-{n}", check=False).returncode != 0,
            timeout=60)


def wait_pods_gone(cluster, namespace: str, operator: Operator | None = None) -> None:
    """Deleted pods leave once metered (the operator releases the metering finalizer)."""
    wait_for(f"pods of {namespace} released", lambda: not kubectl_json(cluster, "get", "pods", "-n",
                                                                       namespace)["items"],
             timeout=30, operator=operator)


def budget_status(cluster, name: str) -> dict:
    return kubectl_json(cluster, "get", "gpubudget", name).get("status") or {}


def settled(cluster, name: str, after: float) -> dict | None:
    """The budget's status once it was metered past `after` with nothing running."""
    status = budget_status(cluster, name)
    metered = status.get("lastMeteredAt")
    if metered and parse(metered) > after + INTERVAL and status.get("runningGPUs") == 0:
        return status
    return None


def test_usage_matches_ground_truth_through_an_operator_kill(metering_cluster, operator):
    cluster = metering_cluster
    run = uuid.uuid4().hex[:6]
    teams = {"a": f"meter-a-{run}", "b": f"meter-b-{run}"}
    namespaces = {k: f"meter-{k}-{run}" for k in teams}
    for ns in namespaces.values():
        # Admission is not under test here: keep the webhook (if registered) out of the way.
        cluster.create_namespace(ns, labels={IGNORE_LABEL: "true"})
    budgets = {k: f"meter-{k}-{run}" for k in teams}
    cluster.apply([budget(budgets[k], team, 1000) for k, team in teams.items()])
    operator.start()

    pods = {  # name -> (team key, GPUs, instance type)
        "a-big": ("a", 4, "g6.12xlarge"),
        "a-small": ("a", 1, "g5.xlarge"),
        "b-big": ("b", 8, "p4d.24xlarge"),
        "b-mid": ("b", 4, "g6.12xlarge"),
    }
    cluster.apply([gpu_pod(name, namespaces[k], teams[k], gpus, itype)
                   for name, (k, gpus, itype) in pods.items()])
    start = {
        name: wait_for(f"{name} running", lambda n=name: started_at(cluster, namespaces[pods[n][0]], n),
                       timeout=30)
        for name in pods
    }

    def running_gpus() -> bool:
        return (budget_status(cluster, budgets["a"]).get("runningGPUs"),
                budget_status(cluster, budgets["b"]).get("runningGPUs")) == (5, 12)

    wait_for("runningGPUs of both budgets", running_gpus, timeout=20, operator=operator)
    status, body = operator.get(operator.liveness_port, "/healthz")
    assert status == 200

    end: dict[str, float] = {}
    time.sleep(8)
    end["a-small"] = finish(cluster, namespaces["a"], "a-small")
    time.sleep(4)
    operator.kill()  # mid-run, no goodbye
    time.sleep(2)
    end["b-mid"] = delete_now(cluster, namespaces["b"], "b-mid")  # ends while no operator runs
    finalizers = kubectl_json(cluster, "get", "pod", "-n", namespaces["b"], "b-mid")["metadata"]["finalizers"]
    assert "finops.comptroller.dev/metering" in finalizers  # held until metered
    time.sleep(8)
    operator.start()
    time.sleep(10)
    end["a-big"] = finish(cluster, namespaces["a"], "a-big")
    end["b-big"] = delete_now(cluster, namespaces["b"], "b-big")

    last = max(end.values())
    results = {k: wait_for(f"budget {budgets[k]} settled", lambda k=k: settled(cluster, budgets[k], last),
                           timeout=40, operator=operator) for k in teams}
    for key in teams:
        truth = sum(gpus * (end[name] - start[name]) / 3600
                    for name, (k, gpus, _) in pods.items() if k == key)
        used = results[key]["usedGPUHours"]
        print(f"team {key}: metered {used:.6f} GPU-hours, ground truth {truth:.6f} "
              f"({100 * (used - truth) / truth:+.3f} %)")
        assert used == pytest.approx(truth, rel=TOLERANCE), f"team {key}: metered {used}, truth {truth}"
        assert results[key]["estimatedCost"] == pytest.approx(2.0 * used, abs=0.01)

    # Deleted pods were released once metered; finished ones keep no finalizer either.
    def released():
        listed = [kubectl_json(cluster, "get", "pods", "-n", ns)["items"] for ns in namespaces.values()]
        return all("finops.comptroller.dev/metering" not in (p["metadata"].get("finalizers") or ())
                   for items in listed for p in items) and not any(
            p["metadata"]["name"].startswith("b-") for p in listed[1])

    wait_for("finalizers released", released, timeout=20, operator=operator)
    # Totals do not drift after everything ended.
    time.sleep(2 * INTERVAL)
    for key in teams:
        now_used = budget_status(cluster, budgets[key])["usedGPUHours"]
        assert now_used == pytest.approx(results[key]["usedGPUHours"])

    code, metrics = operator.get(operator.metrics_port, "/metrics")
    assert f'comptroller_budget_used_gpu_hours{{budget="{budgets["a"]}"}}' in metrics
    # Deleting a budget stops its daemon and garbage-collects its ledger; then a clean SIGTERM.
    delete_budgets(cluster, *budgets.values())
    assert operator.terminate() == 0
    for ns in namespaces.values():
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_threshold_events_are_emitted_once(metering_cluster, operator):
    cluster = metering_cluster
    run = uuid.uuid4().hex[:6]
    team, ns, name = f"thr-{run}", f"thr-{run}", f"thr-{run}"
    cluster.create_namespace(ns, labels={IGNORE_LABEL: "true"})
    # 4 GPUs burn 0.01 GPU-hours in 9 s: 50 % after ~4.5 s, 100 % after ~9 s.
    cluster.apply([budget(name, team, 0.01, alertThresholds=[50, 100])])
    operator.start()
    cluster.apply([gpu_pod("burn", ns, team, 4, "g6.12xlarge")])

    def exhausted():
        conditions = {c["type"]: c for c in budget_status(cluster, name).get("conditions") or ()}
        return (conditions.get("Exhausted") or {}).get("status") == "True" and conditions

    conditions = wait_for("budget exhausted", exhausted, timeout=40, operator=operator)
    assert conditions["ThresholdReached"]["reason"] == "100"
    time.sleep(4 * INTERVAL)  # more ticks above every threshold: still one Event each

    def threshold_events():
        events = kubectl_json(cluster, "get", "events", "-A", "--field-selector",
                              f"reason=BudgetThreshold,involvedObject.name={name}")["items"]
        return sorted((e["message"].split(" reached ")[1].split("%")[0], e["type"], e.get("count", 1))
                      for e in events)

    assert threshold_events() == [("100", "Warning", 1), ("50", "Normal", 1)]
    # A restart does not announce them again.
    operator.kill()
    operator.start()
    time.sleep(3 * INTERVAL)
    assert threshold_events() == [("100", "Warning", 1), ("50", "Normal", 1)]
    cluster.kubectl("delete", "pod", "-n", ns, "burn", "--grace-period=0", "--force", "--wait=false")
    wait_pods_gone(cluster, ns, operator)
    delete_budgets(cluster, name)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_an_exhausted_budget_denies_only_its_own_team(stack, metering_cluster, operator):
    # `stack` first: its webhook (failurePolicy Fail) admits; its operator is then paused for ours.
    cluster = metering_cluster
    run = uuid.uuid4().hex[:6]
    poor, rich = f"poor-{run}", f"rich-{run}"
    ns = f"budget-{run}"
    cluster.create_namespace(ns)
    cluster.apply([budget(f"{poor}", poor, 0.005, admission="Exhausted"),
                   budget(f"{rich}", rich, 1000, admission="Exhausted")])
    operator.start()
    cluster.apply([gpu_pod("burn", ns, poor, 4, "g6.12xlarge")])  # 0.005 GPU-hours in 4.5 s

    # Past the limit by half again before the pod goes: its final settlement (container time, not
    # the running estimate) can come in a little lower, and must still be over 0.005.
    wait_for("budget exhausted", lambda: budget_status(cluster, poor).get("usedGPUHours", 0) >= 0.0075,
             timeout=40, operator=operator)
    cluster.kubectl("delete", "pod", "-n", ns, "burn", "--grace-period=0", "--force", "--wait=false")
    wait_pods_gone(cluster, ns, operator)

    def admission(team: str, name: str) -> subprocess.CompletedProcess:
        manifest = json.dumps(gpu_pod(name, ns, team, 1, "p4d.24xlarge"))
        # Server-side dry run: the full admission chain, nothing persisted (sideEffects: None).
        return cluster.kubectl("create", "--dry-run=server", "-f", "-", input=manifest, check=False)

    # The webhook's cache follows budget status by watch: give it a moment.
    last: list[subprocess.CompletedProcess] = []

    def denial():
        last[:] = [admission(poor, "more")]
        return last[0] if last[0].returncode != 0 else None

    try:
        denied = wait_for("the webhook to deny team poor", denial, timeout=30)
    except AssertionError as error:
        raise AssertionError(f"{error}\nlast answer: {last[0].stdout} {last[0].stderr}\n"
                             f"budget status: {budget_status(cluster, poor)}") from None
    assert poor in denied.stderr and "GPU-hour" in denied.stderr, denied.stderr
    allowed = admission(rich, "fine")
    assert allowed.returncode == 0, allowed.stderr
    delete_budgets(cluster, poor, rich)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_peering_keeps_one_replica_active_and_a_standby_takes_over(metering_cluster, operator, tmp_path):
    # `operator` only pauses the stack's operator: this test runs two replicas of its own.
    cluster = metering_cluster
    run = uuid.uuid4().hex[:6]
    peering, team, ns = f"meter-ha-{run}", f"ha-{run}", f"ha-{run}"
    cluster.apply([{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                    "metadata": {"name": peering}}])
    cluster.create_namespace(ns, labels={IGNORE_LABEL: "true"})
    cluster.apply([budget(team, team, 1000)])
    active = Operator(cluster, tmp_path / "active.log", peering=(peering, 200))
    standby = Operator(cluster, tmp_path / "standby.log", peering=(peering, 100))
    active.start()
    # The standby starts once the active replica is in the peering, or it would be alone there for
    # a moment and meter a tick of its own.
    wait_for("the active replica in the peering", lambda: peers(cluster, peering), timeout=30,
             operator=active)
    standby.start()
    try:
        cluster.apply([gpu_pod("train", ns, team, 4, "g6.12xlarge")])
        start = wait_for("train running", lambda: started_at(cluster, ns, "train"), timeout=30)
        wait_for("the budget metered", lambda: budget_status(cluster, team).get("runningGPUs") == 4,
                 timeout=30, operator=active)
        wait_for("the standby's metrics endpoint", standby.serving, timeout=60, operator=standby)
        time.sleep(3 * INTERVAL)
        assert active.committed_ticks() > 0
        assert standby.committed_ticks() == 0, standby.tail()  # paused by kopf peering

        active.kill()
        # The standby resumes once the dead peer's heartbeat expires (30 s lifetime).
        wait_for("the standby to take over", lambda: standby.committed_ticks() > 0, timeout=60,
                 operator=standby)
        end = delete_now(cluster, ns, "train")
        final = wait_for("the budget settled", lambda: settled(cluster, team, end), timeout=30,
                         operator=standby)
        truth = 4 * (end - start) / 3600
        assert final["usedGPUHours"] == pytest.approx(truth, rel=TOLERANCE)
        wait_pods_gone(cluster, ns, standby)
        delete_budgets(cluster, team)
    finally:
        for replica in (active, standby):
            if replica.process and replica.process.poll() is None:
                replica.process.kill()
        cluster.kubectl("delete", "clusterkopfpeering", peering, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_operator_meters_under_the_charts_own_rbac_writing_only_where_allowed(
        metering_cluster, quiet_stack_operator, tmp_path):
    """The chart's ServiceAccount and RBAC, installed for real, with `operator.writeNamespaces` set:
    the operator runs with that ServiceAccount's token, so the API server refuses anything the
    least-privilege rules left out. A GPU pod in the writable namespace gets the metering finalizer,
    one elsewhere is metered without it, both are charged exactly, and nothing is refused."""
    from e2e.chart import install_rbac, service_account_kubeconfig, uninstall_rbac

    cluster = metering_cluster
    run = uuid.uuid4().hex[:6]
    release, team = f"lp{run}", f"lp-{run}"
    writable, other = f"lp-w-{run}", f"lp-o-{run}"
    for ns in (writable, other):
        cluster.create_namespace(ns, labels={IGNORE_LABEL: "true"})
    objects = install_rbac(cluster, namespace=OWN_NAMESPACE, release=release,
                           values={"operator": {"writeNamespaces": [writable]}})
    kubeconfig = service_account_kubeconfig(
        cluster, namespace=OWN_NAMESPACE, service_account=f"{release}-comptroller-operator",
        path=tmp_path / "operator.kubeconfig")
    operator = Operator(cluster, tmp_path / "operator.log", kubeconfig=kubeconfig,
                        extra=("--write-namespaces", writable))
    cluster.apply([budget(team, team, 1000)])
    try:
        operator.start()
        cluster.apply([gpu_pod("a", writable, team, 2, "g6.12xlarge"),
                       gpu_pod("b", other, team, 1, "g5.xlarge")])
        start_a = wait_for("a running", lambda: started_at(cluster, writable, "a"), timeout=30)
        start_b = wait_for("b running", lambda: started_at(cluster, other, "b"), timeout=30)
        wait_for("both metered", lambda: budget_status(cluster, team).get("runningGPUs") == 3, timeout=40,
                 operator=operator)

        def finalizers(ns, name):
            return kubectl_json(cluster, "get", "pod", "-n", ns, name)["metadata"].get("finalizers") or []

        wait_for("the finalizer on a", lambda: "finops.comptroller.dev/metering" in finalizers(writable, "a"),
                 timeout=30, operator=operator)
        time.sleep(2 * INTERVAL)
        assert finalizers(other, "b") == []  # not writable: metered without it
        end_a = delete_now(cluster, writable, "a")
        end_b = delete_now(cluster, other, "b")
        # b has no finalizer: it is gone at once, and the second the API server stamped its deletion
        # with is not ours to read. It lies between when we asked and when we saw it go.
        seen_b = math.ceil(time.time())
        final = wait_for("the budget settled", lambda: settled(cluster, team, max(end_a, end_b)), timeout=40,
                         operator=operator)
        low = (2 * (end_a - start_a) + 1 * (end_b - start_b)) / 3600
        high = (2 * (end_a - start_a) + 1 * (seen_b - start_b)) / 3600
        assert low * 0.95 <= final["usedGPUHours"] <= high * 1.05, (final, low, high)
        wait_pods_gone(cluster, writable, operator)
        log = operator.tail()
        # Not the log lines' own timestamps (`05:29:35,403`): only what they say.
        said = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", log, flags=re.MULTILINE)
        assert "forbidden" not in said.lower() and "403" not in said, log
        delete_budgets(cluster, team)
    finally:
        if operator.process and operator.process.poll() is None:
            operator.process.kill()
            operator.process.wait(10)
        uninstall_rbac(cluster, objects)
        for ns in (writable, other):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_finished_pods_fold_into_day_cells_and_the_report_still_counts_them(metering_cluster, operator):
    """Pods that ended and linger (a Job's pods without a TTL) leave the ledger's running rows:
    their final charge is folded into the team's cells for the day and their uids are kept only
    until they are deleted, so what the ledger persists does not grow with deleted pods.
    `comptroller report` counts them once while they are in the cluster, and still after."""
    cluster = metering_cluster
    team = ns = budgeted_team(cluster, "fold")
    operator.start()
    pods = {"f-1": 2, "f-2": 1, "f-3": 1}
    cluster.apply([gpu_pod(name, ns, team, gpus, "g6.12xlarge") for name, gpus in pods.items()])
    start = {name: wait_for(f"{name} running", lambda n=name: started_at(cluster, ns, n), timeout=30)
             for name in pods}
    time.sleep(3)
    end = {name: finish(cluster, ns, name) for name in pods}
    truth = sum(gpus * (end[n] - start[n]) / 3600 for n, gpus in pods.items())
    uids = {kubectl_json(cluster, "get", "pod", "-n", ns, n)["metadata"]["uid"] for n in pods}

    def ledger() -> dict | None:
        got = cluster.kubectl("get", "configmap", "-n", OWN_NAMESPACE, f"comptroller-ledger-{team}",
                              "-o", "jsonpath={.data.ledger\\.json}", check=False)
        return json.loads(got.stdout) if got.returncode == 0 and got.stdout else None  # not written yet

    def folded():
        state = ledger()
        return state if state is not None and not state["entries"] and set(state["folded"]) == uids else None

    state = wait_for("the finished pods folded", folded, timeout=40, operator=operator)
    day = datetime.fromtimestamp(max(end.values()), UTC).date().isoformat()
    cells = state["cells"][f"{team}/cc-100"]
    assert sum(hours for hours, _ in cells.values()) == pytest.approx(truth, rel=TOLERANCE)
    assert day in cells
    assert state["base"][0] == pytest.approx(truth, rel=TOLERANCE)

    def team_hours() -> float:
        out = subprocess.run([str(COMPTROLLER), "report", "-o", "json", "--kubeconfig",
                              str(cluster.kubeconfig), "--namespace", OWN_NAMESPACE],
                             capture_output=True, text=True, check=True)
        rows = {t["name"]: t for t in json.loads(out.stdout)["teams"]}
        return rows[team]["gpuHours"]

    assert team_hours() == pytest.approx(truth, abs=0.002)  # once, though the pods are still there
    cluster.kubectl("delete", "pods", "-n", ns, "--all", "--wait=true", "--timeout=30s")
    # The pod cache keeps a deleted pod 2 minutes (so a tick closes its charge), then it is gone.
    wait_for("the deleted pods forgotten by the ledger", lambda: (ledger() or {}).get("folded") == [],
             timeout=180, operator=operator)
    assert team_hours() == pytest.approx(truth, abs=0.002)  # and after they are gone
    delete_budgets(cluster, team)
    assert operator.terminate() == 0
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_relabel_admission_did_not_judge_leaves_the_pod_charged_to_its_budget(metering_cluster, operator):
    """The webhook refuses relabelling a Pod out of the budget that charges it; where it is not
    consulted (down under failurePolicy Ignore; here, a namespace it ignores) the relabel goes
    through, and the budget still charges the pod until it ends: its GPUs never run uncharged."""
    cluster = metering_cluster
    team = ns = budgeted_team(cluster, "sticky")
    operator.start()
    cluster.apply([gpu_pod("moves", ns, team, 2, "g6.12xlarge")])
    start = wait_for("the pod running", lambda: started_at(cluster, ns, "moves"), timeout=30)
    wait_for("runningGPUs 2", lambda: budget_status(cluster, team).get("runningGPUs") == 2, timeout=20,
             operator=operator)
    relabelled = cluster.kubectl("label", "pod", "-n", ns, "moves", "--overwrite", f"team=elsewhere-{team}")
    assert relabelled.returncode == 0, relabelled.stderr
    relabelled_at = time.time()

    def metered_since_the_relabel() -> dict | None:
        status = budget_status(cluster, team)
        metered = status.get("lastMeteredAt")
        return status if metered and parse(metered) > relabelled_at + 2 * INTERVAL else None

    status = wait_for("two ticks after the relabel", metered_since_the_relabel, timeout=20, operator=operator)
    assert status["runningGPUs"] == 2, status  # still charged, though its labels name another team
    pod = kubectl_json(cluster, "get", "pod", "-n", ns, "moves")
    assert "finops.comptroller.dev/metering" in pod["metadata"].get("finalizers", []), pod["metadata"]
    end = finish(cluster, ns, "moves")
    truth = 2 * (end - start) / 3600
    final = wait_for("the final charge", lambda: settled(cluster, team, end), timeout=30, operator=operator)
    assert final["usedGPUHours"] == pytest.approx(truth, rel=TOLERANCE)
    delete_budgets(cluster, team)
    assert operator.terminate() == 0
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_ledger_from_a_newer_comptroller_is_left_as_it_is(metering_cluster, operator):
    """A rollback past a change of the ledger's layout: this operator cannot read the ledger, so it
    neither meters the budget nor overwrites the ledger (that would drop every pod that ended this
    period), and says why; deleting the ledger, as the README says, restarts the period."""
    from controller.metering.usage import LEDGER_FORMAT

    cluster = metering_cluster
    team = f"newer-{uuid.uuid4().hex[:6]}"
    name = f"comptroller-ledger-{team}"
    cluster.apply([budget(team, team, 1000)])
    try:
        uid = kubectl_json(cluster, "get", "gpubudget", team)["metadata"]["uid"]
        newer = {"format": 99, "budgetUID": uid, "somethingNew": {"rows": [[1, 2]]},
                 "period": {"start": "2026-12-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}}
        cluster.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": OWN_NAMESPACE},
                        "data": {"ledger.json": json.dumps(newer)}}])
        stored = kubectl_json(cluster, "get", "configmap", "-n", OWN_NAMESPACE, name)
        operator.start()
        wait_for("two refused ticks", lambda: operator.serving() and operator.ticks("refused") >= 2,
                 timeout=60, operator=operator)
        now = kubectl_json(cluster, "get", "configmap", "-n", OWN_NAMESPACE, name)
        assert now["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        assert json.loads(now["data"]["ledger.json"]) == newer
        assert "lastMeteredAt" not in budget_status(cluster, team)  # not metered
        assert "written in ledger format 99, by a newer Comptroller" in operator.tail()
        cluster.kubectl("delete", "configmap", "-n", OWN_NAMESPACE, name)

        def restarted() -> dict | None:
            got = cluster.kubectl("get", "configmap", "-n", OWN_NAMESPACE, name, "-o",
                                  "jsonpath={.data.ledger\\.json}", check=False)
            ledger = json.loads(got.stdout) if got.returncode == 0 and got.stdout else {}
            return ledger if ledger.get("format") == LEDGER_FORMAT else None

        assert wait_for("the period restarted", restarted, timeout=30, operator=operator)["budgetUID"] == uid
        assert wait_for("the budget metered", lambda: budget_status(cluster, team).get("lastMeteredAt"),
                        timeout=30, operator=operator)
        delete_budgets(cluster, team)
        assert operator.terminate() == 0
    finally:
        cluster.kubectl("delete", "gpubudget", team, "--wait=false", check=False)
        cluster.kubectl("delete", "configmap", "-n", OWN_NAMESPACE, name, "--wait=false", check=False)
