"""`make bench`: every benchmark in one run, side by side with its baseline, written to
bench/results.json and printed as a table. Each part is a module exposing `run(...) -> dict`.

Ratios against a baseline measured in the same run are what count; absolute numbers depend on
the machine, which is recorded with them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"

# (module, needs a control plane)
PARTS = [
    ("bench.engine_bench", False),
    ("bench.webhook_bench", False),
    ("bench.apiserver_bench", True),
    ("bench.operator_bench", True),
    # Metering over a simulated month: 20,000 running and 200,000 finished GPU pods.
    ("bench.operator_scale_bench", True),
    ("bench.lifecycle_bench", True),
    ("bench.soak_bench", False),
    # Kyverno and Gatekeeper beside Comptroller on the same API server (built from their Go modules).
    ("bench.peers_bench", True),
]


def machine() -> dict:
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem_kib / 1024**2, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def flatten(prefix: str, value, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, inner, rows)
    else:
        rows.append((prefix, f"{value:.3f}" if isinstance(value, float) else str(value)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only these parts (module suffix)")
    parser.add_argument("--plane-dir", type=Path, default=REPO / ".cluster" / "bench",
                        help="the control plane's directory (default: %(default)s)")
    args = parser.parse_args(argv)
    results: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if RESULTS.exists() and args.only:
        results = {**json.loads(RESULTS.read_text()), **results}
    plane = None
    failed = []
    for module_name, needs_plane in PARTS:
        if args.only and not any(module_name.endswith(o) for o in args.only):
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"skipping {module_name}: {exc}", file=sys.stderr)
            continue
        print(f"== {module_name}", flush=True)
        try:
            if needs_plane and plane is None:
                from e2e.cluster.plane import ControlPlane
                plane = ControlPlane(args.plane_dir.resolve()).up()
            results.update(module.run(plane) if needs_plane else module.run())
        except Exception:  # a broken part is reported, the others still run
            traceback.print_exc()
            failed.append(module_name)
    if plane is not None:
        plane.down(quiet=True)
    # The `operator` entry gathers both scale runs: metering (5,000 GPU pods) and expiry
    # (10,000 pods, 1,000 expiring at once); each part keeps its full figures under its own key.
    if "lifecycle" in results:
        operator = results.setdefault("operator", {})
        operator["expiry_drain_s"] = results["lifecycle"]["expiry_drain_s"]
        operator["expiry_rss_mib"] = results["lifecycle"]["rss_mib"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    rows: list[tuple[str, str]] = []
    flatten("", {k: v for k, v in results.items() if k != "machine"}, rows)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"\nwritten to {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
