"""Comptroller side by side with Kyverno and OPA Gatekeeper on the same API server (issue 20).

Each peer runs on loopback next to the local control plane, one at a time, with the same policy:
Comptroller's default labels and GPU instance-type policies (policies/default/labels.yaml and
gpu.yaml), as a Kyverno ClusterPolicy (validate pattern + deny rules, autogen for the pod
controllers) and as two Gatekeeper ConstraintTemplates with their constraints (bench/peers/).
Kyverno and Gatekeeper are built from their Go modules by `e2e/cluster/build.sh kyverno gatekeeper`
(cached by version like the plane's components; `make bench` builds them, `make test` never does).

For each peer, in one run, with the load generators of bench/webhook_bench.py (wrk) and
bench/apiserver_bench.py (pod creates over one keep-alive connection):

- direct `/validate` over TLS (Comptroller `/validate`, Kyverno `/validate/fail`, Gatekeeper
  `/v1/admit`) with the same AdmissionReviews: a labelled GPU pod (allowed), the same pod without
  `team` on an instance type its environment may not use (denied), and a Deployment (allowed):
  requests/s at full load, then p50/p99 at a fixed rate;
- pod creation through the API server: blocks of creates alternate between a namespace the peer's
  webhook covers and one its namespaceSelector leaves out, so the added latency (p50/p99) is
  against the same API server, at the same moment, with no webhook call;
- RSS of the peer's processes at idle (policies loaded) and its peak under load, and CPU time.

Each process serves on its own: Comptroller one uvicorn worker (one core; the chart scales out by
replicas; `validate_rps_2_workers` is `--workers 2`), the Go peers with every core (GOMAXPROCS).
Kyverno runs without admission reports (`--admissionReports=false`), at its chart's default
verbosity (2: one log line per review; `-v=1` measured no different here); Gatekeeper with
`--operation=webhook --operation=generate` (the chart's webhook pods, plus the audit pod's CRD
generation): admission only, as Comptroller's webhook. Comptroller and Gatekeeper are registered here
alike (pods and the pod controllers, `failurePolicy: Fail`, the same namespaceSelector); Kyverno
registers itself from its policy's kinds and its ConfigMap's namespaceSelector. A peer that cannot
be built or run here gets `error` with the reason; the others still run.

Last, Comptroller's own ceiling in the same run: `/validate` against the no-op endpoint of the same
server, the Deployment review's latency, and where the time goes (cProfile on the handler, py-spy
on the serving process under load).
"""

from __future__ import annotations

import base64
import contextlib
import cProfile
import http.client
import importlib.metadata
import json
import os
import pstats
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

from bench import webhook_bench as wb
from bench.apiserver_bench import create_block, webhook_totals
from controller.webhook.registration import webhook_rules
from e2e.cluster.plane import HERE as CLUSTER_DIR
from e2e.cluster.plane import ControlPlane, cache_dir, free_port, read_versions

REPO = Path(__file__).resolve().parent.parent
PEER_FILES = REPO / "bench" / "peers"
PEERS = ("comptroller", "kyverno", "gatekeeper")

CONNECTIONS = wb.CONNECTIONS
DURATION_S = 3
ROUNDS = 3
RATE_RPS = 200  # well below every peer's ceiling here: the latency is service time, not queueing
RATE_CONNECTIONS = 10
RATE_DURATION_S = 10
POD_ROUNDS = 15  # 600 creates per mode: a p99 of fewer moves with every other process here
PER_BLOCK = 40
READY_TIMEOUT_S = 180

# The pod controllers all three judge (autogen in Kyverno, match.kinds in Gatekeeper).
RESOURCES = {
    "": ("pods",),
    "apps": ("deployments", "statefulsets", "replicasets", "daemonsets"),
    "batch": ("jobs", "cronjobs"),
}
KYVERNO_NAMESPACE = "kyverno"
KYVERNO_CA_SECRET = "kyverno-svc.kyverno.svc.kyverno-tls-ca"
KYVERNO_TLS_SECRET = "kyverno-svc.kyverno.svc.kyverno-tls-pair"
KYVERNO_WEBHOOK_LABEL = "webhook.kyverno.io/managed-by=kyverno"
GATEKEEPER_NAMESPACE = "gatekeeper-system"
GATEKEEPER_POD = "gatekeeper-bench"
GATEKEEPER_CONFIGURATION = "gatekeeper-validating-webhook-configuration"
COMPTROLLER_CONFIGURATION = "comptroller-peers-bench"


# ---- the reviews ---------------------------------------------------------------------------------


