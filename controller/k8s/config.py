"""Where the API server is and how to authenticate: an explicit kubeconfig, the in-cluster
service account, or the usual default kubeconfig (KUBECONFIG, ~/.kube/config), in that order."""

from __future__ import annotations

import logging

from kubernetes import client, config

log = logging.getLogger(__name__)


def load_api_client(kubeconfig: str | None = None, *, context: str | None = None) -> client.ApiClient:
    """A dedicated ApiClient (the library's global default configuration is left untouched)."""
    if kubeconfig:
        return config.new_client_from_config(config_file=str(kubeconfig), context=context)
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        log.debug("using the in-cluster service account")
        return client.ApiClient(configuration)
    except config.ConfigException:
        log.debug("not in a cluster; using the default kubeconfig")
        return config.new_client_from_config(context=context)
