"""Rendering the chart for the chart tests: cached `helm template` runs and ways to pick objects out."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from e2e.chart import CHART, render

NAMESPACE = "finops-system"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


@functools.cache
def _render_cached(values_json: str, values_file: str | None) -> tuple[dict, ...]:
    files = [Path(values_file)] if values_file else []
    return tuple(render(json.loads(values_json) or None, namespace=NAMESPACE, values_files=files))


def rendered(values: dict | None = None, *, values_file: Path | None = None) -> list[dict]:
    """The chart's objects for `values` (on top of `values_file`); cached, copy before mutating."""
    return list(_render_cached(json.dumps(values or {}, sort_keys=True),
                               str(values_file) if values_file else None))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(`Kind/name`, pod spec) of every pod template the chart renders."""
    specs = []
    for o in objects:
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((f"{o['kind']}/{o['metadata']['name']}", spec["template"]["spec"]))
        elif o["kind"] == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
            specs.append((f"CronJob/{o['metadata']['name']}", pod))
        elif o["kind"] == "Pod":
            specs.append((f"Pod/{o['metadata']['name']}", spec))
    return specs
