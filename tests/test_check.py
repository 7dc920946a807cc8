"""`comptroller check`: inputs, outputs and exit codes (README.md, "Offline checks in CI")."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.cli import main
from controller.constants import DEFAULTED_ANNOTATION as DEFAULTED

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
    assert lines[3:7] == [
        "      fix (admitted with it), to merge into the manifest:",
        "        metadata:",
        "          labels:",
        "            team: nlp",
    ]


def test_json_output_is_exactly_the_contract(tmp_path, policies, capsys):
    code, out, _ = check(capsys, "-p", policies, "-o", "json", write(tmp_path / "m.yaml", GOOD, BAD), *NOW)
    assert code == 1
    results = json.loads(out)["results"]
    assert [r["resource"] for r in results] == ["Pod/ml/good", "Pod/ml/bad"]
    for result in results:
        assert set(result) == {"resource", "allowed", "violations", "warnings", "patch", "fix"}
        for violation in result["violations"]:
            assert set(violation) == {"policy", "rule", "message", "fix"}
    assert results[0]["allowed"] and results[0]["violations"] == []
    assert results[0]["patch"] == [
        {"op": "add", "path": "/metadata/labels/env", "value": "dev"},
        {"op": "add", "path": "/metadata/annotations", "value": {DEFAULTED: "env"}},
    ]
    assert results[1]["allowed"] is False
    assert results[0]["fix"] is None
    assert results[1]["fix"] == {
        "admitted": True,
        "yaml": "metadata:\n  labels:\n    team: nlp",
        "jsonPatch": [{"op": "add", "path": "/metadata/labels/team", "value": "nlp"}],
        "choose": [],
        "unresolved": [],
    }
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
    assert f"{manifests} (document 4, from line 27): expected a mapping, got a list" in err
    assert "PASS  Pod/ml/good" in out and "FAIL  Pod/ml/bad" in out


def test_broken_policies_are_named_with_the_field_path(tmp_path, capsys):
    broken = {**POLICY, "metadata": {"name": "broken"}, "spec": {"enforcement": "Deny"}}
    policies = write(tmp_path / "p.yaml", POLICY, broken)
    code, out, err = check(capsys, "-p", policies, write(tmp_path / "m.yaml", GOOD), *NOW)
    assert code == 2
    where = f"{policies} (document 2, from line 20)"
    assert f"{where}: FinOpsPolicy/broken: spec.enforcement: Input should be" in err
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
    assert result["patch"] == [
        {"op": "add", "path": "/metadata/labels", "value": {"team": "nlp"}},
        {"op": "add", "path": "/metadata/annotations", "value": {DEFAULTED: "team"}},
    ]


def test_now_decides_expiry(tmp_path, policies, capsys):
    manifests = write(
        tmp_path / "m.yaml",
        pod("e", {"team": "nlp", "env": "exp"}, annotations={"expires_at": "2026-11-23T00:00:00Z"}),
    )
    assert check(capsys, "-p", policies, manifests, "--now", "2026-11-22T12:00:00Z")[0] == 0
    assert check(capsys, "-p", policies, manifests, "--now", "2026-11-23T12:00:00Z")[0] == 1


NOT_JUDGED = "not judged (a kind Comptroller does not know)"


def test_extra_kinds_by_configuration(tmp_path, policies, capsys):
    notebook = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Notebook",
        "metadata": {"name": "nb", "namespace": "ml"},
        "spec": {"template": {"metadata": {"labels": {"team": "sales"}}, "spec": {"containers": []}}},
    }
    manifests = write(tmp_path / "m.yaml", notebook)
    code, out, _ = check(capsys, "-p", policies, manifests, *NOW)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "SKIP  Notebook/ml/nb: not judged, Comptroller does not know kind Notebook (kubeflow.org/v1)"
    )
    assert lines[-1] == f"0 resources checked: 0 admitted, 0 denied; 1 {NOT_JUDGED}"
    # The --kinds file it prints, pasted as printed, makes the kind judged.
    printed = [line[8:] for line in out.splitlines() if line.startswith("        ")]
    assert yaml.safe_load("\n".join(printed)) == {
        "kinds": [{"group": "kubeflow.org", "kind": "Notebook", "templates": [{"path": "/spec/template"}]}]
    }
    kinds = tmp_path / "kinds.yaml"
    kinds.write_text("\n".join(printed))
    code, out, _ = check(capsys, "-p", policies, "--kinds", str(kinds), manifests, *NOW)
    assert code == 1 and "FAIL  Notebook/ml/nb" in out and "SKIP" not in out


TRAINJOB = {  # Kubeflow Trainer v2: GPUs per node, the pods' templates in a runtime elsewhere
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "TrainJob",
    "metadata": {"name": "llm", "namespace": "ml"},
    "spec": {
        "runtimeRef": {"name": "torch-distributed"},
        "trainer": {"numNodes": 4, "resourcesPerNode": {"limits": {"nvidia.com/gpu": 8}}},
    },
}


def test_a_kind_it_does_not_know_asking_for_gpus_is_named_not_passed_over(tmp_path, policies, capsys):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": []}}
    manifests = write(tmp_path / "m.yaml", TRAINJOB, service, GOOD)
    code, out, _ = check(capsys, "-p", policies, manifests, *NOW)
    assert code == 0  # nothing judged was denied: the exit status stays the judged workloads'
    lines = out.splitlines()
    assert lines[0] == "PASS  Pod/ml/good"
    assert lines[1] == (
        "SKIP  TrainJob/ml/llm: not judged, Comptroller does not know kind TrainJob "
        "(trainer.kubeflow.org/v1alpha1); it asks for nvidia.com/gpu at /spec/trainer/resourcesPerNode"
    )
    assert "no --kinds entry can judge it here" in lines[2]
    assert "Service" not in out
    assert lines[-1] == f"1 resources checked: 1 admitted, 0 denied; 1 {NOT_JUDGED}"

    code, out, _ = check(capsys, "-p", policies, "-o", "json", manifests, *NOW)
    result = json.loads(out)
    assert [r["resource"] for r in result["results"]] == ["Pod/ml/good"]
    assert result["unjudged"] == [
        {
            "resource": "TrainJob/ml/llm",
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "accelerators": [{"path": "/spec/trainer/resourcesPerNode", "resource": "nvidia.com/gpu"}],
            "podTemplates": [],
            "kindsEntry": None,
        }
    ]


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
    assert load_yaml(text) == yaml.load(text, Loader=_KubectlLoader)


class _KubectlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading timestamps as kubectl does: as the strings they are written as."""


