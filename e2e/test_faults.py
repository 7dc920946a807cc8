"""Faults on the real control plane: a webhook killed, an operator killed in the middle of an
expiry sweep, the API server restarted.

Every test runs its own processes (a webhook with its own name, port and webhook configurations;
an operator that takes over the kopf peering) and its own policies and namespaces, so killing
them never disturbs the shared stack. Metering through an operator SIGKILL (within 1 % of ground
truth) is proven in test_metering.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from controller import certs, constants
from controller.webhook.registration import webhook_configurations
from e2e.cluster.plane import free_port
from e2e.helpers import (
    COMPLIANT_LABELS,
    VENV_BIN,
    OperatorProcess,
    events,
    fresh_namespace,
    get_json,
    install_crds,
    policy,
    unique,
    wait_until,
)

# ExpirySweep's default `parallelism`: terminations in flight at once.
EXPIRY_PARALLELISM = 8

# These tests run operators of their own; the stack's must not act on their objects meanwhile.
pytestmark = pytest.mark.usefixtures("quiet_stack_operator")


@pytest.fixture(scope="module", autouse=True)
def crds(cluster):
    install_crds(cluster)


class OwnWebhook:
    """`comptroller webhook` watching the cluster, registered for one namespace only."""

    def __init__(self, cluster, tmp: Path, *, namespace: str, failure_policy: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.name = unique("faults")
        self.process = f"webhook-{self.name}"
        self.port = free_port()
        self.paths = certs.generate(tmp / "certs", hosts=["127.0.0.1"])
        self.failure_policy = failure_policy

    def start(self) -> None:
        self.cluster.spawn(self.process, [
            str(VENV_BIN / "comptroller"), "webhook", "--host", "127.0.0.1", "--port", str(self.port),
            "--cert-file", str(self.paths.tls_cert), "--key-file", str(self.paths.tls_key),
            "--kubeconfig", str(self.cluster.kubeconfig), "--namespace", "comptroller-system",
            "--log-level", "info",
        ])
        context = ssl.create_default_context(cafile=str(self.paths.ca_cert))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/readyz", context=context,
                                            timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=60, what="the webhook's /readyz")

    def register(self) -> None:
        configs = webhook_configurations(url=f"https://127.0.0.1:{self.port}",
                                         ca_bundle=self.paths.ca_cert.read_bytes(),
                                         failure_policy=self.failure_policy, timeout_seconds=3,
                                         name=self.name)
        for config in configs:
            for webhook in config["webhooks"]:
                webhook["namespaceSelector"] = {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [self.namespace]}]}
        self.cluster.apply(configs)

    def kill(self) -> None:
        pid = int((self.cluster.pids / f"{self.process}.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not self.cluster.running(self.process), timeout=10, what="the webhook to die")

    def log(self) -> str:
        path = self.cluster.logs / f"{self.process}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            self.cluster.kubectl("delete", kind, self.name, "--ignore-not-found", check=False)
        self.cluster.stop_process(self.process)


@pytest.fixture
def scoped(cluster):
    """A namespace the stack's webhook leaves alone, and a cleanup list for policies."""
    namespace = fresh_namespace(cluster, "e2e-faults")
    policies: list[str] = []
    yield namespace, policies
    cluster.kubectl("delete", "deployments,jobs,pods", "--all", "-n", namespace, "--wait=true",
                    "--timeout=60s", check=False)
    for name in policies:
        cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def require_label(name: str, namespace: str, key: str, *, enforcement: str = "Enforce") -> dict:
    return policy(name, {"enforcement": enforcement, "match": {"namespaces": [namespace]},
                         "labels": {"required": [{"key": key}]}})


def pod(name: str, namespace: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                     "annotations": annotations or {}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}],
                 "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"}},
    }


