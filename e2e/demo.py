"""`make demo`: a scripted data scientist's afternoon on the local stack, with the real kubectl
output shown step by step.

It brings up the local control plane (building it on first run), installs the CRDs and the
default policies, runs the webhook and the operator, then plays: an unlabeled GPU job rejected
with its fix, the fix applied, a disallowed instance type, an expiring experiment terminated, an
idle endpoint scaled to zero and woken, a budget crossing 80 % and then denying, and the showback
report. Everything is stopped at the end (`--keep` leaves the stack running to explore).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from e2e.cluster.plane import REPO, ControlPlane
from e2e.stack import Stack

DEMO_DIR = REPO / ".cluster" / "demo"
NS = "ml-research"
BOLD, DIM, GREEN, RED, CYAN, RESET = (("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[36m", "\033[0m")
                                      if sys.stdout.isatty() else ("",) * 6)
LABELS = {"team": "nlp", "project": "search-ranking", "model_id": "bert-large", "cost_center": "cc-4102"}


class Demo:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.plane = stack.plane
        self.step_no = 0
        self.env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig),
                    "PATH": f"{self.plane.bin_dir}{os.pathsep}{os.environ['PATH']}"}

    # ---- presentation ----------------------------------------------------------------------

    def step(self, title: str, story: str = "") -> None:
        self.step_no += 1
        print(f"\n{BOLD}{CYAN}── {self.step_no}. {title}{RESET}")
        if story:
            print(f"{DIM}{story}{RESET}")

    def show_manifest(self, name: str, manifest: dict) -> None:
        print(f"{DIM}# {name}{RESET}")
        print(yaml.safe_dump(manifest, sort_keys=False).rstrip())

    def sh(self, *argv: str, input: str | None = None,
           expect_ok: bool | None = None) -> subprocess.CompletedProcess:
        """Run a real command, echo it like a terminal, and print what it printed."""
        print(f"{BOLD}$ {shlex.join(argv)}{RESET}")
        result = subprocess.run(list(argv), input=input, capture_output=True, text=True, env=self.env,
                                timeout=120)
        out = (result.stdout + result.stderr).rstrip()
        if out:
            print((RED if result.returncode else "") + out + RESET)
        if expect_ok is True and result.returncode:
            raise SystemExit(f"demo: expected `{shlex.join(argv)}` to succeed")
        if expect_ok is False and not result.returncode:
            raise SystemExit(f"demo: expected `{shlex.join(argv)}` to be refused")
        return result

    def kubectl_apply(self, name: str, manifest: dict, *, expect_ok: bool) -> subprocess.CompletedProcess:
        self.show_manifest(name, manifest)
        return self.sh("kubectl", "apply", "-f", "-", input=json.dumps(manifest), expect_ok=expect_ok)

    def comptroller(self, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
        return self.sh(str(Path(sys.executable).parent / "comptroller"), *args, expect_ok=expect_ok)

    def wait(self, what: str, predicate, *, timeout: float) -> None:
        print(f"{DIM}… waiting for {what}{RESET}", flush=True)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                print(f"{GREEN}✓ {what} ({time.monotonic() - started:.0f}s){RESET}")
                return
            time.sleep(1)
        raise SystemExit(f"demo: timed out waiting for {what}")

    def get(self, *args: str) -> dict | None:
        result = self.plane.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    # ---- the story -------------------------------------------------------------------------

    def run(self) -> None:
        self.plane.create_namespace(NS)
        self.rejected_then_fixed()
        self.disallowed_instance_type()
        self.expiring_experiment()
        self.idle_endpoint()
        self.budget()
        self.step("Showback: where the GPU-hours went", "The platform team's monthly view, from the cluster.")
        self.comptroller("report", "--kubeconfig", str(self.plane.kubeconfig))

    def rejected_then_fixed(self) -> None:
        job = gpu_job("finetune-bert", labels={}, instance_type="g6.12xlarge", gpus=4)
        self.step("A GPU fine-tuning Job with no FinOps labels",
                  "Nobody could say who pays for this. Comptroller refuses it and says how to fix it.")
        self.kubectl_apply("finetune.yaml", job, expect_ok=False)

        self.step("The data scientist pastes the fix and applies again")
        fixed = gpu_job("finetune-bert", labels={**LABELS, "environment": "staging",
                                                 "lifecycle_phase": "training"},
                        instance_type="g6.12xlarge", gpus=4)
        self.kubectl_apply("finetune.yaml (fixed)", fixed, expect_ok=True)
        self.wait("its pod to run on a g6.12xlarge node", lambda: self.pod_phase("job-name=finetune-bert")
                  == "Running", timeout=60)

    def disallowed_instance_type(self) -> None:
        self.step("A development notebook asks for an 8-GPU p4d.24xlarge",
                  "Development work belongs on small GPUs; the rejection lists the instance types allowed.")
        pod = gpu_pod("scratch-notebook", labels={**LABELS, "environment": "development",
                                                  "lifecycle_phase": "development"},
                      instance_type="p4d.24xlarge", gpus=8)
        self.kubectl_apply("notebook.yaml", pod, expect_ok=False)

    def expiring_experiment(self) -> None:
        expires = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=0)
        self.step("An experiment that says when it ends",
                  f"expires_at is {expires:%H:%M:%S} UTC, 20 seconds from now; the operator ends it then.")
        pod = gpu_pod("sweep-lr-3e4", labels={**LABELS, "environment": "experiment",
                                              "lifecycle_phase": "training"},
                      instance_type="g5.xlarge", gpus=1,
                      annotations={"expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})
        self.kubectl_apply("experiment.yaml", pod, expect_ok=True)
        self.wait("the operator to terminate the expired experiment",
                  lambda: self.get("pod", "sweep-lr-3e4", "-n", NS) is None, timeout=90)
        self.sh("kubectl", "get", "events", "-n", NS, "--field-selector", "involvedObject.name=sweep-lr-3e4",
                "-o", "custom-columns=REASON:.reason,MESSAGE:.message")

    def idle_endpoint(self) -> None:
        from e2e.prometheus import GpuExporter, Prometheus

        self.step("A development inference endpoint idles at 2 % GPU",
                  "Prometheus (real, scraping a DCGM-style exporter) shows it idle; after idleAfter the "
                  "operator scales it to zero, and `comptroller wake` brings it back.")
        with GpuExporter() as exporter, Prometheus(exporter.address) as prometheus:
            policy = {
                "apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "FinOpsPolicy",
                "metadata": {"name": "demo-idle-endpoints"},
                "spec": {"enforcement": "Audit", "match": {"namespaces": [NS]},
                         "idle": {"selector": {"matchLabels": {"environment": "development",
                                                               "lifecycle_phase": "inference"}},
                                  "kinds": ["Deployment"], "idleAfter": "10s",
                                  "prometheus": {"url": prometheus.url,
                                                 "query": 'avg(DCGM_FI_DEV_GPU_UTIL{namespace="$namespace",'
                                                          ' pod=~"$name-.*"})',
                                                 "threshold": 5}}},
            }
            self.kubectl_apply("idle-policy.yaml", policy, expect_ok=True)
            deploy = gpu_deployment("summarizer-dev", labels={**LABELS, "environment": "development",
                                                              "lifecycle_phase": "inference"},
                                    instance_type="g5.xlarge", gpus=1)
            self.kubectl_apply("endpoint.yaml", deploy, expect_ok=True)
            self.wait("the endpoint's pod to run", lambda: self.pod_phase("app=summarizer-dev") == "Running",
                      timeout=60)
            for pod in self.pods("app=summarizer-dev"):
                exporter.set(NS, pod["metadata"]["name"], 2.0)
            self.wait("the operator to scale the idle endpoint to zero", lambda: self.replicas() == 0,
                      timeout=120)
            self.sh("kubectl", "get", "deployment", "summarizer-dev", "-n", NS, "-o",
                    "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas,"
                    "ORIGINAL:.metadata.annotations.finops\\.comptroller\\.dev/original-replicas")
            self.comptroller("wake", "Deployment/summarizer-dev", "-n", NS, "--kubeconfig",
                             str(self.plane.kubeconfig))
            self.wait("the endpoint to be back", lambda: self.replicas() == 1, timeout=60)
            self.plane.kubectl("delete", "finopspolicy", "demo-idle-endpoints", check=False)

    def budget(self) -> None:
        self.step("Team vision has a tiny GPU-hour budget",
                  "0.02 GPU-hours this month; a 4-GPU job burns 80 % of it in about 15 seconds.")
        budget = {
            "apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "GPUBudget",
            "metadata": {"name": "team-vision"},
            "spec": {"selector": {"matchLabels": {"team": "vision"}}, "gpuHours": 0.02, "period": "Monthly",
                     "enforcement": "Enforce", "admission": "Exhausted", "alertThresholds": [50, 80, 100],
                     "pricePerGPUHour": {"default": 2.5, "g6.12xlarge": 5.67}},
        }
        self.kubectl_apply("budget.yaml", budget, expect_ok=True)
        vision = {**LABELS, "team": "vision", "environment": "staging", "lifecycle_phase": "training"}
        self.kubectl_apply("segmenter.yaml", gpu_job("segmenter", labels=vision, instance_type="g6.12xlarge",
                                                     gpus=4), expect_ok=True)
        self.wait("the budget to cross 80 %", lambda: self.budget_used_pct("team-vision") >= 80, timeout=120)
        self.sh("kubectl", "get", "gpubudget", "team-vision")
        self.sh("kubectl", "get", "events", "-A", "--field-selector", "reason=BudgetThreshold",
                "-o", "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message")
        self.wait("the budget to be exhausted", lambda: self.budget_used_pct("team-vision") >= 100,
                  timeout=120)
        self.step("Once the budget is spent, team vision's next GPU job is refused (team nlp's is not)")
        self.kubectl_apply("segmenter-v2.yaml", gpu_job("segmenter-v2", labels=vision,
                                                        instance_type="g6.12xlarge", gpus=4), expect_ok=False)
        nlp = {**LABELS, "environment": "staging", "lifecycle_phase": "training"}
        reranker = gpu_job("reranker", labels=nlp, instance_type="g6.12xlarge", gpus=4)
        self.kubectl_apply("reranker.yaml (team nlp)", reranker, expect_ok=True)
        self.plane.kubectl("delete", "job", "segmenter", "-n", NS, check=False)

    # ---- reads -----------------------------------------------------------------------------

    def pods(self, selector: str) -> list[dict]:
        return (self.get("pods", "-n", NS, "-l", selector) or {}).get("items", [])

    def pod_phase(self, selector: str) -> str | None:
        pods = self.pods(selector)
        return pods[0].get("status", {}).get("phase") if pods else None

    def replicas(self) -> int | None:
        deploy = self.get("deployment", "summarizer-dev", "-n", NS)
        return deploy["spec"]["replicas"] if deploy else None

    def budget_used_pct(self, name: str) -> float:
        budget = self.get("gpubudget", name) or {}
        used = budget.get("status", {}).get("usedGPUHours") or 0
        return 100 * float(used) / float(budget.get("spec", {}).get("gpuHours") or 1)


def pod_spec(*, instance_type: str, gpus: int, restart: str | None = None) -> dict:
    spec = {"nodeSelector": {"node.kubernetes.io/instance-type": instance_type},
            "containers": [{"name": "main", "image": "registry.local/ml/trainer:2.4",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if restart:
        spec["restartPolicy"] = restart
    return spec


def gpu_pod(name: str, *, labels: dict, instance_type: str, gpus: int,
            annotations: dict | None = None) -> dict:
    metadata = {"name": name, "namespace": NS, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": pod_spec(instance_type=instance_type, gpus=gpus)}


def gpu_job(name: str, *, labels: dict, instance_type: str, gpus: int) -> dict:
    template: dict = {"spec": pod_spec(instance_type=instance_type, gpus=gpus, restart="Never")}
    if labels:
        template["metadata"] = {"labels": labels}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {"backoffLimit": 0, "template": template}}


def gpu_deployment(name: str, *, labels: dict, instance_type: str, gpus: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {**labels, "app": name}},
                                  "spec": pod_spec(instance_type=instance_type, gpus=gpus)}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the demo stack running at the end")
    args = parser.parse_args(argv)
    print(f"{BOLD}Comptroller demo{RESET}: starting the local control plane and the stack "
          f"(the first run builds Kubernetes from source, ~10 minutes on 2 cores)")
    stack = Stack(ControlPlane(DEMO_DIR), failure_policy="Fail", operator_args=[
        "--standalone", "--metering-interval", "2", "--expiry-interval", "2", "--idle-interval", "3",
        "--wake-grace-period", "60"])
    stack.down()
    started = time.monotonic()
    try:
        stack.up(progress=lambda line: print(f"{DIM}[stack] {line}{RESET}", flush=True))
        Demo(stack).run()
        print(f"\n{GREEN}{BOLD}Demo finished in {time.monotonic() - started:.0f}s.{RESET}")
    finally:
        if args.keep:
            print(f"The stack is still running: export KUBECONFIG={stack.plane.kubeconfig}; "
                  f"stop it with `python -m e2e.stack down --dir {DEMO_DIR}`")
        else:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
