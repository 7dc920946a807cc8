"""`comptroller webhook` as a real process over TLS, abused at the socket: plain HTTP, old TLS,
garbage after the handshake, broken HTTP framing, clients that vanish mid-request, oversized
headers and bodies. After all of it the same process still answers admissions correctly, and its
log holds neither key material nor the objects it judged."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import certs

REPO = Path(__file__).resolve().parents[2]
REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "abuse-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "ml-nlp",
        "operation": "CREATE",
        "object": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ml-nlp",
                         "labels": {"team": "nlp", "secret-looking": "hunter2-do-not-log"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                                     "env": [{"name": "TOKEN", "value": "s3cr3t-token-value"}]}]},
        },
    },
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abuse")
    paths = certs.generate(tmp / "certs", hosts=["127.0.0.1"])
    port = _free_port()
    log = (tmp / "webhook.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "webhook", "--host", "127.0.0.1", "--port", str(port),
         "--cert-file", str(paths.tls_cert), "--key-file", str(paths.tls_key),
         "--policies", str(REPO / "policies" / "default"), "--log-level", "debug"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    deadline = time.monotonic() + 30
    while not _answers(port, context):
        assert process.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
        time.sleep(0.1)
    try:
        yield {"port": port, "context": context, "paths": paths, "process": process, "log": Path(log.name)}
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _answers(port: int, context: ssl.SSLContext) -> bool:
    try:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False


def _tls(server) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server["port"]), timeout=5)
    return server["context"].wrap_socket(raw, server_hostname="127.0.0.1")


def _admit(server) -> dict:
    connection = http.client.HTTPSConnection("127.0.0.1", server["port"], context=server["context"],
                                             timeout=5)
    connection.request("POST", "/validate", body=json.dumps(REVIEW),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())["response"]


ABUSE = {
    "plain HTTP": lambda s: _plain(s, b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"),
    "TLS 1.1": lambda s: _old_tls(s, ssl.TLSVersion.TLSv1_1),
    "garbage after the handshake": lambda s: _send_tls(s, b"\x00\xff" * 500 + b"\r\n\r\n"),
    "a request line only, then silence": lambda s: _send_tls(s, b"POST /validate HTTP/1.1\r\n", linger=1.0),
    "a body shorter than its length": lambda s: _send_tls(
        s, b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"api", linger=0.5),
    "a negative content length": lambda s: _send_tls(
        s, b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
    "a 1 MiB header": lambda s: _send_tls(
        s, b"POST /validate HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"),
    "an endless chunked body": lambda s: _send_tls(
        s, b"POST /validate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"10000\r\n" + b"x" * 0x10000 + b"\r\n" for _ in range(64))),
    "a wrong method": lambda s: _send_tls(s, b"DELETE /validate HTTP/1.1\r\nHost: x\r\n\r\n"),
}


def _plain(server, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=5) as raw:
        raw.sendall(data)
        try:
            reply = raw.recv(4096)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200"), reply  # never served in the clear


def _old_tls(server, version) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def _send_tls(server, data: bytes, *, linger: float = 0.0) -> None:
    with _tls(server) as tls:
        try:
            tls.sendall(data)
            time.sleep(linger)
            tls.settimeout(2)
            reply = tls.recv(4096)
        except (OSError, ssl.SSLError):
            reply = b""
    # Whatever the answer (4xx or a closed connection), it is never a server error.
    assert not reply.startswith(b"HTTP/1.1 5"), reply


@pytest.mark.parametrize("abuse", list(ABUSE))
def test_abuse_is_refused_and_the_server_keeps_serving(server, abuse):
    ABUSE[abuse](server)
    assert server["process"].poll() is None
    response = _admit(server)
    assert response["uid"] == "abuse-1" and response["allowed"] is False  # judged: labels missing


def test_many_clients_vanishing_mid_request_leave_no_damage(server):
    for _ in range(200):
        tls = _tls(server)
        tls.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        tls.close()
    assert _admit(server)["uid"] == "abuse-1"


def test_the_log_holds_no_key_material_nor_judged_objects(server):
    for abuse in ABUSE.values():
        abuse(server)
    _admit(server)
    time.sleep(0.2)
    log = server["log"].read_text()
    assert log.strip()  # debug logging was on: there is a log to judge
    for pem in (server["paths"].tls_key, server["paths"].ca_key):
        for line in pem.read_text().splitlines()[1:-1]:
            assert line not in log
    for value in ("hunter2-do-not-log", "s3cr3t-token-value"):
        assert value not in log
