"""The API objects `comptroller certs` keeps: the webhook's TLS Secret and the `caBundle` of its
Validating/MutatingWebhookConfigurations.

Both are written with optimistic concurrency, so two rotation Jobs (an upgrade's Job racing the
CronJob) never silently overwrite each other: the Secret by its resourceVersion (a lost race is a
`Conflict` the caller answers by re-reading), the configurations by a JSON Patch `test` of theirs.
Nothing here logs Secret data.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3
from kubernetes import client, config

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_ATTEMPTS = 5


class Conflict(Exception):
    """Someone created or changed the Secret since we read it: re-read and decide again."""


@dataclass(frozen=True)
class StoredSecret:
    data: dict[str, bytes]
    resource_version: str


class SecretStore:
    """One namespaced Secret, read and written as a whole `data` map of bytes."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        secret_type: str = "kubernetes.io/tls",
    ) -> None:
        self.namespace, self.name = namespace, name
        self._core = client.CoreV1Api(api_client)
        self._labels = dict(labels or {})
        self._type = secret_type

    def __str__(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    def read(self) -> StoredSecret | None:
        """The Secret's data, or None when it does not exist yet."""
        try:
            secret = self._core.read_namespaced_secret(self.name, self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        return StoredSecret(data=data, resource_version=secret.metadata.resource_version)

    def write(self, data: Mapping[str, bytes], *, resource_version: str | None) -> None:
        """Create the Secret (`resource_version=None`) or update the keys in `data` of the version
        read; raises Conflict when that is no longer the current one. Other keys, labels and
        annotations someone else put on the Secret are kept."""
        encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
        try:
            if resource_version is None:
                body = client.V1Secret(
                    metadata=client.V1ObjectMeta(
                        name=self.name, namespace=self.namespace, labels=self._labels or None
                    ),
                    type=self._type,
                    data=encoded,
                )
                self._core.create_namespaced_secret(self.namespace, body)
            else:
                # A merge patch carrying metadata.resourceVersion is applied only to that version.
                patch = {"metadata": {"resourceVersion": resource_version}, "data": encoded}
                self._core.patch_namespaced_secret(
                    self.name, self.namespace, patch, _content_type=MERGE_PATCH
                )
        except client.ApiException as error:
            if error.status == 409:
                raise Conflict(f"{self} changed since it was read") from None
            raise


def patch_ca_bundle(api_client: client.ApiClient, *, ca_pem: bytes, names: list[str]) -> list[str]:
    """Set caBundle on every webhook of each named Validating/MutatingWebhookConfiguration.

    A name may be either kind (or both); a name matching neither raises LookupError (a Job
    retries until the chart's configurations exist). Returns `kind/name (patched|unchanged)` for
    every configuration found.
    """
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
    results = []
    for name in names:
        found = False
        for kind, read, patch in kinds:
            outcome = _patch_one(read, patch, name=name, bundle=bundle)
            if outcome is not None:
                found = True
                results.append(f"{kind}/{name} ({outcome})")
        if not found:
            raise LookupError(f"no Validating/MutatingWebhookConfiguration named {name!r} (yet)")
    return results


def _patch_one(read, patch, *, name: str, bundle: str) -> str | None:
    for _ in range(PATCH_ATTEMPTS):
        try:
            current = read(name)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        webhooks = current.webhooks or []
        if all((w.client_config.ca_bundle or "") == bundle for w in webhooks):
            return "unchanged"
        # JSON Patch `add` sets the member whether or not it exists; the `test` on the
        # resourceVersion makes a concurrent edit (helm upgrade) fail instead of being overwritten,
        # and then we read the new version and patch that.
        version = current.metadata.resource_version
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}]
        ops += [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(len(webhooks))
        ]
        try:
            patch(name, ops, _content_type=JSON_PATCH)
            return "patched"
        except client.ApiException as error:
            if error.status not in (409, 422):
                raise
            log.info("%s changed while we patched it; retrying", name)
    raise RuntimeError(f"{name} kept changing; caBundle not patched after {PATCH_ATTEMPTS} attempts")


# What talking to the API server can raise besides our own errors: an HTTP error answer, no
# usable configuration, or no connection at all.
API_ERRORS = (client.ApiException, config.ConfigException, urllib3.exceptions.HTTPError)


def describe(error: Exception) -> str:
    """`HTTP 403 Forbidden: secrets "x" is forbidden: ...`: the status and the server's message,
    without the response headers the library's str() includes."""
    import json

    if not isinstance(error, client.ApiException):
        return f"{type(error).__name__}: {error}"
    message = ""
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        pass
    return f"HTTP {error.status} {error.reason}" + (f": {message}" if message else "")
