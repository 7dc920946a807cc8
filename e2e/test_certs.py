"""`comptroller certs ensure` against the real API server: the Secret it keeps (with exactly the
chart's certs RBAC), the caBundle it patches, and certificate rotation (serving certificate and CA
rollover) while admissions keep flowing through a webhook registered with failurePolicy Fail, with
zero failed admissions."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from controller import certs
from controller.webhook.registration import webhook_configurations
from e2e.chart import install_rbac, service_account_kubeconfig
from e2e.cluster.plane import REPO, free_port
from e2e.helpers import COMPLIANT_LABELS, wait_until

COMPTROLLER = str(Path(sys.executable).parent / "comptroller")
IGNORE = {"finops.comptroller.dev/ignore": "true"}


VALIDATING_WEBHOOKS = len(webhook_configurations(url="https://x", ca_bundle=b"")[0]["webhooks"])
"""validate, scale and claim: each carries the CA bundle."""


def comptroller_certs(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
    argv = [COMPTROLLER, "certs", *args] + ([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def scoped_configurations(*, name: str, url: str, ca_bundle: bytes, namespace: str) -> list[dict]:
    """Our webhook configurations, but matching only `namespace`, so nothing else in the shared
    plane ever reaches this test's webhook."""
    configs = webhook_configurations(url=url, ca_bundle=ca_bundle, failure_policy="Fail", name=name,
                                     timeout_seconds=5)
    for config in configs:
        for webhook in config["webhooks"]:
            webhook["namespaceSelector"] = {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]}
    return configs


def ca_bundles(cluster, name: str) -> dict[str, list[bytes]]:
    out = {}
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        obj = json.loads(cluster.kubectl("get", kind, name, "-o", "json").stdout)
        out[kind] = [base64.b64decode(w["clientConfig"].get("caBundle", "")) for w in obj["webhooks"]]
    return out