def create(cluster, obj: dict, *, dry_run: bool = False):
    args = ["create", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return cluster.kubectl(*args, input=yaml.safe_dump(obj), check=False)


# ---- the webhook killed --------------------------------------------------------------------------


def test_a_dead_webhook_under_failure_policy_ignore_admits_and_the_audit_reports_later(
        cluster, scoped, tmp_path):
    namespace, policies = scoped
    name = unique("faults-team")
    policies.append(name)
    cluster.apply([require_label(name, namespace, "team")])
    hook = OwnWebhook(cluster, tmp_path, namespace=namespace, failure_policy="Ignore")
    try:
        hook.start()
        hook.register()
        # The control: alive, the webhook is in the path and denies.
        denied = wait_until(lambda: (out := create(cluster, pod("probe", namespace), dry_run=True))
                            .returncode != 0 and out, timeout=30, what="the live webhook to deny")
        assert name in denied.stderr and "team" in denied.stderr

        hook.kill()
        started = time.monotonic()
        out = create(cluster, pod("admitted-while-down", namespace))
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        assert took < 3 + 2, f"admission waited {took:.1f}s on a dead webhook"  # timeoutSeconds is 3

        # The audit finds what slipped through and reports it against the policy.
        with OperatorProcess(cluster, "--audit-interval", "2", "--expiry-interval", "3600",
                             "--idle-interval", "3600"):
            def reported():
                report = get_json(cluster, "policyreport", "comptroller", "-n", namespace) or {}
                return [r for r in report.get("results", [])
                        if r["policy"] == name and r["resources"][0]["name"] == "admitted-while-down"]

            (result,) = wait_until(reported, timeout=60, what="the audit to report the pod")
        assert result["result"] == "fail" and result["rule"] == "labels"

        # Back up, it denies again.
        hook.start()
        wait_until(lambda: create(cluster, pod("probe-2", namespace), dry_run=True).returncode != 0,
                   timeout=30, what="the restarted webhook to deny")
    finally:
        hook.close()


# ---- the operator killed mid-sweep -----------------------------------------------------------------


def deployment(name: str, namespace: str, *, replicas: int, expires_at: str) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"expires_at": expires_at}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}],
                         "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"}},
            },
        },
    }


def job(name: str, namespace: str, *, expires_at: str) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"expires_at": expires_at}},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}],
            "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"}}}},
    }


class EventTrigger:
    """Calls `action` the moment the first `reason` Event appears in `namespace` (a watch, not a
    poll, so the operator is killed while the sweep is still going)."""

    def __init__(self, cluster, namespace: str, reason: str, action) -> None:
        from kubernetes import client, config, watch

        self._api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
        self._watch = watch.Watch()
        self.namespace, self.reason, self.action = namespace, reason, action
        self.fired = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for event in self._watch.stream(self._api.list_namespaced_event, self.namespace, timeout_seconds=120):
            if event["object"].reason == self.reason:
                self.action()
                self.fired.set()
                self._watch.stop()
                return

    def __enter__(self) -> EventTrigger:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._watch.stop()
        self._thread.join(5)


