"""`comptroller certs`: the webhook's own small PKI.

`generate` writes a CA and a serving certificate (EC P-256, SANs for every DNS name and IP given),
`patch` puts the CA into `caBundle` of every webhook of the named configurations, and `ensure`
does what a rotation job needs: keep a valid CA (so the bundle the API server trusts stays put),
reissue the serving certificate when it is missing or expires within `--renew-within` days, and
patch. The webhook server reloads the serving files when they change.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
CA_NAME = "comptroller-webhook-ca"
CA_DAYS = 3650
DEFAULT_DAYS = 365
DEFAULT_RENEW_WITHIN_DAYS = 30


@dataclass(frozen=True)
class Paths:
    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> Paths:
        directory = Path(directory)
        return cls(directory / CA_CERT, directory / CA_KEY, directory / TLS_CERT, directory / TLS_KEY)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # Write beside, then rename: a server reloading on mtime never reads half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create_ca(*, days: int = CA_DAYS, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed CA certificate and its key, both PEM."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue_serving_cert(
    *,
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A serving certificate for `hosts` (DNS names and IP addresses) signed by the CA."""
    if not hosts:
        raise ValueError("at least one --host is needed for the certificate's subjectAltName")
    now = now or _now()
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def generate(directory: Path, *, hosts: list[str], days: int = DEFAULT_DAYS) -> Paths:
    """A new CA and serving certificate in `directory` (replacing any there)."""
    paths = Paths.in_dir(directory)
    ca_cert, ca_key = create_ca()
    cert, key = issue_serving_cert(ca_cert_pem=ca_cert, ca_key_pem=ca_key, hosts=hosts, days=days)
    _write(paths.ca_key, ca_key, private=True)
    _write(paths.ca_cert, ca_cert)
    _write(paths.tls_key, key, private=True)
    _write(paths.tls_cert, cert)
    return paths


def expires_within(cert_path: Path, *, days: float, now: dt.datetime | None = None) -> bool:
    """True when the certificate is missing, unreadable, or not valid `days` from now."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return True
    return cert.not_valid_after_utc <= (now or _now()) + dt.timedelta(days=days)


def covers_hosts(cert_path: Path, hosts: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = set(san)
    return all(name in present for name in _subject_alt_names(hosts))


def ensure(
    directory: Path,
    *,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    renew_within_days: float = DEFAULT_RENEW_WITHIN_DAYS,
) -> tuple[Paths, bool]:
    """Keep a valid CA and serving certificate in `directory`; returns (paths, whether anything changed).

    The CA is kept while it has more than twice the renewal window left, so routine rotation of the
    serving certificate never changes the caBundle.
    """
    paths = Paths.in_dir(directory)
    changed = False
    if not paths.ca_key.exists() or expires_within(paths.ca_cert, days=2 * renew_within_days):
        ca_cert, ca_key = create_ca()
        _write(paths.ca_key, ca_key, private=True)
        _write(paths.ca_cert, ca_cert)
        changed = True
        log.info("created a new CA in %s", directory)
    if (
        changed
        or not paths.tls_key.exists()
        or expires_within(paths.tls_cert, days=renew_within_days)
        or not covers_hosts(paths.tls_cert, hosts)
    ):
        cert, key = issue_serving_cert(
            ca_cert_pem=paths.ca_cert.read_bytes(),
            ca_key_pem=paths.ca_key.read_bytes(),
            hosts=hosts,
            days=days,
        )
        _write(paths.tls_key, key, private=True)
        _write(paths.tls_cert, cert)
        changed = True
        log.info("issued a serving certificate for %s in %s", ", ".join(hosts), directory)
    return paths, changed


def patch_ca_bundle(api_client, *, ca_pem: bytes, names: list[str]) -> list[str]:
    """Set caBundle on every webhook of each named Validating/MutatingWebhookConfiguration.

    A name may be either kind (or both); a name matching neither is an error. Returns
    `kind/name` of every configuration patched.
    """
    from kubernetes import client

    api = client.AdmissionregistrationV1Api(api_client)
    bundle = base64.b64encode(ca_pem).decode()
    kinds = (
        (
            "ValidatingWebhookConfiguration",
            api.read_validating_webhook_configuration,
            api.patch_validating_webhook_configuration,
        ),
        (
            "MutatingWebhookConfiguration",
            api.read_mutating_webhook_configuration,
            api.patch_mutating_webhook_configuration,
        ),
    )
    patched = []
    for name in names:
        found = False
        for kind, read, patch in kinds:
            try:
                current = read(name)
            except client.ApiException as error:
                if error.status == 404:
                    continue
                raise
            found = True
            # JSON Patch `add` sets the member whether or not it exists; the `test` on the
            # resourceVersion makes a concurrent edit fail loudly instead of being overwritten.
            ops = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": current.metadata.resource_version,
                }
            ]
            ops += [
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
                for i in range(len(current.webhooks or []))
            ]
            patch(name, ops)
            patched.append(f"{kind}/{name}")
        if not found:
            raise LookupError(f"no Validating/MutatingWebhookConfiguration named {name!r}")
    return patched


# -- command line -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    gen = sub.add_parser("generate", help="write a new CA and serving certificate")
    gen.add_argument(
        "--dir", required=True, type=Path, help="output directory (ca.crt, ca.key, tls.crt, tls.key)"
    )
    gen.add_argument(
        "--host",
        action="append",
        required=True,
        dest="hosts",
        help="DNS name or IP address for the certificate (repeatable)",
    )
    gen.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity of the serving certificate")

    pat = sub.add_parser("patch", help="put the CA into caBundle of webhook configurations")
    pat.add_argument("--ca-file", required=True, type=Path)
    _add_patch_args(pat)

    ens = sub.add_parser(
        "ensure", help="generate if missing or expiring, then patch (for self-managed rotation)"
    )
    ens.add_argument("--dir", required=True, type=Path)
    ens.add_argument("--host", action="append", required=True, dest="hosts")
    ens.add_argument("--days", type=int, default=DEFAULT_DAYS)
    ens.add_argument(
        "--renew-within",
        type=float,
        default=DEFAULT_RENEW_WITHIN_DAYS,
        metavar="DAYS",
        help="reissue the serving certificate when it expires within this many days",
    )
    _add_patch_args(ens, required=False)


def _add_patch_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--webhook-config",
        action="append",
        required=required,
        default=[],
        dest="configs",
        metavar="NAME",
        help="Validating/MutatingWebhookConfiguration name (repeatable)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.action == "generate":
            paths = generate(args.dir, hosts=args.hosts, days=args.days)
            print(f"wrote {paths.ca_cert}, {paths.ca_key}, {paths.tls_cert}, {paths.tls_key}")
            return 0
        if args.action == "ensure":
            paths, changed = ensure(
                args.dir, hosts=args.hosts, days=args.days, renew_within_days=args.renew_within
            )
            print(f"{'renewed' if changed else 'kept'} certificates in {args.dir}")
            ca_file = paths.ca_cert
        else:
            ca_file = args.ca_file
        if args.configs:
            from controller.k8s.config import load_api_client

            ca_pem = Path(ca_file).read_bytes()
            x509.load_pem_x509_certificate(ca_pem)  # refuse to patch garbage into the API server
            for patched in patch_ca_bundle(
                load_api_client(args.kubeconfig), ca_pem=ca_pem, names=args.configs
            ):
                print(f"patched caBundle of {patched}")
        return 0
    except (OSError, ValueError, LookupError) as error:
        print(f"comptroller certs {args.action}: {error}", file=sys.stderr)
        return 1