def served_serial(port: int, ca_file: Path) -> int:
    """The serial of the certificate a new TLS handshake gets."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number



class AdmissionLoop:
    """`kubectl apply --dry-run=server` of a compliant pod, over and over, in a thread: every
    attempt that is not admitted is a failure (with failurePolicy Fail, a TLS error is one)."""

    def __init__(self, cluster, namespace: str) -> None:
        self.cluster = cluster
        self.manifest = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "rotation-probe", "namespace": namespace, "labels": COMPLIANT_LABELS},
            "spec": {"containers": [{"name": "main", "image": "registry.example.com/app:1"}]},
        })
        self.attempts = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self.cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=self.manifest,
                                       check=False, timeout=30)
            self.attempts += 1
            if out.returncode != 0 or "created (server dry run)" not in out.stdout:
                self.failures.append(out.stderr.strip() or out.stdout.strip())

    def __enter__(self) -> AdmissionLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


# ---- the Secret, with the chart's RBAC -----------------------------------------------------------


@pytest.fixture
def chart_certs_identity(cluster, tmp_path):
    """A namespace with the chart's RBAC installed for a fresh release, and a kubeconfig of the
    certs ServiceAccount: `certs ensure` runs with exactly the permissions the chart grants."""
    release, namespace = f"c{uuid.uuid4().hex[:6]}", f"certs-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace, labels=IGNORE)
    objects = install_rbac(cluster, namespace=namespace, release=release)
    kubeconfig = service_account_kubeconfig(cluster, namespace=namespace,
                                            service_account=f"{release}-comptroller-certs",
                                            path=tmp_path / "certs.kubeconfig")
    fullname = f"{release}-comptroller"
    yield {"namespace": namespace, "secret": f"{fullname}-webhook-tls", "config": fullname,
           "kubeconfig": kubeconfig}
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        cluster.kubectl("delete", kind, fullname, "--ignore-not-found", check=False)
    for obj in objects:
        if obj["kind"].startswith("Cluster"):
            cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def read_secret(cluster, namespace: str, name: str) -> tuple[dict[str, bytes], str, str]:
    obj = json.loads(cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout)
    data = {key: base64.b64decode(value) for key, value in obj["data"].items()}
    return data, obj["metadata"]["resourceVersion"], obj["type"]


def test_ensure_keeps_the_secret_and_patches_the_configurations_once_they_exist(
        cluster, chart_certs_identity, tmp_path):
    ident = chart_certs_identity
    host = f"{ident['config']}-webhook.{ident['namespace']}.svc"
    argv = ["ensure", f"--dir={tmp_path / 'certs'}", f"--secret={ident['namespace']}/{ident['secret']}",
            f"--host={host}", f"--webhook-config={ident['config']}"]

    # Before the chart's configurations exist: the Secret is written (the webhook pods can start),
    # and the exit status is non-zero, so the Job retries.
    first = comptroller_certs(*argv, kubeconfig=ident["kubeconfig"])
    assert first.returncode == 1, first.stdout + first.stderr
    assert f"no Validating/MutatingWebhookConfiguration named '{ident['config']}'" in first.stderr
    data, version, secret_type = read_secret(cluster, ident["namespace"], ident["secret"])
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert secret_type == "kubernetes.io/tls"
    assert certs.Bundle.read(tmp_path / "certs") == certs.Bundle.from_mapping(data)
    serving = x509.load_pem_x509_certificate(data["tls.crt"])
    serving.verify_directly_issued_by(x509.load_pem_x509_certificate(data["ca.crt"]))
    assert serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == [host]
    # No key material in what a Job's log would keep.
    for pem in (data["ca.key"], data["tls.key"]):
        body = pem.decode().splitlines()[1]
        assert body not in first.stdout + first.stderr

    cluster.apply(scoped_configurations(name=ident["config"], url="https://127.0.0.1:1",
                                        ca_bundle=b"", namespace=f"nothing-{uuid.uuid4().hex[:6]}"))
    second = comptroller_certs(*argv, kubeconfig=ident["kubeconfig"])
    assert second.returncode == 0, second.stderr
    assert "kept certificates" in second.stdout
    assert second.stdout.count("(patched)") == 2
    assert ca_bundles(cluster, ident["config"]) == {  # every webhook: validate, scale, claim; mutate
        "validatingwebhookconfiguration": [data["ca.crt"]] * VALIDATING_WEBHOOKS,
        "mutatingwebhookconfiguration": [data["ca.crt"]]}
    assert read_secret(cluster, ident["namespace"], ident["secret"])[1] == version  # not rewritten

    third = comptroller_certs(*argv, kubeconfig=ident["kubeconfig"])
    assert third.returncode == 0 and third.stdout.count("(unchanged)") == 2, third.stdout + third.stderr

    rotated = comptroller_certs(*argv, "--rotate", kubeconfig=ident["kubeconfig"])
    assert rotated.returncode == 0, rotated.stderr
    after, new_version, _ = read_secret(cluster, ident["namespace"], ident["secret"])
    assert after["tls.crt"] != data["tls.crt"] and after["tls.key"] != data["tls.key"]
    assert after["ca.crt"] == data["ca.crt"] and after["ca.key"] == data["ca.key"]
    assert new_version != version
    assert certs.Bundle.read(tmp_path / "certs") == certs.Bundle.from_mapping(after)


def test_ensure_without_rbac_for_another_secret_fails_cleanly(cluster, chart_certs_identity, tmp_path):
    ident = chart_certs_identity
    out = comptroller_certs("ensure", f"--dir={tmp_path}", f"--secret={ident['namespace']}/someone-elses",
                            "--host=h", kubeconfig=ident["kubeconfig"])
    assert out.returncode == 1
    assert "HTTP 403" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_racing_jobs_agree_on_one_certificate(cluster, chart_certs_identity, tmp_path):
    """Four `certs ensure` at once on a Secret that does not exist yet (an upgrade's Job racing the
    CronJob, several times over): the API server's 409s make the losers read the winner's
    Secret, so every one exits 0 with the same certificates, in the Secret and in its --dir."""
    ident = chart_certs_identity
    runs = [
        subprocess.Popen([COMPTROLLER, "certs", "ensure", f"--dir={tmp_path / str(i)}",
                          f"--secret={ident['namespace']}/{ident['secret']}", "--host=webhook.svc",
                          f"--kubeconfig={ident['kubeconfig']}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    data, _, _ = read_secret(cluster, ident["namespace"], ident["secret"])
    assert {certs.Bundle.read(tmp_path / str(i)) for i in range(4)} == {certs.Bundle.from_mapping(data)}
    x509.load_pem_x509_certificate(data["tls.crt"]).verify_directly_issued_by(
        x509.load_pem_x509_certificate(data["ca.crt"]))


# ---- rotation while admissions flow ----------------------------------------------------------------


def test_rotating_the_stacks_serving_certificate_fails_no_admission(stack, cluster, namespace):
    before = file_serial(stack.certs / "tls.crt")
    assert served_serial(stack.webhook_port, stack.certs / "ca.crt") == before
    with AdmissionLoop(cluster, namespace) as loop:
        wait_until(lambda: loop.attempts >= 5, timeout=60, what="admissions before the rotation")
        out = comptroller_certs("ensure", f"--dir={stack.certs}", "--host=127.0.0.1", "--host=localhost",
                                "--rotate")
        assert out.returncode == 0, out.stderr
        after = file_serial(stack.certs / "tls.crt")
        assert after != before
        wait_until(lambda: served_serial(stack.webhook_port, stack.certs / "ca.crt") == after,
                   timeout=30, what="the webhook to serve the rotated certificate")
        rotated_at = loop.attempts
        wait_until(lambda: loop.attempts >= rotated_at + 5, timeout=60, what="admissions after it")
    assert loop.failures == []
    assert loop.attempts >= 10


@pytest.fixture
def own_webhook(cluster, tmp_path):
    """A webhook of this test's own (its own process name, port, certificates and configurations),
    which the test may rotate to its heart's content without touching the shared stack. Its
    namespace is ignored by the stack's webhook and is the only one its configurations match."""
    namespace = f"rot-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace, labels=IGNORE)
    directory, port, name = tmp_path / "certs", free_port(), f"certs-e2e-{uuid.uuid4().hex[:6]}"
    process = f"webhook-{name}"
    # A CA that is due for rollover (300 days left) and a serving certificate that is not.
    ca_cert, ca_key = certs.create_ca(days=300)
    tls_cert, tls_key = certs.issue_serving_cert(ca_cert_pem=ca_cert, ca_key_pem=ca_key,
                                                 hosts=["127.0.0.1"], days=200)
    certs.Bundle(ca_cert, ca_key, tls_cert, tls_key).write(directory)
    cluster.spawn(process, [
        COMPTROLLER, "webhook", "--host", "127.0.0.1", "--port", str(port),
        "--cert-file", str(directory / "tls.crt"), "--key-file", str(directory / "tls.key"),
        "--policies", str(REPO / "policies" / "default"), "--cert-reload-interval", "0.5",
        "--log-level", "warning",
    ])
    try:
        wait_until(lambda: _ready(port, directory / "ca.crt"), timeout=60, what="the webhook")
        cluster.apply(scoped_configurations(name=name, url=f"https://127.0.0.1:{port}",
                                            ca_bundle=ca_cert, namespace=namespace))
        yield {"namespace": namespace, "dir": directory, "port": port, "config": name}
    finally:
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        cluster.stop_process(process)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _ready(port: int, ca_file: Path) -> bool:
    try:
        served_serial(port, ca_file)
        return True
    except OSError:
        return False


