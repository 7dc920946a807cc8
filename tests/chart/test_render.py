"""`helm lint` and `helm template` of charts/comptroller: what every install renders, and what each
value changes. No cluster: the e2e suite (e2e/test_chart.py) has the API server validate the same
objects."""

from __future__ import annotations

import tarfile

import pytest
import yaml

from e2e.chart import CHART, helm, kube_version
from tests.chart.rendering import CI_VALUES, NAMESPACE, of_kind, one, pod_specs, rendered

WEBHOOK_CONFIG_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")

# docs/crds.md#workload-kinds: every supported kind, by API group.
SUPPORTED_RESOURCES = {
    "": {"pods"},
    "apps": {"deployments", "statefulsets", "replicasets", "daemonsets"},
    "batch": {"jobs", "cronjobs"},
    "kubeflow.org": {"pytorchjobs", "tfjobs", "mpijobs"},
    "ray.io": {"rayjobs", "rayclusters", "rayservices"},
    "jobset.x-k8s.io": {"jobsets"},
    "leaderworkerset.x-k8s.io": {"leaderworkersets"},
}


def container(objects: list[dict], kind: str, name: str) -> dict:
    obj = one(objects, kind, name)
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    (only,) = spec["template"]["spec"]["containers"]
    return only


# ---- lint and render ----------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "no-values")
def test_helm_lint_strict(values_file):
    args = ["lint", str(CHART), "--strict", "--kube-version", kube_version(), "--namespace", NAMESPACE]
    if values_file:
        args += ["--values", str(values_file)]
    out = helm(*args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(
    ("values_file", "present", "absent"),
    [
        ("default-values.yaml",
         {"Deployment": 2, "Service": 2, "PodDisruptionBudget": 2, "Job": 2, "CronJob": 1,
          "ValidatingWebhookConfiguration": 1, "MutatingWebhookConfiguration": 1,
          "ServiceAccount": 4, "ClusterRole": 4, "ClusterRoleBinding": 4, "Role": 2, "RoleBinding": 2,
          "ClusterKopfPeering": 1},
         {"Certificate", "Issuer", "ServiceMonitor", "PrometheusRule", "FinOpsPolicy", "Secret"}),
        ("ha-values.yaml",
         {"Deployment": 2, "PodDisruptionBudget": 2, "Job": 2, "CronJob": 1},
         {"Certificate", "ServiceMonitor"}),
        ("cert-manager-values.yaml",
         {"Certificate": 2, "Issuer": 2, "ValidatingWebhookConfiguration": 1, "ServiceAccount": 3,
          "ClusterRole": 3, "Role": 1, "Job": 1},
         {"CronJob", "MutatingWebhookConfiguration"}),
        ("monitoring-values.yaml",
         {"Certificate": 1, "ServiceMonitor": 2, "PrometheusRule": 1},
         {"Issuer", "CronJob"}),
    ],
)
def test_ci_values_render_the_expected_objects(values_file, present, absent):
    objects = rendered(values_file=CHART / "ci" / values_file)
    counts = {kind: len(of_kind(objects, kind)) for kind in present}
    assert counts == present
    assert not {o["kind"] for o in objects} & absent


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_namespaced_objects_land_in_the_release_namespace(values_file):
    objects = rendered(values_file=values_file)
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "FinOpsPolicy", "GPUBudget",
                      *WEBHOOK_CONFIG_KINDS}
    for obj in objects:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], obj["kind"]
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_names_are_unique_per_kind_and_valid(values_file):
    objects = rendered(values_file=values_file)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    assert all(len(name) <= 63 for _, name in keys)


def test_long_release_names_keep_names_within_63_characters():
    objects = rendered({"fullnameOverride": "x" * 80})
    assert max(len(o["metadata"]["name"]) for o in objects) <= 63


# ---- webhook configurations ---------------------------------------------------------------------


PATHS = {"validate": "/validate", "scale": "/scale", "mutate": "/mutate", "claim": "/claim"}


