"""Real upstream manifests through every rule family (tests/corpus/README.md).

Every other test judges manifests written for this project. These are the ML operators' and serving
stacks' own examples (KubeRay, Kubeflow, JobSet, LeaderWorkerSet, Kueue, vLLM, SGLang, NVIDIA, DRA
drivers, HAMi, kubernetes/examples), read exactly as `comptroller check` reads them, and judged
with the shipped policies loaded as `comptroller check -p` loads them. What a person counted in
each one (GPUs, pod templates, pods) is in tests/corpus/provenance.yaml.

The manifests themselves are looked for under $COMPTROLLER_CORPUS, tests/corpus/ and ../shared/corpus/
(the steering repo's shared folder beside this checkout); provenance.yaml pins each file's git
blob id, so whichever copy is found must be the upstream file byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from controller.check import Inputs, load_snapshot, read_documents
from controller.cli import main
from controller.engine import Decision, FinOpsPolicy, Snapshot, evaluate
from controller.engine.accelerators import ClaimIndex
from controller.engine.claims import judge_claim, waiting_for
from controller.engine.fixing import joint_fix
from controller.engine.messages import render_denial, render_warning
from controller.engine.unjudged import MAKES_PODS, unjudged
from controller.engine.view import workload_gpus
from controller.engine.workloads import BUILTIN_KINDS, pod_templates_of, pod_units, workload_units

NVIDIA_GPU = ("nvidia.com/gpu",)

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE = ROOT / "tests" / "corpus" / "provenance.yaml"
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
NOW_ARG = "2026-11-22T12:00:00Z"
POLICY_SETS = {
    "default": (ROOT / "policies" / "default",),
    "examples": (ROOT / "policies" / "examples",),
    "default+examples": (ROOT / "policies" / "default", ROOT / "policies" / "examples"),
}
REQUIRED_KINDS = {
    "Pod",
    "Deployment",
    "StatefulSet",
    "Job",
    "RayJob",
    "RayCluster",
    "RayService",
    "JobSet",
    "LeaderWorkerSet",
}
KUBEFLOW_KINDS = {"PyTorchJob", "TFJob", "MPIJob"}
MIN_DOCUMENTS = 60

ENTRIES: list[dict[str, Any]] = yaml.safe_load(PROVENANCE.read_text(encoding="utf-8"))["files"]


def _origin() -> Path | None:
    """The checkout this one was cloned from, when that is a folder on this machine (CI clones `main`)."""
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://")) if url and "://" not in url.removeprefix("file://") else None
    return path if path is not None and path.is_dir() else None


def _roots() -> list[Path]:
    roots = [Path(os.environ["COMPTROLLER_CORPUS"])] if os.environ.get("COMPTROLLER_CORPUS") else []
    for checkout in (ROOT, _origin()):
        if checkout is not None:
            roots += [checkout / "tests" / "corpus", checkout.parent / "shared" / "corpus"]
    return roots


def _blob(data: bytes) -> str:
    """The git object id of a file's bytes (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


if not any((root / ENTRIES[0]["file"]).is_file() for root in _roots()):
    # The manifests are data kept outside this repository (tests/corpus/README.md). Where no copy is
    # laid out at all, say so once; a copy that is present is held to provenance.yaml file by file.
    pytest.skip(
        "the upstream corpus is not laid out here; looked under "
        + ", ".join(str(r) for r in _roots())
        + " (tests/corpus/README.md says how to lay it out)",
        allow_module_level=True,
    )


@cache
def corpus_file(rel: str) -> Path:
    """Where the corpus file `rel` (`<project>/<name>.yaml`) is; fails, saying where it looked."""
    for root in _roots():
        if (root / rel).is_file():
            return root / rel
    looked = ", ".join(str(r) for r in _roots())
    pytest.fail(
        f"corpus file {rel} not found under {looked}: the upstream manifests are not committed to this "
        "repository; tests/corpus/README.md says where they come from and where to put them"
    )


