"""Webhook throughput and latency, side by side with the stack's own ceiling.

One `comptroller webhook` worker over TLS on 127.0.0.1 serves a static view of the default
policies; `wrk` (C, epoll, keep-alive; Debian package) drives it from another process with the
same load for `/noop` (a constant allowed review: TLS + HTTP + framework + body read) and for
`/validate` with realistic Pod and Deployment AdmissionReviews as the API server sends them, and
with a pod missing three required labels (denied, with the joint fix to paste in the message).
A last run paces requests to about 1,000 per second and reports the latency there. Then a second
server, with no policies at all, gives the floor: `/validate` against `/noop` before any rule runs.

    python -m bench.webhook_bench          # prints JSON; `make bench` includes it
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from e2e.helpers import COMPLIANT_LABELS, stop_process

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POLICIES = REPO / "policies" / "default"

THREADS = 1
CONNECTIONS = 16  # the API server multiplexes admission calls over a handful of keep-alive connections
DURATION_S = 3
ROUNDS = 3
RATE_RPS = 1000
RATE_CONNECTIONS = 10

LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
function delay() return pause end
local non200 = 0
function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end
function done(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
      + summary.errors.timeout))
end
"""

LABELS = {**COMPLIANT_LABELS, "app": "trainer"}


def _container(name: str, gpus: int) -> dict:
    return {
        "name": name,
        "image": f"registry.example.com/ml/{name}:2026.11.3",
        "command": ["python", "-m", "trainer"],
        "args": ["--config", "/etc/trainer/config.yaml", "--epochs", "12"],
        "env": [{"name": f"VAR_{i}", "value": f"value-{i}"} for i in range(12)]
        + [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "8", "memory": "60Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})},
            "limits": {"memory": "60Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/trainer"},
            {"name": "data", "mountPath": "/data"},
            {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def _pod_spec() -> dict:
    return {
        "containers": [_container("trainer", 1), _container("sidecar", 0)],
        "initContainers": [_container("fetch-data", 0)],
        "nodeSelector": {"node.kubernetes.io/instance-type": "g5.xlarge"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": "trainer-config", "defaultMode": 420}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
            {
                "name": "kube-api-access-x1",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                    ],
                },
            },
        ],
        "serviceAccountName": "default",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": True,
        "priority": 0,
    }


def _managed_fields(manager: str) -> list[dict]:
    return [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-20T12:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {f"f:{k}": {} for k in LABELS}},
                "f:spec": {"f:containers": {'k:{"name":"trainer"}': {".": {}}}},
            },
        }
    ]


