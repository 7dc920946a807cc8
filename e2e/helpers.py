"""Helpers shared by the e2e tests: polling, CRDs, namespaces the webhook leaves alone, workload
builders, `comptroller wake`, the chart's RBAC for an operator, and a private operator process with
fast intervals.

Policies are cluster-scoped, so any operator running in the cluster acts on a test's policies.
A test's operator therefore joins the stack's kopf peering (when there is one) with a priority
above any the stack draws (and above earlier tests' operators), which pauses the stack's
operator while the test runs; without a stack it runs standalone.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from e2e.cluster.plane import REPO, free_port

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent
CRD_DIRS = [REPO / "charts" / "comptroller" / "crds", REPO / "e2e" / "crds"]
IGNORE_LABEL = "finops.comptroller.dev/ignore"
OWN_NAMESPACE = "comptroller-system"
# A label set the default policies admit (for a development workload on an allowed GPU type).
COMPLIANT_LABELS = {
    "team": "nlp",
    "project": "search-ranking",
    "model_id": "ranker-v7",
    "environment": "development",
    "lifecycle_phase": "training",
    "cost_center": "cc-123",
}


def wait_until(predicate: Callable[[], T], *, timeout: float = 30, what: str, interval: float = 0.5,
               on_timeout: Callable[[], str] | None = None) -> T:
    """Poll until `predicate()` is truthy and return it; fail saying what did not happen, followed
    by what `on_timeout()` says then (an operator's log, a namespace's events...)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM a child we started, SIGKILL it if it has not exited after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def install_crds(cluster: Any) -> None:
    import yaml

    docs = [
        doc
        for directory in CRD_DIRS
        if directory.exists()
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    cluster.apply(docs, server_side=True)
    for crd in docs:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
        )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def fresh_namespace(cluster: Any, prefix: str) -> str:
    """A fresh namespace the admission webhook (if registered) leaves alone."""
    name = unique(prefix)
    cluster.create_namespace(name, labels={IGNORE_LABEL: "true"})
    return name


def get_json(cluster: Any, *args: str) -> dict | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return None
        raise AssertionError(f"kubectl get {' '.join(args)} failed: {result.stderr}")
    return json.loads(result.stdout)


def events(cluster: Any, namespace: str, *, reason: str | None = None, name: str | None = None) -> list[dict]:
    items = (get_json(cluster, "events", "-n", namespace) or {}).get("items", [])
    return [
        e
        for e in items
        if (reason is None or e.get("reason") == reason)
        and (name is None or e.get("involvedObject", {}).get("name") == name)
    ]


def team_budget(team: str, hours: float, *, admission: str = "Exhausted") -> dict:
    """A monthly, enforced GPUBudget `team-<team>` for the workloads labelled `team: <team>`."""
    return {
        "apiVersion": "finops.comptroller.dev/v1alpha1",
        "kind": "GPUBudget",
        "metadata": {"name": f"team-{team}"},
        "spec": {
            "selector": {"matchLabels": {"team": team}},
            "gpuHours": hours,
            "period": "Monthly",
            "enforcement": "Enforce",
            "admission": admission,
        },
    }


