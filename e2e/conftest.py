"""Session fixtures for the end-to-end suite: one real control plane for the whole session.

The plane lives in `.cluster/e2e/` (separate from `make up`'s `.cluster/`), is started once, and
stopped at the end unless it was already running when the session began (then it is reused and
left alone, which makes re-running one test fast: `python -m e2e.cluster.plane up --dir .cluster/e2e`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from e2e.cluster.plane import REPO, ControlPlane
from e2e.helpers import get_json, wait_until

E2E_DIR = Path(os.environ.get("COMPTROLLER_E2E_DIR", REPO / ".cluster" / "e2e"))


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(REPO / "e2e"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster():
    """A running control plane; KUBECONFIG and PATH (real kubectl) set for the test process."""
    plane = ControlPlane(E2E_DIR)
    reused = plane.healthy()
    plane.up()
    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "PATH")}
    os.environ["KUBECONFIG"] = str(plane.kubeconfig)
    os.environ["PATH"] = f"{plane.bin_dir}{os.pathsep}{os.environ['PATH']}"
    try:
        yield plane
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not reused:
            plane.down(quiet=True)


@pytest.fixture
def namespace(cluster):
    """A fresh namespace (with its default ServiceAccount) for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# Short intervals so the e2e suite sees the operator act within seconds. The stack's operator
# joins kopf peering at the lowest priority, so a test that runs its own operator (with a higher
# priority) pauses it instead of racing it on the same objects.
E2E_OPERATOR_ARGS = [
    "--peering", "comptroller", "--priority", "1",
    "--metering-interval", "2", "--expiry-interval", "2", "--idle-interval", "3",
    "--audit-interval", "10", "--wake-grace-period", "30", "--log-level", "INFO",
]


@pytest.fixture(scope="module")
def quiet_stack_operator(cluster):
    """Stops the stack's operator (when it runs) for a module whose tests run operators of their
    own, and starts it again afterwards. Pausing it through kopf peering is not enough: between
    two tests it resumes and acts on the objects the next test has just created. A module whose
    test brings the session's stack up first (a fresh plane) gets it without its operator too."""
    running = cluster.running("operator")
    if running:
        cluster.stop_process("operator")
    QUIET.add(id(cluster))
    yield
    QUIET.discard(id(cluster))
    if running or cluster.running("webhook"):
        from e2e.stack import Stack

        Stack(cluster, operator_args=E2E_OPERATOR_ARGS).start_operator()


QUIET: set[int] = set()
"""Planes whose stack operator a module keeps stopped (`quiet_stack_operator`)."""


@pytest.fixture(scope="module")
def prometheus():
    """A real Prometheus scraping a fake DCGM exporter (e2e/prometheus.py) for one module:
    `prometheus.url` for the policies, `prometheus.exporter.set(namespace, pod, value)` to publish a
    pod's GPU utilisation."""
    from e2e.prometheus import GpuExporter, Prometheus

    with GpuExporter() as exporter, Prometheus(exporter.address) as prom:
        prom.exporter = exporter
        yield prom


@pytest.fixture(scope="session")
def stack(cluster):
    """The Comptroller stack on the session's plane: CRDs, default policies, the webhook
    registered with failurePolicy Fail (so a broken webhook fails tests loudly) and the operator,
    both running with the chart's ServiceAccount credentials."""
    from e2e.stack import Stack

    running = Stack(cluster, failure_policy="Fail", operator_args=E2E_OPERATOR_ARGS).up()
    if id(cluster) in QUIET:
        cluster.stop_process("operator")  # the module runs operators of its own; it restarts this one
    try:
        yield running
    finally:
        running.unregister_webhook()
        cluster.stop_process("operator")
        cluster.stop_process("webhook")


@pytest.fixture(scope="module")
def accelerator_lab(cluster):
    """The accelerator lab (e2e/accelerators.py) on the session's plane for one module: kwok nodes
    advertising GPUs in every form NVIDIA's software offers them, DeviceClasses, and ResourceSlices
    standing in for the DRA driver. Removed afterwards: other modules count the plane's nodes."""
    from e2e import accelerators as acc

    remove_accelerator_lab(cluster)  # what an interrupted earlier run on a reused plane left behind
    nodes = acc.lab_nodes()
    cluster.add_nodes(nodes)
    cluster.apply(acc.lab_dra_objects())
    try:
        names = {n["metadata"]["name"] for n in nodes}
        wait_until(lambda: _nodes_ready(cluster, acc.LAB_LABEL) >= names, timeout=60,
                   what="the accelerator lab's kwok nodes to be Ready")
        yield acc.LAB
    finally:
        remove_accelerator_lab(cluster)


def _nodes_ready(cluster, selector: str, *, ready: bool = True) -> set[str]:
    items = (get_json(cluster, "nodes", "-l", selector) or {}).get("items", [])

    def is_ready(node: dict) -> bool:
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    return {n["metadata"]["name"] for n in items if not ready or is_ready(n)}


def remove_accelerator_lab(cluster) -> None:
    """Pods on the lab's nodes first (kwok finishes their deletion only while their node exists),
    then the slices, classes and nodes."""
    from e2e import accelerators as acc

    gone = ("--ignore-not-found", "--timeout=60s")
    for node in _nodes_ready(cluster, acc.LAB_LABEL, ready=False):
        cluster.kubectl("delete", "pods", "-A", "--field-selector", f"spec.nodeName={node}",
                        "--grace-period=0", "--force", "--wait=false", check=False)
    cluster.kubectl("delete", "resourceslices", "-l", acc.LAB_LABEL, *gone, check=False)
    cluster.kubectl("delete", "deviceclasses", acc.GPU_CLASS, acc.MIG_CLASS, acc.EXAMPLE_CLASS, acc.AMD_CLASS,
                    *gone, check=False)
    cluster.kubectl("delete", "nodes", "-l", acc.LAB_LABEL, *gone, check=False)