@cache
def read(rel: str) -> Inputs:
    """The file's documents, read by `comptroller check`'s own reader (multi-document YAML split)."""
    return read_documents([corpus_file(rel)])


@cache
def snapshot(name: str) -> Snapshot:
    snap, errors = load_snapshot(POLICY_SETS[name])
    assert not errors, errors
    return snap


def _documents() -> list[tuple[dict[str, Any], int, dict[str, Any]]]:
    return [(entry, i, doc) for entry in ENTRIES for i, doc in enumerate(entry.get("documents") or ())]


def _doc_id(entry: dict[str, Any], index: int) -> str:
    return f"{entry['file']}#{index + 1}"


def _counted(expect_key: str) -> list[Any]:
    """One param per document of a built-in kind (every one: the engine counts as a person did)."""
    return [
        pytest.param(entry, index, doc, id=_doc_id(entry, index))
        for entry, index, doc in _documents()
        if expect_key in doc
    ]


def _body(entry: dict[str, Any], index: int) -> Any:
    return read(entry["file"]).documents[index].body


def _namespace(body: dict[str, Any]) -> str:
    """The namespace `comptroller check` judges a document in (its own, else `default`)."""
    return (body.get("metadata") or {}).get("namespace") or "default"


# -- the corpus itself ------------------------------------------------------------------------------


def test_every_file_is_present_and_verbatim() -> None:
    for entry in ENTRIES:
        data = corpus_file(entry["file"]).read_bytes()
        assert _blob(data) == entry["blob"], f"{entry['file']} is not the upstream file at {entry['commit']}"


def test_provenance_names_source_commit_and_license_of_every_file() -> None:
    for entry in ENTRIES:
        where = entry["file"]
        assert re.fullmatch(r"[a-z0-9-]+/[^/]+\.ya?ml", where), where
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry["repository"]), where
        assert entry["path"] and not entry["path"].startswith("/"), where
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), where
        assert entry["license"] == "Apache-2.0", where
        assert entry["exercises"].strip(), where
    files = [entry["file"] for entry in ENTRIES]
    assert len(files) == len(set(files))


def test_every_corpus_file_found_is_listed_in_provenance() -> None:
    listed = {entry["file"] for entry in ENTRIES}
    for root in _roots():
        found = {
            str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
        }
        found.discard("provenance.yaml")
        assert found <= listed, f"under {root}, not in provenance.yaml: {sorted(found - listed)}"


def test_corpus_is_large_and_covers_the_ml_kinds() -> None:
    kinds: Counter[str] = Counter()
    for entry in ENTRIES:
        for document in read(entry["file"]).documents:
            body = document.body
            if isinstance(body, dict) and BUILTIN_KINDS.lookup(body) is not None:
                kinds[body["kind"]] += 1
    assert sum(kinds.values()) >= MIN_DOCUMENTS, kinds
    assert REQUIRED_KINDS <= set(kinds), REQUIRED_KINDS - set(kinds)
    assert KUBEFLOW_KINDS & set(kinds), kinds


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_documents_are_read_as_provenance_lists_them(entry: dict[str, Any]) -> None:
    inputs = read(entry["file"])
    assert bool(inputs.errors) == bool(entry.get("parse_error")), inputs.errors
    got = [(d.body.get("kind"), _name(d.body)) for d in inputs.documents if isinstance(d.body, dict)]
    assert len(got) == len(inputs.documents)
    assert got == [(d["kind"], d["name"]) for d in entry.get("documents") or ()]


def _name(body: dict[str, Any]) -> Any:
    metadata = body.get("metadata") or {}
    return metadata.get("name") or metadata.get("generateName")


# -- what the engine counts -------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "index", "doc"), _counted("gpus"))
def test_engine_counts_the_gpus_a_person_counted(
    entry: dict[str, Any], index: int, doc: dict[str, Any]
) -> None:
    assert workload_units(_body(entry, index), NVIDIA_GPU) == doc["gpus"]