def denied_pod_review() -> dict:
    """The allowed pod review without `team`, pinned to an instance type its environment may not use."""
    review = wb.pod_review()
    obj = review["request"]["object"]
    del obj["metadata"]["labels"]["team"]
    obj["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] = "p4d.24xlarge"
    return review


def denied_deployment_review() -> dict:
    """The Deployment review with the same two faults in its pod template (checked, not timed)."""
    review = wb.deployment_review()
    template = review["request"]["object"]["spec"]["template"]
    del template["metadata"]["labels"]["team"]
    template["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] = "p4d.24xlarge"
    return review


def reviews() -> dict[str, dict]:
    return {"pod": wb.pod_review(), "pod_denied": denied_pod_review(), "deployment": wb.deployment_review()}


EXPECTED = {"pod": True, "pod_denied": False, "deployment": True}
# Each denial names both faults: the missing label and the instance type.
FAULTS = ("team", "p4d.24xlarge")


# ---- processes -----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Comptroller's `--workers` forks)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_mib(pid: int) -> float:
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


class RssPeak:
    """Samples the RSS of a process tree in the background while the load runs; `peak` is the max."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


def _unverified() -> ssl.SSLContext:
    # Loopback only, to check verdicts before the load: wrk does not verify certificates either.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def post(url: str, body: bytes, *, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=_unverified(), timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(predicate, what: str, *, timeout: float = READY_TIMEOUT_S, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last_error = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2500:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s (last error: {last_error}){chr(10) + tail}")


def go_module_dir(module: str, version: str) -> Path:
    """Where the Go module cache holds `module@version` (downloaded by the build; nothing is copied)."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    out = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True,
                         text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    info = json.loads(out.stdout or "{}")
    if out.returncode or not info.get("Dir"):
        raise RuntimeError(f"go mod download {module}@{version}: {info.get('Error') or out.stderr.strip()}")
    return Path(info["Dir"])


def build(component: str, binary: Path) -> Path:
    """The peer's binary from the cache, built by build.sh (from its Go module) when absent."""
    if not binary.exists():
        out = subprocess.run(["bash", str(CLUSTER_DIR / "build.sh"), component],
                             capture_output=True, text=True)
        if out.returncode or not binary.exists():
            raise RuntimeError(f"build.sh {component} failed (exit {out.returncode}): "
                               + (out.stderr.strip() or out.stdout.strip())[-1500:])
    return binary


# ---- the peers -----------------------------------------------------------------------------------


class Peer:
    name = ""
    process: subprocess.Popen | None = None
    base_url = ""
    validate_path = ""
    log: Path | None = None

    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane, self.workdir = plane, workdir

    @property
    def version(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def validate_url(self) -> str:
        return self.base_url + self.validate_path

    def start(self) -> None:
        raise NotImplementedError

    def load_policies(self) -> None:
        raise NotImplementedError

    def enable(self, excluded_namespace: str) -> None:
        """Make the API server call the peer for pods, except in `excluded_namespace`."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def judged(self) -> dict[str, bool]:
        """review name -> allowed, as the peer answers it now."""
        return {name: post(self.validate_url, json.dumps(review).encode())["response"]["allowed"]
                for name, review in reviews().items()}

    def denial(self, review: dict) -> str:
        response = post(self.validate_url, json.dumps(review).encode())["response"]
        return "" if response["allowed"] else (response.get("status") or {}).get("message", "") or "(denied)"

    def wait_judging(self) -> dict[str, str]:
        """Until the policies are in force: each review judged as expected, and both denials (the
        pod's, and the Deployment's through the pod template) naming both faults."""
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited")
            return self.judged() == EXPECTED and all(
                fault in self.denial(review) for review in (denied_pod_review(), denied_deployment_review())
                for fault in FAULTS)

        try:
            wait_until(ready, f"{self.name}'s verdicts", log=self.log)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; verdicts now: {self.judged()}, denials: "
                               f"{self.denial(denied_pod_review())!r} / "
                               f"{self.denial(denied_deployment_review())!r}") from None
        return {"denied_message": self.denial(denied_pod_review())[:600],
                "denied_deployment_message": self.denial(denied_deployment_review())[:600]}


def _excluding(namespaces: list[str]) -> dict:
    return {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": sorted(namespaces)}
    ]}


def _validating_configuration(name: str, url: str, ca_bundle: bytes, excluded: list[str]) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"bench.comptroller.dev/peers": "true"}},
        "webhooks": [{
            "name": f"validate.{name}.bench.comptroller.dev",
            "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_bundle).decode()},
            "rules": webhook_rules(RESOURCES),
            "namespaceSelector": _excluding(excluded),
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }


class Comptroller(Peer):
    """`comptroller webhook --policies DIR` with the labels and GPU policies of policies/default."""

    name = "comptroller"
    validate_path = "/validate"

    def __init__(self, plane: ControlPlane, workdir: Path, *, workers: int = 1) -> None:
        super().__init__(plane, workdir)
        self.workers = workers

    @property
    def version(self) -> str:
        return importlib.metadata.version("comptroller")

    def start(self) -> None:
        from controller import certs

        policies = self.workdir / "comptroller-policies"
        policies.mkdir(parents=True, exist_ok=True)
        for name in ("labels.yaml", "gpu.yaml"):
            shutil.copy(REPO / "policies" / "default" / name, policies / name)
        self.paths = certs.generate(self.workdir / "comptroller-certs", hosts=["127.0.0.1"])
        port = free_port()
        self.base_url = f"https://127.0.0.1:{port}"
        self.log = self.workdir / f"comptroller-{self.workers}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "webhook",
                 "--host", "127.0.0.1", "--port", str(port),
                 "--cert-file", str(self.paths.tls_cert), "--key-file", str(self.paths.tls_key),
                 "--policies", str(policies), "--workers", str(self.workers), "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )
        wait_until(lambda: _get_ok(self.base_url + "/readyz"), "comptroller webhook",
                   log=self.log, timeout=60)

    def load_policies(self) -> None:
        pass  # served from the files given at start

    def enable(self, excluded_namespace: str) -> None:
        self.plane.apply([_validating_configuration(
            COMPTROLLER_CONFIGURATION, self.validate_url, self.paths.ca_cert.read_bytes(),
            ["kube-system", "comptroller-system", excluded_namespace])])

    def stop(self) -> None:
        self.plane.kubectl("delete", "validatingwebhookconfiguration", COMPTROLLER_CONFIGURATION,
                           "--ignore-not-found", check=False)
        if self.process is not None:
            wb.stop_process(self.process, timeout=10)


class Kyverno(Peer):
    """Kyverno's admission controller out of cluster (`--serverIP`): it issues its own CA and serving
    certificate into Secrets and registers its webhooks with `url:` itself; its ConfigMap's
    `webhooks` namespaceSelector leaves the baseline namespace out."""

    name = "kyverno"
    validate_path = "/validate/fail"

    @property
    def version(self) -> str:
        return read_versions()["KYVERNO_VERSION"]

    def start(self) -> None:
        binary = build("kyverno", cache_dir() / "bin" / f"kyverno-{self.version}" / "kyverno")
        source = go_module_dir("github.com/kyverno/kyverno", self.version)
        self.plane.create_namespace(KYVERNO_NAMESPACE)
        self.plane.kubectl("apply", "--server-side", "--force-conflicts", "-R",
                           "-f", str(source / "config" / "crds"), timeout=300)
        self.excluded = ["kube-system", KYVERNO_NAMESPACE]
        self._configure()
        port = free_port()
        self.base_url = f"https://127.0.0.1:{port}"
        self.log = self.plane.logs / "kyverno.log"
        self.process = self.plane.spawn("kyverno", [
            str(binary), f"--kubeconfig={self.plane.kubeconfig}",
            f"--serverIP=127.0.0.1:{port}", "--webhookServerHost=127.0.0.1", f"--webhookServerPort={port}",
            f"--caSecretName={KYVERNO_CA_SECRET}", f"--tlsSecretName={KYVERNO_TLS_SECRET}",
            "--admissionReports=false", "--omitEvents=PolicyApplied,PolicySkipped",
            "--metricsHost=127.0.0.1", f"--metricsPort={free_port()}", "--controllerRuntimeMetricsAddress=0",
            f"--profilePort={free_port()}", "--webhookTimeout=5", "--disableLogColor",
        ], env={"KYVERNO_NAMESPACE": KYVERNO_NAMESPACE, "KYVERNO_POD_NAME": "kyverno-bench",
                "KYVERNO_DEPLOYMENT": "kyverno", "KYVERNO_SERVICEACCOUNT_NAME": "kyverno",
                "INIT_CONFIG": "kyverno", "METRICS_CONFIG": "kyverno-metrics"})
        wait_until(lambda: self.alive() and _get_ok(self.base_url + "/health/readiness"), "kyverno",
                   log=self.log)

    def _configure(self) -> None:
        """The `kyverno` ConfigMap: only the webhooks' namespaceSelector (no resource filters)."""
        self.plane.apply([{
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kyverno", "namespace": KYVERNO_NAMESPACE},
            "data": {"webhooks": json.dumps({"namespaceSelector": _excluding(self.excluded)})},
        }])

    def load_policies(self) -> None:
        self.plane.kubectl("apply", "-f", str(PEER_FILES / "kyverno-policy.yaml"))

        def ready() -> bool:
            out = self.plane.kubectl("get", "clusterpolicy", "finops", "-o", "json", check=False)
            conditions = json.loads(out.stdout or "{}").get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_until(ready, "kyverno ClusterPolicy finops", log=self.log)

    def enable(self, excluded_namespace: str) -> None:
        self.excluded = ["kube-system", KYVERNO_NAMESPACE, excluded_namespace]
        self._configure()

        def registered() -> bool:  # Kyverno rewrites its configuration when the ConfigMap changes
            out = self.plane.kubectl("get", "validatingwebhookconfiguration", "-l", KYVERNO_WEBHOOK_LABEL,
                                     "-o", "json", check=False)
            for item in json.loads(out.stdout or "{}").get("items", []):
                for hook in item.get("webhooks", []):
                    selector = json.dumps(hook.get("namespaceSelector", {}))
                    if excluded_namespace in selector and any("pods" in r.get("resources", [])
                                                              for r in hook.get("rules", [])):
                        return True
            return False

        wait_until(registered, "kyverno's resource webhook", log=self.log)

    def stop(self) -> None:
        self.plane.stop_process("kyverno")
        # Its configurations outlive it (failurePolicy Fail): without them gone, every later create fails.
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            self.plane.kubectl("delete", kind, "-l", KYVERNO_WEBHOOK_LABEL, "--ignore-not-found", check=False)
        self.plane.kubectl("delete", "clusterpolicy", "finops", "--ignore-not-found", "--wait=false",
                           check=False)


class Gatekeeper(Peer):
    """Gatekeeper's manager out of cluster, `--operation=webhook`, serving a certificate we issue
    (`--disable-cert-rotation --cert-dir`), registered here with `url:` and `caBundle` as Comptroller
    is. It reads its own Pod (owner of its status objects): a placeholder Pod stands in for it."""

    name = "gatekeeper"
    validate_path = "/v1/admit"

    @property
    def version(self) -> str:
        return read_versions()["GATEKEEPER_VERSION"]

    def start(self) -> None:
        from controller import certs

        binary = build("gatekeeper", cache_dir() / "bin" / f"gatekeeper-{self.version}" / "gatekeeper")
        source = go_module_dir("github.com/open-policy-agent/gatekeeper/v3", self.version)
        self.plane.create_namespace(GATEKEEPER_NAMESPACE)
        self.plane.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                           str(source / "charts" / "gatekeeper" / "crds"), timeout=300)
        self.plane.apply([{
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": GATEKEEPER_POD, "namespace": GATEKEEPER_NAMESPACE},
            "spec": {"nodeSelector": {"bench.comptroller.dev/none": "true"},
                     "containers": [{"name": "manager", "image": "registry.local/gatekeeper:bench"}]},
        }])
        self.paths = certs.generate(self.workdir / "gatekeeper-certs", hosts=["127.0.0.1"])
        port = free_port()
        self.base_url = f"https://127.0.0.1:{port}"
        self.health = f"http://127.0.0.1:{free_port()}"
        self.log = self.plane.logs / "gatekeeper.log"
        self.process = self.plane.spawn("gatekeeper", [
            # The chart splits these over its webhook and audit pods: `generate` creates the
            # constraint CRDs from the templates.
            str(binary), "--operation=webhook", "--operation=generate", "--host=127.0.0.1", f"--port={port}",
            f"--cert-dir={self.paths.tls_cert.parent}", "--disable-cert-rotation",
            f"--health-addr={self.health.removeprefix('http://')}", "--metrics-addr=0",
            "--log-level=WARNING", f"--exempt-namespace={GATEKEEPER_NAMESPACE}",
        ], env={"KUBECONFIG": str(self.plane.kubeconfig), "POD_NAMESPACE": GATEKEEPER_NAMESPACE,
                "POD_NAME": GATEKEEPER_POD})
        wait_until(lambda: self.alive() and _get_ok(self.health + "/readyz"), "gatekeeper", log=self.log)

    def load_policies(self) -> None:
        self.plane.kubectl("apply", "-f", str(PEER_FILES / "gatekeeper-templates.yaml"))
        for crd in ("k8srequiredlabels", "k8sgpuinstancetypes"):
            wait_until(lambda crd=crd: self.plane.kubectl(
                "get", "crd", f"{crd}.constraints.gatekeeper.sh", check=False).returncode == 0,
                f"the {crd} constraint CRD", log=self.log)
        self.plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                           "crd/k8srequiredlabels.constraints.gatekeeper.sh",
                           "crd/k8sgpuinstancetypes.constraints.gatekeeper.sh")
        self.plane.kubectl("apply", "-f", str(PEER_FILES / "gatekeeper-constraints.yaml"))

    def enable(self, excluded_namespace: str) -> None:
        self.plane.apply([_validating_configuration(
            GATEKEEPER_CONFIGURATION, self.validate_url, self.paths.ca_cert.read_bytes(),
            ["kube-system", GATEKEEPER_NAMESPACE, excluded_namespace])])

    def stop(self) -> None:
        self.plane.kubectl("delete", "validatingwebhookconfiguration", GATEKEEPER_CONFIGURATION,
                           "--ignore-not-found", check=False)
        self.plane.stop_process("gatekeeper")
        self.plane.kubectl("delete", "-f", str(PEER_FILES / "gatekeeper-constraints.yaml"),
                           "--ignore-not-found", "--wait=false", check=False)


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, context=_unverified(), timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# ---- measurements ----------------------------------------------------------------------------------


def paced(url: str, body: Path, *, script: Path, rate: float = RATE_RPS) -> dict:
    """About `rate` requests per second over RATE_CONNECTIONS connections (wrk's delay() is closed
    loop: two short probes set the delay from the latency, as bench/webhook_bench.py does)."""
    period_ms = RATE_CONNECTIONS * 1000 / rate
    delay = period_ms
    for _ in range(2):
        probe = wb.wrk(url, body, script=script, connections=RATE_CONNECTIONS, duration=2,
                       delay_ms=round(delay, 2))
        delay = max(0.0, delay + period_ms - RATE_CONNECTIONS * 1000 / probe["rps"])
    measured = wb.wrk(url, body, script=script, connections=RATE_CONNECTIONS, duration=RATE_DURATION_S,
                      delay_ms=round(delay, 2))
    return {"p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"], "achieved_rps": measured["rps"]}


