"""`comptroller certs`: the webhook's own small PKI.

`generate` writes a CA and a serving certificate (EC P-256, SANs for every DNS name and IP given),
`patch` puts the CA into `caBundle` of every webhook of the named configurations, and `ensure`
does what a rotation job needs: keep a valid CA (so the bundle the API server trusts stays put),
reissue the serving certificate when it is missing, expiring within `--renew-within` days, not
covering the hosts or not matching its key, and patch. With `--secret NAMESPACE/NAME` the Secret
is the source of truth (keys `tls.crt`, `tls.key`, `ca.crt`, `ca.key`): read, renewed, written
back, then mirrored into `--dir`. The webhook server reloads the serving files when they change.

CA rollover never breaks admission: a new CA is made long before the old one expires (more than a
serving certificate's lifetime ahead), `ca.crt` then holds the new CA followed by the old one for
as long as the old one is valid, and a serving certificate signed by any CA of that bundle is kept
until its own renewal. So the API server trusts both the certificate being served and the next one
before the next one is ever served.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
CA_NAME = "comptroller-webhook-ca"
CA_DAYS = 3650
DEFAULT_DAYS = 365
DEFAULT_RENEW_WITHIN_DAYS = 30
SECRET_WRITE_ATTEMPTS = 5
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.DOTALL)


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


@dataclass(frozen=True)
class Bundle:
    """The four PEM files. `ca_cert` is the trust bundle: the signing CA first, then any previous
    CA still valid. An empty value means missing."""

    ca_cert: bytes = b""
    ca_key: bytes = b""
    tls_cert: bytes = b""
    tls_key: bytes = b""

    @classmethod
    def from_mapping(cls, data: Mapping[str, bytes]) -> Bundle:
        return cls(*(bytes(data.get(key) or b"") for key in (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)))

    def as_mapping(self) -> dict[str, bytes]:
        return {CA_CERT: self.ca_cert, CA_KEY: self.ca_key, TLS_CERT: self.tls_cert, TLS_KEY: self.tls_key}

    @classmethod
    def read(cls, directory: Path) -> Bundle:
        paths = Paths.in_dir(directory)
        return cls(*(_read_or_empty(p) for p in (paths.ca_cert, paths.ca_key, paths.tls_cert, paths.tls_key)))

    def write(self, directory: Path) -> Paths:
        """Write the files that differ (an unchanged file keeps its mtime, so nothing reloads)."""
        paths = Paths.in_dir(directory)
        for path, data, private in (
            (paths.ca_key, self.ca_key, True),
            (paths.ca_cert, self.ca_cert, False),
            (paths.tls_key, self.tls_key, True),
            (paths.tls_cert, self.tls_cert, False),
        ):
            if _read_or_empty(path) != data:
                _write(path, data, private=private)
        return paths


def _read_or_empty(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


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
    """A serving certificate for `hosts` (DNS names and IP addresses) signed by the CA (the first
    certificate of `ca_cert_pem`)."""
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
    cert = _certificate(_read_or_empty(cert_path))
    return cert is None or _expires_within(cert, days=days, now=now or _now())


def covers_hosts(cert_path: Path, hosts: list[str]) -> bool:
    cert = _certificate(_read_or_empty(cert_path))
    return cert is not None and _covers(cert, hosts)


# -- deciding what to renew (pure: bytes and `now` in, bytes out) -------------------------------


def _certificate(pem: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _certificates(pem: bytes) -> list[x509.Certificate]:
    """Every parseable certificate of a PEM bundle (garbage between or instead of them is skipped)."""
    return [cert for block in _PEM_CERT.findall(pem) if (cert := _certificate(block)) is not None]


def _private_key(pem: bytes):
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None


def _same_key(cert: x509.Certificate, key) -> bool:
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    return key is not None and cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) == key.public_key().public_bytes(serialization.Encoding.DER, public)


def _expires_within(cert: x509.Certificate, *, days: float, now: dt.datetime) -> bool:
    return cert.not_valid_after_utc <= now + dt.timedelta(days=days)


def _covers(cert: x509.Certificate, hosts: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = set(san)
    return all(name in present for name in _subject_alt_names(hosts))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by_one_of(cert: x509.Certificate, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def ca_renew_within_days(*, days: int, renew_within_days: float) -> float:
    """How long before its expiry the CA is replaced: more than a whole serving certificate's
    lifetime plus its renewal window, so every serving certificate it signed is renewed (under the
    next CA) before the old CA leaves the trust bundle."""
    return max(2 * renew_within_days, days + renew_within_days)


def renew(
    current: Bundle | None,
    *,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    renew_within_days: float = DEFAULT_RENEW_WITHIN_DAYS,
    rotate: bool = False,
    now: dt.datetime | None = None,
) -> tuple[Bundle, list[str]]:
    """The bundle to keep, and why it differs from `current` (empty: keep `current` as it is).

    `rotate` reissues the serving certificate even when it is still good (keeping the CA).
    """
    if not hosts:
        raise ValueError("at least one --host is needed for the certificate's subjectAltName")
    now = now or _now()
    current = current or Bundle()
    reasons: list[str] = []
    trust = _certificates(current.ca_cert)
    signer, signer_key = (trust[0] if trust else None), _private_key(current.ca_key)

    ca_cert, ca_key = current.ca_cert, current.ca_key
    ca_window = ca_renew_within_days(days=days, renew_within_days=renew_within_days)
    if signer is None or not _is_ca(signer) or not _same_key(signer, signer_key):
        reasons.append("no usable CA (certificate and key missing, unreadable or not a pair)")
    elif _expires_within(signer, days=ca_window, now=now):
        reasons.append(f"the CA expires within {ca_window:g} days")
    if reasons:
        new_ca, ca_key = create_ca(now=now)
        # The previous CAs stay trusted while valid: what they signed is still being served.
        previous = [c for c in trust if _is_ca(c) and c.not_valid_after_utc > now]
        ca_cert = new_ca + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in previous)
    else:
        kept = [c for c in trust if c is signer or (_is_ca(c) and c.not_valid_after_utc > now)]
        if len(kept) != len(trust):
            reasons.append("dropped expired or unreadable previous CAs from the trust bundle")
            ca_cert = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)
    trusted = _certificates(ca_cert)

    serving = _certificate(current.tls_cert)
    serving_reason = None
    if rotate:
        serving_reason = "rotation asked for"
    elif serving is None or not _same_key(serving, _private_key(current.tls_key)):
        serving_reason = "no serving certificate and key pair"
    elif not _issued_by_one_of(serving, trusted):
        serving_reason = "the serving certificate is not signed by a trusted CA"
    elif _expires_within(serving, days=renew_within_days, now=now):
        serving_reason = f"the serving certificate expires within {renew_within_days:g} days"
    elif not _covers(serving, hosts):
        serving_reason = f"the serving certificate does not cover {', '.join(hosts)}"
    tls_cert, tls_key = current.tls_cert, current.tls_key
    if serving_reason:
        reasons.append(serving_reason)
        tls_cert, tls_key = issue_serving_cert(
            ca_cert_pem=ca_cert, ca_key_pem=ca_key, hosts=hosts, days=days, now=now
        )
    return Bundle(ca_cert=ca_cert, ca_key=ca_key, tls_cert=tls_cert, tls_key=tls_key), reasons


def ensure(
    directory: Path,
    *,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    renew_within_days: float = DEFAULT_RENEW_WITHIN_DAYS,
    rotate: bool = False,
) -> tuple[Paths, bool]:
    """Keep a valid CA and serving certificate in `directory`; returns (paths, whether anything changed)."""
    bundle, reasons = renew(
        Bundle.read(directory), hosts=hosts, days=days, renew_within_days=renew_within_days, rotate=rotate
    )
    for reason in reasons:
        log.info("%s: %s", directory, reason)
    return bundle.write(directory), bool(reasons)


class SecretStore(Protocol):
    """Where `ensure_secret` keeps the bundle (controller.k8s.certificates.SecretStore; tests fake it)."""

    def read(self): ...

    def write(self, data: Mapping[str, bytes], *, resource_version: str | None) -> None: ...


def ensure_secret(
    store: SecretStore,
    directory: Path | None,
    *,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    renew_within_days: float = DEFAULT_RENEW_WITHIN_DAYS,
    rotate: bool = False,
    now: dt.datetime | None = None,
) -> tuple[Bundle, bool]:
    """Keep a valid CA and serving certificate in the Secret behind `store`, and mirror them into
    `directory`; returns (the bundle in the Secret, whether this call changed it).

    A write that loses a race (another Job created or renewed the Secret since we read it) re-reads
    and judges the winner's certificates, which are then usually kept as they are.
    """
    from controller.k8s.certificates import Conflict

    for _ in range(SECRET_WRITE_ATTEMPTS):
        stored = store.read()
        current = Bundle.from_mapping(stored.data) if stored is not None else None
        bundle, reasons = renew(
            current, hosts=hosts, days=days, renew_within_days=renew_within_days, rotate=rotate, now=now
        )
        if reasons or stored is None:
            try:
                store.write(bundle.as_mapping(), resource_version=stored.resource_version if stored else None)
            except Conflict as error:
                log.info("%s; reading it again", error)
                rotate = False  # whoever won the race has just written fresh certificates
                continue
            for reason in reasons:
                log.info("%s: %s", store, reason)
        if directory is not None:
            bundle.write(directory)
        return bundle, bool(reasons)
    raise RuntimeError(f"{store} kept changing; gave up after {SECRET_WRITE_ATTEMPTS} attempts")


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
        "ensure",
        help="create, or renew what is missing or expiring, then patch caBundle (for self-managed rotation)",
    )
    ens.add_argument(
        "--dir",
        type=Path,
        help="directory of ca.crt, ca.key, tls.crt, tls.key (a copy of the Secret's with --secret)",
    )
    ens.add_argument(
        "--secret",
        metavar="NAMESPACE/NAME",
        type=_secret_ref,
        help="keep the certificates in this Secret, created if missing (tls.crt, tls.key, ca.crt, ca.key)",
    )
    ens.add_argument("--host", action="append", required=True, dest="hosts")
    ens.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity of the serving certificate")
    ens.add_argument(
        "--renew-within",
        type=float,
        default=DEFAULT_RENEW_WITHIN_DAYS,
        metavar="DAYS",
        help="reissue the serving certificate when it expires within this many days "
        "(the CA is replaced --days + DAYS before it expires)",
    )
    ens.add_argument(
        "--rotate", action="store_true", help="reissue the serving certificate now, keeping the CA"
    )
    _add_patch_args(ens, required=False)


def _secret_ref(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {value!r}")
    return namespace, name


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


SECRET_LABELS = {"app.kubernetes.io/name": "comptroller", "app.kubernetes.io/component": "certs"}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    api_client = None

    def api():
        nonlocal api_client
        if api_client is None:
            from controller.k8s.config import load_api_client

            api_client = load_api_client(args.kubeconfig)
        return api_client

    try:
        if args.action == "generate":
            paths = generate(args.dir, hosts=args.hosts, days=args.days)
            print(f"wrote {paths.ca_cert}, {paths.ca_key}, {paths.tls_cert}, {paths.tls_key}")
            return 0
        if args.action == "ensure":
            options = dict(
                hosts=args.hosts, days=args.days, renew_within_days=args.renew_within, rotate=args.rotate
            )
            if args.secret is not None:
                from controller.k8s.certificates import SecretStore

                namespace, name = args.secret
                store = SecretStore(api(), namespace=namespace, name=name, labels=SECRET_LABELS)
                bundle, changed = ensure_secret(store, args.dir, **options)
                print(f"{'renewed' if changed else 'kept'} certificates in {store}")
                ca_pem = bundle.ca_cert
            elif args.dir is not None:
                paths, changed = ensure(args.dir, **options)
                print(f"{'renewed' if changed else 'kept'} certificates in {args.dir}")
                ca_pem = paths.ca_cert.read_bytes()
            else:
                raise ValueError("give --dir, --secret or both")
        else:
            ca_pem = Path(args.ca_file).read_bytes()
            if not _certificates(ca_pem):
                raise ValueError(f"{args.ca_file}: no PEM certificate in it")  # never patch garbage in
        if args.configs:
            from controller.k8s.certificates import patch_ca_bundle

            for patched in patch_ca_bundle(api(), ca_pem=ca_pem, names=args.configs):
                print(f"caBundle of {patched}")
        return 0
    except (OSError, ValueError, LookupError, RuntimeError) as error:
        print(f"comptroller certs {args.action}: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from controller.k8s.certificates import API_ERRORS, describe

        if not isinstance(error, API_ERRORS):
            raise
        # One line, and a non-zero exit a Job retries (RBAC not bound yet, API server restarting).
        print(f"comptroller certs {args.action}: {describe(error)}", file=sys.stderr)
        return 1
