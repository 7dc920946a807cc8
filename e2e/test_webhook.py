"""The admission webhook on the real control plane, with real kubectl acting as a data scientist.

The webhook runs against the API server (watch cache), registered with failurePolicy Fail so a
broken webhook fails these tests instead of silently admitting.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from controller.constants import MUTATING_WEBHOOK
from controller.engine.mutation_scope import CONDITION_NAME
from e2e.helpers import COMPLIANT_LABELS, admissions_answered, policy, team_budget, wait_until
from e2e.stack import CONFIGURATION, NAMESPACE


def dump(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def apply(cluster, obj: dict, *extra: str):
    return cluster.kubectl("apply", "-f", "-", *extra, input=dump(obj), check=False)


def gpu_job(namespace: str, *, labels: dict[str, str] | None, name: str = "finetune") -> dict:
    template_meta = {"labels": labels} if labels is not None else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {
                "metadata": template_meta,
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"node.kubernetes.io/instance-type": "g5.xlarge"},
                    "containers": [
                        {
                            "name": "train",
                            "image": "registry.example.com/train:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            }
        },
    }


def pod(
    namespace: str,
    *,
    name: str = "trainer",
    labels: dict[str, str] | None = None,
    gpus: int = 0,
    instance_type: str | None = None,
) -> dict:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    spec: dict = {
        "containers": [{"name": "main", "image": "registry.example.com/app:1", "resources": resources}]
    }
    if instance_type:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": instance_type}
    metadata: dict = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def deployment(
    namespace: str, *, labels: dict | None, template_labels: dict | None, name: str = "serve"
) -> dict:
    template_meta = {"labels": {"app": name, **(template_labels or {})}}
    metadata: dict = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": template_meta,
                "spec": {"containers": [{"name": "main", "image": "registry.example.com/serve:1"}]},
            },
        },
    }


def cronjob(namespace: str, *, template_labels: dict | None, name: str = "nightly") -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "metadata": {"labels": template_labels} if template_labels else {},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "main", "image": "registry.example.com/batch:1"}],
                        },
                    }
                }
            },
        },
    }



def without_labels(labels: dict[str, str], *keys: str) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in keys}


# -- the data scientist's session ----------------------------------------------------------------


def test_an_unlabelled_gpu_job_is_rejected_with_the_fix_and_the_fix_is_admitted(stack, cluster, namespace):
    rejected = apply(cluster, gpu_job(namespace, labels=None))
    assert rejected.returncode != 0
    err = rejected.stderr
    assert 'admission webhook "validate.finops.comptroller.dev" denied the request' in err
    for key in ("team", "project", "model_id", "lifecycle_phase", "cost_center"):
        assert key in err
    assert "fix (admitted with it), to merge into the manifest:" in err and "labels:" in err
    assert "finops-labels" in err  # names the policy
    assert cluster.kubectl("get", "job", "finetune", "-n", namespace, check=False).returncode != 0

    fixed = apply(cluster, gpu_job(namespace, labels=COMPLIANT_LABELS))
    assert fixed.returncode == 0, fixed.stderr
    assert "job.batch/finetune created" in fixed.stdout


def test_the_denials_json_patch_applied_by_kubectl_is_admitted_on_the_first_try(
    stack, cluster, namespace, tmp_path
):
    """Three problems at once: no team label, an instance type development does not allow, and a
    container (a list item) asking for more GPUs than a pod may have. The denial's one
    `kubectl patch --local` line, run as printed with the real kubectl on the user's file, gives a
    manifest the API server then admits: no second round of denial and paste."""
    job = gpu_job(namespace, labels=without_labels(COMPLIANT_LABELS, "team"), name="first-paste")
    spec = job["spec"]["template"]["spec"]
    spec["nodeSelector"] = {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    spec["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "12"}}
    path = tmp_path / "job.yaml"
    path.write_text(dump(job))
    rejected = cluster.kubectl("apply", "-f", str(path), check=False)
    assert rejected.returncode != 0
    err = rejected.stderr
    assert "you choose: team" in err
    assert err.count("fix (admitted with it), to merge into the manifest:") == 1
    patch = err.split("--type=json -o yaml -p '", 1)[1].split("'", 1)[0]
    fixed = cluster.kubectl("patch", "--local", "-f", str(path), "--type=json", "-o", "yaml", "-p", patch)
    admitted = cluster.kubectl("apply", "-f", "-", input=fixed.stdout, check=False)
    assert admitted.returncode == 0, admitted.stderr
    assert "job.batch/first-paste created" in admitted.stdout


def test_a_deployment_gets_its_defaults_mutated_in(stack, cluster, namespace):
    labels = without_labels(COMPLIANT_LABELS, "environment")
    created = apply(cluster, deployment(namespace, labels=labels, template_labels=None))
    assert created.returncode == 0, created.stderr
    stored = json.loads(cluster.kubectl("get", "deployment", "serve", "-n", namespace, "-o", "json").stdout)
    template_labels = stored["spec"]["template"]["metadata"]["labels"]
    # environment defaulted; the owner's required labels copied into the pod template.
    assert template_labels["environment"] == "development"
    for key, value in labels.items():
        assert template_labels[key] == value


def test_a_gpu_pod_pinned_to_a_disallowed_instance_type_is_rejected_with_the_allowed_list(
    stack, cluster, namespace
):
    result = apply(cluster, pod(namespace, labels=COMPLIANT_LABELS, gpus=1, instance_type="p4d.24xlarge"))
    assert result.returncode != 0
    assert "p4d.24xlarge" in result.stderr
    for allowed in ("g5.xlarge", "g6.xlarge"):
        assert allowed in result.stderr
    assert "nodeSelector" in result.stderr

    ok = apply(cluster, pod(namespace, labels=COMPLIANT_LABELS, gpus=1, instance_type="g5.xlarge"))
    assert ok.returncode == 0, ok.stderr


def test_a_warn_policy_shows_kubectl_warnings(stack, cluster, namespace):
    name = f"warn-{namespace}"
    warn = policy(name, {
        "enforcement": "Warn",
        "match": {"namespaces": [namespace]},
        "labels": {"required": [{"key": "notebook_owner", "description": "who to ask about it"}]},
    })
    assert apply(cluster, warn).returncode == 0
    try:
        manifest = pod(namespace, labels=COMPLIANT_LABELS)
        wait_until(
            lambda: "notebook_owner" in apply(cluster, manifest, "--dry-run=server").stderr,
            what="the webhook sees the Warn policy",
        )
        result = apply(cluster, manifest)
        assert result.returncode == 0, result.stderr
        assert "Warning:" in result.stderr
        assert "notebook_owner" in result.stderr
        assert "pod/trainer created" in result.stdout
    finally:
        cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", check=False)


def test_an_exhausted_team_budget_is_denied_with_what_remains_while_another_team_is_admitted(
    stack, cluster, namespace
):
    suffix = uuid.uuid4().hex[:6]
    tight, roomy = f"tight-{suffix}", f"roomy-{suffix}"

    assert apply(cluster, team_budget(tight, 10, admission="Projected")).returncode == 0
    assert apply(cluster, team_budget(roomy, 10000, admission="Projected")).returncode == 0
    try:
        # An experiment runs until its expires_at (24h by default): 1 GPU x 24h does not fit in 10.
        def experiment(team: str, name: str) -> dict:
            labels = {**COMPLIANT_LABELS, "team": team, "environment": "experiment"}
            return pod(namespace, name=name, labels=labels, gpus=1, instance_type="g5.xlarge")

        # Denied *by the budget*: any other refusal (a slow first call, say) proves nothing.
        wait_until(
            lambda: f"team-{tight}" in apply(cluster, experiment(tight, "probe"), "--dry-run=server").stderr,
            what="the webhook sees the budgets",
        )
        denied = apply(cluster, experiment(tight, "tight-run"))
        assert denied.returncode != 0
        assert f"team-{tight}" in denied.stderr
        assert "10 GPU-hours" in denied.stderr or "10.0 GPU-hours" in denied.stderr

        admitted = apply(cluster, experiment(roomy, "roomy-run"))
        assert admitted.returncode == 0, admitted.stderr
    finally:
        for team in (tight, roomy):
            cluster.kubectl("delete", "gpubudget", f"team-{team}", "--ignore-not-found", check=False)


@pytest.mark.parametrize(
    ("build", "allowed"),
    [
        (lambda ns: gpu_job(ns, labels=None), False),
        (lambda ns: gpu_job(ns, labels=COMPLIANT_LABELS), True),
        (lambda ns: pod(ns, labels=COMPLIANT_LABELS, gpus=1, instance_type="p4d.24xlarge"), False),
        (lambda ns: deployment(ns, labels=None, template_labels=COMPLIANT_LABELS), True),
    ],
    ids=["unlabelled-job", "labelled-job", "disallowed-instance", "labelled-deployment"],
)
def test_server_side_dry_run_gives_the_same_verdict(stack, cluster, namespace, build, allowed):
    manifest = build(namespace)
    dry = apply(cluster, manifest, "--dry-run=server")
    assert (dry.returncode == 0) is allowed, dry.stderr
    if allowed:
        assert "(server dry run)" in dry.stdout
    kind = manifest["kind"].lower()
    # Nothing was stored by the dry run, and the real request gets the same verdict.
    assert (
        cluster.kubectl("get", kind, manifest["metadata"]["name"], "-n", namespace, check=False).returncode
        != 0
    )
    real = apply(cluster, manifest)
    assert (real.returncode == 0) is allowed
    if not allowed:
        assert (
            real.stderr.replace("(dry run)", "").split("denied the request:")[1]
            == dry.stderr.split("denied the request:")[1]
        )


# Kyverno's require-labels (pod policy + autogen) judges a Pod by its labels and a pod controller
# by its pod template's labels: the same table must hold here.
@pytest.mark.parametrize(
    ("build", "allowed"),
    [
        (lambda ns: pod(ns, labels=None), False),
        (lambda ns: pod(ns, labels=COMPLIANT_LABELS), True),
        (lambda ns: pod(ns, labels=without_labels(COMPLIANT_LABELS, "team")), False),
        (lambda ns: deployment(ns, labels=None, template_labels=COMPLIANT_LABELS), True),
        (lambda ns: deployment(ns, labels=None, template_labels=None), False),
        (
            lambda ns: deployment(
                ns, labels=None, template_labels=without_labels(COMPLIANT_LABELS, "cost_center")
            ),
            False,
        ),
        (lambda ns: cronjob(ns, template_labels=COMPLIANT_LABELS), True),
        (lambda ns: cronjob(ns, template_labels=None), False),
    ],
    ids=[
        "pod-unlabelled",
        "pod-labelled",
        "pod-missing-team",
        "deployment-template-labelled",
        "deployment-unlabelled",
        "deployment-template-missing-cost-center",
        "cronjob-template-labelled",
        "cronjob-unlabelled",
    ],
)
def test_required_labels_match_kyverno_require_labels(stack, cluster, namespace, build, allowed):
    result = apply(cluster, build(namespace))
    assert (result.returncode == 0) is allowed, result.stderr
    if not allowed:
        assert "denied the request" in result.stderr


def test_a_pod_created_by_a_controller_is_judged(stack, cluster, namespace):
    """A ReplicaSet created directly (no Deployment above it) with an unlabelled template is itself
    denied; a pod-less controller would otherwise spend GPU-hours unjudged."""
    rs = deployment(namespace, labels=None, template_labels=None, name="raw")
    rs["kind"] = "ReplicaSet"
    result = apply(cluster, rs)
    assert result.returncode != 0
    assert "denied the request" in result.stderr


def test_the_webhooks_own_namespace_and_kube_system_are_never_matched(stack, cluster):
    for ns in ("kube-system", NAMESPACE):
        result = apply(cluster, pod(ns, name=f"unlabelled-{uuid.uuid4().hex[:6]}"), "--dry-run=server")
        assert result.returncode == 0, result.stderr


# -- /mutate only where mutation can change something ----------------------------------------------


def mutate_condition(cluster) -> str | None:
    """The matchCondition the operator keeps on our mutating webhook, as the API server holds it."""
    config = json.loads(
        cluster.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION, "-o", "json").stdout
    )
    hook = next(h for h in config["webhooks"] if h["name"] == MUTATING_WEBHOOK)
    ours = [c["expression"] for c in hook.get("matchConditions") or () if c["name"] == CONDITION_NAME]
    return ours[0] if ours else None


def pods_through_mutate(stack) -> float:
    """Pod CREATEs the webhook's /mutate has answered so far (its own metrics)."""
    return admissions_answered(stack, "Pod", "CREATE", "mutated", "unchanged")