def pod_review() -> dict:
    """A pod a ReplicaSet creates, as the API server sends it to a webhook."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "trainer-7d9c6b5f4-",
            "namespace": "ml-nlp",
            "labels": {**LABELS, "pod-template-hash": "7d9c6b5f4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T11:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "trainer-7d9c6b5f4",
                    "uid": "5d2c1e0a-0000-4000-8000-000000000001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": _managed_fields("kube-controller-manager"),
        },
        "spec": _pod_spec(),
        "status": {},
    }
    return _review(pod, kind={"group": "", "version": "v1", "kind": "Pod"}, resource="pods")


def denied_pod_review() -> dict:
    """The pod of `pod_review` without its team, project and cost center: denied, with a joint fix."""
    review = pod_review()
    labels = review["request"]["object"]["metadata"]["labels"]
    for key in ("team", "project", "cost_center"):
        del labels[key]
    return review


def deployment_review() -> dict:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "trainer",
            "namespace": "ml-nlp",
            "labels": dict(LABELS),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": _managed_fields("kubectl-client-side-apply"),
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "trainer"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "template": {"metadata": {"labels": dict(LABELS)}, "spec": _pod_spec()},
        },
    }
    return _review(
        deployment, kind={"group": "apps", "version": "v1", "kind": "Deployment"}, resource="deployments"
    )


def _review(obj: dict, *, kind: dict, resource: str) -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b6c3f5e-1f4e-4a7e-9d55-6a3f7c2b9e10",
            "kind": kind,
            "resource": {"group": kind["group"], "version": kind["version"], "resource": resource},
            "requestKind": kind,
            "requestResource": {"group": kind["group"], "version": kind["version"], "resource": resource},
            "name": obj["metadata"].get("name", ""),
            "namespace": obj["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "c0ffee00-0000-4000-8000-000000000002",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "object": copy.deepcopy(obj),
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    # A Debian package, installed on first use (as root: `make bench` is not part of `make test`).
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or "wrk"


class Server:
    """One webhook worker process on 127.0.0.1, serving the policies in `policies`."""

    def __init__(self, workdir: Path, policies: Path) -> None:
        from controller import certs

        self.paths = certs.generate(workdir / "certs", hosts=["127.0.0.1"])
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = (workdir / "webhook.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli",
                "webhook",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--cert-file",
                str(self.paths.tls_cert),
                "--key-file",
                str(self.paths.tls_key),
                "--policies",
                str(policies),
                "--log-level",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        context = ssl.create_default_context(cafile=str(self.paths.ca_cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=context, timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"webhook did not start; see {self.log.name}") from None
                time.sleep(0.1)

    def post(self, path: str, body: bytes) -> dict:
        context = ssl.create_default_context(cafile=str(self.paths.ca_cert))
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.log.close()


def wrk(
    url: str, body: Path, *, script: Path, connections: int, duration: float, delay_ms: float = 0
) -> dict:
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_DELAY_MS": str(delay_ms)}
    result = subprocess.run(
        [
            wrk_binary(),
            "-t",
            str(THREADS),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + 60,
        check=True,
    )
    line = next((line for line in result.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")
    stats = json.loads(line[len("BENCH ") :])
    if stats["errors"]:
        raise RuntimeError(f"{stats['errors']} failed requests against {url}")
    seconds = stats["duration_us"] / 1e6
    return {
        "rps": round(stats["requests"] / seconds, 1),
        "p50_ms": round(stats["p50_us"] / 1000, 3),
        "p99_ms": round(stats["p99_us"] / 1000, 3),
    }


def run(*, policies: Path | None = None, duration: float = DURATION_S) -> dict:
    policies = policies or DEFAULT_POLICIES
    if not policies.exists():
        raise FileNotFoundError(f"{policies}: no policies to benchmark with")
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(LUA)
        bodies = {}
        reviews = {"pod": pod_review(), "deployment": deployment_review(), "denied": denied_pod_review()}
        for name, review in reviews.items():
            bodies[name] = workdir / f"{name}.json"
            bodies[name].write_text(json.dumps(review))
        server = Server(workdir, policies)
        try:
            # The reviews must be judged for real (admitted, so the whole rule set runs).
            for name, body in bodies.items():
                verdict = server.post("/validate", body.read_bytes())["response"]
                if verdict["allowed"] != (name != "denied"):
                    raise RuntimeError(f"the {name} review is judged otherwise than meant: {verdict}")
            if "fix (admitted with it)" not in verdict["status"]["message"]:
                raise RuntimeError(f"the denial carries no joint fix: {verdict['status']['message']}")
            runs = {
                "webhook.noop": ("/noop", bodies["pod"]),
                "webhook.validate": ("/validate", bodies["pod"]),
                "webhook.validate_deployment": ("/validate", bodies["deployment"]),
                "webhook.validate_denied": ("/validate", bodies["denied"]),
            }
            results: dict = interleaved(server, runs, script=script, duration=duration)
            results["webhook.validate_vs_noop"] = round(
                results["webhook.validate"]["rps"] / results["webhook.noop"]["rps"], 3
            )
            results["webhook.latency_at_1000rps"] = paced(
                server.url + "/validate", bodies["pod"], script=script
            )
        finally:
            server.stop()
        results["webhook.floor"] = floor(workdir, bodies["pod"], script=script, duration=duration)
    results["webhook.in_process_us"] = {
        name: where_the_time_goes(json.dumps(reviews[name]).encode(), policies) for name in ("pod", "denied")
    }
    return results


def floor(workdir: Path, body: Path, *, script: Path, duration: float) -> dict:
    """`/validate` against `/noop` on a server with no policies at all: what the webhook costs
    before any rule runs (the review's envelope, the engine finding nothing to judge, the
    decision's bookkeeping), the ceiling of `webhook.validate_vs_noop` for any policy set."""
    empty, own = workdir / "no-policies", workdir / "floor"
    empty.mkdir()
    own.mkdir()
    server = Server(own, empty)
    try:
        verdict = server.post("/validate", body.read_bytes())["response"]
        if verdict != {"uid": verdict["uid"], "allowed": True}:
            raise RuntimeError(f"with no policies the review is not simply admitted: {verdict}")
        runs = {"noop": ("/noop", body), "validate": ("/validate", body)}
        measured = interleaved(server, runs, script=script, duration=duration)
    finally:
        server.stop()
    noop, validate = measured["noop"], measured["validate"]
    return {
        "noop_rps": noop["rps"],
        "validate_rps": validate["rps"],
        "validate_vs_noop": round(validate["rps"] / noop["rps"], 3),
        "rounds_rps": {"noop": noop["rounds_rps"], "validate": validate["rounds_rps"]},
    }


def in_process_admission(policies: Path):
    """What answers `/validate` and `/noop` in the server, built the same way over `policies`, to
    call in this process (no TLS, no HTTP, no event loop)."""
    from datetime import UTC, datetime
    from functools import partial

    from controller.engine import evaluate
    from controller.webhook.admission import Admission
    from controller.webhook.metrics import WebhookMetrics
    from controller.webhook.settings import WebhookSettings
    from controller.webhook.views import view_from_path

    settings = WebhookSettings()
    view = view_from_path(policies, excluded_namespaces=settings.excluded_namespaces)
    return Admission(view=view, settings=settings, metrics=WebhookMetrics(), evaluate=evaluate,
                     clock=partial(datetime.now, UTC))


def where_the_time_goes(body: bytes, policies: Path, *, count: int = 3000) -> dict:
    """Microseconds per review, each part timed alone in this process, warm: the no-op handler (the
    review parsed, a constant answer), the review's parse and envelope check, the engine's judgment
    (`evaluate`, without a denial's joint fix), and the whole `/validate` handler."""
    from datetime import UTC, datetime

    from controller.engine import evaluate
    from controller.webhook.review import parse_review

    admission = in_process_admission(policies)
    request = parse_review(body)
    snapshot = admission.view.snapshot()
    now = datetime.now(UTC)

    def judged() -> object:
        return evaluate(request.object, snapshot=snapshot, now=now, mutate=False,
                        operation=request.operation, namespace=request.namespace or None)

    parts = {
        "noop": lambda: admission.noop(body),
        "parse": lambda: parse_review(body),
        "evaluate": judged,
        "validate": lambda: admission.validate(body),
    }
    return {name: per_call(call, count) for name, call in parts.items()}


def per_call(call, count: int) -> float:
    """Microseconds per call of `call`, warm (a tenth as many calls first), `count` calls timed."""
    for _ in range(count // 10):
        call()
    started = time.perf_counter()
    for _ in range(count):
        call()
    return round((time.perf_counter() - started) / count * 1e6, 1)


def interleaved(server: Server, runs: dict[str, tuple[str, Path]], *, script: Path, duration: float) -> dict:
    """`{name: median run}` of each `(path, body)` in `runs`, after a warm-up of the server: ROUNDS
    interleaved rounds, since the machine is shared and a burst of other work should not land on
    one endpoint only."""
    first_path, first_body = next(iter(runs.values()))
    wrk(server.url + first_path, first_body, script=script, connections=CONNECTIONS, duration=1)
    samples: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, (path, body) in runs.items():
            samples[name].append(
                wrk(server.url + path, body, script=script, connections=CONNECTIONS, duration=duration)
            )
    return {name: _median(measured) for name, measured in samples.items()}


def _median(runs: list[dict]) -> dict:
    middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return {**middle, "rounds_rps": [r["rps"] for r in runs]}


def paced(url: str, body: Path, *, script: Path) -> dict:
    """About RATE_RPS requests per second: each connection waits `delay` before each request.

    wrk's delay() is closed-loop (rate = connections / (delay + latency)), so a short run first
    measures the latency and the delay is set from it; the achieved rate is reported alongside.
    """
    period_ms = RATE_CONNECTIONS * 1000 / RATE_RPS
    delay = period_ms
    for _ in range(2):  # two short probes bring the closed loop close to the target rate
        probe = wrk(
            url, body, script=script, connections=RATE_CONNECTIONS, duration=2, delay_ms=round(delay, 2)
        )
        delay = max(0.0, delay + period_ms - RATE_CONNECTIONS * 1000 / probe["rps"])
    measured = wrk(
        url, body, script=script, connections=RATE_CONNECTIONS, duration=10, delay_ms=round(delay, 2)
    )
    return {"p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"], "achieved_rps": measured["rps"]}


if __name__ == "__main__":
    policies = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(json.dumps(run(policies=policies), indent=2))
