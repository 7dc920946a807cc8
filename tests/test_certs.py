"""`comptroller certs`: what the issued certificates say, that a TLS client built from the CA
accepts them, and when `ensure` renews."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller import certs
from controller.cli import main


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize(
    ("hosts", "dns", "ips"),
    [
        (["127.0.0.1"], [], ["127.0.0.1"]),
        (["comptroller.comptroller-system.svc"], ["comptroller.comptroller-system.svc"], []),
        (
            ["webhook.ns.svc", "localhost", "::1", "10.0.0.7"],
            ["webhook.ns.svc", "localhost"],
            ["::1", "10.0.0.7"],
        ),
    ],
)
def test_generate_writes_a_ca_and_a_serving_cert_with_sans(tmp_path, hosts, dns, ips):
    paths = certs.generate(tmp_path, hosts=hosts, days=10)

    ca, cert = _load(paths.ca_cert), _load(paths.tls_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip) for ip in ips]
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=10) <= lifetime <= dt.timedelta(days=10, minutes=6)
    cert.verify_directly_issued_by(ca)
    assert paths.ca_key.stat().st_mode & 0o777 == 0o600
    assert paths.tls_key.stat().st_mode & 0o777 == 0o600


def test_the_serving_cert_loads_into_an_ssl_context_trusting_the_ca(tmp_path):
    paths = certs.generate(tmp_path, hosts=["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(paths.tls_cert, paths.tls_key)
    client = ssl.create_default_context(cafile=str(paths.ca_cert))
    assert client.get_ca_certs()[0]["subject"] == ((("commonName", certs.CA_NAME),),)


def test_generate_needs_a_host(tmp_path):
    with pytest.raises(ValueError, match="--host"):
        certs.generate(tmp_path, hosts=[])


@pytest.mark.parametrize(
    ("setup", "hosts", "renews_ca", "renews_cert"),
    [
        ("empty", ["127.0.0.1"], True, True),
        ("fresh", ["127.0.0.1"], False, False),
        ("cert-expiring", ["127.0.0.1"], False, True),
        ("new-host", ["127.0.0.1", "webhook.svc"], False, True),
        ("cert-missing", ["127.0.0.1"], False, True),
    ],
)
def test_ensure_reissues_only_what_is_needed(tmp_path, setup, hosts, renews_ca, renews_cert):
    if setup != "empty":
        certs.generate(tmp_path, hosts=["127.0.0.1"], days=5 if setup == "cert-expiring" else 365)
    if setup == "cert-missing":
        (tmp_path / certs.TLS_CERT).unlink()
    before = {
        name: (tmp_path / name).read_bytes() if (tmp_path / name).exists() else None
        for name in (certs.CA_CERT, certs.TLS_CERT)
    }

    paths, changed = certs.ensure(tmp_path, hosts=hosts, renew_within_days=30)

    assert changed is (renews_ca or renews_cert)
    assert (paths.ca_cert.read_bytes() != before[certs.CA_CERT]) is renews_ca
    assert (paths.tls_cert.read_bytes() != before[certs.TLS_CERT]) is renews_cert
    assert certs.covers_hosts(paths.tls_cert, hosts)
    _load(paths.tls_cert).verify_directly_issued_by(_load(paths.ca_cert))


@pytest.mark.parametrize(
    ("days_valid", "window", "expected"), [(365, 30, False), (20, 30, True), (31, 30, False)]
)
def test_expires_within(tmp_path, days_valid, window, expected):
    paths = certs.generate(tmp_path, hosts=["localhost"], days=days_valid)
    assert certs.expires_within(paths.tls_cert, days=window) is expected


def test_expires_within_treats_a_missing_file_as_expiring(tmp_path):
    assert certs.expires_within(tmp_path / "nope.crt", days=1) is True


def test_cli_generate(tmp_path, capsys):
    assert (
        main(["certs", "generate", "--dir", str(tmp_path), "--host", "127.0.0.1", "--host", "localhost"]) == 0
    )
    assert "tls.crt" in capsys.readouterr().out
    assert certs.covers_hosts(tmp_path / certs.TLS_CERT, ["127.0.0.1", "localhost"])


def test_cli_patch_refuses_a_file_that_is_not_a_certificate(tmp_path, capsys):
    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate")
    assert main(["certs", "patch", "--ca-file", str(bogus), "--webhook-config", "x"]) == 1
    assert "comptroller certs patch" in capsys.readouterr().err