def test_the_api_server_calls_mutate_only_for_pods_mutation_would_change(stack, cluster, namespace):
    wait_until(lambda: mutate_condition(cluster), what="the operator sets /mutate's matchCondition")
    before = pods_through_mutate(stack)
    settled = apply(cluster, pod(namespace, name="settled", labels=COMPLIANT_LABELS))
    assert settled.returncode == 0, settled.stderr
    assert pods_through_mutate(stack) == before, "a pod with every label went through /mutate"

    unsettled = without_labels(COMPLIANT_LABELS, "environment")
    defaulted = apply(cluster, pod(namespace, name="defaulted", labels=unsettled))
    assert defaulted.returncode == 0, defaulted.stderr
    assert pods_through_mutate(stack) == before + 1
    stored = json.loads(cluster.kubectl("get", "pod", "defaulted", "-n", namespace, "-o", "json").stdout)
    assert stored["metadata"]["labels"]["environment"] == "development"


def test_the_mutate_condition_follows_the_policy_set(stack, cluster, namespace):
    name = f"tier-{namespace}"
    defaulting = policy(name, {
        "match": {"namespaces": [namespace]},
        "labels": {"required": [{"key": "cost_tier", "default": "bronze"}]},
    })
    assert apply(cluster, defaulting).returncode == 0
    try:
        wait_until(lambda: '"cost_tier"' in (mutate_condition(cluster) or ""),
                   what="the operator adds the new default to /mutate's condition")

        def defaulted() -> bool:  # the API server calls /mutate, and the webhook knows the policy
            answer = apply(cluster, pod(namespace, labels=COMPLIANT_LABELS), "--dry-run=server", "-o", "json")
            return answer.returncode == 0 and json.loads(answer.stdout)["metadata"]["labels"].get("cost_tier")

        wait_until(defaulted, what="a dry-run pod gets the new default")
        created = apply(cluster, pod(namespace, labels=COMPLIANT_LABELS))
        assert created.returncode == 0, created.stderr
        stored = json.loads(cluster.kubectl("get", "pod", "trainer", "-n", namespace, "-o", "json").stdout)
        assert stored["metadata"]["labels"]["cost_tier"] == "bronze"
    finally:
        cluster.kubectl("delete", "finopspolicy", name, "--ignore-not-found", check=False)
    wait_until(lambda: '"cost_tier"' not in (mutate_condition(cluster) or ""),
               what="the operator drops the deleted policy's default from the condition")
