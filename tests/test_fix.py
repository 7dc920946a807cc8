"""`comptroller fix` (controller/fix.py): each denial's joint fix written into the manifest file,
changing only what the fix names."""

from pathlib import Path

import pytest
import yaml

from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOW = ["--now", "2026-11-22T12:00:00Z", "-p", str(ROOT / "policies" / "default")]

JOB = """\
# the team's fine-tuning run: keep this comment
apiVersion: batch/v1
kind: Job
metadata:
  name: finetune   # trailing comment
  namespace: ml
spec:
  template:
    metadata:
      labels:
        team: nlp
        project: chat
        model_id: llama-3-8b
        lifecycle_phase: training
        cost_center: "cc-101"
    spec:
      nodeSelector:
        node.kubernetes.io/instance-type: p5.48xlarge
      containers:
        - name: train
          image: "trainer:1.0"
          resources:
            limits: {nvidia.com/gpu: 8}
"""

CONFIG = """\
apiVersion: v1
kind: ConfigMap
metadata:   {name: untouched}
data:
  a:    "1"
"""


def test_writes_the_fix_in_place_and_keeps_everything_else(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(CONFIG + "---\n" + JOB)
    assert main(["fix", str(path), *NOW]) == 0  # nothing left to choose: exit 0
    text = path.read_text()
    assert text.startswith(CONFIG + "---\n")  # the other document, byte for byte
    original, fixed = JOB.splitlines(), text.split("---\n", 1)[1].splitlines()
    added = [line for line in fixed if line not in original]
    assert added == ["        environment: production"]
    assert [line for line in original if line not in fixed] == []
    assert main(["check", str(path), *NOW]) == 0
    assert "fixed " in capsys.readouterr().err


def test_placeholders_are_commented_and_exit_1(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.replace("        team: nlp\n", "").replace("        cost_center: \"cc-101\"\n", ""))
    assert main(["fix", str(path), *NOW]) == 1
    text = path.read_text()
    assert "team: set-me  # you choose: the team that owns and pays for the workload" in text
    assert "cost_center: cc-000  # you choose: the finance cost center charged" in text
    assert "# the team's fine-tuning run: keep this comment" in text
    err = capsys.readouterr().err
    assert "you choose" in err and ": team (a placeholder is written)" in err


def test_stdin_goes_to_stdout_and_a_broken_file_is_left_alone(tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(JOB))
    assert main(["fix", "-", *NOW]) == 0
    out = capsys.readouterr().out
    assert "environment: production" in out and out.startswith("# the team's")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Job\nspec: [\n")
    assert main(["fix", str(broken), *NOW]) == 2
    assert broken.read_text() == "kind: Job\nspec: [\n"


def test_check_fix_writes_then_checks(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    assert main(["check", "--fix", str(path), *NOW]) == 0
    assert "PASS  Job/ml/finetune" in capsys.readouterr().out
    assert "environment: production" in path.read_text()


@pytest.mark.parametrize("dash", ["- name", "  - name"])
def test_list_items_are_fixed_in_place_in_either_list_style(tmp_path, dash):
    js = f"""\
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: js
  namespace: ml
spec:
  replicatedJobs:
  {dash}: workers
    {"  " if dash.startswith(" ") else ""}template:
    {"  " if dash.startswith(" ") else ""}  spec:
    {"  " if dash.startswith(" ") else ""}    template:
    {"  " if dash.startswith(" ") else ""}      spec:
    {"  " if dash.startswith(" ") else ""}        containers:
    {"  " if dash.startswith(" ") else ""}        - name: c
    {"  " if dash.startswith(" ") else ""}          image: i
"""
    path = tmp_path / "js.yaml"
    path.write_text(js)
    assert main(["fix", str(path), *NOW]) == 1  # team, project, ... are for a person to choose
    fixed = path.read_text()
    assert [line for line in js.splitlines() if line not in fixed.splitlines()] == []
    assert main(["check", str(path), *NOW]) == 0


TRAINJOB = """\
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata: {name: llm, namespace: ml}
spec:
  runtimeRef: {name: torch-distributed}
  trainer:
    numNodes: 4
    resourcesPerNode:
      limits: {nvidia.com/gpu: 8}
"""


def test_a_kind_it_does_not_know_is_named_and_left_as_it_is(tmp_path, capsys):
    path = tmp_path / "trainjob.yaml"
    path.write_text(TRAINJOB)
    assert main(["fix", str(path), *NOW]) == 0
    assert path.read_text() == TRAINJOB
    err = capsys.readouterr().err
    assert err == (
        f"not judged {path}: TrainJob/ml/llm (a kind Comptroller does not know; "
        "`comptroller check` says how to judge it)\n"
    )


VOLCANO = """\
apiVersion: batch.volcano.sh/v1alpha1
kind: Job
metadata: {name: vj, namespace: ml}
spec:
  tasks:
  - name: ps
    replicas: 1
    template:
      spec:
        containers: [{name: c, image: i}]
  - name: worker
    replicas: 4
    template:
      metadata: {labels: {team: nlp}}
      spec:
        containers: [{name: c, image: i, resources: {limits: {nvidia.com/gpu: 8}}}]
"""


def test_a_kinds_entry_naming_list_items_by_index_is_fixed_in_those_items(tmp_path, capsys):
    # `--kinds` written by hand with literal indexes, not `*`: the fix goes into those list items,
    # not into a map keyed "1" that `fix` could not write (it used to fail: "cannot set").
    kinds = tmp_path / "kinds.yaml"
    kinds.write_text(
        "kinds:\n- group: batch.volcano.sh\n  kind: Job\n  templates:\n"
        "  - {path: /spec/tasks/0/template, replicas: [/spec/tasks/0/replicas]}\n"
        "  - {path: /spec/tasks/1/template, replicas: [/spec/tasks/1/replicas]}\n"
    )
    path = tmp_path / "vj.yaml"
    path.write_text(VOLCANO)
    assert main(["fix", str(path), "--kinds", str(kinds), *NOW]) == 1  # placeholders to choose
    assert "cannot" not in capsys.readouterr().err
    filled = path.read_text().replace("set-me", "nlp").replace("cc-000", "cc-101")
    path.write_text(filled)
    assert main(["check", str(path), "--kinds", str(kinds), *NOW]) == 0
    assert "PASS  Job/ml/vj" in capsys.readouterr().out


def test_placeholders_in_flow_style_maps_are_written_in_block_style(tmp_path):
    # A comment cannot sit inside `{a: 1}`: every flow map down to a placeholder turns block, and
    # only those (the containers' flow list stays as written).
    path = tmp_path / "pod.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ml, labels: {project: chat}}\n"
        "spec:\n  containers: [{name: c, image: i}]\n"
    )
    assert main(["fix", str(path), *NOW]) == 1
    text = path.read_text()
    assert "\nmetadata:\n  name: p\n  namespace: ml\n  labels:\n    project: chat\n" in text
    assert "    team: set-me  # you choose: the team that owns and pays for the workload\n" in text
    assert "  containers: [{name: c, image: i}]\n" in text
    assert not any(line.lstrip().startswith(",") for line in text.splitlines())


def test_a_document_begun_on_its_separator_line_keeps_the_separator_apart(tmp_path):
    # `--- {...}`: written anew in block style, the document must not run into the `---`.
    path = tmp_path / "two.yaml"
    config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"
    pod = "{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: ml}, spec: {containers: []}}"
    path.write_text(f"{config}--- {pod}\n")
    assert main(["fix", str(path), *NOW]) == 1
    text = path.read_text()
    assert text.startswith(config + "---\napiVersion: v1\nkind: Pod\n")
    first, second = yaml.safe_load_all(text)
    assert first["kind"] == "ConfigMap" and second["kind"] == "Pod"
    assert second["metadata"]["labels"]["team"] == "set-me"