def direct(peer: Peer, bodies: dict[str, Path], script: Path) -> dict:
    """Full-load throughput (interleaved rounds, median) and fixed-rate latency on `/validate`."""
    wb.wrk(peer.validate_url, bodies["pod"], script=script, connections=CONNECTIONS, duration=1)
    samples: dict[str, list[dict]] = {name: [] for name in bodies}
    cpu_before, requests = cpu_seconds(peer.pid), 0.0
    for _ in range(ROUNDS):
        for name, body in bodies.items():
            measured = wb.wrk(peer.validate_url, body, script=script, connections=CONNECTIONS,
                              duration=DURATION_S)
            samples[name].append(measured)
            requests += measured["rps"] * DURATION_S
    cpu_ms_per_request = round(1000 * (cpu_seconds(peer.pid) - cpu_before) / requests, 3)
    full = {name: wb._median(measured) for name, measured in samples.items()}
    at_rate = {name: paced(peer.validate_url, bodies[name], script=script) for name in ("pod", "pod_denied")}
    return {"full_load": full, f"at_{RATE_RPS}_rps": at_rate, "cpu_ms_per_request": cpu_ms_per_request}


def pod_creates(plane: ControlPlane, peer: Peer, namespaces: dict[str, str]) -> dict:
    """Blocks of creates alternating between the namespace the peer's webhook covers and the one it
    leaves out; the API server's own metrics count the webhook calls each block made."""
    peer.enable(namespaces["without_webhook"])
    host, port = plane.server.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=plane.ssl_context(), timeout=30)
    samples: dict[str, list[float]] = {mode: [] for mode in namespaces}
    calls: dict[str, dict[tuple[str, str], float]] = {mode: defaultdict(float) for mode in namespaces}
    try:
        def called() -> bool:  # the API server picks configuration changes up asynchronously
            before = webhook_totals(conn)
            create_block(conn, namespaces["with_webhook"], 1)
            after = webhook_totals(conn)
            return any(k[0] == "count" and v > before.get(k, 0.0) for k, v in after.items())

        wait_until(called, f"the API server calling {peer.name}", timeout=60, log=peer.log)
        for namespace in namespaces.values():
            create_block(conn, namespace, 20)
        for _ in range(POD_ROUNDS):
            for mode, namespace in namespaces.items():
                before = webhook_totals(conn)
                samples[mode].extend(create_block(conn, namespace, PER_BLOCK))
                for key, value in webhook_totals(conn).items():
                    calls[mode][key] += value - before.get(key, 0.0)
    finally:
        conn.close()

    def p99(values: list[float]) -> float:
        return round(statistics.quantiles(values, n=100)[98], 3)

    p50 = {mode: round(statistics.median(values), 3) for mode, values in samples.items()}
    p99s = {mode: p99(values) for mode, values in samples.items()}
    count = len(samples["with_webhook"])
    with_calls = calls["with_webhook"]
    webhook_calls = {
        name: {"per_create": round(with_calls[("count", name)] / count, 2),
               "mean_ms": round(1000 * with_calls[("sum", name)] / with_calls[("count", name)], 3)}
        for (kind, name) in with_calls if kind == "count" and with_calls[("count", name)]
    }
    return {"p50_ms": p50, "p99_ms": p99s, "samples_per_mode": count, "webhook_calls": webhook_calls}