_KubectlLoader.add_constructor("tag:yaml.org,2002:timestamp", _KubectlLoader.construct_yaml_str)


def test_unquoted_timestamps_stay_strings_as_kubectl_reads_them(tmp_path, capsys):
    """kubectl (sigs.k8s.io/yaml) sends `expires_at: 2026-11-23` as the string "2026-11-23"; check
    must judge the same object, not refuse a date that no label or annotation can hold."""
    from controller.check import load_yaml

    assert load_yaml("a: 2026-11-23\nb: 2026-11-23T18:00:00Z\n") == {
        "a": "2026-11-23",
        "b": "2026-11-23T18:00:00Z",
    }
    labels = "  labels: {env: exp, team: nlp}\n  namespace: ml\nspec: {containers: [{name: c, image: i}]}\n"
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: exp\n  annotations: {expires_at: 2026-11-23}\n"
        + labels
        + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n"
        + "  annotations: {expires_at: 2026-12-23T00:00:00Z}\n"
        + labels
    )
    policies = write(tmp_path / "p.yaml", POLICY)
    code, out, err = check(capsys, "-p", policies, write(tmp_path / "m.yaml", raw=text), *NOW)
    assert err == ""
    assert "PASS  Pod/ml/exp" in out  # within maxLifetime (24h) of now
    assert "FAIL  Pod/ml/late" in out and code == 1


