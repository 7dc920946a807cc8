"""`comptroller webhook` as a real uvicorn over TLS on 127.0.0.1: what it serves, what it refuses,
and certificate rotation without a restart."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from webhook_fixtures import GOOD_LABELS, ML_PLATFORM, pod, review

from controller import certs
from controller.webhook.server import CertificateReloader, build_server
from controller.webhook.settings import WebhookSettings
from controller.webhook.transport import GatheringHttpProtocol


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serial(cert_path: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


def _peer_serial(port: int, ca_file: Path) -> int:
    from cryptography import x509

    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


class Webhook:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "certs"
        self.paths = certs.generate(self.dir, hosts=["127.0.0.1", "localhost"])
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "ml-platform.yaml").write_text(yaml.safe_dump(ML_PLATFORM))
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = (tmp / "webhook.log").open("w+")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "controller.cli", "webhook",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--cert-file", str(self.paths.tls_cert), "--key-file", str(self.paths.tls_key),
                "--policies", str(policies), "--cert-reload-interval", "0.2",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"webhook exited: {self.log.read()}")
            try:
                if self.client().get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("webhook did not become ready in 30s")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=str(self.paths.ca_cert))
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    server = Webhook(tmp_path_factory.mktemp("webhook"))
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("labels", "allowed"), [({}, False), (GOOD_LABELS, True)], ids=["unlabelled", "labelled"]
)
def test_validate_over_tls(webhook, labels, allowed):
    with webhook.client() as client:
        request = review(pod(labels=labels))
        body = client.post("/validate", json=request).json()
    assert body["response"]["uid"] == request["request"]["uid"]
    assert body["response"]["allowed"] is allowed


@pytest.mark.parametrize("path", ["/validate", "/mutate", "/noop", "/healthz"])
def test_each_response_is_one_tls_record(webhook, path):
    """Head and body arrive together: one read of the TLS socket (one record) holds the whole
    response, on a kept-alive connection too."""
    context = ssl.create_default_context(cafile=str(webhook.paths.ca_cert))
    payload = json.dumps(review(pod(labels=GOOD_LABELS))).encode()
    method = "GET" if path == "/healthz" else "POST"
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload) if method == 'POST' else 0}\r\n\r\n"
    ).encode() + (payload if method == "POST" else b"")
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            for _ in range(3):
                tls.sendall(request)
                first = tls.recv(1 << 20)  # SSL_read returns at most one record
                head, _, body = first.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                assert len(body) == int(fields[b"content-length"]) > 0


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")]
)
def test_serves_tls_1_2_and_1_3(webhook, version, name):
    context = ssl.create_default_context(cafile=str(webhook.paths.ca_cert))
    context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == name


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_refuses_tls_older_than_1_2(webhook, version):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(webhook.paths.ca_cert))
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")  # let the client at least offer the old protocol
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = version
    except (ValueError, ssl.SSLError):
        pass
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass


def test_plain_http_is_not_served(webhook):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{webhook.port}/healthz", timeout=5)
    # and the server is still fine afterwards
    with webhook.client() as client:
        assert client.get("/healthz").status_code == 200


def test_untrusted_clients_see_a_certificate_for_127_0_0_1_only(webhook):
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{webhook.url}/healthz", timeout=5)  # system CAs do not trust our CA


def test_a_rotated_certificate_is_served_without_a_restart(webhook):
    first = _peer_serial(webhook.port, webhook.paths.ca_cert)
    assert first == _serial(webhook.paths.tls_cert)
    rotated = certs.generate(webhook.dir, hosts=["127.0.0.1", "localhost"])  # new CA and certificate
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if _peer_serial(webhook.port, rotated.ca_cert) == _serial(rotated.tls_cert):
                break
        except ssl.SSLError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the rotated certificate was not served within 10s")
    assert webhook.process.poll() is None
    with webhook.client() as client:
        assert client.get("/healthz").status_code == 200


def test_reloader_keeps_the_old_certificate_while_the_pair_does_not_match(tmp_path):
    paths = certs.generate(tmp_path, hosts=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths.tls_cert, paths.tls_key)
    reloader = CertificateReloader(context, paths.tls_cert, paths.tls_key)
    assert reloader.check() is False  # nothing changed

    other = certs.generate(tmp_path / "other", hosts=["127.0.0.1"])
    paths.tls_cert.write_bytes(other.tls_cert.read_bytes())  # new certificate, old key: half rotated
    assert reloader.check() is False
    paths.tls_key.write_bytes(other.tls_key.read_bytes())
    assert reloader.check() is True
    assert reloader.check() is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cert-file", "/nonexistent/tls.crt", "--key-file", "/nonexistent/tls.key"], "no such file"),
    ],
)
def test_missing_files_are_reported(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "webhook", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_the_server_gathers_its_writes_and_never_switches_protocols(tmp_path):
    """Each response in one write (GatheringHttpProtocol), and no WebSocket upgrade that would hand
    the wrapped transport to a protocol expecting more of it."""
    paths = certs.generate(tmp_path, hosts=["127.0.0.1"])
    args = argparse.Namespace(
        host="127.0.0.1", port=0, cert_file=paths.tls_cert, key_file=paths.tls_key, log_level="warning"
    )
    server, _ = build_server(args, WebhookSettings(), view=object())
    assert server.config.http_protocol_class is GatheringHttpProtocol
    assert server.config.ws_protocol_class is None