@pytest.mark.parametrize(("entry", "index", "doc"), _counted("gpu_equivalents"))
def test_engine_counts_the_gpu_equivalents_a_person_counted(
    entry: dict[str, Any], index: int, doc: dict[str, Any]
) -> None:
    """Every form of asking for a GPU (MIG, shares, fractions, DRA claims resolved from the same
    file, other accelerators) in GPU-equivalents, against the hand count under the default table."""
    claims = ClaimIndex(d.body for d in read(entry["file"]).documents)
    counted = workload_gpus(_body(entry, index), snapshot=Snapshot(claims=claims))
    assert counted == pytest.approx(doc["gpu_equivalents"], abs=1e-4)


@pytest.mark.parametrize(("entry", "index", "doc"), _counted("templates"))
def test_engine_finds_every_pod_template_with_its_pods_and_gpus(
    entry: dict[str, Any], index: int, doc: dict[str, Any]
) -> None:
    body = _body(entry, index)
    spec = BUILTIN_KINDS.lookup(body)
    assert spec is not None
    found = [
        {"path": t.pointer, "pods": t.replicas, "gpus_per_pod": pod_units(t.spec, NVIDIA_GPU)}
        for t in pod_templates_of(body, spec)
    ]
    assert found == doc["templates"]


@pytest.mark.parametrize(
    ("entry", "index", "doc"),
    [
        pytest.param(entry, index, doc, id=_doc_id(entry, index))
        for entry, index, doc in _documents()
        if doc.get("builtin_kind") is False
    ],
)
def test_kinds_the_engine_does_not_know_are_left_alone(
    entry: dict[str, Any], index: int, doc: dict[str, Any]
) -> None:
    body = _body(entry, index)
    assert BUILTIN_KINDS.lookup(body) is None
    assert workload_units(body, NVIDIA_GPU) == 0
    decision = evaluate(body, snapshot=snapshot("default"), now=NOW, namespace=_namespace(body))
    assert decision.allowed and not decision.all_violations and not decision.patch


@pytest.mark.parametrize(("entry", "index", "doc"), [
    pytest.param(entry, index, doc, id=_doc_id(entry, index)) for entry, index, doc in _documents()
])
def test_check_names_every_document_that_embeds_pods_of_a_kind_it_does_not_know(
    entry: dict[str, Any], index: int, doc: dict[str, Any]
) -> None:
    """Reported as not judged exactly where a person marked a kind the engine does not know that
    embeds pods, and nowhere else (no Service, ConfigMap, DeviceClass or Kueue queue)."""
    body = _body(entry, index)
    found = unjudged(body, namespace=_namespace(body))
    assert (found is not None) == (doc.get("builtin_kind") is False), found
    if found is None:
        return
    entry_ = found.kinds_entry()
    if entry_ is None:  # asks in its own words (VLLMRuntime's `gpu: "1"`): named for its kind
        assert (body["apiVersion"].rpartition("/")[0], body["kind"]) in MAKES_PODS
        assert not found.templates
        return
    # The --kinds entry it prints makes the engine judge the kind, counting the GPUs a person counted.
    kinds = BUILTIN_KINDS.with_extra([entry_])
    assert workload_units(body, NVIDIA_GPU, kinds) == doc["unjudged_gpus"]
    assert sorted(t.pointer for t in pod_templates_of(body, kinds.lookup(body))) == sorted(found.templates)
    assert ("nvidia.com/gpu" in found.resource_names()) == (doc["unjudged_gpus"] > 0)
    decision = evaluate(body, snapshot=dataclasses.replace(snapshot("default"), kinds=kinds), now=NOW,
                        namespace=_namespace(body))
    assert not decision.allowed  # upstream examples carry no FinOps labels


# -- what the engine decides ------------------------------------------------------------------------


def _judged_documents() -> list[Any]:
    return [pytest.param(entry, index, id=_doc_id(entry, index)) for entry, index, _ in _documents()]


