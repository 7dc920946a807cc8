"""The chart against a real API server: CRDs applied for real, everything else through server-side
dry run in a namespace that enforces the `restricted` Pod Security Standard, and the chart's RBAC
exercised with the ServiceAccounts' own tokens."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from e2e.chart import CHART, install_rbac, render, service_account_kubeconfig, uninstall_rbac

CRDS = CHART / "crds"
# Namespaces carrying this label are skipped by Comptroller's own webhook configurations (the
# stack's, when another test registered it): these tests judge the chart, not the policies.
IGNORE = {"finops.comptroller.dev/ignore": "true"}
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
POD_SECURITY_WARNING = "would violate PodSecurity"


@pytest.fixture(scope="module")
def crds(cluster):
    """The chart's CRDs, applied for real (server-side: large schemas outgrow the last-applied
    annotation) and Established. Left installed: other e2e tests share them."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    return [d for path in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture
def release():
    """A release name of its own, so cluster-scoped objects never collide with other tests'."""
    return f"c{uuid.uuid4().hex[:6]}"


@pytest.fixture
def restricted_namespace(cluster):
    name = f"chart-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name, labels={**RESTRICTED, **IGNORE})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def kubectl_as(cluster, kubeconfig: Path, *args: str,
               input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(cluster.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                          input=input, capture_output=True, text=True, timeout=60, check=False)


def as_list(objects: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


# ---- CRDs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [("finopspolicy.spec", "enforcement"), ("gpubudget.spec", "gpuHours"),
     ("finopsexception.spec", "expiresAt")],
)
def test_crds_are_served_with_schemas_kubectl_explains(cluster, crds, field, expected):
    names = {d["spec"]["names"]["plural"] for d in crds if d["kind"] == "CustomResourceDefinition"}
    assert {"finopspolicies", "gpubudgets", "finopsexceptions", "clusterkopfpeerings"} <= names
    deadline = time.monotonic() + 30
    while True:  # the OpenAPI document follows the CRD by a moment
        out = cluster.kubectl("explain", field, check=False)
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


# ---- everything else, validated by the API server -----------------------------------------------


@pytest.mark.parametrize("values_file", ["default-values.yaml", "ha-values.yaml"])
def test_rendered_chart_passes_server_side_validation(cluster, crds, release, restricted_namespace,
                                                      values_file):
    objects = render(namespace=restricted_namespace, release=release,
                     values_files=[CHART / "ci" / values_file],
                     values={"policies": {"installDefault": True}})
    assert {"Deployment", "Job", "CronJob", "ValidatingWebhookConfiguration", "FinOpsPolicy"} <= {
        o["kind"] for o in objects}
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=as_list(objects), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(server dry run)") == len(objects)
    # Workload kinds are only warned about (enforcement applies to pods): a warning is a failure.
    assert POD_SECURITY_WARNING not in out.stderr


def test_every_pod_the_chart_runs_is_admitted_under_restricted(cluster, crds, release,
                                                                restricted_namespace):
    objects = render(namespace=restricted_namespace, release=release)
    # The pods name their ServiceAccounts, which admission looks up: those exist for real.
    cluster.apply([o for o in objects if o["kind"] == "ServiceAccount"])
    pods = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job", "CronJob"):
            spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
            template = spec["template"]
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"{obj['kind'].lower()}-{obj['metadata']['name']}",
                "namespace": restricted_namespace,
                "labels": template["metadata"].get("labels", {})}, "spec": template["spec"]})
    assert len(pods) == 5  # webhook, operator, certs Job and CronJob, uninstall hook
    for pod in pods:
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        assert out.returncode == 0, f"{pod['metadata']['name']}: {out.stderr}"