def measure(plane: ControlPlane, peer: Peer, bodies: dict[str, Path], script: Path, namespaces: dict) -> dict:
    started = time.monotonic()
    result: dict = {"version": peer.version, "load_average_at_start": round(os.getloadavg()[0], 2)}
    peer.start()
    peer.load_policies()
    result.update(peer.wait_judging())
    result["ready_s"] = round(time.monotonic() - started, 1)
    time.sleep(3)
    idle = rss_mib(peer.pid)
    with RssPeak(peer.pid) as peak:
        result["direct"] = direct(peer, bodies, script)
    result["pod_create"] = pod_creates(plane, peer, namespaces)
    full, at_rate = result["direct"]["full_load"], result["direct"][f"at_{RATE_RPS}_rps"]
    p50, p99 = result["pod_create"]["p50_ms"], result["pod_create"]["p99_ms"]
    calls = result["pod_create"]["webhook_calls"]
    return {
        "version": result["version"],
        "validate_rps": full["pod"]["rps"],
        "validate_p50_ms": at_rate["pod"]["p50_ms"],
        "validate_p99_ms": at_rate["pod"]["p99_ms"],
        "validate_denied_rps": full["pod_denied"]["rps"],
        "validate_denied_p99_ms": at_rate["pod_denied"]["p99_ms"],
        "validate_deployment_rps": full["deployment"]["rps"],
        "pod_create_added_p50_ms": round(p50["with_webhook"] - p50["without_webhook"], 3),
        "pod_create_added_p99_ms": round(p99["with_webhook"] - p99["without_webhook"], 3),
        # The API server's own measure of the call (apiserver_admission_webhook_admission_duration_seconds).
        "pod_create_webhook_mean_ms": round(sum(c["mean_ms"] * c["per_create"] for c in calls.values()), 3),
        "rss_mib": {"idle": idle, "under_load": peak.peak},
        "cpu_ms_per_request": result["direct"]["cpu_ms_per_request"],
        "detail": result,
    }