def _check_texts(decision: Decision) -> None:
    for violation in decision.all_violations + decision.exempted:
        assert violation.message.strip(), violation
        assert violation.fix.strip(), violation
    for violation in decision.warnings:
        assert render_warning(violation).strip(), violation
    if not decision.allowed:
        assert decision.violations
        denial = render_denial(decision)
        for violation in decision.violations:
            assert violation.message in denial


def _ids(violations: list[Any]) -> Counter[tuple[str, str, str]]:
    return Counter((v.policy, v.rule, v.key) for v in violations)


@pytest.mark.parametrize("policies", list(POLICY_SETS))
@pytest.mark.parametrize(("entry", "index"), _judged_documents())
def test_engine_judges_every_document_without_raising(
    entry: dict[str, Any], index: int, policies: str
) -> None:
    body = _body(entry, index)
    # The file's own ResourceClaim(Template)s are known, as `comptroller check` knows them.
    claims = ClaimIndex(d.body for d in read(entry["file"]).documents)
    snap = dataclasses.replace(snapshot(policies), claims=claims)
    namespace = _namespace(body)
    for mutate in (True, False):
        create = evaluate(body, snapshot=snap, now=NOW, mutate=mutate, namespace=namespace)
        update = evaluate(
            body,
            snapshot=snap,
            now=NOW,
            mutate=mutate,
            operation="UPDATE",
            old_object=body,
            namespace=namespace,
        )
        _check_texts(create)
        _check_texts(update)
        # An object updated to itself adds nothing: UPDATE can only grandfather what CREATE denies.
        assert not _ids(update.violations) - _ids(create.violations)


# -- DRA claims created after their pods ------------------------------------------------------------


ONE_GPU = FinOpsPolicy.from_object({
    "apiVersion": "finops.comptroller.dev/v1alpha1", "kind": "FinOpsPolicy",
    "metadata": {"name": "one-gpu-per-pod"}, "spec": {"gpu": {"maxGPUsPerPod": 1}},
})
"""Strict enough that upstream claims of more than one device are refused, so their fixes run."""


def _claim_documents() -> list[Any]:
    return [
        pytest.param(entry, index, id=_doc_id(entry, index))
        for entry, index, doc in _documents()
        if doc.get("kind") in ("ResourceClaim", "ResourceClaimTemplate")
    ]


@pytest.mark.parametrize("policies", list(POLICY_SETS))
@pytest.mark.parametrize(("entry", "index"), _claim_documents())
def test_a_claim_created_after_the_files_pods_adds_what_they_get_with_it(
    entry: dict[str, Any], index: int, policies: str
) -> None:
    """Each upstream claim judged as if created after its file's pods: the claim webhook denies
    exactly what the pods' own judgments with every claim of the file known add to theirs without
    this one (with one GPU per pod allowed, 3 of the 29 claims are refused, each of several requests; the
    `All` devices one is for admin access, worth 0)."""
    documents = read(entry["file"]).documents
    claim = documents[index].body
    namespace = _namespace(claim)
    base = snapshot(policies)
    strict = dataclasses.replace(base, policies=(*base.policies, ONE_GPU))
    others = ClaimIndex(d.body for i, d in enumerate(documents) if i != index)
    without = dataclasses.replace(strict, claims=others)
    known = dataclasses.replace(strict, claims=ClaimIndex(d.body for d in documents))
    kind, name = claim["kind"], claim["metadata"]["name"]
    pods = [d.body for d in documents if d.body.get("kind") == "Pod" and _namespace(d.body) == namespace]
    decision = judge_claim(claim, pods, snapshot=without, now=NOW, namespace=namespace)
    _check_texts(decision)
    added: Counter[tuple[str, str, str]] = Counter()
    for pod in (p for p in pods if waiting_for(p, kind, name)):
        before = evaluate(pod, snapshot=without, now=NOW, mutate=False, namespace=namespace)
        after = evaluate(pod, snapshot=known, now=NOW, mutate=False, namespace=namespace)
        was = _ids(before.violations)
        added += _ids([v for v in after.violations if (v.policy, v.rule, v.key) not in was
                       or _more_of_what_it_counts(pod, v, without, known)])
    assert _ids(decision.violations) == added