def test_the_namespace_really_enforces_restricted(cluster, restricted_namespace):
    """The control for the test above: PodSecurity admission is on and refuses a plain pod."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "plain", "namespace": restricted_namespace},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0
    assert "violates PodSecurity" in out.stderr and "restricted" in out.stderr


def test_upgrades_keep_the_ca_bundle_the_certs_job_patched_in(cluster, release, restricted_namespace):
    ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    secret = {"name": f"{release}-comptroller-webhook-tls", "namespace": restricted_namespace}
    cluster.apply([{"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": secret,
                    "data": {"ca.crt": base64.b64encode(ca).decode()}}])
    objects = render(namespace=restricted_namespace, release=release, lookup=True)
    bundles = {o["kind"]: [w["clientConfig"].get("caBundle") for w in o["webhooks"]]
               for o in objects if o["kind"].endswith("WebhookConfiguration")}
    expected = base64.b64encode(ca).decode()
    assert bundles == {"ValidatingWebhookConfiguration": [expected] * 3,  # validate, scale, claim
                       "MutatingWebhookConfiguration": [expected]}


# ---- RBAC, exercised with the ServiceAccounts' own tokens ---------------------------------------


@pytest.fixture(scope="module")
def rbac(cluster, tmp_path_factory):
    """The chart's ServiceAccounts and RBAC installed for real in a namespace of their own, and a
    kubeconfig per component that authenticates as its ServiceAccount."""
    release, namespace = f"c{uuid.uuid4().hex[:6]}", f"rbac-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace, labels=IGNORE)
    objects = install_rbac(cluster, namespace=namespace, release=release)
    directory = tmp_path_factory.mktemp("kubeconfigs")
    kubeconfigs = {
        component: service_account_kubeconfig(
            cluster, namespace=namespace, service_account=f"{release}-comptroller-{component}",
            path=directory / f"{component}.kubeconfig")
        for component in ("operator", "webhook", "certs")
    }
    yield {"release": release, "namespace": namespace, "kubeconfigs": kubeconfigs}
    uninstall_rbac(cluster, objects)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_service_account_kubeconfig_authenticates_as_the_service_account(cluster, rbac):
    kubeconfig = rbac["kubeconfigs"]["operator"]
    out = kubectl_as(cluster, kubeconfig, "auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr
    user = json.loads(out.stdout)["status"]["userInfo"]
    sa = f"{rbac['release']}-comptroller-operator"
    assert user["username"] == f"system:serviceaccount:{rbac['namespace']}:{sa}"
    # It holds the operator's rights and not the admin's: reading Secrets is refused.
    denied = kubectl_as(cluster, kubeconfig, "get", "secrets", "-n", rbac["namespace"])
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    for question, answer in [("list pods --all-namespaces", "yes"), ("patch deployments -n default", "yes"),
                             ("create pods -n default", "no"), ("delete secrets -n default", "no")]:
        out = kubectl_as(cluster, kubeconfig, "auth", "can-i", *question.split())
        assert out.stdout.strip() == answer, question


# (component, `kubectl auth can-i` arguments, where, answer). Where: "all" namespaces, "own" (the
# release namespace), "other" (any other namespace), "" (cluster-scoped).
CAN_I = [
    ("operator", "list pods", "all", "yes"),
    ("operator", "watch pods", "all", "yes"),
    ("operator", "patch pods", "other", "yes"),
    ("operator", "delete pods", "other", "yes"),
    ("operator", "patch deployments.apps", "other", "yes"),
    ("operator", "update deployments.apps --subresource=scale", "other", "no"),
    ("operator", "patch statefulsets.apps --subresource=scale", "other", "no"),
    ("operator", "update pods", "other", "no"),
    ("operator", "delete jobs.batch", "other", "yes"),
    ("operator", "patch cronjobs.batch", "other", "yes"),
    ("operator", "list horizontalpodautoscalers.autoscaling", "other", "yes"),
    ("operator", "patch horizontalpodautoscalers.autoscaling", "other", "no"),
    ("operator", "delete pytorchjobs.kubeflow.org", "other", "yes"),
    ("operator", "patch rayclusters.ray.io", "other", "yes"),
    ("operator", "delete jobsets.jobset.x-k8s.io", "other", "yes"),
    ("operator", "delete leaderworkersets.leaderworkerset.x-k8s.io", "other", "yes"),
    ("operator", "create events", "other", "yes"),
    ("operator", "create events.events.k8s.io", "other", "yes"),
    ("operator", "patch gpubudgets.finops.comptroller.dev --subresource=status", "", "yes"),
    ("operator", "watch finopspolicies.finops.comptroller.dev", "", "yes"),
    ("operator", "list finopsexceptions.finops.comptroller.dev", "all", "yes"),
    ("operator", "create policyreports.wgpolicyk8s.io", "other", "yes"),
    ("operator", "create reports.openreports.io", "other", "yes"),
    ("operator", "patch clusterkopfpeerings.kopf.dev", "", "yes"),
    ("operator", "list customresourcedefinitions.apiextensions.k8s.io", "", "yes"),
    ("operator", "list nodes", "", "yes"),
    ("operator", "update configmaps", "own", "yes"),
    ("operator", "create configmaps", "other", "no"),
    ("operator", "create pods", "other", "no"),
    ("operator", "create pods --subresource=exec", "other", "no"),
    ("operator", "get secrets", "own", "no"),
    ("operator", "delete secrets", "other", "no"),
    ("operator", "create deployments.apps", "other", "no"),
    ("operator", "delete deployments.apps", "other", "no"),
    ("operator", "delete finopspolicies.finops.comptroller.dev", "", "no"),
    ("operator", "create clusterrolebindings.rbac.authorization.k8s.io", "", "no"),
    ("operator", "impersonate serviceaccounts", "other", "no"),
    ("webhook", "list finopspolicies.finops.comptroller.dev", "", "yes"),
    ("webhook", "watch gpubudgets.finops.comptroller.dev", "", "yes"),
    ("webhook", "watch finopsexceptions.finops.comptroller.dev", "all", "yes"),
    ("webhook", "watch namespaces", "", "yes"),
    ("webhook", "patch finopspolicies.finops.comptroller.dev", "", "no"),
    ("webhook", "list pods", "all", "yes"),  # the unscheduled pods a new DRA claim is judged for
    ("webhook", "get pods", "all", "no"),
    ("webhook", "watch pods", "all", "no"),
    ("webhook", "get secrets", "own", "no"),
    ("certs", "create secrets", "own", "yes"),
    ("certs", "create secrets", "other", "no"),
    ("certs", "list secrets", "own", "no"),
    ("certs", "update secrets/{release}-comptroller-webhook-tls", "own", "yes"),
    ("certs", "get secrets/someone-elses", "own", "no"),
    ("certs", "patch validatingwebhookconfigurations.admissionregistration.k8s.io/{release}-comptroller",
     "", "yes"),
    ("certs", "patch mutatingwebhookconfigurations.admissionregistration.k8s.io/{release}-comptroller",
     "", "yes"),
    ("certs", "patch validatingwebhookconfigurations.admissionregistration.k8s.io/kyverno", "", "no"),
    ("certs", "list validatingwebhookconfigurations.admissionregistration.k8s.io", "", "no"),
]


def access_review(question: str, *, namespace: str) -> dict:
    """A SelfSubjectAccessReview for `verb resource[.group][/name] [--subresource=sub]`, what
    `kubectl auth can-i` sends, minus its discovery lookup (which answers "no" for the ML kinds
    whose CRDs this cluster does not have, whatever RBAC says)."""
    verb, target, *flags = question.split()
    target, _, name = target.partition("/")
    resource, _, group = target.partition(".")
    attributes = {"verb": verb, "resource": resource, "group": group, "name": name, "namespace": namespace}
    for flag in flags:
        attributes["subresource"] = flag.removeprefix("--subresource=")
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}}


@pytest.mark.parametrize(("component", "question", "where", "answer"), CAN_I,
                         ids=[f"{c}-{q.split()[0]}-{q.split()[1].split('.')[0]}-{w or 'cluster'}"
                              for c, q, w, _ in CAN_I])
def test_chart_rbac_grants_each_component_what_it_needs_and_no_more(cluster, rbac, component, question,
                                                                     where, answer):
    namespace = {"all": "", "own": rbac["namespace"], "other": "default", "": ""}[where]
    review = access_review(question.format(release=rbac["release"]), namespace=namespace)
    # --validate=false: client-side validation would list CRDs, which is not ours to test here.
    out = kubectl_as(cluster, rbac["kubeconfigs"][component], "create", "--validate=false", "-f", "-",
                     "-o", "json", input=json.dumps(review))
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)["status"]
    assert ("yes" if status["allowed"] else "no") == answer, status


def test_write_namespaces_grant_the_operator_writes_only_there(cluster, tmp_path):
    """`operator.writeNamespaces`: reads stay cluster-wide, writes (finalizers, terminations,
    Events, reports) are granted only in the listed namespaces, as the API server decides it."""
    run = uuid.uuid4().hex[:6]
    release, namespace, writable = f"w{run}", f"rbac-w-{run}", f"writable-{run}"
    cluster.create_namespace(namespace, labels=IGNORE)
    cluster.create_namespace(writable, labels=IGNORE)
    objects = install_rbac(cluster, namespace=namespace, release=release,
                           values={"operator": {"writeNamespaces": [writable]}})
    try:
        kubeconfig = service_account_kubeconfig(
            cluster, namespace=namespace, service_account=f"{release}-comptroller-operator",
            path=tmp_path / "operator.kubeconfig")
        for question, where, answer in [
            ("list pods", "", "yes"),
            ("watch deployments.apps", "", "yes"),
            ("patch pods", writable, "yes"),
            ("delete jobs.batch", writable, "yes"),
            ("create events", writable, "yes"),
            ("create policyreports.wgpolicyk8s.io", writable, "yes"),
            ("patch pods", "default", "no"),
            ("delete jobs.batch", "default", "no"),
            ("patch deployments.apps", "default", "no"),
            ("create events", "default", "no"),
            ("patch pods", "kube-system", "no"),
            ("patch gpubudgets.finops.comptroller.dev --subresource=status", "", "yes"),
            ("update configmaps", namespace, "yes"),
        ]:
            review = access_review(question, namespace=where)
            out = kubectl_as(cluster, kubeconfig, "create", "--validate=false", "-f", "-", "-o", "json",
                             input=json.dumps(review))
            assert out.returncode == 0, out.stderr
            allowed = json.loads(out.stdout)["status"]["allowed"]
            assert ("yes" if allowed else "no") == answer, (question, where)
    finally:
        uninstall_rbac(cluster, objects)
        for ns in (namespace, writable):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
