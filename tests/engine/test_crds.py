"""The CRDs the chart ships agree with the models, and accept every policy in `policies/`.

The schemas are checked with a small OpenAPI v3 validator (the subset structural schemas use),
strict about unknown fields where the API server would silently prune them.
"""

import re
import types
import typing
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from controller.check import read_documents
from controller.engine.models import FinOpsException, FinOpsPolicy, GPUBudget, GPUEquivalence

ROOT = Path(__file__).resolve().parents[2]
CRDS = {
    "FinOpsPolicy": ROOT / "charts/comptroller/crds/finopspolicies.yaml",
    "GPUBudget": ROOT / "charts/comptroller/crds/gpubudgets.yaml",
    "FinOpsException": ROOT / "charts/comptroller/crds/finopsexceptions.yaml",
    "GPUEquivalence": ROOT / "charts/comptroller/crds/gpuequivalences.yaml",
}
MODELS = {
    "FinOpsPolicy": FinOpsPolicy,
    "GPUBudget": GPUBudget,
    "FinOpsException": FinOpsException,
    "GPUEquivalence": GPUEquivalence,
}


def crd(kind):
    return yaml.safe_load(CRDS[kind].read_text())


def schema_of(kind):
    (version,) = crd(kind)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def validate(schema, value, path="") -> list[str]:
    errors = []
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected object"]
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if props is not None and key in props:
                errors += validate(props[key], child, f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += validate(extra, child, f"{path}.{key}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field (the API server would prune it)")
        errors += [f"{path}.{r}: required" for r in schema.get("required", []) if r not in value]
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{path}: too many properties")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected array"]
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 10**9):
            errors.append(f"{path}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            errors += validate(schema["items"], item, f"{path}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected string, got {value!r}"]
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9):
            errors.append(f"{path}: length out of bounds")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                errors.append(f"{path}: {value!r} is not a date-time")
    elif kind in ("integer", "number"):
        ok = isinstance(value, int) if kind == "integer" else isinstance(value, int | float)
        if not ok or isinstance(value, bool):
            return [f"{path}: expected {kind}, got {value!r}"]
        if value < schema.get("minimum", -(10**18)) or value > schema.get("maximum", 10**18):
            errors.append(f"{path}: {value} out of bounds")
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected boolean")
    return errors


def _nodes(schema, path="$"):
    yield path, schema
    for key, child in (schema.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", list(CRDS))
def test_crd_is_structural_and_complete(kind):
    definition = crd(kind)
    assert definition["metadata"]["name"] == f"{definition['spec']['names']['plural']}.finops.comptroller.dev"
    assert "comptroller" in definition["spec"]["names"]["categories"]
    (version,) = definition["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    for path, node in _nodes(version["schema"]["openAPIV3Schema"]):
        assert "type" in node, f"{path} has no type (not structural)"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), f"{path} preserves unknown fields"
        assert "$ref" not in node and "nullable" not in node
        if "default" in node:
            assert not validate(node, node["default"], path), f"{path}: default does not validate"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration"} <= set(status)
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {
        "type",
        "status",
        "observedGeneration",
        "lastTransitionTime",
        "reason",
        "message",
    }


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("FinOpsPolicy", ["Enforcement", "Ready", "Age"]),
        ("GPUBudget", ["Period", "Used", "Budget", "Remaining %", "Running GPUs", "Enforcement", "Age"]),
        ("FinOpsException", ["Expires", "Reason", "Policies", "Rules", "Age"]),
    ],
)
def test_printer_columns_point_at_schema_fields(kind, columns):
    (version,) = crd(kind)["spec"]["versions"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == columns
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        node = schema
        for part in re.sub(r"\[\?\(.*?\)\]", "[]", column["jsonPath"]).strip(".").split("."):
            name = part.removesuffix("[]")
            if name == "metadata":
                break
            node = node["properties"][name]
            if part.endswith("[]"):
                node = node["items"]


def test_short_name_of_policies():
    assert crd("FinOpsPolicy")["spec"]["names"]["shortNames"] == ["fop"]
    assert crd("FinOpsException")["spec"]["scope"] == "Namespaced"
    assert crd("GPUBudget")["spec"]["scope"] == "Cluster"


def _policy_documents():
    for doc in read_documents([ROOT / "policies"]).documents:
        if doc.body.get("kind") in CRDS:
            yield pytest.param(doc.body, id=f"{doc.body['kind']}/{doc.body['metadata']['name']}")


@pytest.mark.parametrize("obj", list(_policy_documents()))
def test_every_shipped_policy_passes_the_crd_schema_and_the_model(obj):
    assert validate(schema_of(obj["kind"]), obj) == []
    MODELS[obj["kind"]].from_object(obj)


@pytest.mark.parametrize(
    ("kind", "spec", "problem"),
    [
        ("FinOpsPolicy", {"enforcement": "Deny"}, "not in"),
        ("FinOpsPolicy", {"expiry": {"maxLifetime": "3 days"}}, "does not match"),
        (
            "FinOpsPolicy",
            {"labels": {"required": [{"key": "team", "default": "not valid!"}]}},
            "does not match",
        ),
        ("FinOpsPolicy", {"gpu": {"maxGPUsPerPod": -1}}, "out of bounds"),
        ("FinOpsPolicy", {"labels": {"requird": []}}, "unknown field"),
        ("FinOpsPolicy", {"idle": {"action": "Delete"}}, "not in"),
        ("FinOpsPolicy", {"idle": {"kinds": ["CronJob"]}}, "not in"),
        ("FinOpsPolicy", {"idle": {"notifyBefore": "soon"}}, "does not match"),
        ("GPUBudget", {"period": "Monthly"}, "gpuHours: required"),
        (
            "FinOpsException",
            {"policies": [], "rules": ["labels"], "expiresAt": "2026-01-01T00:00:00Z", "reason": "r"},
            "out of bounds",
        ),
    ],
)
def test_the_schema_refuses_bad_specs(kind, spec, problem):
    obj = {
        "apiVersion": "finops.comptroller.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": spec,
    }
    errors = validate(schema_of(kind), obj)
    assert any(problem in e for e in errors), errors


def _unwrap(annotation):
    """The pydantic models inside a field's annotation (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    if origin in (list, dict):
        return _unwrap(typing.get_args(annotation)[-1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _child(node):
    while node.get("type") in ("array",) or (node.get("type") == "object" and "additionalProperties" in node):
        node = node["items"] if node["type"] == "array" else node["additionalProperties"]
    return node


def _walk(model, node, path):
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    assert set(fields) == set(node.get("properties", {})), (
        f"{path}: model {sorted(fields)} vs CRD {sorted(node.get('properties', {}))}"
    )
    for alias, field in fields.items():
        child = node["properties"][alias]
        if "default" in child:
            value = field.get_default(call_default_factory=True)
            annotation = (
                typing.Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            )
            dumped = TypeAdapter(annotation).dump_python(value, mode="json")
            assert dumped == child["default"], (
                f"{path}.{alias}: model default {dumped!r} vs CRD {child['default']!r}"
            )
        for sub in _unwrap(field.annotation):
            if alias != "metadata":
                _walk(sub, _child(child), f"{path}.{alias}")


@pytest.mark.parametrize("kind", list(CRDS))
def test_models_and_crds_agree_on_every_field_and_default(kind):
    _walk(MODELS[kind], schema_of(kind), kind)
