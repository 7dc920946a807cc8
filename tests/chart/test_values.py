"""values.yaml and values.schema.json: every value documented, typed, and typos refused at install."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from e2e.chart import CHART, helm, kube_version
from tests.chart.rendering import NAMESPACE

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def template(*set_args: str) -> tuple[int, str]:
    args = ["template", "comptroller", str(CHART), "--kube-version", kube_version(), "--namespace", NAMESPACE]
    for item in set_args:
        args += ["--set", item]
    out = helm(*args, check=False)
    return out.returncode, out.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("webhook.failurPolicy=Fail", "additional properties 'failurPolicy' not allowed"),
        ("webhok.replicas=3", "additional properties 'webhok' not allowed"),
        ("operator.peering.nmae=x", "additional properties 'nmae' not allowed"),
        ("certManager.enable=true", "additional properties 'enable' not allowed"),
        ("webhook.failurePolicy=fail", "/webhook/failurePolicy"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
        ("webhook.timeoutSeconds=0", "/webhook/timeoutSeconds"),
        ("webhook.replicas=0", "/webhook/replicas"),
        ("operator.meteringInterval=0", "/operator/meteringInterval"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("image.digest=latest", "/image/digest"),
        ("policies.enforcement=enforce", "/policies/enforcement"),
        ("certManager.duration=90d", "/certManager/duration"),
        ("webhook.excludeNamespaces={Bad_Name}", "/webhook/excludeNamespaces/0"),
        ("certManager.issuerRef.kind=ClusterIssuer", "/certManager/issuerRef"),
        ("gpuEquivalents.sharedReplica=4", "additional properties 'sharedReplica' not allowed"),
        ("gpuEquivalents.sharedReplicas=0", "/gpuEquivalents/sharedReplicas"),
    ],
)
def test_schema_refuses_typos_and_bad_values(setting, complaint):
    code, stderr = template(setting)
    assert code != 0
    assert "values don't meet the specifications of the schema" in stderr
    assert complaint in stderr


@pytest.mark.parametrize(
    "setting",
    ["webhook.failurePolicy=Fail", "webhook.timeoutSeconds=30", "operator.replicas=2",
     "policies.enforcement=Audit", "certManager.duration=720h",
     "webhook.podDisruptionBudget.minAvailable=50%", "gpuEquivalents.sharedReplicas=4"],
)
def test_schema_accepts_valid_settings(setting):
    code, stderr = template(setting)
    assert code == 0, stderr


def documented_leaves(text: str) -> dict[str, bool]:
    """Every value path in values.yaml (`a.b.c`) -> whether it, or a mapping above it, carries a
    helm-docs `# --` comment. Maps with keys of their own are sections, not values."""
    result: dict[str, bool] = {}
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.\-]+):(.*)$", line)
        if not match:  # list items and flow continuations belong to the key above
            comment = False
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(documented for _, _, documented in stack)
        path = ".".join([*(k for _, k, _ in stack), key])
        nxt = next((nl for nl in lines[i + 1:] if nl.strip() and not nl.strip().startswith("#")), "")
        is_section = rest == "" and len(nxt) - len(nxt.lstrip()) > indent and not nxt.strip().startswith("- ")
        if not is_section:
            result[path] = comment or inherited
        stack.append((indent, key, comment))
        comment = False
    return result


def test_every_value_is_documented_helm_docs_style():
    leaves = documented_leaves(VALUES_TEXT)
    assert len(leaves) > 80
    assert [path for path, documented in leaves.items() if not documented] == []


def test_the_documentation_check_notices_a_missing_comment():
    assert documented_leaves("a:\n  # -- documented\n  b: 1\n  c: 2\n") == {"a.b": True, "a.c": False}


def schema_paths(schema: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        nested = sub.get("properties") and sub.get("additionalProperties") is False
        paths |= schema_paths(sub, f"{path}.") if nested else {path}
    return paths


def value_paths(values: dict, schema: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key, {})
        path = f"{prefix}{key}"
        nested = isinstance(value, dict) and value and sub.get("additionalProperties") is False
        paths |= value_paths(value, sub, f"{path}.") if nested else {path}
    return paths


def covered(path: str, by: set[str]) -> bool:
    """`path` is in `by`, or lies under (or above) one of its entries: an empty `{}` default stands
    for the keys its schema allows, a free-form map for everything under it."""
    return any(path == other or path.startswith(f"{other}.") or other.startswith(f"{path}.") for other in by)


def test_schema_and_values_describe_the_same_settings():
    in_schema, in_values = schema_paths(SCHEMA) - {"global"}, value_paths(VALUES, SCHEMA)
    assert len(in_values) > 80
    assert {p for p in in_values if not covered(p, in_schema)} == set(), "values without a schema"
    assert {p for p in in_schema if not covered(p, in_values)} == set(), "schema entries without a default"


def test_schema_is_draft_07_and_closed_at_the_top():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert SCHEMA["additionalProperties"] is False


def test_every_ci_values_file_is_documented_by_a_comment():
    for path in sorted((CHART / "ci").glob("*.yaml")):
        assert path.read_text().startswith("# "), path.name