_POD = "apiVersion: v1\nkind: Pod\n"
_DEPLOYMENT = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"


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
            '`metadata.labels.team` must be a string (quote it: "1"), not a number',
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {annotations: {preemptible: true}}\n",
            '`metadata.annotations.preemptible` must be a string (quote it: "true"), not a boolean',
        ),
        ("apiVersion: v1\nkind: List\nitems: [{kind: null}]\n", "List item 1 `kind` must be a string"),
        ("apiVersion: v1\nkind: List\nitems: [5]\n", "List item 1 must be a mapping, not a number"),
        # A Namespace named by a list made the namespace-label collection raise.
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: [ml]}\n", "`metadata.name` must be a string"),
        (_POD + "metadata: {namespace: {ml: 1}}\n", "`metadata.namespace` must be a string"),
        (_POD + "metadata: {ownerReferences: 3}\n", "`metadata.ownerReferences` must be a list"),
        # What the engine reads from a workload's pod templates, of the wrong type.
        ("apiVersion: v1\nkind: Pod\nspec: 3\n", "`spec` must be a mapping, not a number"),
        ("apiVersion: v1\nkind: Pod\nspec: {containers: {c: 1}}\n", "`spec.containers` must be a list"),
        ("apiVersion: v1\nkind: Pod\nspec: {containers: [c]}\n", "`spec.containers[0]` must be a mapping"),
        ("apiVersion: v1\nkind: Pod\nspec: {containers: [null]}\n", "`spec.containers[0]` must not be null"),
        (
            "apiVersion: v1\nkind: Pod\nspec: {initContainers: [{resources: {limits: [1]}}]}\n",
            "`spec.initContainers[0].resources.limits` must be a mapping, not a list",
        ),
        (
            "apiVersion: v1\nkind: Pod\nspec: {nodeSelector: {node.kubernetes.io/instance-type: 5}}\n",
            "`spec.nodeSelector.node.kubernetes.io/instance-type` must be a string",
        ),
        (
            _POD + "spec: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: "
            "{nodeSelectorTerms: [{matchExpressions: 1}]}}}}\n",
            "`spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions` must be a list, not a number",
        ),
        (_DEPLOYMENT + "spec: {template: [a]}\n", "`spec.template` must be a mapping, not a list"),
        (
            _DEPLOYMENT + "spec: {template: {metadata: {labels: {team: 1}}}}\n",
            "`spec.template.metadata.labels.team`",
        ),
        (_DEPLOYMENT + "spec: {template: {spec: []}}\n", "`spec.template.spec` must be a mapping"),
        (
            "apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata: {name: p}\n"
            "spec: {pytorchReplicaSpecs: {Worker: {template: {spec: {containers: [1]}}}}}\n",
            "`spec.pytorchReplicaSpecs.Worker.template.spec.containers[0]` must be a mapping",
        ),
        (
            "apiVersion: jobset.x-k8s.io/v1alpha2\nkind: JobSet\nspec: {replicatedJobs: 4}\n",
            "`spec.replicatedJobs` must be a list or a mapping, not a number",
        ),
    ],
)
def test_a_document_of_the_wrong_shape_is_named_and_the_rest_is_checked(
    tmp_path, policies, capsys, document, problem
):
    """A field of the wrong type is bad input (exit 2) named by file, document, line and field, never
    a traceback, a judgement on a guess, or a silent pass; the documents around it are still judged."""
    raw = yaml.safe_dump(GOOD) + "---\n" + document + "---\n" + yaml.safe_dump(BAD)
    manifests = write(tmp_path / "m.yaml", raw=raw)
    code, out, err = check(capsys, "-p", policies, manifests, *NOW)
    assert code == 2
    assert f"error: {manifests} (document 2, from line 13): {problem}" in err
    assert err.count("error: ") == 1 and "cannot be judged" not in err
    assert "PASS  Pod/ml/good" in out and "FAIL  Pod/ml/bad" in out


@pytest.mark.parametrize(
    ("kinds", "problem"),
    [
        ("kinds: abc\n", "`kinds` must be a list, not a string"),
        ("kinds: [{kind: Y, templates: abc}]\n", "`kinds[0].templates` must be a list, not a string"),
        ("kinds: [{kind: Y, templates: [{path: 5}]}]\n", "`kinds[0].templates[0].path` must be a string"),
        ("kinds: [{group: x, templates: [{path: /spec/t}]}]\n", "every kind needs `kind`"),
        ("kinds: [{kind: Y, templates: [{path: spec}]}]\n", "'spec' is not a JSON pointer"),
        ("- a\n", "expected a mapping, got a list"),
    ],
)
def test_a_broken_kinds_file_is_bad_input(tmp_path, policies, capsys, kinds, problem):
    path = write(tmp_path / "kinds.yaml", raw=kinds)
    code, out, err = check(capsys, "-p", policies, "--kinds", path, write(tmp_path / "m.yaml", GOOD), *NOW)
    assert code == 2
    assert f"error: {path} (document 1, from line 1): {problem}" in err
    assert "PASS  Pod/ml/good" in out


@pytest.mark.parametrize(
    ("tests", "problem"),
    [
        ("- a\n", "expected a mapping, got a list"),
        ("cases: {resource: Pod/ml/good}\n", "`cases` must be a list, not a mapping"),
        ("cases: [Pod/ml/good]\n", "`cases[0]` must be a mapping, not a string"),
        ("policies: p.yaml\n", "`policies` must be a list, not a string"),
        ("namespaceLabels: {ml: [a]}\n", "`namespaceLabels.ml` must be a mapping, not a list"),
        ("now: yesterday\n", "`now` must be an RFC 3339 time (2026-11-23T18:00:00Z), not 'yesterday'"),
    ],
)
def test_a_broken_test_file_is_bad_input(tmp_path, capsys, tests, problem):
    suite = tmp_path / "suite"
    write(suite / "tests.yaml", raw=tests)
    code, _, err = check(capsys, "--tests", str(suite))
    assert code == 2
    assert f"error: {suite / 'tests.yaml'}: {problem}" in err


