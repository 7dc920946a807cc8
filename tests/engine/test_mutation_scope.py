"""The mutating webhook's matchCondition against the engine: whenever the CEL expression says a
workload is settled, `evaluate(mutate=True)` must patch nothing. Checked by property over random
policy sets, namespaces, exceptions and workloads, with cel-python standing in for the API
server's CEL (the e2e suite runs the same expression on the real one)."""

from __future__ import annotations

from pathlib import Path

import celpy
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.engine import evaluate
from controller.engine.models import FinOpsPolicy
from controller.engine.mutation_scope import mutation_condition
from tests.engine.engine_cases import NOW, exception, policy, snapshot

DEFAULT_POLICIES = Path(__file__).resolve().parents[2] / "policies" / "default"
KEYS = ["team", "env", "tier", "expires_at", "finops.comptroller.dev/expires-at"]
VALUES = ["a", "b", "experiment", "2026-11-23T00:00:00Z"]


def condition(expression: str, manifest: dict) -> bool:
    """Evaluate the expression as the API server would for this object's CREATE."""
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    group = manifest.get("apiVersion", "").rpartition("/")[0]
    activation = {
        "object": celpy.json_to_cel(manifest),
        "request": celpy.json_to_cel({"kind": {"group": group, "kind": manifest["kind"]}}),
    }
    result = program.evaluate(activation)
    assert isinstance(result, celpy.celtypes.BoolType), f"the condition failed on {manifest}: {result!r}"
    return bool(result)


def default_policies() -> list[FinOpsPolicy]:
    paths = sorted(DEFAULT_POLICIES.glob("*.yaml"))
    return [FinOpsPolicy.from_object(yaml.safe_load(p.read_text())) for p in paths]


# -- strategies ---------------------------------------------------------------------------------------

DEFAULTS = st.none() | st.sampled_from(VALUES[:3])
label_maps = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=4)


@st.composite
def policies(draw, name: str) -> FinOpsPolicy:
    spec: dict = {}
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(KEYS[:3]), unique=True, max_size=3))
        spec["labels"] = {
            "inheritFromNamespace": draw(st.booleans()),
            "required": [{"key": key, "default": draw(DEFAULTS)} for key in keys],
        }
    if draw(st.booleans()):
        spec["expiry"] = {"key": draw(st.sampled_from(KEYS[3:])), "default": "24h", "maxLifetime": "72h"}
        if draw(st.booleans()):
            spec["expiry"]["requiredWhen"] = draw(
                st.dictionaries(st.sampled_from(KEYS[:3]), st.lists(st.sampled_from(VALUES[:3]), min_size=1,
                                                                    unique=True), max_size=2)
            )
    if draw(st.booleans()):
        spec["match"] = {"kinds": draw(st.lists(st.sampled_from(["Pod", "Deployment", "Job"]), min_size=1))}
    return policy(name, **spec)


def metadata(draw) -> dict:
    meta: dict = {"name": "w", "namespace": "ml"}
    for field in ("labels", "annotations"):
        if draw(st.booleans()):
            meta[field] = draw(label_maps)
    return meta


@st.composite
def workloads(draw) -> dict:
    kind = draw(st.sampled_from(["Pod", "Deployment", "Job", "CronJob", "PyTorchJob"]))
    meta = metadata(draw)
    pod_spec = {"containers": [{"name": "c", "image": "i"}]}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
    template = {"metadata": metadata(draw), "spec": pod_spec}
    spec = {
        "Deployment": {"template": template},
        "Job": {"template": template},
        "CronJob": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}},
        "PyTorchJob": {"pytorchReplicaSpecs": {"Master": {"template": template}}},
    }[kind]
    api_version = {"Deployment": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind)
    return {"apiVersion": api_version or "kubeflow.org/v1", "kind": kind, "metadata": meta, "spec": spec}


# -- properties ---------------------------------------------------------------------------------------


REQUIRED_ONLY = (policy("p1", labels={"required": [{"key": "team"}]}), policy("p2"))
COPIED_TO_TEMPLATE = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": {"team": "a"}},
    "spec": {"template": {"metadata": {}, "spec": {"containers": []}}},
}


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found by this test: no policy can fill a label, yet a controller's own is copied to its template.
@example(policy_set=REQUIRED_ONLY, manifest=COPIED_TO_TEMPLATE, namespace_labels={}, waived=False)
@given(
    policy_set=st.tuples(policies("p1"), policies("p2")),
    manifest=workloads(),
    namespace_labels=label_maps,
    waived=st.booleans(),
)
def test_a_settled_workload_is_never_patched(policy_set, manifest, namespace_labels, waived):
    expression = mutation_condition(policy_set)
    items = [*policy_set]
    if waived:
        items.append(exception(policies=["p1"], rules=["labels"]))
    snap = snapshot(*items, namespace_labels={"ml": namespace_labels})
    decision = evaluate(manifest, snapshot=snap, now=NOW, mutate=True, namespace="ml")
    if not condition(expression, manifest):
        assert not decision.patch, f"skipped /mutate, but the engine patches {decision.patch}\n{expression}"


@pytest.mark.parametrize(
    ("labels", "annotations", "sent"),
    [
        # every label of the default set, production: nothing to add, so /mutate is not called
        ({"team": "nlp", "project": "p", "model_id": "m", "environment": "production",
          "lifecycle_phase": "inference", "cost_center": "cc-100"}, None, False),
        # an experiment without expires_at gets the default: sent
        ({"team": "nlp", "project": "p", "model_id": "m", "environment": "experiment",
          "lifecycle_phase": "training", "cost_center": "cc-100"}, None, True),
        # ...and one with it is settled
        ({"team": "nlp", "project": "p", "model_id": "m", "environment": "experiment",
          "lifecycle_phase": "training", "cost_center": "cc-100"},
         {"expires_at": "2026-11-23T00:00:00Z"}, False),
        # environment missing: its default applies
        ({"team": "nlp", "project": "p", "model_id": "m", "lifecycle_phase": "inference",
          "cost_center": "cc-100"}, None, True),
        (None, None, True),
    ],
)
def test_default_policies_send_only_pods_mutation_can_change(labels, annotations, sent):
    meta: dict = {"name": "w", "namespace": "ml"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": []}}
    assert condition(mutation_condition(default_policies()), pod) is sent


def test_controllers_are_always_sent():
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
    assert condition(mutation_condition(default_policies()), deployment) is True


def test_without_anything_to_mutate_nothing_is_sent():
    gpu_only = policy("gpu", gpu={"maxGPUsPerPod": 8})
    expiry_without_default = policy("e", expiry={"requiredWhen": {}, "maxLifetime": "72h"})
    expression = mutation_condition([gpu_only, expiry_without_default])
    assert expression == "false"
    assert condition(expression, {"apiVersion": "v1", "kind": "Pod", "metadata": {}}) is False


def test_a_label_no_policy_can_fill_does_not_send_a_pod():
    """Required without a default or inheritance: mutation cannot add it to a pod (validation
    denies it instead), so its absence alone does not cost a /mutate call. A controller still goes:
    its own label is copied into its pod template."""
    required_only = mutation_condition([policy("owner", labels={"required": [{"key": "owner"}]})])
    assert condition(required_only, {"apiVersion": "v1", "kind": "Pod", "metadata": {}}) is False
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"labels": {"owner": "a"}}}
    assert condition(required_only, deployment) is True

    filled = policy("env", labels={"required": [{"key": "owner"}, {"key": "env", "default": "dev"}]})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"env": "prod"}}}
    assert condition(mutation_condition([filled]), pod) is False
