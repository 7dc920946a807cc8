"""A spent budget on the real control plane: every way a data scientist adds GPUs to a running
workload is refused, through the same API server paths kubectl uses (a merge patch of the
Deployment, `kubectl scale` through the scale subresource, a new GPU count or instance type),
and every way of keeping or shedding GPUs (relabel, rollout restart, scale down) is admitted. A
Pod keeps the budget it was created under: `kubectl label` cannot take it out of the budget that
charges it, nor move it onto a spent one for free. See docs/crds.md#updates-and-scaling."""

from __future__ import annotations

import json
import uuid

import yaml

from e2e.helpers import COMPLIANT_LABELS, cpu_hpa, team_budget, wait_until


def apply(cluster, obj: dict, *extra: str):
    return cluster.kubectl("apply", "-f", "-", *extra, input=yaml.safe_dump(obj), check=False)


def gpu_deployment(namespace: str, labels: dict, *, name: str = "serve", replicas: int = 1) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **labels}},
                "spec": {
                    "nodeSelector": {"node.kubernetes.io/instance-type": "g5.xlarge"},
                    "containers": [
                        {
                            "name": "serve",
                            "image": "registry.example.com/serve:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def test_a_spent_budget_refuses_every_gpu_increase_and_admits_the_rest(stack, cluster, namespace):
    team = f"scale-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    spent = f"team-{team}"
    assert apply(cluster, team_budget(team, 1000)).returncode == 0
    try:
        created = apply(cluster, gpu_deployment(namespace, labels))
        assert created.returncode == 0, created.stderr
        # The team spends its budget (here: the platform team cuts it to nothing).
        assert apply(cluster, team_budget(team, 0)).returncode == 0
        probe = gpu_deployment(namespace, labels, name="probe")
        wait_until(
            lambda: spent in apply(cluster, probe, "--dry-run=server").stderr,
            what="the webhook sees the budget spent",
        )

        def kubectl(*args: str):
            return cluster.kubectl(*args, "-n", namespace, check=False)

        def patch(body: dict):
            return kubectl("patch", "deployment", "serve", "-p", json.dumps(body))  # strategic, as kubectl

        def template(**spec):
            return {"spec": {"template": spec}}

        container_patch = {"name": "serve", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
        pricier = {"node.kubernetes.io/instance-type": "g5.2xlarge"}
        refused = {
            "patch replicas up": patch({"spec": {"replicas": 8}}),
            "kubectl scale up": kubectl("scale", "deployment/serve", "--replicas=8"),
            "more GPUs per pod": patch(template(spec={"containers": [container_patch]})),
            "a pricier instance type": patch(template(spec={"nodeSelector": pricier})),
        }
        for what, result in refused.items():
            assert result.returncode != 0, f"{what} was admitted: {result.stdout}"
            assert f"GPU budget {spent} is exhausted" in result.stderr, f"{what}: {result.stderr}"
            assert "this update adds" in result.stderr, f"{what}: {result.stderr}"

        admitted = {
            "relabel": kubectl("label", "deployment", "serve", "owner=alice"),
            "relabel the pods": patch(template(metadata={"labels": {"model_id": "ranker-v8"}})),
            "rollout restart": kubectl("rollout", "restart", "deployment/serve"),
            "kubectl scale down": kubectl("scale", "deployment/serve", "--replicas=0"),
        }
        for what, result in admitted.items():
            assert result.returncode == 0, f"{what} was refused: {result.stderr}"

        # Scaled to zero, coming back is new spend again.
        back = kubectl("scale", "deployment/serve", "--replicas=1")
        assert back.returncode != 0 and spent in back.stderr
        replicas = kubectl("get", "deployment", "serve", "-o", "jsonpath={.spec.replicas}").stdout.strip()
        assert replicas == "0"
    finally:
        cluster.kubectl("delete", "gpubudget", spent, "--ignore-not-found", check=False)


def test_an_hpa_cannot_scale_past_a_spent_budget(stack, cluster, namespace):
    """The HPA controller scales through the scale subresource, as `kubectl scale` does. Below its
    minReplicas it scales up without needing any metrics, so no metrics server is involved."""
    team = f"hpa-{uuid.uuid4().hex[:6]}"
    labels = {**COMPLIANT_LABELS, "team": team}
    spent = f"team-{team}"
    assert apply(cluster, team_budget(team, 1000)).returncode == 0
    try:
        # A GPU Deployment admitted while the team had budget (an HPA leaves one at 0 replicas alone).
        assert apply(cluster, gpu_deployment(namespace, labels, name="gpu", replicas=1)).returncode == 0
        assert apply(cluster, team_budget(team, 0)).returncode == 0
        wait_until(
            lambda: (
                spent
                in apply(cluster, gpu_deployment(namespace, labels, name="probe"), "--dry-run=server").stderr
            ),
            what="the webhook sees the budget spent",
        )
        # A CPU-only Deployment is not charged; the HPA is allowed to scale it.
        cpu = gpu_deployment(namespace, labels, name="cpu")
        cpu["spec"]["template"]["spec"]["containers"][0]["resources"] = {}
        assert apply(cluster, cpu).returncode == 0
        for name in ("gpu", "cpu"):
            hpa = cpu_hpa(name, namespace, min_replicas=3, max_replicas=4)
            assert apply(cluster, hpa).returncode == 0

        def replicas(name: str) -> str:
            return cluster.kubectl(
                "get", "deployment", name, "-n", namespace, "-o", "jsonpath={.spec.replicas}", check=False
            ).stdout.strip()

        wait_until(lambda: replicas("cpu") == "3", timeout=60, what="the HPA scales the CPU Deployment")

        def refused() -> bool:
            events = cluster.kubectl(
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                "involvedObject.name=gpu",
                "-o",
                "jsonpath={range .items[*]}{.reason} {.message}{'\\n'}{end}",
                check=False,
            ).stdout
            # The Event keeps the start of the denial: which webhook refused, and for what.
            denial = 'admission webhook "scale.finops.comptroller.dev" denied the request'
            return any("FailedRescale" in line and denial in line for line in events.splitlines())

        wait_until(refused, timeout=60, what="the HPA's scale-up refused by the budget")
        assert replicas("gpu") == "1"
    finally:
        cluster.kubectl("delete", "gpubudget", spent, "--ignore-not-found", check=False)


def test_a_pod_keeps_the_budget_it_was_created_under(stack, cluster, namespace):
    suffix = uuid.uuid4().hex[:6]
    team, spent_team = f"keep-{suffix}", f"spent-{suffix}"
    budgets = [team_budget(team, 1000), team_budget(spent_team, 0)]
    for budget in budgets:
        assert apply(cluster, budget).returncode == 0
    try:
        template = gpu_deployment(namespace, {**COMPLIANT_LABELS, "team": team})["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "train", "namespace": namespace, **template["metadata"]},
               "spec": template["spec"]}
        created = apply(cluster, pod)
        assert created.returncode == 0, created.stderr
        probe = gpu_deployment(namespace, {**COMPLIANT_LABELS, "team": spent_team}, name="probe")
        wait_until(lambda: f"team-{spent_team}" in apply(cluster, probe, "--dry-run=server").stderr,
                   what="the webhook sees both budgets")

        def label(*pairs: str):
            return cluster.kubectl("label", "pod", "train", "-n", namespace, "--overwrite", *pairs,
                                   check=False)

        out = label(f"team=scratch-{suffix}")
        assert out.returncode != 0, out.stdout
        assert f"would take it out of team-{team}" in out.stderr, out.stderr
        assert f"team: {team}" in out.stderr, out.stderr  # the labels to keep, to paste

        onto_spent = label(f"team={spent_team}")
        assert onto_spent.returncode != 0, onto_spent.stdout
        assert f"GPU budget team-{spent_team} is exhausted" in onto_spent.stderr, onto_spent.stderr

        kept = label("model_id=ranker-v8")
        assert kept.returncode == 0, kept.stderr
        now = json.loads(cluster.kubectl("get", "pod", "train", "-n", namespace, "-o", "json").stdout)
        assert now["metadata"]["labels"]["team"] == team
    finally:
        for budget in budgets:
            cluster.kubectl("delete", "gpubudget", budget["metadata"]["name"], "--ignore-not-found",
                            check=False)
        cluster.kubectl("delete", "pod", "train", "-n", namespace, "--ignore-not-found", "--wait=false",
                        check=False)
