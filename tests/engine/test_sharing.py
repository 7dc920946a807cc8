"""What the engine shares or remembers to stay cheap on the admission path, held to doing exactly
what the plain version does: the joint fix's copies that share what no edit touches
(`fixing.with_edits`), GPU counts remembered per view, and `resource_filter` built once per list."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from engine_cases import NOW
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.check import load_snapshot
from controller.engine import evaluate
from controller.engine.accelerators import NO_GPUS, pod_gpus, resource_filter
from controller.engine.api import Edit
from controller.engine.fixing import _aliased, apply_edits, joint_fix, with_edits
from controller.engine.view import WorkloadView
from controller.engine.workloads import BUILTIN_KINDS

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SNAPSHOT, _ = load_snapshot([POLICIES / "default"])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", ""]))
KEYS = st.sampled_from(["a", "b", "c"])
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=3)),
    max_leaves=12,
)
PATHS = st.lists(st.one_of(KEYS, st.integers(-2, 2)), min_size=1, max_size=4).map(tuple)
EDITS = st.lists(st.builds(Edit, PATHS, st.one_of(SCALARS, st.just({"k": ["v"]}))), max_size=4)


def pod(gpus: int = 0, labels: dict | None = None) -> dict:
    resources = {"requests": {"cpu": "1", "memory": "1Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ml", "labels": dict(labels or {})},
        "spec": {
            "nodeSelector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
            "containers": [{"name": "c", "image": "i", "resources": resources}],
        },
    }


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, DOCUMENTS, max_size=3), EDITS)
def test_with_edits_makes_the_same_document_as_a_deep_copy_and_leaves_the_manifest_alone(document, edits):
    before = copy.deepcopy(document)
    assert with_edits(document, edits) == apply_edits(document, edits)
    assert document == before


def test_with_edits_copies_only_the_maps_on_an_edits_path():
    manifest = pod(gpus=1, labels={"team": "nlp"})
    edited = with_edits(manifest, [Edit(("metadata", "labels", "project"), "chat")])
    assert edited["metadata"]["labels"] == {"team": "nlp", "project": "chat"}
    assert manifest["metadata"]["labels"] == {"team": "nlp"}
    assert edited["spec"] is manifest["spec"]  # untouched: shared, not copied
    assert edited["metadata"] is not manifest["metadata"]


def test_a_later_edit_through_an_earlier_edits_value_does_not_change_that_value():
    value = {"labels": {"team": "nlp"}}
    edits = [Edit(("metadata",), value), Edit(("metadata", "labels", "project"), "chat")]
    assert with_edits({}, edits) == apply_edits({}, edits)
    assert value == {"labels": {"team": "nlp"}}


def test_a_manifest_with_yaml_aliases_is_deep_copied_so_every_appearance_gets_the_edit():
    text = """
    apiVersion: kubeflow.org/v1
    kind: PyTorchJob
    metadata: {name: j, namespace: ml}
    spec:
      pytorchReplicaSpecs:
        Master: {replicas: 1, template: &t {metadata: {labels: {app: j}}, spec: {containers: [{name: c}]}}}
        Worker: {replicas: 2, template: *t}
    """
    manifest = yaml.safe_load(text)
    assert _aliased(manifest)
    assert not _aliased(pod())
    fix = joint_fix(manifest, snapshot=SNAPSHOT, now=NOW)
    fixed = fix.apply()
    assert fix.admitted
    assert evaluate(fixed, snapshot=SNAPSHOT, now=NOW).allowed


def test_gpu_counts_are_remembered_per_view_and_never_leak_to_the_next_pod():
    spec = BUILTIN_KINDS.lookup(pod())
    first = WorkloadView(pod(gpus=2), spec, namespace="ml")
    assert first.gpus(("nvidia.com/gpu",)) == 2
    assert first.gpus(("nvidia.com/gpu",)) == 2
    second = WorkloadView(pod(gpus=0), spec, namespace="ml")
    assert second.gpus(("nvidia.com/gpu",)) == 0
    assert second.pod_gpus(("nvidia.com/gpu",)) == [0.0]
    third = WorkloadView(pod(gpus=4), spec, namespace="ml")
    assert third.pod_gpus(("nvidia.com/gpu",)) == [4.0]
    assert first.gpus(("nvidia.com/gpu",)) == 2


def test_a_pod_without_accelerators_is_counted_by_the_fast_path_as_zero_for_any_resources():
    manifest = pod(gpus=0)
    assert pod_gpus(manifest["spec"]) is NO_GPUS
    view = WorkloadView(manifest, BUILTIN_KINDS.lookup(manifest), namespace="ml")
    for resources in (("*",), ("nvidia.com/gpu",), ("vendor.example/accelerator",)):
        assert view.gpus(resources) == 0.0
        assert view.pod_gpus(resources) == [0.0]
    assert view.gpu_notes() == []


def test_two_reviews_in_a_row_are_judged_each_on_its_own():
    with_gpu = evaluate(pod(gpus=16), snapshot=SNAPSHOT, now=NOW, mutate=False)
    without = evaluate(pod(gpus=0), snapshot=SNAPSHOT, now=NOW, mutate=False)
    assert any(v.key == "maxGPUsPerPod" for v in with_gpu.violations)
    assert not any(v.rule == "gpu" for v in without.violations)


def test_resource_filter_is_built_once_per_list_and_answers_as_before():
    names = ["nvidia.com/gpu", "amd.com/gpu"]
    assert resource_filter(names) is resource_filter(tuple(names))
    assert resource_filter(["*"]) is None
    counts = resource_filter(["nvidia.com/mig-*"])
    assert counts is not None and counts("nvidia.com/mig-1g.10gb") and not counts("nvidia.com/gpu")


@pytest.mark.parametrize("folder", ["default", "examples"])
def test_a_review_parsed_from_json_gets_the_same_joint_fix_without_the_alias_walk(folder, monkeypatch):
    """The webhook says its manifests are JSON (`aliases=False`): the fix is the one the walk would
    have allowed, for every denied policy test case, and the walk is not done."""
    from controller.check import namespace_labels_from, read_documents
    from controller.engine import fixing

    docs = read_documents([POLICIES / folder / "tests"]).documents
    snap, errors = load_snapshot([POLICIES / folder], namespace_labels=namespace_labels_from(docs))
    assert not errors
    denied = [json.loads(json.dumps(doc.body)) for doc in docs
              if not evaluate(doc.body, snapshot=snap, now=NOW).allowed]
    assert len(denied) >= 4
    walked = [joint_fix(manifest, snapshot=snap, now=NOW) for manifest in denied]
    # As if the walk had found an alias: every copy judged is a deep one, shared with nothing.
    monkeypatch.setattr(fixing, "_aliased", lambda _document: True)
    deep = [joint_fix(manifest, snapshot=snap, now=NOW) for manifest in denied]
    assert deep == walked

    def walk(_document):
        raise AssertionError("the alias walk ran for a manifest said to be JSON")

    monkeypatch.setattr(fixing, "_aliased", walk)
    assert [joint_fix(manifest, snapshot=snap, now=NOW, aliases=False) for manifest in denied] == deep