def main_webhook(objects, kind):
    """The webhook judging the workloads themselves (not the scale subresource)."""
    name = ("validate" if kind.startswith("Validating") else "mutate") + ".finops.comptroller.dev"
    return next(w for w in one(objects, kind)["webhooks"] if w["name"] == name)


def every_webhook(objects):
    return [w for kind in WEBHOOK_CONFIG_KINDS for w in one(objects, kind)["webhooks"]]


def test_the_validating_configuration_judges_workloads_and_their_scale_subresource():
    names = [w["name"] for w in one(rendered(), "ValidatingWebhookConfiguration")["webhooks"]]
    assert names == ["validate.finops.comptroller.dev", "scale.finops.comptroller.dev",
                     "claim.finops.comptroller.dev"]


def test_the_claim_webhook_is_the_one_registration_renders():
    """The chart and `make up` register the same claim rules and conditions, and the webhook may
    list the pods a claim is judged for."""
    from controller.webhook.registration import CLAIM_CONDITIONS, CLAIM_RESOURCES, CLAIM_UPDATE_RESOURCES

    objects = rendered()
    claim = next(w for w in every_webhook(objects) if w["name"].startswith("claim."))
    assert [(r["apiGroups"], r["resources"], r["operations"]) for r in claim["rules"]] == [
        ([group], list(resources), [operation])
        for registered, operation in ((CLAIM_RESOURCES, "CREATE"), (CLAIM_UPDATE_RESOURCES, "UPDATE"))
        for group, resources in registered.items()
    ]
    assert claim["matchConditions"] == [{"name": name, "expression": cel} for name, cel in CLAIM_CONDITIONS]
    rules = one(objects, "ClusterRole", "comptroller-webhook")["rules"]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]} in rules


def test_the_scale_webhook_is_the_one_registration_renders():
    """The chart and `make up` (controller/webhook/registration.py) register the same scale rules."""
    from controller.webhook.registration import SCALE_RESOURCES

    scale = next(w for w in every_webhook(rendered()) if w["name"].startswith("scale."))
    covered = {}
    for rule in scale["rules"]:
        assert rule["operations"] == ["UPDATE"]
        for group in rule["apiGroups"]:
            covered.setdefault(group, set()).update(rule["resources"])
    assert covered == {group: set(resources) for group, resources in SCALE_RESOURCES.items()}


def test_the_webhook_may_read_what_it_scales_and_nothing_more():
    from controller.webhook.registration import SCALE_RESOURCES

    rules = one(rendered(), "ClusterRole", "comptroller-webhook")["rules"]
    gets = [rule for rule in rules if rule["verbs"] == ["get"]]
    reads = {(g, r) for rule in gets for g in rule["apiGroups"] for r in rule["resources"]}
    assert reads == {(g, r.split("/")[0]) for g, resources in SCALE_RESOURCES.items() for r in resources}


@pytest.mark.parametrize("kind", WEBHOOK_CONFIG_KINDS)
def test_webhook_configuration_defaults(kind):
    for webhook in one(rendered(), kind)["webhooks"]:
        assert webhook["failurePolicy"] == "Ignore"
        assert webhook["timeoutSeconds"] == 3
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["matchPolicy"] == "Equivalent"
        assert webhook["clientConfig"]["service"] == {
            "name": "comptroller-webhook", "namespace": NAMESPACE, "port": 443,
            "path": PATHS[webhook["name"].split(".")[0]],
        }
        assert "caBundle" not in webhook["clientConfig"]  # filled by the certs job, never blanked by helm
        assert webhook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]},
            {"key": "finops.comptroller.dev/ignore", "operator": "NotIn", "values": ["true"]},
        ]


def test_only_the_mutating_webhook_is_reinvoked():
    objects = rendered()
    assert one(objects, "MutatingWebhookConfiguration")["webhooks"][0]["reinvocationPolicy"] == "IfNeeded"
    assert "reinvocationPolicy" not in one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]