def test_an_operator_killed_mid_expiry_sweep_terminates_each_workload_exactly_once(cluster, scoped):
    namespace, policies = scoped
    name = unique("faults-expiry")
    policies.append(name)
    cluster.apply([policy(name, {"match": {"namespaces": [namespace]},
                                 "expiry": {"key": "expires_at", "notifyBefore": "1s"}})])
    past = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = [f"pod-{i}" for i in range(60)]
    jobs = [f"job-{i}" for i in range(10)]
    replicas = {f"dep-{i}": i + 1 for i in range(10)}
    workloads = ([pod(p, namespace, annotations={"expires_at": past}) for p in pods]
                 + [job(j, namespace, expires_at=past) for j in jobs]
                 + [deployment(d, namespace, replicas=r, expires_at=past) for d, r in replicas.items()])
    total = len(workloads)
    args = ("--expiry-interval", "1", "--max-terminations-per-minute", "1000",
            "--idle-interval", "3600", "--audit-interval", "3600")

    # The operator runs first and the watch is in place; then everything expires at once, and the
    # operator is killed the moment its first Expired Event lands.
    with OperatorProcess(cluster, *args) as first:
        with EventTrigger(cluster, namespace, constants.REASON_EXPIRED,
                          lambda: first.process.send_signal(signal.SIGKILL)) as trigger:
            time.sleep(1)  # the watch's initial list is done
            cluster.apply(workloads)
            assert trigger.fired.wait(60), "the first operator terminated nothing"
        first.process.wait(10)
        logs = first.log()
    terminated_by_first = len(events(cluster, namespace, reason=constants.REASON_EXPIRED))
    # Killed mid-sweep: some, not all (else the test would prove nothing about a kill).
    assert 0 < terminated_by_first < total, "the sweep finished before the kill"

    with OperatorProcess(cluster, *args) as second:
        def all_terminated():
            bare = [p for p in get_json(cluster, "pods", "-n", namespace)["items"]
                    if not p["metadata"].get("ownerReferences")]
            live_jobs = get_json(cluster, "jobs", "-n", namespace)["items"]
            deps = get_json(cluster, "deployments", "-n", namespace)["items"]
            return not bare and not live_jobs and all(d["spec"]["replicas"] == 0 for d in deps) and deps

        deps = wait_until(all_terminated, timeout=90, what="every expired workload to be terminated")
        time.sleep(2)  # a second sweep, which must find nothing left to do
        logs += "\n---- second operator ----\n" + second.log()

    # Nothing terminated twice: at most one Expired Event per workload. A kill between an action
    # and its Event loses that Event (never repeats the action); the sweep has at most
    # EXPIRY_PARALLELISM actions in flight, so at most that many are lost. Dry-run Events (another
    # suite's dry-run operator under the cluster-wide default policies) are not terminations.
    expired = [e for e in events(cluster, namespace, reason=constants.REASON_EXPIRED)
               if not e["message"].startswith("[dry-run]")]
    per_object: dict[tuple[str, str], int] = {}
    for event in expired:
        involved = event["involvedObject"]
        key = (involved["kind"], involved["name"])
        per_object[key] = per_object.get(key, 0) + event.get("count", 1)

    def context(*keys):
        return "\n".join(line for line in logs.splitlines() if any(f"/{k[1]}" in line for k in keys))[-6000:]

    repeated = [k for k, count in per_object.items() if count > 1]
    assert not repeated, f"terminated twice: {repeated}\n{context(*repeated)}"
    names = {(w["kind"], w["metadata"]["name"]) for w in workloads}
    missing = sorted(names - set(per_object))
    print(json.dumps({"workloads": total, "events_before_the_kill": terminated_by_first,
                      "expired_events": len(per_object), "events_lost_at_the_kill": len(missing)}))
    assert len(missing) <= EXPIRY_PARALLELISM, f"no Expired Event for {missing}\n{context(*missing)}"
    # No original-replicas annotation lost: every Deployment can be woken to what it ran.
    for dep in deps:
        annotations = dep["metadata"].get("annotations") or {}
        assert annotations.get(constants.ORIGINAL_REPLICAS_ANNOTATION) == str(
            replicas[dep["metadata"]["name"]]), dep["metadata"]["name"]


# ---- the API server restarted ------------------------------------------------------------------------
#
# On a private control plane: while the shared plane's API server is down, any e2e session starting
# at that moment takes it for dead and rebuilds it under everyone's feet.


@pytest.fixture(scope="module")
def private_plane(cluster, tmp_path_factory):
    """A control plane of this module's own (the shared `cluster` fixture only puts the binaries
    on PATH), with the CRDs installed; stopped at the end, leaving no process behind."""
    from e2e.cluster.plane import ControlPlane

    plane = ControlPlane(tmp_path_factory.mktemp("private-plane")).up(progress=lambda *_: None)
    try:
        install_crds(plane)
        yield plane
    finally:
        plane.down(quiet=True)


def restart_apiserver(plane) -> float:
    """Stop kube-apiserver and start it again with the very same command line (read from /proc);
    returns how long it was unavailable."""
    pid = int((plane.pids / "kube-apiserver.pid").read_text())
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
    started = time.monotonic()
    plane.stop_process("kube-apiserver")
    plane.spawn("kube-apiserver", argv)

    def ready() -> bool:
        try:
            return plane.get("/readyz", timeout=2) == "ok"
        except OSError:
            return False

    wait_until(ready, timeout=120, what="kube-apiserver to be ready again")
    return time.monotonic() - started


