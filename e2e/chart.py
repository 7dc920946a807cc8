"""The Helm chart from the test suite's side: the helm binary (built from its Go module like the
control plane, cached by version), rendering `charts/comptroller`, and credentials of the chart's
ServiceAccounts, so the webhook and operator can run in e2e with exactly the RBAC the chart ships.

    objects = render({"webhook": {"failurePolicy": "Fail"}}, namespace="comptroller")
    install_rbac(cluster, namespace="comptroller")
    kubeconfig = service_account_kubeconfig(cluster, namespace="comptroller",
                                            service_account="comptroller-operator",
                                            path=tmp / "operator.kubeconfig")
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.plane import HERE as CLUSTER_DIR
from e2e.cluster.plane import REPO, cache_dir, helm_path, read_versions

CHART = REPO / "charts" / "comptroller"
DEFAULT_RELEASE = "comptroller"

# What a ServiceAccount needs to exist and hold its permissions, in the order to apply them.
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def helm_binary() -> Path:
    """Path of the pinned helm, built by `e2e/cluster/build.sh helm` on first use (about two minutes
    cold on two cores, then cached under $COMPTROLLER_CACHE/bin/helm-<version>-k8s<version>/)."""
    path = helm_path()
    if not path.exists():
        subprocess.run(["bash", str(CLUSTER_DIR / "build.sh"), "helm"], check=True)
    return path


def kube_version() -> str:
    """The control plane's version. A helm built with `go install` lacks the ldflags that set its
    default (v1.20), which the chart's `kubeVersion` refuses, so every render passes it explicitly."""
    return read_versions()["KUBERNETES_VERSION"]


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the pinned helm with an isolated home, so no user config or repo cache leaks in."""
    home = cache_dir() / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, check=check, timeout=timeout, env=env
    )


def render(
    values: dict[str, Any] | None = None,
    *,
    namespace: str,
    release: str = DEFAULT_RELEASE,
    values_files: Iterable[Path] = (),
    include_crds: bool = False,
    lookup: bool = False,
) -> list[dict]:
    """`helm template` the chart and return its objects (empty documents dropped).

    `values` are applied after `values_files`, like `-f a.yaml --values <values>`. `lookup=True`
    renders against the cluster in $KUBECONFIG (`--dry-run=server`), so `lookup` sees live objects.
    """
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version()]
    for path in values_files:
        args += ["--values", str(path)]
    if include_crds:
        args.append("--include-crds")
    if lookup:
        args.append("--dry-run=server")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as handle:
        if values:
            json.dump(values, handle)  # JSON is YAML, and never reinterprets a string as a bool
            handle.flush()
            args += ["--values", handle.name]
        out = helm(*args)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def rbac_objects(objects: Iterable[dict]) -> list[dict]:
    """The ServiceAccounts and RBAC objects among `objects`, in the order they must be applied
    (helm hooks left out: they exist only while their hook runs)."""
    chosen = [o for o in objects if o.get("kind") in RBAC_KINDS
              and "helm.sh/hook" not in (o["metadata"].get("annotations") or {})]
    return sorted(chosen, key=lambda o: RBAC_KINDS.index(o["kind"]))


def install_rbac(cluster, *, namespace: str, values: dict[str, Any] | None = None,
                 release: str = DEFAULT_RELEASE) -> list[dict]:
    """Apply the chart's ServiceAccounts, (Cluster)Roles and bindings for real (the namespace must
    exist), so components can run with `service_account_kubeconfig` credentials. Returns them, for
    cleanup of the cluster-scoped ones."""
    objects = rbac_objects(render(values, namespace=namespace, release=release))
    cluster.apply(objects)
    return objects


def uninstall_rbac(cluster, objects: list[dict]) -> None:
    """Delete the cluster-scoped objects `install_rbac` applied (the namespaced ones go with their
    namespace)."""
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False)


def service_account_kubeconfig(
    cluster,
    *,
    namespace: str,
    service_account: str,
    path: Path,
    duration: str = "24h",
) -> Path:
    """Write a kubeconfig at `path` that authenticates as `namespace/service_account` with a
    TokenRequest token (`kubectl create token`), trusting the cluster's CA like the admin one does."""
    token = cluster.kubectl(
        "create", "token", service_account, "--namespace", namespace, "--duration", duration
    ).stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": service_account,
        "clusters": [{"name": context["cluster"], "cluster": server}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": service_account, "context": {
            "cluster": context["cluster"], "user": user, "namespace": namespace}}],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path