@pytest.mark.parametrize("kind", WEBHOOK_CONFIG_KINDS)
def test_webhooks_intercept_every_supported_kind_on_create_and_update(kind):
    webhook = main_webhook(rendered(), kind)
    covered: dict[str, set[str]] = {}
    for rule in webhook["rules"]:
        assert rule["operations"] == ["CREATE", "UPDATE"]
        assert rule["scope"] == "Namespaced"
        for group in rule["apiGroups"]:
            covered.setdefault(group, set()).update(rule["resources"])
    assert covered == SUPPORTED_RESOURCES


@pytest.mark.parametrize(
    ("values", "failure_policy", "timeout", "failure_mode"),
    [
        ({}, "Ignore", 3, "ignore"),
        ({"webhook": {"failurePolicy": "Fail"}}, "Fail", 3, "deny"),
        ({"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10}}, "Fail", 10, "deny"),
        ({"webhook": {"timeoutSeconds": 1}}, "Ignore", 1, "ignore"),
    ],
)
def test_failure_policy_and_timeout_reach_both_configurations_and_the_server(
    values, failure_policy, timeout, failure_mode
):
    objects = rendered(values)
    for webhook in every_webhook(objects):
        assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == (failure_policy, timeout)
    assert f"--failure-mode={failure_mode}" in container(objects, "Deployment", "comptroller-webhook")["args"]


def test_extra_excludes_and_selectors_are_added_to_the_builtin_ones():
    objects = rendered({"webhook": {
        "excludeNamespaces": ["monitoring", "kube-system"],
        "namespaceSelectorExpressions": [{"key": "team", "operator": "Exists"}],
        "objectSelector": {"matchLabels": {"finops": "on"}},
    }})
    for webhook in every_webhook(objects):
        exclude, _ignore, extra = webhook["namespaceSelector"]["matchExpressions"]
        assert exclude["values"] == ["kube-system", NAMESPACE, "monitoring"]
        assert extra == {"key": "team", "operator": "Exists"}
        assert webhook["objectSelector"] == {"matchLabels": {"finops": "on"}}


@pytest.mark.parametrize(
    ("values", "kinds"),
    [
        ({"webhook": {"mutating": {"enabled": False}}}, {"ValidatingWebhookConfiguration"}),
        ({"webhook": {"validating": {"enabled": False}}}, {"MutatingWebhookConfiguration"}),
    ],
)
def test_each_webhook_configuration_can_be_switched_off(values, kinds):
    assert {o["kind"] for o in rendered(values)} & set(WEBHOOK_CONFIG_KINDS) == kinds


def test_cert_manager_injects_the_ca_into_both_configurations():
    objects = rendered({"certManager": {"enabled": True}})
    certificate = one(objects, "Certificate", "comptroller-webhook")
    assert certificate["spec"]["dnsNames"] == [f"comptroller-webhook.{NAMESPACE}.svc"]
    assert certificate["spec"]["secretName"] == "comptroller-webhook-tls"
    assert certificate["spec"]["issuerRef"] == {"kind": "Issuer", "name": "comptroller-ca"}
    for kind in WEBHOOK_CONFIG_KINDS:
        annotations = one(objects, kind)["metadata"]["annotations"]
        assert annotations == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/comptroller-webhook"}


def test_cert_manager_with_an_existing_issuer_creates_no_ca():
    issuer = {"kind": "ClusterIssuer", "name": "corp"}
    objects = rendered({"certManager": {"enabled": True, "issuerRef": issuer}})
    assert [o["metadata"]["name"] for o in of_kind(objects, "Certificate")] == ["comptroller-webhook"]
    assert not of_kind(objects, "Issuer")
    assert one(objects, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp"}


# ---- self-managed certificates ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_certs_jobs_ensure_the_secret_the_webhook_mounts_and_patch_the_configurations(kind):
    objects = rendered()
    name = "comptroller-certs-1" if kind == "Job" else "comptroller-certs"
    args = container(objects, kind, name)["args"]
    assert args[:2] == ["certs", "ensure"]
    assert f"--secret={NAMESPACE}/comptroller-webhook-tls" in args
    assert f"--host=comptroller-webhook.{NAMESPACE}.svc" in args
    assert "--webhook-config=comptroller" in args
    webhook_pod = one(objects, "Deployment", "comptroller-webhook")["spec"]["template"]["spec"]
    (certs_volume,) = [v for v in webhook_pod["volumes"] if "secret" in v]
    assert certs_volume["secret"]["secretName"] == "comptroller-webhook-tls"
    # The CA key the job keeps in that Secret is not projected into the webhook.
    assert [i["key"] for i in certs_volume["secret"]["items"]] == ["tls.crt", "tls.key"]


def test_certs_rbac_names_exactly_the_secret_and_the_configurations():
    objects = rendered()
    role_rules = one(objects, "Role", "comptroller-certs")["rules"]
    assert role_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["comptroller-webhook-tls"],
         "verbs": ["get", "update", "patch"]},
    ]
    (rule,) = one(objects, "ClusterRole", "comptroller-certs")["rules"]
    assert rule["resourceNames"] == [one(objects, "ValidatingWebhookConfiguration")["metadata"]["name"]]
    assert rule["resourceNames"] == [one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]]
    assert sorted(rule["verbs"]) == ["get", "patch"]