def _more_of_what_it_counts(pod: dict[str, Any], violation: Any, without: Any, known: Any) -> bool:
    """Whether the claim gives the pod more of the GPUs the violated GPU limit or budget counts (an
    instance type the pod had is not the claim's doing, whatever it gives)."""
    if violation.rule == "gpu" and violation.key != "instanceType":
        resources = next(p.spec.gpu.resource_tuple for p in known.policies if p.name == violation.policy)
    elif violation.rule == "budget":
        resources = next(b.spec.resource_tuple for b in known.budgets if b.name == violation.policy)
    else:
        return False
    return workload_gpus(pod, snapshot=known, resources=resources) > workload_gpus(
        pod, snapshot=without, resources=resources
    )


# -- `comptroller check` ----------------------------------------------------------------------------


@pytest.mark.parametrize("policies", ["default", "examples"])
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_check_exits_0_1_or_2_on_every_file(
    entry: dict[str, Any], policies: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = corpus_file(entry["file"])
    args = [arg for p in POLICY_SETS[policies] for arg in ("-p", str(p))]
    code = main(["check", *args, "-o", "json", "--now", NOW_ARG, str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2)
    assert "Traceback" not in err
    assert (code == 2) == bool(entry.get("parse_error")), err
    results = json.loads(out)["results"]
    judged = [d for d in entry.get("documents") or () if "templates" in d]
    assert len(results) == len(judged)
    assert (code == 1) == any(not r["allowed"] for r in results)


# -- the joint fix and `comptroller fix` --------------------------------------------------------------


@pytest.mark.parametrize("policies", list(POLICY_SETS))
def test_every_denied_document_is_admitted_with_its_joint_fix_pasted_once(policies: str) -> None:
    """The denial's one snippet admits the upstream manifest on the first paste (docs/fix-hints.md),
    and its JSON Patch makes exactly the same manifest."""
    snap = snapshot(policies)
    denied = 0
    for entry, index, _ in _documents():
        body = _body(entry, index)
        namespace = _namespace(body)
        decision = evaluate(body, snapshot=snap, now=NOW, namespace=namespace)
        if decision.allowed:
            continue
        denied += 1
        fix = joint_fix(body, snapshot=snap, now=NOW, namespace=namespace)
        fixed = fix.apply()
        assert evaluate(fixed, snapshot=snap, now=NOW, namespace=namespace).allowed, _doc_id(entry, index)
        assert fix.admitted
        assert jsonpatch.apply_patch(body, fix.json_patch()) == fixed
    assert denied >= (100 if "default" in policies else 0)


def test_comptroller_fix_admits_the_whole_corpus_changing_only_what_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`comptroller fix` over a copy of every file, then `comptroller check`: every workload is
    admitted, and across the corpus no line of the upstream files is lost but those whose value the
    fix changes and those of documents rewritten whole (an empty `{}` map to fill)."""
    copies = []
    for entry in ENTRIES:
        if entry.get("parse_error"):
            continue
        target = tmp_path / entry["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(corpus_file(entry["file"]).read_bytes())
        copies.append((entry, target))
    args = ["--now", NOW_ARG, "-p", str(POLICY_SETS["default"][0])]
    assert main(["fix", *args, str(tmp_path)]) == 1  # team names and the like are for people to choose
    capsys.readouterr()
    assert main(["check", *args, "-o", "json", str(tmp_path)]) == 0
    assert all(r["allowed"] for r in json.loads(capsys.readouterr().out)["results"])
    lost = 0
    for entry, target in copies:
        before = corpus_file(entry["file"]).read_text(encoding="utf-8").splitlines()
        after = set(target.read_text(encoding="utf-8").splitlines())
        lost += sum(line not in after for line in before)
    assert lost <= 12, lost
