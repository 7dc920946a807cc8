"""What the chart promises about privilege: every pod passes the `restricted` Pod Security Standard
(checked field by field here, and by the API server's PodSecurity admission in e2e), and no RBAC
rule uses a wildcard."""

from __future__ import annotations

import pytest

from tests.chart.rendering import CI_VALUES, of_kind, pod_specs, rendered

RBAC_KINDS = ("ClusterRole", "Role")
# https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """Where a pod spec breaks the `restricted` profile, in the standard's own terms."""
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} has type {sorted(kinds)}")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runs as uid 0")
    containers: list[dict] = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        containers.extend(pod.get(field) or [])
    for c in containers:
        ctx = c.get("securityContext") or {}
        name = c["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{name}: uses a hostPort")
    return problems


CASES = [
    pytest.param(values_file, workload, spec, id=f"{values_file.stem}-{workload}")
    for values_file in CI_VALUES
    for workload, spec in pod_specs(rendered(values_file=values_file))
]


@pytest.mark.parametrize(("values_file", "workload", "pod"), CASES)
def test_pods_pass_the_restricted_pod_security_standard(values_file, workload, pod):
    assert restricted_violations(pod) == []


@pytest.mark.parametrize(("values_file", "workload", "pod"), CASES)
def test_pods_are_read_only_and_bounded(values_file, workload, pod):
    writable = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
                if not m.get("readOnly")}
    assert writable == {"/tmp"}  # the only writable path, an emptyDir
    for c in pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsUser"] == 65532  # the Dockerfile's non-root user


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ({"containers": [{"name": "c"}]},
         ["c: allowPrivilegeEscalation is not false", "c: capabilities do not drop ALL",
          "c: runAsNonRoot is not true", "c: seccompProfile is None"]),
        ({"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
          "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
          "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}], "securityContext": {
              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}]},
         ["hostNetwork is set", "volume h has type ['hostPath']", "c: adds capabilities ['SYS_ADMIN']",
          "c: uses a hostPort"]),
    ],
    ids=["bare", "host-access"],
)
def test_the_checker_catches_violations(pod, expected):
    assert restricted_violations(pod) == expected


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_rbac_has_no_wildcards(values_file):
    rules = [(o["metadata"]["name"], rule)
             for kind in RBAC_KINDS for o in of_kind(rendered(values_file=values_file), kind)
             for rule in o["rules"]]
    assert rules
    for name, rule in rules:
        for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), f"{name}: {field} {rule[field]}"


@pytest.mark.parametrize(
    ("role", "forbidden"),
    [
        # The webhook only reads.
        ("comptroller-webhook", {"create", "update", "patch", "delete", "deletecollection"}),
        # Nobody but the certs job touches Secrets, and nobody escalates or impersonates.
        ("comptroller-operator", {"escalate", "bind", "impersonate", "deletecollection"}),
    ],
)
def test_component_roles_stay_in_their_lane(role, forbidden):
    (cluster_role,) = [o for o in of_kind(rendered(), "ClusterRole") if o["metadata"]["name"] == role]
    for rule in cluster_role["rules"]:
        assert not set(rule["verbs"]) & forbidden, rule
        assert "secrets" not in rule["resources"], rule
        assert not {"pods/exec", "pods/attach", "serviceaccounts/token"} & set(rule["resources"]), rule
    pod_rules = [r for r in cluster_role["rules"] if "pods" in r["resources"]]
    assert all("create" not in r["verbs"] for r in pod_rules)


def test_only_the_certs_role_reaches_secrets_and_only_in_the_release_namespace():
    objects = rendered()
    holders = {o["metadata"]["name"] for kind in RBAC_KINDS for o in of_kind(objects, kind)
               for rule in o["rules"] if "secrets" in rule["resources"]}
    assert holders == {"comptroller-certs"}
    assert all("secrets" not in rule["resources"]
               for o in of_kind(objects, "ClusterRole") for rule in o["rules"])