def test_a_broken_test_resource_is_bad_input_and_the_cases_still_run(tmp_path, capsys):
    suite = tmp_path / "suite"
    write(suite / "policies" / "p.yaml", POLICY)
    write(suite / "resources.yaml", raw=yaml.safe_dump(GOOD) + "---\napiVersion: v1\nkind: Pod\nspec: 3\n")
    cases = [{"resource": "Pod/ml/good"}]
    write(suite / "tests.yaml", {"policies": ["policies"], "resources": ["resources.yaml"], "cases": cases})
    code, out, err = check(capsys, "--tests", str(suite))
    assert code == 2
    assert "resources.yaml (document 2, from line 13): `spec` must be a mapping, not a number" in err
    assert "PASS" in out and "1 cases: 1 passed, 0 failed" in out


# Keys and values the engine looks for, so generated documents reach its rules, not only the door.
_WORDS = st.sampled_from(
    [
        "metadata", "labels", "annotations", "name", "namespace", "ownerReferences", "controller",
        "spec", "template", "containers", "initContainers", "resources", "limits", "requests",
        "nvidia.com/gpu", "restartPolicy", "Always", "replicas", "parallelism", "nodeSelector",
        "node.kubernetes.io/instance-type", "affinity", "nodeAffinity", "nodeSelectorTerms",
        "requiredDuringSchedulingIgnoredDuringExecution", "matchExpressions", "key", "operator", "In",
        "values", "pytorchReplicaSpecs", "Worker", "replicatedJobs", "headGroupSpec", "workerGroupSpecs",
        "leaderWorkerTemplate", "size", "jobTemplate", "items", "team", "nlp", "env", "exp",
        "expires_at", "2026-11-23", "p4d.24xlarge", "8", "",
    ]
)
_TYPES = st.sampled_from(
    [
        ("v1", "Pod"), ("apps/v1", "Deployment"), ("batch/v1", "Job"), ("batch/v1", "CronJob"),
        ("kubeflow.org/v1", "PyTorchJob"), ("ray.io/v1", "RayJob"), ("jobset.x-k8s.io/v1alpha2", "JobSet"),
        ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"), ("v1", "Namespace"), ("v1", "List"),
        ("v1", "ConfigMap"),
    ]
)
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | _WORDS
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(_WORDS | st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_metadata = _json | st.fixed_dictionaries(
    {}, optional={key: _json for key in ("name", "namespace", "labels", "annotations", "ownerReferences")}
)
_documents = (
    _json
    | st.builds(
        lambda types, fields: {"apiVersion": types[0], "kind": types[1], **fields},
        _TYPES,
        st.fixed_dictionaries(
            {}, optional={"metadata": _metadata, "spec": _json, "items": st.lists(_json, max_size=2)}
        ),
    )
    | st.fixed_dictionaries(
        {"apiVersion": _json, "kind": _json}, optional={"metadata": _metadata, "spec": _json}
    )
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_documents)
@example(document={"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": {"\r": None}}})
def test_check_never_raises_on_any_document(tmp_path, policies, capsys, document):
    """Whatever a document holds, check answers 0, 1 or 2 without raising, names the document when
    it is bad input, still judges the documents around it, and never leaves the engine to trip on a
    shape its own checks should have named ("cannot be judged")."""
    raw = yaml.safe_dump(GOOD) + "---\n" + json.dumps(document) + "\n---\n" + yaml.safe_dump(BAD)
    manifests = write(tmp_path / "fuzz.yaml", raw=raw)
    code, out, err = check(capsys, "-p", policies, *_EVERY_RULE, manifests, *NOW)
    assert code in (1, 2)  # BAD is always there to be denied
    assert (code == 2) == bool(err)
    for line in err.splitlines():
        assert line.startswith(f"error: {manifests} (document 2, from line 13): "), line
    assert "cannot be judged" not in err
    assert "  Pod/ml/good" in out and "FAIL  Pod/ml/bad" in out


# Every rule family and a budget, so a generated workload goes through every rule that reads it.
_EVERY_RULE = ["-p", str(ROOT / "policies" / "default"), "-p", str(ROOT / "policies" / "examples")]