def test_a_ca_rollover_fails_no_admission(cluster, own_webhook):
    hook = own_webhook
    ca_file, tls_file = hook["dir"] / "ca.crt", hook["dir"] / "tls.crt"
    old_ca = ca_file.read_bytes()
    ensure = ["ensure", f"--dir={hook['dir']}", "--host=127.0.0.1", f"--webhook-config={hook['config']}"]
    with AdmissionLoop(cluster, hook["namespace"]) as loop:
        wait_until(lambda: loop.attempts >= 5, timeout=60, what="admissions before the rollover")

        # 1. The CA is replaced; the bundle the API server trusts now holds the new and the old CA,
        #    and the certificate being served (signed by the old one) stays.
        serving_before = file_serial(tls_file)
        out = comptroller_certs(*ensure)
        assert out.returncode == 0, out.stderr
        trust = x509.load_pem_x509_certificates(ca_file.read_bytes())
        assert len(trust) == 2 and ca_file.read_bytes().endswith(old_ca)
        assert file_serial(tls_file) == serving_before
        validating = ca_bundles(cluster, hook["config"])["validatingwebhookconfiguration"]
        assert validating == [ca_file.read_bytes()] * VALIDATING_WEBHOOKS
        mark = loop.attempts
        wait_until(lambda: loop.attempts >= mark + 5, timeout=60, what="admissions after the new bundle")

        # 2. The serving certificate moves to the new CA, and the webhook serves it.
        out = comptroller_certs(*ensure, "--rotate")
        assert out.returncode == 0, out.stderr
        serving_after = file_serial(tls_file)
        x509.load_pem_x509_certificate(tls_file.read_bytes()).verify_directly_issued_by(trust[0])
        wait_until(lambda: served_serial(hook["port"], ca_file) == serving_after, timeout=30,
                   what="the webhook to serve the certificate of the new CA")
        mark = loop.attempts
        wait_until(lambda: loop.attempts >= mark + 5, timeout=60, what="admissions after the rotation")
    assert loop.failures == []