# ---- Comptroller's own ceiling -------------------------------------------------------------------


def ceiling(peer: Comptroller, bodies: dict[str, Path], script: Path) -> dict:
    """/validate (allowed pod, Deployment, denied pod) against /noop on the same server, in interleaved
    rounds, and the Deployment review's latency at the fixed rate."""
    runs = {"noop": ("/noop", "pod"), "validate_pod": ("/validate", "pod"),
            "validate_deployment": ("/validate", "deployment"),
            "validate_pod_denied": ("/validate", "pod_denied")}
    samples: dict[str, list[dict]] = {name: [] for name in runs}
    cpu_us: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, (path, body) in runs.items():
            before = cpu_seconds(peer.pid)
            measured = wb.wrk(peer.base_url + path, bodies[body], script=script, connections=CONNECTIONS,
                              duration=DURATION_S)
            samples[name].append(measured)
            cpu_us[name].append(1e6 * (cpu_seconds(peer.pid) - before) / (measured["rps"] * DURATION_S))
    full = {name: wb._median(measured) for name, measured in samples.items()}
    # The server's own CPU time per request: what the ratio of throughputs stands for, without
    # the share of the two cores the load generator happened to take in that round.
    cpu = {name: round(statistics.median(values), 1) for name, values in cpu_us.items()}
    return {
        "full_load": full,
        "cpu_us_per_request": cpu,
        "validate_vs_noop_cpu": round(cpu["noop"] / cpu["validate_pod"], 3),
        "validate_vs_noop": round(full["validate_pod"]["rps"] / full["noop"]["rps"], 3),
        "deployment_vs_noop": round(full["validate_deployment"]["rps"] / full["noop"]["rps"], 3),
        "denied_pod_vs_noop": round(full["validate_pod_denied"]["rps"] / full["noop"]["rps"], 3),
        "deployment_p99_ms_full_load": full["validate_deployment"]["p99_ms"],
        f"deployment_at_{RATE_RPS}_rps": paced(peer.base_url + "/validate", bodies["deployment"],
                                                script=script),
    }