def cpu_hpa(name: str, namespace: str, *, min_replicas: int, max_replicas: int) -> dict:
    """An autoscaling/v2 HPA on the Deployment `name`, at 80 % CPU (no metrics server here: below
    minReplicas it scales up regardless, above it it holds)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }


def policy(name: str, spec: dict) -> dict:
    return {
        "apiVersion": "finops.comptroller.dev/v1alpha1",
        "kind": "FinOpsPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def deployment(name: str, namespace: str, *, replicas: int = 1, labels: dict | None = None,
               annotations: dict | None = None, instance_type: str = "m5.xlarge",
               image: str = "busybox") -> dict:
    """A Deployment of `replicas` pods labelled `app: <name>` (plus `labels`) on a kwok node pool."""
    template_metadata: dict = {"labels": {"app": name, **(labels or {})}}
    if annotations:
        template_metadata["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": template_metadata,
                "spec": {
                    "containers": [{"name": "main", "image": image}],
                    "nodeSelector": {"node.kubernetes.io/instance-type": instance_type},
                },
            },
        },
    }


def wake(cluster: Any, ref: str, namespace: str, *, timeout: int = 30) -> subprocess.CompletedProcess:
    """`comptroller wake REF -n NAMESPACE` as a user runs it, waiting up to `timeout` seconds."""
    return subprocess.run(
        [str(VENV_BIN / "comptroller"), "wake", ref, "-n", namespace, "--kubeconfig", str(cluster.kubeconfig),
         "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 30,
    )


@contextmanager
def chart_operator_kubeconfig(cluster: Any, *, release: str, path: Path) -> Iterator[Path]:
    """The chart's ServiceAccounts and RBAC installed as release `release` in Comptroller's namespace,
    and a kubeconfig at `path` with the token of its operator's ServiceAccount: an operator run with
    it (`OperatorProcess(..., kubeconfig=path)`) may do exactly what the chart grants. The RBAC is
    removed on exit."""
    from e2e.chart import install_rbac, service_account_kubeconfig, uninstall_rbac

    rbac = install_rbac(cluster, namespace=OWN_NAMESPACE, release=release)
    try:
        yield service_account_kubeconfig(cluster, namespace=OWN_NAMESPACE,
                                         service_account=f"{release}-comptroller-operator", path=path)
    finally:
        uninstall_rbac(cluster, rbac)


class OperatorProcess:
    """`comptroller operator` on the test cluster, with the given extra flags; stopped on exit.

    It uses the cluster's admin kubeconfig unless given another (see `chart_operator_kubeconfig`)."""

    def __init__(self, cluster: Any, *args: str, kubeconfig: Path | None = None) -> None:
        self.cluster = cluster
        self.args = args
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self._log_file = Path(tempfile.mkstemp(prefix="comptroller-operator-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def _peering(self) -> list[str]:
        stack_peering = self.cluster.kubectl("get", "clusterkopfpeering", "comptroller", check=False)
        if stack_peering.returncode == 0:
            # Above any priority the stack draws (at most 1e6), and above every earlier test's
            # operator: a peer that just exited may linger in the peering object for its
            # lifetime, and kopf freezes every peer of an equal priority.
            return ["--peering", "comptroller", "--priority", str(int(time.time() * 1000))]
        return ["--standalone"]

    def __enter__(self) -> OperatorProcess:
        argv = [
            str(VENV_BIN / "comptroller"),
            "operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            OWN_NAMESPACE,
            "--liveness-port",
            str(self.liveness_port),
            "--metrics-port",
            str(self.metrics_port),
            *self._peering(),
            *self.args,
        ]
        self._log = self._log_file.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self._alive, timeout=60, what="the operator's liveness endpoint")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the operator exited ({self.process.returncode}):\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        return self._log_file.read_text(errors="replace")

    def log_tail(self) -> str:
        """The end of the log, for a failure message (`wait_until(..., on_timeout=operator.log_tail)`)."""
        return f"operator log:\n{self.log()[-4000:]}"

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30)
        self._log.close()
        self._log_file.unlink(missing_ok=True)


def admissions_answered(stack: Any, kind: str, operation: str, *decisions: str) -> float:
    """Admission requests for `kind` and `operation` the session's webhook has answered so far, by
    its own metrics (`comptroller_admission_requests_total`); only those of `decisions`, if given."""
    context = ssl.create_default_context(cafile=str(stack.certs / "ca.crt"))
    with urllib.request.urlopen(stack.webhook_url + "/metrics", context=context, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("comptroller_admission_requests_total{")
        and f'kind="{kind}"' in line and f'operation="{operation}"' in line
        and (not decisions or any(f'decision="{d}"' in line for d in decisions))
    )