def test_every_upgrade_gets_a_fresh_certs_job():
    # Job templates are immutable: the revision in the name lets `helm upgrade` replace it.
    out = helm("template", "comptroller", str(CHART), "--kube-version", kube_version(),
               "--namespace", NAMESPACE, "--show-only", "templates/certs/job.yaml")
    assert "name: comptroller-certs-1\n" in out.stdout


# ---- workloads ----------------------------------------------------------------------------------


def test_webhook_deployment_is_highly_available_by_default():
    objects = rendered()
    deployment = one(objects, "Deployment", "comptroller-webhook")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]
    pdb = one(objects, "PodDisruptionBudget", "comptroller-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items() for c in spread)


@pytest.mark.parametrize(
    ("service", "deployment", "port"),
    [("comptroller-webhook", "comptroller-webhook", "https"),
     ("comptroller-operator-metrics", "comptroller-operator", "metrics")],
)
def test_services_select_their_pods_and_name_a_container_port(service, deployment, port):
    objects = rendered()
    svc = one(objects, "Service", service)
    pod = one(objects, "Deployment", deployment)["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == port
    assert port in {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}


def test_webhook_probes_use_https_on_the_serving_port():
    webhook = container(rendered(), "Deployment", "comptroller-webhook")
    assert webhook["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert webhook["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert webhook["args"][:5] == ["webhook", "--port=8443", "--cert-file=/certs/tls.crt",
                                   "--key-file=/certs/tls.key", "--namespace=$(POD_NAMESPACE)"]


SCOPE = "--webhook-configuration=comptroller"


@pytest.mark.parametrize(
    ("values", "expected_args", "strategy", "pdb"),
    [
        # Two replicas by default: a standby releases metering finalizers when the active one dies.
        ({}, [SCOPE], "RollingUpdate", True),
        ({"operator": {"replicas": 1, "dryRun": True}}, [SCOPE, "--dry-run"], "Recreate", False),
        ({"operator": {"replicas": 2, "extraArgs": ["-v"]}}, [SCOPE, "-v"], "RollingUpdate", True),
        # The operator removes the condition rather than leaving a stale one behind.
        ({"webhook": {"mutating": {"skipSettledPods": False}}}, [SCOPE, "--no-skip-settled-pods"],
         "RollingUpdate", True),
        # Without the mutating webhook there is no condition to keep.
        ({"webhook": {"mutating": {"enabled": False}}}, [], "RollingUpdate", True),
    ],
)
def test_operator_deployment(values, expected_args, strategy, pdb):
    objects = rendered(values)
    deployment = one(objects, "Deployment", "comptroller-operator")
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    assert operator["args"] == [
        "operator", "--namespace=$(POD_NAMESPACE)", "--peering=comptroller", "--liveness-port=8080",
        "--metrics-port=9090", "--metering-interval=30", "--team-label=team",
        "--cost-center-label=cost_center", "--expiry-interval=30", "--idle-interval=60",
        "--audit-interval=300", "--reports-format=auto", "--max-terminations-per-minute=30", *expected_args,
    ]
    scoped = [r for r in one(objects, "ClusterRole", "comptroller-operator")["rules"]
              if "mutatingwebhookconfigurations" in r["resources"]]
    if SCOPE in expected_args:
        assert scoped == [{"apiGroups": ["admissionregistration.k8s.io"],
                           "resources": ["mutatingwebhookconfigurations"],
                           "resourceNames": ["comptroller"], "verbs": ["get", "patch"]}]
    else:
        assert scoped == []
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert deployment["spec"]["strategy"]["type"] == strategy
    pdbs = {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")}
    assert ("comptroller-operator" in pdbs) == pdb
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "comptroller"


@pytest.mark.parametrize(
    ("values", "image"),
    [
        ({}, "ghcr.io/comptroller-dev/comptroller:0.1.0"),
        ({"image": {"tag": "v9"}}, "ghcr.io/comptroller-dev/comptroller:v9"),
        ({"image": {"repository": "registry.local/c", "digest": "sha256:" + "a" * 64}},
         "registry.local/c@sha256:" + "a" * 64),
    ],
)
def test_every_container_runs_the_one_image_with_its_entrypoint(values, image):
    objects = rendered(values)
    containers = [c for _, spec in pod_specs(objects) for c in spec["containers"]]
    assert len(containers) == 5
    assert {c["image"] for c in containers} == {image}
    # The Dockerfile's ENTRYPOINT is `comptroller`; the chart only passes the subcommand.
    assert all("command" not in c for c in containers)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {None}),
        ({"priorityClassName": "system-cluster-critical"}, {"system-cluster-critical"}),
        ({"priorityClassName": "low", "webhook": {"priorityClassName": "high"}}, {"low", "high"}),
    ],
)
def test_priority_class(values, expected):
    objects = rendered(values)
    assert {spec.get("priorityClassName") for _, spec in pod_specs(objects)} == expected
    if "webhook" in values:
        webhook = one(objects, "Deployment", "comptroller-webhook")["spec"]["template"]["spec"]
        assert webhook["priorityClassName"] == "high"


def test_uninstall_releases_the_metering_finalizers_with_rbac_of_its_own():
    hooks = [o for o in rendered() if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job")
    names = {(o["kind"], o["metadata"]["name"]) for o in hooks}
    assert names == {(k, "comptroller-uninstall") for k in kinds}
    assert {o["metadata"]["annotations"]["helm.sh/hook"] for o in hooks} == {"post-delete"}
    # RBAC first, then the Job; all removed once it succeeds.
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks}
    assert weights["ServiceAccount"] < weights["ClusterRoleBinding"] < weights["Job"]
    job = one(hooks, "Job")["spec"]["template"]["spec"]
    assert job["serviceAccountName"] == "comptroller-uninstall"
    assert job["containers"][0]["args"][:2] == ["operator", "--release-finalizers"]
    assert one(hooks, "ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]},
        # kopf's finalizer on GPUBudgets is released by the same hook (`--release-finalizers`).
        {"apiGroups": ["finops.comptroller.dev"], "resources": ["gpubudgets"], "verbs": ["list", "patch"]}]
    assert not [o for o in rendered({"operator": {"releaseFinalizersOnUninstall": False}})
                if o["metadata"]["name"] == "comptroller-uninstall"]


# ---- monitoring ---------------------------------------------------------------------------------


def test_prometheus_rule_alerts_on_budget_thresholds_and_webhook_health():
    objects = rendered({"prometheusRule": {"enabled": True}})
    groups = one(objects, "PrometheusRule")["spec"]["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(alerts) == {
        "ComptrollerGPUBudget50Percent", "ComptrollerGPUBudget80Percent", "ComptrollerGPUBudget100Percent",
        "ComptrollerWebhookDown", "ComptrollerWebhookErrors", "ComptrollerOperatorDown",
        # The API server's view (tests/chart/test_monitoring.py).
        "ComptrollerWebhookFailingOpen", "ComptrollerWebhookCallErrors",
        "ComptrollerWebhookLatencyNearTimeout",
    }
    for percent, severity in ((50, "info"), (80, "warning"), (100, "critical")):
        rule = alerts[f"ComptrollerGPUBudget{percent}Percent"]
        assert "comptroller_budget_used_gpu_hours" in rule["expr"]
        assert "comptroller_budget_limit_gpu_hours" in rule["expr"]
        assert float(rule["expr"].rstrip().rsplit(">=", 1)[1]) == percent / 100
        assert rule["labels"]["severity"] == severity
        # Prometheus templates survive helm's own templating.
        assert "{{ $labels.budget }}" in rule["annotations"]["summary"]
    assert 'job="comptroller-webhook"' in alerts["ComptrollerWebhookDown"]["expr"]


def test_service_monitor_verifies_the_webhook_with_its_own_ca():
    objects = rendered({"serviceMonitor": {"enabled": True}})
    (endpoint,) = one(objects, "ServiceMonitor", "comptroller-webhook")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "serverName": f"comptroller-webhook.{NAMESPACE}.svc",
        "ca": {"secret": {"name": "comptroller-webhook-tls", "key": "ca.crt"}},
    }


