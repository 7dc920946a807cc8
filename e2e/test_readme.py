"""The README's instructions, run as a reader would: the chart's rendered manifests installed on a
local control plane of their own by the exact commands of the marked README block."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from e2e.cluster.plane import REPO, ControlPlane
from e2e.helpers import wait_until

MARKER = "<!-- readme-test: chart-install"


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(marker):]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, f"no shell block after {marker!r} in README.md"
    return match.group(1)


def test_readme_installs_the_chart_on_the_local_control_plane(tmp_path):
    script = readme_block(MARKER)
    assert script.startswith("make plane"), "the block starts the plane the way a reader does"
    # The reader's `make plane` starts the plane in .cluster/; here it gets a directory of its own
    # so a developer's `make up` is left alone. Every other line runs exactly as written.
    plane_dir = tmp_path / "plane"
    script = script.replace(
        "make plane", f"{sys.executable} -m e2e.cluster.plane up --dir {plane_dir} >/dev/null", 1
    ).replace("$PWD/.cluster", str(plane_dir))
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True,
                                text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, f"README block failed:\n{result.stdout}\n{result.stderr}"
        plane = ControlPlane(plane_dir)
        deployments = json.loads(plane.kubectl("get", "deployments", "-n", "comptroller-system", "-o",
                                               "json").stdout)["items"]
        names = {d["metadata"]["name"]: d["status"].get("availableReplicas", 0) for d in deployments}
        assert names == {"comptroller-webhook": 2, "comptroller-operator": 2}
        assert "validatingwebhookconfiguration.admissionregistration.k8s.io/comptroller" in result.stdout
        # The API server publishes a new CRD's schema to `kubectl explain` a little after the CRD
        # is established: wait for it rather than read it at once.
        def explain() -> str:
            out = plane.kubectl("explain", "finopspolicy.spec.gpu.allowedInstanceTypes", check=False)
            return out.stdout if out.returncode == 0 else ""

        explained = wait_until(explain, timeout=60, what="kubectl explain to know FinOpsPolicy's schema")
        assert "instanceTypes" in explained
    finally:
        ControlPlane(plane_dir).down(quiet=True)