def cprofile_review(body: bytes, *, allowed: bool, count: int = 2000) -> dict:
    """The /validate handler alone (no TLS, no HTTP), in this process, `count` times the review."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("labels.yaml", "gpu.yaml"):
            shutil.copy(REPO / "policies" / "default" / name, Path(tmp) / name)
        admission = wb.in_process_admission(Path(tmp))
    status, reply = admission.validate(body)
    if status != 200 or json.loads(reply)["response"]["allowed"] != allowed:
        raise RuntimeError(f"the review is not judged as expected in-process: {reply[:300]!r}")
    plain_us = wb.per_call(lambda: admission.validate(body), count)
    noop_us = wb.per_call(lambda: admission.noop(body), count)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        admission.validate(body)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append({
            "function": f"{_short(filename)}:{line}({function})",
            "calls_per_review": round(calls / count, 2),
            "cumulative_us_per_review": round(cumtime / count * 1e6, 2),
            "own_us_per_review": round(tottime / count * 1e6, 2),
        })
    rows.sort(key=lambda r: r["cumulative_us_per_review"], reverse=True)
    return {"reviews": count, "handler_us_per_review_unprofiled": round(plain_us, 1),
            "noop_handler_us_unprofiled": round(noop_us, 1),
            "top_cumulative": rows[:12], "top_own": sorted(rows, key=lambda r: r["own_us_per_review"],
                                                             reverse=True)[:10]}


def _short(filename: str) -> str:
    for marker in ("/site-packages/", str(REPO) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", filename)


def pyspy_deployment(peer: Comptroller, body: Path, script: Path, *, seconds: int = 10) -> dict:
    """py-spy samples the serving process while wrk sends Deployment reviews at full load."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"],
                                   capture_output=True, text=True)
        if installed.returncode:
            return {"error": f"py-spy not installable: {installed.stderr.strip()[-300:]}"}
    raw = peer.workdir / "pyspy.txt"
    # Blocking mode (py-spy pauses the process for each sample): without it a third of the samples
    # fail. Idle samples (waiting in epoll) are left out: percentages are of busy CPU time.
    sampler = subprocess.Popen(
        [pyspy, "record", "--pid", str(peer.pid), "--duration", str(seconds), "--rate", "250",
         "--function", "--format", "raw", "--output", str(raw)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(0.5)
    load = wb.wrk(peer.base_url + "/validate", body, script=script, connections=CONNECTIONS, duration=seconds)
    output, _ = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode or not raw.exists():
        return {"error": f"py-spy record failed (exit {sampler.returncode}): {output.strip()[-400:]}"}
    inclusive: dict[str, int] = defaultdict(int)
    own: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith(("process ", "thread ")) and not _scaffold(f)]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count

    def top(table: dict[str, int], n: int) -> list[dict]:
        return [{"function": _short_frame(f), "percent": round(100 * c / total, 1)}
                for f, c in sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:n]]

    return {"samples": total, "rps_while_sampled": load["rps"], "top_inclusive": top(inclusive, 12),
            "top_own": top(own, 10)}