# ---- the default policy set ---------------------------------------------------------------------

DEFAULT_POLICIES = [doc for path in sorted((CHART.parent.parent / "policies" / "default").glob("*.yaml"))
                    for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_no_policy_is_installed_unless_asked():
    assert not [o for o in rendered() if o["apiVersion"].startswith("finops.comptroller.dev/")]


@pytest.mark.parametrize("enforcement", ["", "Audit", "Warn"])
def test_default_policy_set_is_the_repository_one(enforcement):
    objects = [o for o in rendered({"policies": {"installDefault": True, "enforcement": enforcement}})
               if o["apiVersion"].startswith("finops.comptroller.dev/")]
    assert DEFAULT_POLICIES
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        (d["kind"], d["metadata"]["name"]) for d in DEFAULT_POLICIES]
    for obj, source in zip(objects, DEFAULT_POLICIES, strict=True):
        expected = {**source["spec"], **({"enforcement": enforcement} if enforcement else {})}
        assert obj["spec"] == expected
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "comptroller"


def test_packaged_chart_carries_the_policies_but_not_their_test_cases(tmp_path):
    helm("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("comptroller-*.tgz")
    with tarfile.open(package) as archive:
        names = archive.getnames()
    policies = sorted(n for n in names if "/files/policies/" in n)
    assert policies == [f"comptroller/files/policies/{p.name}"
                        for p in sorted((CHART / "files" / "policies").glob("*.yaml"))]
    assert not [n for n in names if "/ci/" in n]


def test_the_mutating_webhook_carries_the_condition_the_default_policies_need():
    """Rendered by the chart (not only patched in by the operator at run time), so what Helm applies
    is what the operator keeps; `skipSettledPods: false` renders none, and a value overrides it."""
    from controller.check import load_snapshot
    from controller.engine.mutation_scope import CONDITION_NAME, mutation_condition

    snapshot, _ = load_snapshot([CHART.parents[1] / "policies" / "default"])

    def conditions(values):
        config = one(rendered(values), "MutatingWebhookConfiguration")
        return config["webhooks"][0].get("matchConditions")

    expected = mutation_condition(snapshot.policies)
    assert conditions(None) == [{"name": CONDITION_NAME, "expression": expected}]
    assert conditions({"webhook": {"mutating": {"skipSettledPods": False}}}) is None
    custom = conditions({"webhook": {"mutating": {"matchCondition": "true"}}})
    assert custom == [{"name": CONDITION_NAME, "expression": "true"}]


def test_write_namespaces_split_the_operators_rbac():
    """Default: one ClusterRole holds the operator's reads and writes. With `writeNamespaces`, the
    ClusterRole keeps only reads (and cluster-scoped writes), and a second ClusterRole with the
    namespaced writes is bound in each listed namespace; the operator is told the same list."""

    def verbs(role, resource):
        return {v for rule in role["rules"] if resource in rule["resources"] for v in rule["verbs"]}

    default = rendered()
    role = one(default, "ClusterRole", "comptroller-operator")
    assert verbs(role, "pods") == {"get", "list", "watch", "patch", "delete"}
    assert not [o for o in default if o["metadata"]["name"] == "comptroller-operator-write"]

    scoped = rendered({"operator": {"writeNamespaces": ["ml", "research"]}})
    role = one(scoped, "ClusterRole", "comptroller-operator")
    assert verbs(role, "pods") == {"get", "list", "watch"}
    assert verbs(role, "jobs") == {"get", "list", "watch"}
    assert verbs(role, "gpubudgets/status") == {"patch", "update"}  # cluster-scoped: unchanged
    write = one(scoped, "ClusterRole", "comptroller-operator-write")
    assert verbs(write, "pods") == {"patch", "delete"}
    bindings = [
        o for o in of_kind(scoped, "RoleBinding") if o["roleRef"]["name"] == "comptroller-operator-write"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "research"]
    deployment = one(scoped, "Deployment", "comptroller-operator")
    assert "--write-namespaces=ml,research" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_write_namespaces_refuse_kube_system():
    import subprocess

    with pytest.raises(subprocess.CalledProcessError) as refused:
        rendered({"operator": {"writeNamespaces": ["kube-system"]}})
    assert "never writes in kube-system" in str(refused.value.stderr)


# ---- GPU-equivalents ------------------------------------------------------------------------------


def test_no_gpu_equivalence_is_rendered_by_default():
    assert of_kind(rendered(), "GPUEquivalence") == []


def test_gpu_equivalents_values_render_one_gpu_equivalence_the_engine_loads():
    from controller.engine.accelerators import NodeFacts, equivalence_of
    from controller.engine.models import GPUEquivalence

    values = {
        "gpuEquivalents": {
            "resources": {"aws.amazon.com/neuroncore": 0.125},
            "sharedReplicas": 4,
            "products": [{"match": "*RTX-6000*", "memoryMiB": 49152}],
            "deviceClasses": {"gpu.example.com": {"equivalents": 0.5}},
        }
    }
    (obj,) = of_kind(rendered(values), "GPUEquivalence")
    assert obj["metadata"]["name"].endswith("-cluster")
    table = equivalence_of([GPUEquivalence.from_object(obj)])
    assert table.weight("aws.amazon.com/neuroncore") == 0.125
    assert table.shared_replicas == 4
    assert table.memory_of(NodeFacts(product="NVIDIA-RTX-6000-Ada")) == 49152
    assert table.device_classes["gpu.example.com"].equivalents == 0.5
    assert table.weight("nvidia.com/gpu") == 1.0  # the built-in table stays under the override



def test_operator_showback_labels_follow_the_values():
    values = {"operator": {"showbackLabels": {"team": "example.com/team", "costCenter": "example.com/cc"}}}
    (operator,) = one(rendered(values), "Deployment", "comptroller-operator")["spec"]["template"]["spec"][
        "containers"]
    assert {"--team-label=example.com/team", "--cost-center-label=example.com/cc"} <= set(operator["args"])