def policy_ready(plane, name: str) -> bool:
    obj = get_json(plane, "finopspolicy", name) or {}
    status = obj.get("status") or {}
    return status.get("observedGeneration") == obj.get("metadata", {}).get("generation") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ())


def test_watches_resume_after_the_api_server_restarts(private_plane, tmp_path):
    plane = private_plane
    namespace = fresh_namespace(plane, "e2e-restart")
    before, after = unique("faults-before"), unique("faults-after")
    plane.apply([require_label(before, namespace, "team")])
    hook = OwnWebhook(plane, tmp_path, namespace=namespace, failure_policy="Fail")
    try:
        hook.start()
        hook.register()
        with OperatorProcess(plane, "--expiry-interval", "3600", "--idle-interval", "3600",
                             "--audit-interval", "3600"):
            wait_until(lambda: policy_ready(plane, before), timeout=60, what="the first policy Ready")
            wait_until(lambda: before in create(plane, pod("p0", namespace), dry_run=True).stderr,
                       timeout=30, what="the webhook to apply the first policy")

            downtime = restart_apiserver(plane)

            # Changes made after the restart reach both watchers: the webhook's cache (a new policy
            # applies, a deleted one no longer does) and the operator's (the new policy is Ready).
            plane.apply([require_label(after, namespace, "project")])
            plane.kubectl("delete", "finopspolicy", before)
            resumed = time.monotonic()

            def webhook_caught_up():
                out = create(plane, pod("p1", namespace, labels={"team": "nlp"}), dry_run=True)
                return after in out.stderr and before not in out.stderr

            wait_until(webhook_caught_up, timeout=60, what="the webhook's watch to resume")
            wait_until(lambda: policy_ready(plane, after), timeout=60, what="the operator's watch to resume")
            caught_up = time.monotonic() - resumed
        assert "Traceback" not in hook.log()
    finally:
        hook.close()
    print(json.dumps({"apiserver_downtime_s": round(downtime, 1), "watch_resume_s": round(caught_up, 1)}))


# ---- the largest objects ---------------------------------------------------------------------------


# Markup in env values: 400 KB stored, 2.4 MB as the API server's JSON (`<` is written `\u003c`),
# so an UPDATE's review (object and oldObject) is 4.8 MB; a 3 MiB body limit used to refuse it.
BLOBS, BLOB_SIZE = 4, 100_000


def test_an_update_of_a_large_object_is_judged_not_refused(cluster, scoped, tmp_path):
    """An UPDATE review carries the object twice (object and oldObject), as escaped JSON. The
    webhook's body limit must not turn it into a failed call (HTTP 413), which under failurePolicy
    Fail blocks the update."""
    namespace, policies = scoped
    name = unique("faults-big")
    policies.append(name)
    cluster.apply([require_label(name, namespace, "team", enforcement="Warn")])
    hook = OwnWebhook(cluster, tmp_path, namespace=namespace, failure_policy="Fail")
    try:
        hook.start()
        hook.register()
        # Compliant with whatever policies the cluster holds (the default set, when the stack is up).
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        big = deployment("big", namespace, replicas=0, expires_at=tomorrow)
        big["spec"]["template"]["metadata"]["labels"].update(COMPLIANT_LABELS)
        container = big["spec"]["template"]["spec"]["containers"][0]
        container["env"] = [{"name": f"BLOB_{i}", "value": "<" * BLOB_SIZE} for i in range(BLOBS)]
        created = cluster.kubectl("create", "-f", "-", input=json.dumps(big), check=False)
        assert created.returncode == 0, created.stderr
        size = len(cluster.kubectl("get", "deployment", "big", "-n", namespace, "-o", "json").stdout)
        assert size > 2 * 1024 * 1024  # what makes the review of an UPDATE over 4 MiB
        updated = cluster.kubectl("label", "deployment", "big", "-n", namespace, "touched=yes", check=False)
        assert updated.returncode == 0, updated.stderr
        # A 413 in an access line (`"POST /validate HTTP/1.1" 413`), not the 413 a random port holds.
        assert not re.search(r'" 413\b', hook.log())
    finally:
        hook.close()
