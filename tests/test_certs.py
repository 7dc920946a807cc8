"""`comptroller certs`: what the issued certificates say, that a TLS client built from the CA
accepts them, and when `ensure` renews."""

from __future__ import annotations

import dataclasses
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


# -- renew: what a rotation run keeps and replaces --------------------------------------------------

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
GARBAGE_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _bundle(*, ca_days=certs.CA_DAYS, days=365, hosts=("127.0.0.1",), issued=NOW) -> certs.Bundle:
    ca_cert, ca_key = certs.create_ca(days=ca_days, now=issued)
    tls_cert, tls_key = certs.issue_serving_cert(
        ca_cert_pem=ca_cert, ca_key_pem=ca_key, hosts=list(hosts), days=days, now=issued
    )
    return certs.Bundle(ca_cert=ca_cert, ca_key=ca_key, tls_cert=tls_cert, tls_key=tls_key)


def _cas(bundle: certs.Bundle) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle.ca_cert)


CASES = {
    "fresh": lambda good: good,
    "nothing": lambda good: None,
    "ca.crt only (a foreign Secret)": lambda good: certs.Bundle(ca_cert=good.ca_cert),
    "ca.key of another CA": lambda good: dataclasses.replace(good, ca_key=certs.create_ca()[1]),
    "garbage ca.crt": lambda good: dataclasses.replace(good, ca_cert=GARBAGE_PEM),
    "CA within a serving lifetime of expiry": lambda good: _bundle(ca_days=300),
    "serving expiring": lambda good: _bundle(days=10),
    "serving key of another pair": lambda good: dataclasses.replace(good, tls_key=certs.create_ca()[1]),
    "serving for another host": lambda good: _bundle(hosts=("webhook.other.svc",)),
    "serving signed by an unknown CA": lambda good: dataclasses.replace(
        good, tls_cert=(stranger := _bundle()).tls_cert, tls_key=stranger.tls_key
    ),
    "rotate": lambda good: good,
}


@pytest.mark.parametrize(
    ("case", "new_ca", "new_serving", "reason"),
    [
        ("fresh", False, False, None),
        ("nothing", True, True, "no usable CA"),
        ("ca.crt only (a foreign Secret)", True, True, "no usable CA"),
        # The old CA stays trusted, so the serving certificate it signed is kept until due.
        ("ca.key of another CA", True, False, "no usable CA"),
        ("garbage ca.crt", True, True, "no usable CA"),
        ("CA within a serving lifetime of expiry", True, False, "the CA expires within 395 days"),
        ("serving expiring", False, True, "expires within 30 days"),
        ("serving key of another pair", False, True, "no serving certificate and key pair"),
        ("serving for another host", False, True, "does not cover 127.0.0.1"),
        ("serving signed by an unknown CA", False, True, "not signed by a trusted CA"),
        ("rotate", False, True, "rotation asked for"),
    ],
)
def test_renew_replaces_exactly_what_is_unusable(case, new_ca, new_serving, reason):
    current = CASES[case](_bundle())
    before = current or certs.Bundle()

    bundle, reasons = certs.renew(current, hosts=["127.0.0.1"], rotate=case == "rotate", now=NOW)

    signer = _cas(bundle)[0]
    old_cas = certs._certificates(before.ca_cert)
    assert (not old_cas or signer != old_cas[0]) is new_ca
    assert (bundle.tls_cert != before.tls_cert) is new_serving
    if reason is None:
        assert reasons == []
    else:
        assert any(reason in r for r in reasons), reasons
    # Whatever happened, the result is a working set: the key pairs match, the serving certificate
    # chains to a CA of the trust bundle and covers the host.
    serving = x509.load_pem_x509_certificate(bundle.tls_cert)
    assert certs._same_key(serving, certs._private_key(bundle.tls_key))
    assert certs._same_key(signer, certs._private_key(bundle.ca_key))
    assert certs._issued_by_one_of(serving, _cas(bundle))
    assert certs._covers(serving, ["127.0.0.1"])


def test_a_ca_rollover_keeps_trusting_the_old_ca_until_it_expires():
    old = _bundle(ca_days=300, days=200)
    rolled, reasons = certs.renew(old, hosts=["127.0.0.1"], now=NOW)
    assert reasons == ["the CA expires within 395 days"]
    assert [c.serial_number for c in _cas(rolled)[1:]] == [_cas(old)[0].serial_number]
    assert rolled.tls_cert == old.tls_cert  # still served, still trusted: no reload, no window

    # A day later nothing is due; when the old serving certificate is, the new CA signs the next.
    assert certs.renew(rolled, hosts=["127.0.0.1"], now=NOW + dt.timedelta(days=1))[1] == []
    later = NOW + dt.timedelta(days=180)
    renewed, reasons = certs.renew(rolled, hosts=["127.0.0.1"], now=later)
    assert reasons == ["the serving certificate expires within 30 days"]
    x509.load_pem_x509_certificate(renewed.tls_cert).verify_directly_issued_by(_cas(rolled)[0])

    # Once the old CA has expired it leaves the bundle.
    pruned, reasons = certs.renew(renewed, hosts=["127.0.0.1"], now=NOW + dt.timedelta(days=301))
    assert reasons == ["dropped expired or unreadable previous CAs from the trust bundle"]
    assert len(_cas(pruned)) == 1 and pruned.ca_key == rolled.ca_key


