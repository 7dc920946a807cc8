"""The Comptroller stack on the local control plane, as `make up` runs it and the e2e suite uses it:
CRDs, the default policies, the webhook (HTTPS on loopback, registered with a generated CA) and
the operator, each running with the credentials of the chart's ServiceAccounts.

    python -m e2e.stack up     # plane + stack, in the background; kubeconfig at .cluster/kubeconfig
    python -m e2e.stack down   # stops everything, leaving no process behind
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from e2e.cluster.plane import DEFAULT_DIR, REPO, ControlPlane, free_port
from e2e.helpers import install_crds

NAMESPACE = "comptroller-system"
PEERING = "comptroller"
CONFIGURATION = "comptroller"
"""The Validating/MutatingWebhookConfigurations' name, as the chart names them for this release."""
VENV_BIN = Path(sys.executable).parent
DEFAULT_POLICIES = REPO / "policies" / "default"


def policy_documents(path: Path = DEFAULT_POLICIES) -> list[dict]:
    """The policy CRs under `path`, leaving out the test resources beside them."""
    return [d for f in sorted(path.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d and d.get("apiVersion", "").startswith("finops.comptroller.dev/")]


@dataclass
class Stack:
    plane: ControlPlane
    failure_policy: str = "Fail"
    webhook_port: int = 0
    operator_args: list[str] = field(default_factory=list)
    use_chart_rbac: bool = True

    @property
    def directory(self) -> Path:
        return self.plane.directory

    @property
    def certs(self) -> Path:
        return self.directory / "webhook-certs"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def state(self) -> dict:
        path = self.directory / "stack.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # ---- pieces ----------------------------------------------------------------------------

    def install_crds(self) -> None:
        install_crds(self.plane)
        # The peering the operator replicas share (the chart renders the same object).
        self.plane.apply([{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                           "metadata": {"name": PEERING}}])

    def credentials(self, component: str) -> Path:
        """A kubeconfig for `component` (webhook | operator): the chart's ServiceAccount when the
        chart's RBAC is available, else the admin's."""
        if not self.use_chart_rbac:
            return self.plane.kubeconfig
        from e2e.chart import install_rbac, service_account_kubeconfig

        install_rbac(self.plane, namespace=NAMESPACE)
        return service_account_kubeconfig(
            self.plane, namespace=NAMESPACE, service_account=f"comptroller-{component}",
            path=self.directory / f"{component}.kubeconfig",
        )

    def start_webhook(self) -> None:
        self.plane.stop_process("webhook")
        if not (self.certs / "tls.crt").exists():
            subprocess.run([str(VENV_BIN / "comptroller"), "certs", "generate", "--dir", str(self.certs),
                            "--host", "127.0.0.1", "--host", "localhost"], check=True)
        self.webhook_port = self.webhook_port or free_port()
        self.plane.spawn("webhook", [
            str(VENV_BIN / "comptroller"), "webhook", "--host", "127.0.0.1", "--port", str(self.webhook_port),
            "--cert-file", str(self.certs / "tls.crt"), "--key-file", str(self.certs / "tls.key"),
            "--kubeconfig", str(self.credentials("webhook")), "--namespace", NAMESPACE,
            "--failure-mode", "ignore",
        ])
        self.wait_ready("/readyz", what="webhook", timeout=60)

    def register_webhook(
        self, *, failure_policy: str | None = None, mutation_condition: str | None = None
    ) -> None:
        """Register both webhooks. `/mutate`'s matchCondition is the operator's to keep (a running
        one adds it within a tick); `mutation_condition` sets it here, for runs without one."""
        from controller.webhook.registration import webhook_configurations

        self.plane.apply(webhook_configurations(
            url=self.webhook_url, ca_bundle=(self.certs / "ca.crt").read_bytes(),
            failure_policy=failure_policy or self.failure_policy, timeout_seconds=5,
            exclude_namespaces=("kube-system", NAMESPACE), name=CONFIGURATION,
            mutation_condition=mutation_condition,
        ))

    def unregister_webhook(self) -> None:
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            self.plane.kubectl("delete", kind, "-l", "app.kubernetes.io/name=comptroller",
                               "--ignore-not-found", check=False)

    def start_operator(self) -> None:
        self.plane.stop_process("operator")
        self.plane.spawn("operator", [
            str(VENV_BIN / "comptroller"), "operator", "--kubeconfig", str(self.credentials("operator")),
            "--namespace", NAMESPACE, "--liveness-port", str(free_port()), "--metrics-port", str(free_port()),
            # The configurations register_webhook applies: the operator keeps /mutate's condition.
            "--webhook-configuration", CONFIGURATION, *self.operator_args,
        ])

    def apply_policies(self, path: Path = DEFAULT_POLICIES) -> None:
        self.plane.apply(policy_documents(path))

    def wait_ready(self, path: str, *, what: str, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.webhook_url + path, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if not self.plane.running(what):
                break
            time.sleep(0.3)
        log = self.plane.logs / f"{what}.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{what} not ready at {self.webhook_url}{path}; log tail:\n{tail}")

    # ---- lifecycle -------------------------------------------------------------------------

    def up(self, *, progress=print) -> Stack:
        self.plane.up(progress=progress)
        progress("installing CRDs")
        self.plane.create_namespace(NAMESPACE)
        self.install_crds()
        progress("applying the default policies")
        self.apply_policies()
        progress("starting the webhook")
        self.start_webhook()
        self.register_webhook()
        progress("starting the operator")
        self.start_operator()
        (self.directory / "stack.json").write_text(json.dumps({"webhook_url": self.webhook_url}))
        progress(f"stack up: webhook {self.webhook_url}, kubeconfig {self.plane.kubeconfig}")
        progress(f"logs: {self.plane.logs}/  (export KUBECONFIG={self.plane.kubeconfig})")
        return self

    def down(self) -> None:
        self.plane.down()
        (self.directory / "stack.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    stack = Stack(ControlPlane(args.dir.resolve()), failure_policy="Ignore",
                  operator_args=["--metering-interval", "10", "--expiry-interval", "10"])
    if args.action == "up":
        stack.up()
    else:
        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
