"""The local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes), built from Go modules by `build.sh` and started on
loopback with TLS, RBAC and the default admission plugins (webhooks included).

Everything a plane owns lives in one directory (default `.cluster/`): certificates, etcd data,
the admin kubeconfig, one log per component under `logs/`, and one pid file per process under
`pids/`. `down` stops every process that has a pid file there, so processes other tools start for
the stack (webhook, operator, Prometheus) are stopped with it when they register themselves.

    python -m e2e.cluster.plane up   [--dir .cluster]
    python -m e2e.cluster.plane down [--dir .cluster]
    python -m e2e.cluster.plane status
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.pki import ensure_pki

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_DIR = REPO / ".cluster"


def read_versions() -> dict[str, str]:
    versions = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key] = value
    return versions


def cache_dir() -> Path:
    return Path(os.environ.get("COMPTROLLER_CACHE", Path.home() / ".cache" / "comptroller"))


def binaries() -> dict[str, Path]:
    """Paths of the built binaries (built on demand by build.sh, cached by version)."""
    v = read_versions()
    bin_root = cache_dir() / "bin"
    k8s = bin_root / f"kubernetes-{v['KUBERNETES_VERSION']}"
    paths = {
        "etcd": bin_root / f"etcd-{v['ETCD_VERSION']}" / "etcd",
        "kube-apiserver": k8s / "kube-apiserver",
        "kube-controller-manager": k8s / "kube-controller-manager",
        "kube-scheduler": k8s / "kube-scheduler",
        "kubectl": k8s / "kubectl",
        "kwok": bin_root / f"kwok-{v['KWOK_VERSION']}" / "kwok",
    }
    if not all(p.exists() for p in paths.values()):
        subprocess.run(["bash", str(HERE / "build.sh"), "etcd", "kwok", "kubernetes"], check=True)
    return paths


def prometheus_path() -> Path:
    """Where build.sh puts Prometheus (built from its Go module, like the plane), building it if absent."""
    path = cache_dir() / "bin" / f"prometheus-{read_versions()['PROMETHEUS_VERSION']}" / "prometheus"
    if not path.exists():
        subprocess.run(["bash", str(HERE / "build.sh"), "prometheus"], check=True)
    return path


def helm_path() -> Path:
    """Where build.sh puts helm (keyed by its version and the Kubernetes version it defaults to)."""
    v = read_versions()
    return cache_dir() / "bin" / f"helm-{v['HELM_VERSION']}-k8s{v['KUBERNETES_VERSION']}" / "helm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Fake GPU node pools: (instance type, GPUs per node, nodes, CPUs, memory).
NODE_POOLS = [
    ("g5.xlarge", 1, 2, 4, "16Gi"),
    ("g6.12xlarge", 4, 2, 48, "192Gi"),
    ("p4d.24xlarge", 8, 2, 96, "1152Gi"),
    ("m5.xlarge", 0, 2, 4, "16Gi"),
]
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def node_manifest(instance_type: str, gpus: int, index: int, cpus: int, memory: str,
                  *, max_pods: int = 250) -> dict:
    """A Node kwok manages (by annotation), labeled like a cloud node of that instance type."""
    name = f"kwok-{instance_type.replace('.', '-')}-{index}"
    capacity = {"cpu": str(cpus), "memory": memory, "pods": str(max_pods)}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": instance_type,
                **({"nvidia.com/gpu.present": "true"} if gpus else {}),
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@dataclass
class ControlPlane:
    """A control plane rooted in `directory`. `up()` is idempotent: a healthy plane is reused."""

    directory: Path = DEFAULT_DIR

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def pids(self) -> Path:
        return self.directory / "pids"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def bin_dir(self) -> Path:
        return binaries()["kubectl"].parent

    @property
    def state_file(self) -> Path:
        return self.directory / "plane.json"

    @property
    def server(self) -> str:
        return json.loads(self.state_file.read_text())["server"]

    # ---- processes -------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], *, env: dict | None = None) -> subprocess.Popen:
        """Start a long-running process in its own session, logging to logs/<name>.log and
        recording its pid so `down` stops it. Other stack components use this too."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
        log.close()
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def stop_process(self, name: str, *, timeout: float = 15) -> None:
        pid_file = self.pids / f"{name}.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().strip() or 0)
        _terminate(pid, timeout=timeout)
        pid_file.unlink(missing_ok=True)

    def running(self, name: str) -> bool:
        pid_file = self.pids / f"{name}.pid"
        return pid_file.exists() and _alive(int(pid_file.read_text().strip() or 0))

    # ---- lifecycle -------------------------------------------------------------------------

    def healthy(self) -> bool:
        if not self.state_file.exists() or not self.running("kube-apiserver"):
            return False
        try:
            return self.get("/readyz", timeout=3) == "ok"
        except OSError:
            return False

    def up(self, *, progress=print) -> ControlPlane:
        if self.healthy():
            self._link_tools()
            progress(f"control plane already running: {self.server}")
            return self
        self.down(quiet=True)
        started = time.monotonic()
        bins = binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        ensure_pki(self.pki)
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        cm_port, sched_port = free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        self.state_file.write_text(json.dumps({"server": server, "etcd": etcd_port}))
        self._write_kubeconfigs(server)
        p = self.pki

        progress("starting etcd")
        data = self.directory / "etcd"
        self.spawn("etcd", [
            str(bins["etcd"]), "--name", "local", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"local=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
            # A throwaway test store: durability is not worth the fsync latency here.
            "--unsafe-no-fsync", "--quota-backend-bytes", str(4 * 1024**3),
            "--log-level", "warn",
        ])
        self._wait_for(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), "etcd")

        progress("starting kube-apiserver")
        self.spawn("kube-apiserver", [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            # The `kubernetes` Service's endpoints cannot point at loopback; nothing here needs them.
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--profiling=false",
            "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
            "--v=1",
        ])
        self._wait_for(self._apiserver_ready, "kube-apiserver", timeout=120)

        progress("starting kube-controller-manager, kube-scheduler and kwok")
        self.spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={cm_port}",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--kube-api-qps=200", "--kube-api-burst=400",
            "--v=1",
        ])
        self.spawn("kube-scheduler", [
            str(bins["kube-scheduler"]),
            f"--kubeconfig={self.directory / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={self.directory / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={self.directory / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            "--leader-elect=false", "--v=1",
        ])
        self.spawn("kwok", [
            str(bins["kwok"]),
            f"--kubeconfig={self.directory / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--config={HERE / 'kwok-stages.yaml'}",
            "--node-ip=10.240.0.1", "--cidr=10.240.0.0/16",
            "--node-lease-duration-seconds=40",
        ])

        progress("creating fake GPU node pools")
        self.add_nodes([
            node_manifest(itype, gpus, i, cpus, mem)
            for itype, gpus, count, cpus, mem in NODE_POOLS for i in range(count)
        ])
        self._wait_for(self._nodes_ready, "kwok", timeout=60)
        _wait(lambda: self._default_service_account("default"), "default ServiceAccount",
              self.logs / "kube-controller-manager.log", timeout=60)
        self._link_tools()
        progress(f"control plane up in {time.monotonic() - started:.1f}s: {server} "
                 f"(kubeconfig {self.kubeconfig})")
        return self

    def down(self, *, quiet: bool = False) -> None:
        """Stop every process registered under pids/, newest components first."""
        if not self.pids.exists():
            return
        order = ["kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
        names = [f.stem for f in self.pids.glob("*.pid")]
        # Stack components (webhook, operator, ...) first, then the plane in reverse start order.
        for name in sorted(names, key=lambda n: order.index(n) if n in order else -1):
            self.stop_process(name)
            if not quiet:
                print(f"stopped {name}")
        # etcd's data is throwaway; a fresh plane starts from a clean store.
        subprocess.run(["rm", "-rf", str(self.directory / "etcd")], check=False)

    # ---- API helpers -----------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str, *, timeout: float = 10) -> str:
        with urllib.request.urlopen(self.server + path, context=self.ssl_context(), timeout=timeout) as r:
            return r.read().decode()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(binaries()["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check, timeout=timeout,
        )

    def apply(self, objects: list[dict] | str, *, server_side: bool = False) -> None:
        text = objects if isinstance(objects, str) else json.dumps({"apiVersion": "v1", "kind": "List",
                                                                    "items": objects})
        args = ["apply", "-f", "-"] + (["--server-side", "--force-conflicts"] if server_side else [])
        self.kubectl(*args, input=text)

    def add_nodes(self, nodes: list[dict]) -> None:
        self.apply(nodes)

    def _link_tools(self) -> None:
        """`<dir>/bin/` holds links to the pinned kubectl (and helm, once built), so a person can
        `export PATH=$PWD/.cluster/bin:$PATH` and use exactly what the tests use."""
        tools = self.directory / "bin"
        tools.mkdir(exist_ok=True)
        for name, target in (("kubectl", binaries()["kubectl"]), ("helm", helm_path())):
            link = tools / name
            link.unlink(missing_ok=True)
            if target.exists():
                link.symlink_to(target)

    def create_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """Create a namespace and wait for its default ServiceAccount, without which the
        ServiceAccount admission plugin refuses pods."""
        self.apply([{"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": name, "labels": labels or {}}}])
        _wait(lambda: self._default_service_account(name), f"ServiceAccount {name}/default",
              self.logs / "kube-controller-manager.log", timeout=60)

    def _wait_for(self, predicate, component: str, *, timeout: float = 60) -> None:
        """Wait until `predicate()` holds, failing fast (with the log's tail) if `component` dies."""
        def check() -> bool:
            if not self.running(component):
                raise RuntimeError(f"{component} exited; last lines of {self.logs / component}.log:\n"
                                   + _tail(self.logs / f"{component}.log"))
            return predicate()
        _wait(check, component, self.logs / f"{component}.log", timeout=timeout)

    def _apiserver_ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=3) == "ok"
        except OSError:
            return False

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json", check=False)
        if out.returncode:
            return False
        items = json.loads(out.stdout)["items"]
        def ready(node: dict) -> bool:
            conditions = node.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        return bool(items) and all(ready(n) for n in items)

    def _default_service_account(self, namespace: str) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0

    def _write_kubeconfigs(self, server: str) -> None:
        for name, user in [("kubeconfig", "admin"), ("controller-manager.kubeconfig", "controller-manager"),
                           ("scheduler.kubeconfig", "scheduler"), ("kwok.kubeconfig", "kwok")]:
            config = {
                "apiVersion": "v1", "kind": "Config", "current-context": "comptroller-local",
                "clusters": [{"name": "comptroller-local", "cluster": {
                    "server": server, "certificate-authority": str(self.pki / "ca.crt")}}],
                "users": [{"name": user, "user": {
                    "client-certificate": str(self.pki / f"{user}.crt"),
                    "client-key": str(self.pki / f"{user}.key")}}],
                "contexts": [{"name": "comptroller-local", "context": {
                    "cluster": "comptroller-local", "user": user}}],
            }
            path = self.directory / name
            path.write_text(json.dumps(config, indent=2))
            path.chmod(0o600)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours is not alive.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def _terminate(pid: int, *, timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
    if not _alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait(predicate, what: str, log: Path, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; last lines of {log}:\n{_tail(log)}")


def _tail(log: Path, size: int = 3000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster.plane", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the plane's directory")
    args = parser.parse_args(argv)
    plane = ControlPlane(args.dir.resolve())
    if args.action == "up":
        plane.up()
    elif args.action == "down":
        plane.down()
    else:
        healthy = plane.healthy()
        print(f"{'running' if healthy else 'stopped'}" + (f": {plane.server}" if healthy else ""))
        return 0 if healthy else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