# The process and event-loop frames every sample sits under (uvloop runs callbacks from C, so many
# stacks start below them anyway): left out, so the ranking starts at the request's own frames.
SCAFFOLD = ("<frozen runpy>", "controller/cli.py", "controller/webhook/server.py", "asyncio/runners.py",
            "asyncio/base_events.py", "asyncio/events.py")


def _scaffold(frame: str) -> bool:
    return any(part in frame for part in SCAFFOLD)


def _short_frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({_short(where.rstrip(')'))})" if where else name


# ---- the run -------------------------------------------------------------------------------------


def run(plane: ControlPlane, *, only: tuple[str, ...] = PEERS) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="peers-bench-"))
    script = workdir / "post.lua"
    script.write_text(wb.LUA)
    bodies = {}
    for name, review in reviews().items():
        bodies[name] = workdir / f"{name}.json"
        bodies[name].write_text(json.dumps(review))
    # The reviews' namespace exists, as it would in a cluster: Gatekeeper reads it (from its cache,
    # else from the API server) for namespace-aware matching, and refuses a review without it.
    plane.create_namespace(wb.pod_review()["request"]["namespace"])
    peers: dict[str, dict] = {}
    extra: dict = {}
    suffix = uuid.uuid4().hex[:6]
    for name, cls in (("comptroller", Comptroller), ("kyverno", Kyverno), ("gatekeeper", Gatekeeper)):
        if name not in only:
            continue
        print(f"-- {name}", flush=True)
        namespaces = {"without_webhook": f"peers-off-{name}-{suffix}",
                      "with_webhook": f"peers-on-{name}-{suffix}"}
        for namespace in namespaces.values():
            plane.create_namespace(namespace)
        peer = cls(plane, workdir)
        try:
            peers[name] = measure(plane, peer, bodies, script, namespaces)
            if isinstance(peer, Comptroller):
                extra["comptroller_ceiling"] = ceiling(peer, bodies, script)
                extra["comptroller_ceiling"]["pyspy_deployment"] = pyspy_deployment(
                    peer, bodies["deployment"], script)
        except Exception as exc:  # noqa: BLE001 - the harness stays, the reason is the result
            peers[name] = {"version": _version_or_none(peer), "error": f"{type(exc).__name__}: {exc}"[:3000]}
            print(f"{name}: {peers[name]['error']}", file=sys.stderr, flush=True)
        finally:
            with contextlib.suppress(Exception):
                peer.stop()
            for namespace in namespaces.values():
                plane.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False,
                              timeout=180)
    # Comptroller with two worker processes, direct /validate only: the Go peers use both cores.
    try:
        two = Comptroller(plane, workdir, workers=2)
        two.start()
        try:
            wb.wrk(two.validate_url, bodies["pod"], script=script, connections=CONNECTIONS, duration=1)
            rounds = [wb.wrk(two.validate_url, bodies["pod"], script=script, connections=CONNECTIONS,
                             duration=DURATION_S) for _ in range(ROUNDS)]
            if "error" not in peers.get("comptroller", {"error": ""}):
                peers["comptroller"]["validate_rps_2_workers"] = wb._median(rounds)["rps"]
                peers["comptroller"]["rss_mib_2_workers_idle"] = rss_mib(two.pid)
        finally:
            two.stop()
    except Exception as exc:  # noqa: BLE001
        print(f"comptroller --workers 2: {exc}", file=sys.stderr)
    profiled = (("cprofile_deployment", "deployment", True), ("cprofile_denied_pod", "pod_denied", False))
    for key, body, allowed in profiled:
        try:
            extra.setdefault("comptroller_ceiling", {})[key] = cprofile_review(
                bodies[body].read_bytes(), allowed=allowed)
        except Exception as exc:  # noqa: BLE001
            extra.setdefault("comptroller_ceiling", {})[key] = {"error": str(exc)}
    print_table(peers)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"peers": peers, **extra}


