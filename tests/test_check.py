"""`comptroller check`: inputs, outputs and exit codes (README.md, "Offline checks in CI")."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOW = ["--now", "2026-11-22T12:00:00Z"]

POLICY = {
    "apiVersion": "finops.comptroller.dev/v1alpha1",
    "kind": "FinOpsPolicy",
    "metadata": {"name": "team-label"},
    "spec": {
        "labels": {
            "required": [
                {"key": "team", "allowedValues": ["nlp", "vision"]},
                {"key": "env", "default": "dev"},
            ]
        },
        "expiry": {"requiredWhen": {"env": ["exp"]}, "maxLifetime": "24h"},
    },
}


def pod(name, labels=None, namespace="ml", **meta):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, **meta},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }


GOOD = pod("good", {"team": "nlp"})
BAD = pod("bad", {"team": "sales"})


@pytest.fixture
def policies(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    return str(path)


def write(path, *docs, raw=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw if raw is not None else yaml.safe_dump_all(docs))
    return str(path)


def check(capsys, *args):
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_all_admitted_exits_0_with_one_line_each(tmp_path, policies, capsys):
    manifests = write(tmp_path / "m.yaml", GOOD, pod("also-good", {"team": "vision"}))
    code, out, _ = check(capsys, "-p", policies, manifests, *NOW)
    assert code == 0
    assert out.splitlines() == [
        "PASS  Pod/ml/good",
        "PASS  Pod/ml/also-good",
        "2 resources checked: 2 admitted, 0 denied",
    ]


def test_denied_exits_1_with_violations_and_fixes_under_the_resource(tmp_path, policies, capsys):
    code, out, _ = check(capsys, "-p", policies, write(tmp_path / "m.yaml", GOOD, BAD), *NOW)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "PASS  Pod/ml/good"
    assert lines[1] == "FAIL  Pod/ml/bad"
    assert lines[2].startswith(
        '      [team-label/labels] label "team" has value "sales"; allowed values: nlp, vision'
    )
    assert lines[3:8] == [
        "        fix:",
        "          metadata:",
        "            labels:",
        "              team: nlp",
        lines[7],
    ]


def test_json_output_is_exactly_the_contract(tmp_path, policies, capsys):
    code, out, _ = check(capsys, "-p", policies, "-o", "json", write(tmp_path / "m.yaml", GOOD, BAD), *NOW)
    assert code == 1
    results = json.loads(out)["results"]
    assert [r["resource"] for r in results] == ["Pod/ml/good", "Pod/ml/bad"]
    for result in results:
        assert set(result) == {"resource", "allowed", "violations", "warnings", "patch"}
        for violation in result["violations"]:
            assert set(violation) == {"policy", "rule", "message", "fix"}
    assert results[0]["allowed"] and results[0]["violations"] == []
    assert results[0]["patch"] == [{"op": "add", "path": "/metadata/labels/env", "value": "dev"}]
    assert results[1]["allowed"] is False
    assert (
        results[1]["violations"][0]["policy"] == "team-label"
        and results[1]["violations"][0]["rule"] == "labels"
    )


def test_broken_documents_exit_2_name_file_and_document_and_the_rest_is_checked(tmp_path, policies, capsys):
    raw = (
        yaml.safe_dump(GOOD)
        + "---\nmetadata: {name: [unclosed\n---\n"
        + yaml.safe_dump(BAD)
        + "---\n- a list\n"
    )
    manifests = write(tmp_path / "m.yaml", raw=raw)
    code, out, err = check(capsys, "-p", policies, manifests, *NOW)
    assert code == 2  # bad input wins over a denial: the verdict is incomplete
    assert f"{manifests} (document 2, from line 13): invalid YAML: did not find expected ',' or ']'" in err
    assert f"{manifests} (document 4): expected a mapping, got list" in err
    assert "PASS  Pod/ml/good" in out and "FAIL  Pod/ml/bad" in out


def test_broken_policies_are_named_with_the_field_path(tmp_path, capsys):
    broken = {**POLICY, "metadata": {"name": "broken"}, "spec": {"enforcement": "Deny"}}
    policies = write(tmp_path / "p.yaml", POLICY, broken)
    code, out, err = check(capsys, "-p", policies, write(tmp_path / "m.yaml", GOOD), *NOW)
    assert code == 2
    assert f"{policies} (document 2): FinOpsPolicy/broken: spec.enforcement: Input should be" in err
    assert "PASS  Pod/ml/good" in out  # the good policy still applied


def test_lists_folders_and_skipped_kinds(tmp_path, policies, capsys):
    folder = tmp_path / "deploy"
    write(folder / "a.yaml", {"apiVersion": "v1", "kind": "List", "items": [GOOD, BAD]})
    write(folder / "nested" / "b.yml", pod("nested", {"team": "nlp"}))
    (folder / "nested" / "c.json").write_text(json.dumps(pod("json", {"team": "nlp"})))
    (folder / "README.md").write_text("not yaml: [")
    write(
        folder / "cm.yaml",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "b"}},
    )
    code, out, _ = check(capsys, "-p", policies, str(folder), *NOW)
    assert code == 1
    resources = [line.split()[1] for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert resources == ["Pod/ml/good", "Pod/ml/bad", "Pod/ml/nested", "Pod/ml/json"]


def test_stdin_and_the_console_script(policies):
    stdin = yaml.safe_dump_all([GOOD, {**pod("no-ns", {"team": "nlp"})}])
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "check", "-p", policies, "-o", "json", "-", *NOW],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["resource"] for r in json.loads(proc.stdout)["results"]] == ["Pod/ml/good", "Pod/ml/no-ns"]


def test_documents_without_namespace_go_to_the_given_namespace(tmp_path, policies, capsys):
    manifest = pod("x", {"team": "nlp"})
    del manifest["metadata"]["namespace"]
    code, out, _ = check(
        capsys, "-p", policies, "--namespace", "team-a", write(tmp_path / "m.yaml", manifest), *NOW
    )
    assert code == 0 and "PASS  Pod/team-a/x" in out


@pytest.mark.parametrize("form", ["map", "objects", "inline"])
def test_namespace_labels(tmp_path, capsys, form):
    inherit = {**POLICY, "spec": {"labels": {"required": [{"key": "team"}], "inheritFromNamespace": True}}}
    policies = write(tmp_path / "p.yaml", inherit)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "ml", "labels": {"team": "nlp"}},
    }
    args = ["-p", policies, "-o", "json", *NOW]
    if form == "map":
        args += ["--namespace-labels", write(tmp_path / "ns.yaml", {"ml": {"team": "nlp"}})]
    elif form == "objects":
        args += ["--namespace-labels", write(tmp_path / "ns.yaml", namespace)]
    docs = [namespace, pod("x")] if form == "inline" else [pod("x")]
    code, out, _ = check(capsys, *args, write(tmp_path / "m.yaml", *docs))
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert result["patch"] == [{"op": "add", "path": "/metadata/labels", "value": {"team": "nlp"}}]


def test_now_decides_expiry(tmp_path, policies, capsys):
    manifests = write(
        tmp_path / "m.yaml",
        pod("e", {"team": "nlp", "env": "exp"}, annotations={"expires_at": "2026-11-23T00:00:00Z"}),
    )
    assert check(capsys, "-p", policies, manifests, "--now", "2026-11-22T12:00:00Z")[0] == 0
    assert check(capsys, "-p", policies, manifests, "--now", "2026-11-23T12:00:00Z")[0] == 1


def test_extra_kinds_by_configuration(tmp_path, policies, capsys):
    notebook = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Notebook",
        "metadata": {"name": "nb", "namespace": "ml"},
        "spec": {"template": {"metadata": {"labels": {"team": "sales"}}, "spec": {"containers": []}}},
    }
    manifests = write(tmp_path / "m.yaml", notebook)
    assert check(capsys, "-p", policies, manifests, *NOW)[1].startswith("0 resources")
    kinds = write(
        tmp_path / "kinds.yaml",
        {"kinds": [{"group": "kubeflow.org", "kind": "Notebook", "templates": [{"path": "/spec/template"}]}]},
    )
    code, out, _ = check(capsys, "-p", policies, "--kinds", kinds, manifests, *NOW)
    assert code == 1 and "FAIL  Notebook/ml/nb" in out


def test_no_policies_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = check(capsys, write(tmp_path / "m.yaml", GOOD))
    assert code == 2 and "no policies" in err


def test_default_policies_are_used_from_the_working_directory(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = check(capsys, "policies/default/tests/labels.yaml", *NOW)
    assert code == 1 and "FAIL  Pod/sandbox/no-labels" in out


def test_missing_files_are_bad_input(tmp_path, policies, capsys):
    code, _, err = check(capsys, "-p", policies, str(tmp_path / "nope.yaml"), *NOW)
    assert code == 2 and "nope.yaml: cannot read" in err


def test_policy_test_cases(tmp_path, capsys):
    code, out, _ = check(capsys, "--tests", str(ROOT / "policies"))
    assert code == 0 and out.splitlines()[-1].endswith("0 failed")
    failing = tmp_path / "suite" / "tests" / "tests.yaml"
    write(failing.parent.parent / "p.yaml", POLICY)
    write(failing.parent / "r.yaml", GOOD)
    write(
        failing,
        {
            "policies": [".."],
            "resources": ["r.yaml"],
            "now": "2026-11-22T12:00:00Z",
            "cases": [
                {"resource": "Pod/ml/good", "expect": "denied"},
                {"resource": "Pod/ml/ghost", "expect": "admitted"},
            ],
        },
    )
    code, out, _ = check(capsys, "--tests", str(tmp_path / "suite"))
    assert code == 1
    assert "expected denied, got admitted" in out and "no workload Pod/ml/ghost" in out


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [true, null, 1.5, '2', 0o17, 2026-11-23]\nc: {d: e}\n",
        "base: &b {x: 1, y: [1, 2]}\nuse: *b\nmerged:\n  <<: *b\n  z: 3\n",
        "? [a, b]\n: complex key\n",
        "!!str 123\n",
        "- &a [1]\n- *a\n",
        "{}\n",
        "",
    ],
)
def test_fast_yaml_loading_matches_pyyaml(text):
    from controller.check import load_yaml

    if text.startswith("?"):
        with pytest.raises(yaml.constructor.ConstructorError):
            yaml.load(text, Loader=yaml.SafeLoader)
        with pytest.raises(yaml.constructor.ConstructorError):
            load_yaml(text)
        return
    assert load_yaml(text) == yaml.load(text, Loader=yaml.SafeLoader)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("apiVersion: v1\nkind:\nmetadata: {name: a}\n", "`kind` must be a string, not null"),
        ("apiVersion: v1\nkind: 5\n", "`kind` must be a string, not a number"),
        ("apiVersion: v1\nkind: [Pod]\n", "`kind` must be a string, not a list"),
        ("apiVersion: 1\nkind: Pod\n", "`apiVersion` must be a string, not a number"),
        ("apiVersion: v1\nkind: Pod\nmetadata: [a]\n", "`metadata` must be a mapping, not a list"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {labels: [a]}\n", "`metadata.labels` must be a mapping"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {labels: {team: 1}}\n",
            "`metadata.labels.team` must be a string",
        ),
        ("apiVersion: v1\nkind: List\nitems: [{kind: null}]\n", "List item 1 `kind` must be a string"),
    ],
)
def test_a_document_of_the_wrong_shape_is_named_and_the_rest_is_checked(
    tmp_path, policies, capsys, document, problem
):
    raw = yaml.safe_dump(GOOD) + "---\n" + document + "---\n" + yaml.safe_dump(BAD)
    manifests = write(tmp_path / "m.yaml", raw=raw)
    code, out, err = check(capsys, "-p", policies, manifests, *NOW)
    assert code == 2
    assert f"{manifests} (document 2): {problem}" in err
    assert "Traceback" not in err
    assert "PASS  Pod/ml/good" in out and "FAIL  Pod/ml/bad" in out


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_field = st.sampled_from(["Pod", "Deployment", "Job", "PyTorchJob", "RayJob", "JobSet", None, 5, []])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=_field,
    api=st.sampled_from(
        ["v1", "apps/v1", "batch/v1", "kubeflow.org/v1", "ray.io/v1", "jobset.x-k8s.io/v1alpha2"]
    ),
    metadata=_json,
    spec=_json,
)
def test_check_never_raises_on_any_document(tmp_path, policies, capsys, kind, api, metadata, spec):
    """Whatever shape a document has, check answers 0, 1 or 2 with no traceback."""
    document = {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}
    manifests = write(tmp_path / "fuzz.yaml", raw=json.dumps(document))
    code, _, err = check(capsys, "-p", policies, manifests, *NOW)
    assert code in (0, 1, 2)
    assert "Traceback" not in err