# -- ensure_secret: the Secret is the source of truth -------------------------------------------


class FakeSecretStore:
    """Our own client layer (controller.k8s.certificates.SecretStore) in memory, with resourceVersions."""

    def __init__(self, data=None, *, rival_writes=0):
        self.data = dict(data) if data is not None else None
        self.version = 1
        self.writes = []
        self.rival_writes = rival_writes  # how many writes another Job gets in just before ours

    def __str__(self):
        return "Secret ns/tls"

    def read(self):
        from controller.k8s.certificates import StoredSecret

        return None if self.data is None else StoredSecret(dict(self.data), str(self.version))

    def write(self, data, *, resource_version):
        from controller.k8s.certificates import Conflict

        if self.rival_writes:
            self.rival_writes -= 1
            self.data = _bundle().as_mapping()
            self.version += 1
        if (resource_version is None) != (self.data is None) or (
            resource_version is not None and resource_version != str(self.version)
        ):
            raise Conflict("Secret ns/tls changed since it was read")
        self.data = dict(data)
        self.version += 1
        self.writes.append(resource_version)


@pytest.mark.parametrize(
    ("initial", "rival_writes", "writes", "changed"),
    [
        ("missing", 0, [None], True),
        ("fresh", 0, [], False),
        ("expiring", 0, ["1"], True),
        # Another Job created the Secret between our read and our create: theirs is kept.
        ("missing", 1, [], False),
        # Another Job renewed it between our read and our update: theirs is kept.
        ("expiring", 1, [], False),
    ],
)
def test_ensure_secret_writes_only_changes_and_yields_to_a_rival(tmp_path, initial, rival_writes, writes,
                                                                 changed):
    data = {"missing": None, "fresh": _bundle(), "expiring": _bundle(days=5)}[initial]
    store = FakeSecretStore(data and data.as_mapping(), rival_writes=rival_writes)

    bundle, did_change = certs.ensure_secret(store, tmp_path / "certs", hosts=["127.0.0.1"])

    assert store.writes == writes
    assert did_change is changed
    assert certs.Bundle.from_mapping(store.data) == bundle
    assert certs.Bundle.read(tmp_path / "certs") == bundle  # the files mirror the Secret
    assert (tmp_path / "certs" / certs.TLS_KEY).stat().st_mode & 0o777 == 0o600


def test_ensure_secret_gives_up_on_a_secret_that_never_settles(tmp_path):
    class AlwaysLosing(FakeSecretStore):
        def write(self, data, *, resource_version):
            from controller.k8s.certificates import Conflict

            raise Conflict("Secret ns/tls changed since it was read")

    with pytest.raises(RuntimeError, match="kept changing"):
        certs.ensure_secret(AlwaysLosing(None), tmp_path, hosts=["127.0.0.1"])
    assert not (tmp_path / certs.TLS_CERT).exists()  # nothing half-done is left behind


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--secret", "no-slash", "--host", "h"], "expected NAMESPACE/NAME"),
        (["--secret", "a/b/c", "--host", "h"], "expected NAMESPACE/NAME"),
    ],
)
def test_cli_ensure_refuses_a_bad_secret_reference(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["certs", "ensure", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_ensure_needs_a_dir_or_a_secret(capsys):
    assert main(["certs", "ensure", "--host", "127.0.0.1"]) == 1
    assert "give --dir, --secret or both" in capsys.readouterr().err


def test_cli_ensure_in_a_dir_is_idempotent(tmp_path, capsys):
    argv = ["certs", "ensure", "--dir", str(tmp_path), "--host", "127.0.0.1"]
    assert main(argv) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(argv) == 0
    assert "kept certificates" in capsys.readouterr().out.splitlines()[-1]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps  # nothing rewritten
    assert main([*argv, "--rotate"]) == 0
    assert (tmp_path / certs.TLS_CERT).stat().st_mtime_ns != stamps[certs.TLS_CERT]
    assert (tmp_path / certs.CA_CERT).stat().st_mtime_ns == stamps[certs.CA_CERT]


def test_cli_ensure_reports_an_unreachable_api_server_in_one_line(tmp_path, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    argv = ["certs", "ensure", "--secret", "ns/tls", "--host", "h", "--kubeconfig", str(kubeconfig)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("comptroller certs ensure: ") and "\n" not in err and "Traceback" not in err