def _version_or_none(peer: Peer) -> str | None:
    try:
        return peer.version
    except Exception:  # noqa: BLE001
        return None


COLUMNS = [
    ("version", "version"),
    ("validate_rps", "/validate rps"),
    ("validate_p50_ms", f"p50 ms @{RATE_RPS}"),
    ("validate_p99_ms", f"p99 ms @{RATE_RPS}"),
    ("validate_denied_rps", "denied rps"),
    ("validate_deployment_rps", "deploy rps"),
    ("pod_create_added_p50_ms", "create +p50 ms"),
    ("pod_create_added_p99_ms", "create +p99 ms"),
    ("pod_create_webhook_mean_ms", "call mean ms"),
    ("rss_idle", "RSS idle MiB"),
    ("rss_load", "RSS load MiB"),
    ("cpu_ms_per_request", "CPU ms/req"),
]


def print_table(peers: dict[str, dict]) -> None:
    rows = [["peer", *(title for _, title in COLUMNS)]]
    errors = []
    for name in PEERS:
        entry = peers.get(name)
        if entry is None:
            continue
        if "error" in entry:
            errors.append(f"{name} {entry.get('version') or ''}: {entry['error'].splitlines()[0][:200]}")
            continue
        flat = {**entry, "rss_idle": entry.get("rss_mib", {}).get("idle"),
                "rss_load": entry.get("rss_mib", {}).get("under_load")}
        rows.append([name, *(str(flat.get(key, "")) for key, _ in COLUMNS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for line in errors:
        print(f"(not measured) {line}")


if __name__ == "__main__":
    plane = ControlPlane(REPO / ".cluster" / "peers").up()
    try:
        print(json.dumps(run(plane), indent=2))
    finally:
        plane.down(quiet=True)
