"""`comptroller check`: evaluate manifests offline against policy files, for CI
(README.md, "Offline checks in CI").

    comptroller check -p policies/default deploy/            # text, one line per admitted resource
    comptroller check -p policies/ -o json - < manifests.yaml
    comptroller check --tests policies/                      # run the policies' own test cases

Inputs are files, folders (recursively, `*.yaml`, `*.yml`, `*.json`) or `-` for stdin; multi-
document YAML and `kind: List` are unpacked. Without `-p`, `policies/default` is used when it
exists in the current directory (what a CI job checking out this repo layout expects); otherwise
there is nothing to check against and that is bad input. Policy folders may hold anything else
(test resources, READMEs): only FinOpsPolicy, GPUBudget and FinOpsException documents are read.

Namespace documents among the manifests, and `--namespace-labels FILE` (a map of namespace ->
labels, or Namespace objects), provide the labels for `namespaceSelector` and
`inheritFromNamespace`. Documents without a namespace are judged in `--namespace` (`default`),
as `kubectl apply` would put them. Non-workload documents (ConfigMaps, Services) are skipped.

Exit codes: 0 every resource admitted, 1 some resource denied, 2 bad input (a document or policy
that does not parse or validate, or a field the engine reads that has the wrong type: reported on
stderr with its file, document number, first line and the field, while all other documents are
still checked). 2 wins over 1: with bad input the verdict is incomplete.

Imports stay light (no kubernetes, kopf or fastapi): a check of 10,000 manifests is mostly YAML
parsing, done with libyaml's C loader when available.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from controller.engine import Decision, Snapshot, evaluate, fixing
from controller.engine.accelerators import ClaimIndex
from controller.engine.loading import snapshot_from_objects
from controller.engine.messages import dotted, render_joint_fix, render_warning, snippet
from controller.engine.timestamps import parse_time
from controller.engine.unjudged import Unjudged
from controller.engine.unjudged import unjudged as find_unjudged
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry, KindSpec


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML as kubectl reads it: an unquoted timestamp (`expires_at: 2026-11-23`) stays the string
    it is written as (sigs.k8s.io/yaml does so), where PyYAML would make it a datetime that no
    label or annotation can hold."""


Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_yaml_str)
SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_POLICIES = Path("policies/default")
_SEPARATOR = re.compile(r"^---(?=\s|$)", re.MULTILINE)
TEST_FILE = "tests.yaml"


@dataclass
class Document:
    source: str
    """`file.yaml` or `<stdin>`."""
    index: int
    """1-based position of the document in its file."""
    body: Any
    line: int = 1
    """The file's line where the document's content starts."""

    @property
    def where(self) -> str:
        return _where(self.source, self.index, self.line)


def _where(source: str, index: int, line: int) -> str:
    """How every error names a document: `deploy.yaml (document 2, from line 14)`."""
    return f"{source} (document {index}, from line {line})"


@dataclass
class Inputs:
    documents: list[Document] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# -- reading ---------------------------------------------------------------------------------------


def files_under(paths: Iterable[str | Path]) -> Iterator[Path | None]:
    """Files named by `paths`, folders walked recursively in name order; None stands for stdin."""
    for raw in paths:
        if str(raw) == "-":
            yield None
            continue
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            yield path


def split_documents(text: str) -> list[tuple[int, str]]:
    """Split a YAML stream on `---` lines, so one broken document does not hide the others.

    Returns `(line offset, text)` per document, for error messages with file line numbers. Chunks
    holding only blanks and comments (before a leading `---`) are dropped, so document numbers
    count real documents from 1.
    """
    return [
        (text.count("\n", 0, begin), text[begin:end])
        for begin, end in document_spans(text)
        if has_content(text[begin:end])
    ]


def document_spans(text: str) -> list[tuple[int, int]]:
    """`(start, end)` of the text of every chunk between `---` lines, content or not."""
    if "---" not in text:
        return [(0, len(text))]
    out = []
    start = 0
    # The lookahead keeps content that follows `---` on its line (`--- {a: 1}`) with its document.
    for match in _SEPARATOR.finditer(text):
        out.append((start, match.start()))
        start = match.end()
    out.append((start, len(text)))
    return out


def _first_content_line(chunk: str) -> int:
    for number, line in enumerate(chunk.split("\n"), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return number
    return 1


def has_content(chunk: str) -> bool:
    for line in chunk.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return True
    return False


def read_documents(paths: Iterable[str | Path], *, stdin: Any = None) -> Inputs:
    """Every document of every file, `List` items unpacked; parse errors collected, not raised."""
    out = Inputs()
    for path in files_under(paths):
        source = "<stdin>" if path is None else str(path)
        try:
            text = (stdin or sys.stdin).read() if path is None else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.errors.append(f"{source}: cannot read: {exc}")
            continue
        for index, (offset, chunk) in enumerate(split_documents(text), start=1):
            line = offset + _first_content_line(chunk)
            where = _where(source, index, line)
            try:
                body = load_yaml(chunk)
            except yaml.YAMLError as exc:
                out.errors.append(f"{where}: invalid YAML: {_yaml_problem(exc, offset)}")
                continue
            if body is None:
                continue
            if not isinstance(body, dict):
                out.errors.append(f"{where}: expected a mapping, got {_type_name(body)}")
                continue
            problem = shape_problem(body)
            if problem is not None:
                out.errors.append(f"{where}: {problem}")
                continue
            kind = body.get("kind") or ""
            if kind == "List" or (kind.endswith("List") and isinstance(body.get("items"), list)):
                items = body.get("items") or ()
                if not isinstance(items, list):
                    out.errors.append(f"{where}: `items` must be a list, not {_type_name(items)}")
                    continue
                for number, item in enumerate(items, start=1):
                    if not isinstance(item, dict):
                        problem = f"must be a mapping, not {_type_name(item)}"
                    else:
                        problem = shape_problem(item)
                    if problem is None:
                        out.documents.append(Document(source, index, item, line))
                    else:
                        out.errors.append(f"{where}: List item {number} {problem}")
                continue
            out.documents.append(Document(source, index, body, line))
    return out


def shape_problem(body: dict[str, Any]) -> str | None:
    """What makes a document unjudgeable as a Kubernetes object, before any rule reads it: the
    fields every object has, of the wrong type (the API server refuses these too)."""
    for key in ("apiVersion", "kind"):
        if key in body and not isinstance(body[key], str):
            return f"`{key}` must be a string, not {_type_name(body[key])}"
    return _shape(body.get("metadata"), _OBJECT_META, ("metadata",))


def workload_problem(body: dict[str, Any], kind: KindSpec) -> str | None:
    """What the engine reads from a workload, of a type it cannot read: `spec`, the way to each pod
    template, and in each its labels, annotations, containers and their resources, node selector
    and node affinity. (A replica count that is no number is not among them: the engine counts it
    as 1, as the webhook does, see controller/engine/workloads.py `_count`.)"""
    problem = _shape(body.get("spec"), {}, ("spec",))
    for template in kind.templates:
        problem = problem or _template_problem(body, _pointer(template.path), ())
    return problem


_STRINGS = "strings"
"""Schema of a map of strings to strings (labels, annotations, nodeSelector)."""
_OBJECT_META = {
    "name": str,
    "namespace": str,
    "generateName": str,
    "labels": _STRINGS,
    "annotations": _STRINGS,
    "ownerReferences": [{}],
}
_CONTAINER = {"restartPolicy": str, "resources": {"requests": {}, "limits": {}}}
_REQUIREMENT = {"key": str, "operator": str, "values": [str]}
_POD_TEMPLATE = {
    "metadata": _OBJECT_META,
    "spec": {
        "containers": [_CONTAINER],
        "initContainers": [_CONTAINER],
        "nodeSelector": _STRINGS,
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [_REQUIREMENT]}]
                }
            }
        },
    },
}
"""The fields of a pod template (or a Pod) the engine reads, with their types; `{}` is a mapping
of anything, `[x]` a list of x. Fields not listed are not looked at; a null field is absent."""


def _shape(value: Any, schema: Any, path: tuple[str | int, ...]) -> str | None:
    if value is None:
        return None
    if schema is str:
        if isinstance(value, str):
            return None
        return f"`{dotted(path)}` must be a string, not {_type_name(value)}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"`{dotted(path)}` must be a list, not {_type_name(value)}"
        for index, item in enumerate(value):
            if item is None:
                return f"`{dotted((*path, index))}` must not be null"
            problem = _shape(item, schema[0], (*path, index))
            if problem:
                return problem
        return None
    if not isinstance(value, dict):
        return f"`{dotted(path)}` must be a mapping, not {_type_name(value)}"
    if schema == _STRINGS:
        for key, item in value.items():
            if not isinstance(key, str):
                return f"`{dotted(path)}` keys must be strings, not {_type_name(key)}: {key!r}"
            if not isinstance(item, str):
                hint = f' (quote it: "{_yaml_text(item)}")' if isinstance(item, int | float) else ""
                return f"`{dotted((*path, key))}` must be a string{hint}, not {_type_name(item)}"
        return None
    for key, field_schema in schema.items():
        problem = _shape(value.get(key), field_schema, (*path, key))
        if problem:
            return problem
    return None


def _template_problem(node: Any, segments: tuple[str, ...], path: tuple[str | int, ...]) -> str | None:
    """Walk a template pointer (`*`: every item of a list or value of a map) to each pod template."""
    if node is None:
        return None
    if not segments:
        return _shape(node, _POD_TEMPLATE, path)
    children = _children(node, segments[0])
    if children is None:
        wanted = "a list or a mapping" if segments[0] == "*" else "a mapping"
        return f"`{dotted(path)}` must be {wanted}, not {_type_name(node)}"
    for key, child in children:
        problem = _template_problem(child, segments[1:], (*path, key))
        if problem:
            return problem
    return None


def _children(node: Any, segment: str) -> list[tuple[str | int, Any]] | None:
    """What one pointer segment reaches from `node`, as the engine walks it; None when `node`
    cannot have children."""
    if isinstance(node, dict):
        return list(node.items()) if segment == "*" else [(segment, node.get(segment))]
    if isinstance(node, list):
        if segment == "*":
            return list(enumerate(node))
        if segment.isdecimal():
            index = int(segment)
            return [(index, node[index] if index < len(node) else None)]
    return None


def _pointer(pointer: str) -> tuple[str, ...]:
    """A JSON pointer's reference tokens (`/spec/template` -> `("spec", "template")`)."""
    if not pointer:
        return ()
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer.lstrip("/").split("/"))


def _yaml_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a mapping",
        str: "a string",
    }.get(type(value), type(value).__name__)


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


def load_yaml(text: str) -> Any:
    """One YAML document, as `yaml.load(text, Loader=Loader)` returns it, about 25 % faster.

    libyaml parses and composes in C, but PyYAML then constructs objects in Python through
    generators; most nodes of a manifest are plain strings, maps and lists, built here directly.
    Anything else (ints, bools, merge keys, custom tags) goes through the loader's own constructor.
    """
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _build(node, loader, {})
    finally:
        loader.dispose()


def _build(node: Any, loader: Any, memo: dict[int, Any]) -> Any:
    kind = node.__class__
    if kind is yaml.ScalarNode:
        return node.value if node.tag == _STR else loader.construct_object(node, deep=True)
    if id(node) in memo:  # an alias of a node already built
        return memo[id(node)]
    if kind is yaml.MappingNode and node.tag == _MAP:
        out: dict[Any, Any] = {}
        memo[id(node)] = out
        for key, value in node.value:
            if key.tag == _MERGE:
                del memo[id(node)]
                return loader.construct_object(node, deep=True)
            plain = key.__class__ is yaml.ScalarNode and key.tag == _STR
            name = key.value if plain else _build(key, loader, memo)
            built = _build(value, loader, memo)
            try:
                out[name] = built
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key.start_mark
                ) from None
        return out
    if kind is yaml.SequenceNode and node.tag == _SEQ:
        items: list[Any] = []
        memo[id(node)] = items
        items.extend(_build(item, loader, memo) for item in node.value)
        return items
    return loader.construct_object(node, deep=True)


def _yaml_problem(exc: yaml.YAMLError, offset: int) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1 + offset}, column {mark.column + 1}"


def load_snapshot(
    policy_paths: Iterable[str | Path],
    *,
    namespace_labels: dict[str, dict[str, str]] | None = None,
    kinds: KindRegistry | None = None,
    claims: ClaimIndex | None = None,
) -> tuple[Snapshot, list[str]]:
    """Policies, budgets and exceptions found under `policy_paths`, and the errors loading them."""
    inputs = read_documents(policy_paths)
    # Test resources, Namespaces, anything else living beside the policies is skipped.
    where = {id(doc.body): doc.where for doc in inputs.documents}
    snapshot, broken = snapshot_from_objects(
        (doc.body for doc in inputs.documents),
        namespace_labels=namespace_labels,
        kinds=kinds,
        where=lambda body: where[id(body)],
        claims=claims,
    )
    return snapshot, [*inputs.errors, *(f"{at}: {error}" for at, error in broken.items())]


def namespace_labels_from(documents: Iterable[Document]) -> dict[str, dict[str, str]]:
    """Labels of the Namespace objects among `documents`."""
    out = {}
    for doc in documents:
        if doc.body.get("kind") == "Namespace" and doc.body.get("apiVersion") == "v1":
            metadata = doc.body.get("metadata") or {}
            if metadata.get("name"):
                out[metadata["name"]] = dict(metadata.get("labels") or {})
    return out


def read_namespace_labels(path: str) -> dict[str, dict[str, str]]:
    """`--namespace-labels`: a `{namespace: {label: value}}` map, or Namespace objects."""
    inputs = read_documents([path])
    if inputs.errors:
        raise ValueError("; ".join(inputs.errors))
    found = namespace_labels_from(inputs.documents)
    for doc in inputs.documents:
        if "kind" not in doc.body:
            for name, labels in doc.body.items():
                if not isinstance(labels, dict):
                    raise ValueError(f"{doc.where}: labels of namespace {name!r} must be a mapping")
                found[str(name)] = {str(k): str(v) for k, v in labels.items()}
    return found


def read_kinds(path: str) -> KindRegistry:
    """`--kinds`: extra workload kinds, a list of `{group, kind, templates: [{path, replicas}]}`."""
    inputs = read_documents([path])
    if inputs.errors:
        raise ValueError("; ".join(inputs.errors))
    extra = []
    for doc in inputs.documents:
        problem = _shape(doc.body.get("kinds"), _KINDS_SCHEMA, ("kinds",))
        if problem is None:
            try:
                extra.extend(KindSpec.from_config(config) for config in doc.body.get("kinds") or ())
            except KeyError as exc:
                problem = f"every kind needs `{exc.args[0]}`"
            except ValueError as exc:  # no templates, or a path that is no JSON pointer
                problem = str(exc)
        if problem:
            raise ValueError(f"{doc.where}: {problem}")
    return BUILTIN_KINDS.with_extra(extra)


_KINDS_SCHEMA = [
    {"group": str, "kind": str, "scaleReplicas": str, "templates": [{"path": str, "replicas": [str]}]}
]


# -- judging ---------------------------------------------------------------------------------------


def check_documents(
    documents: Iterable[Document],
    *,
    snapshot: Snapshot,
    now: datetime,
    namespace: str = "default",
    errors: list[str] | None = None,
    explain: bool = False,
    unjudged: list[Unjudged] | None = None,
) -> list[Decision]:
    """A Decision for every supported workload among `documents` (others skipped). A workload with
    a field of the wrong type (`workload_problem`), or one the engine fails on, is named in
    `errors` (when given; else ValueError is raised) and skipped, so the others are still checked.
    `explain`: each denial carries its joint fix (`Decision.fix`), as the webhook's message does.
    `unjudged`, when given, gets the objects of other kinds that hold pod templates or ask for
    accelerators (`controller.engine.unjudged`): not judged, and not to be passed over in silence."""
    kinds = snapshot.kinds or BUILTIN_KINDS
    decisions = []
    for doc in documents:
        kind = kinds.lookup(doc.body)
        if kind is None:
            if unjudged is not None:
                found = find_unjudged(doc.body, kinds=kinds, table=snapshot.equivalence, namespace=namespace)
                if found is not None:
                    unjudged.append(found)
            continue
        problem = workload_problem(doc.body, kind)
        if problem is None:
            ns = (doc.body.get("metadata") or {}).get("namespace") or namespace
            try:
                decision = evaluate(doc.body, snapshot=snapshot, now=now, namespace=ns)
                if explain:
                    fixing.explain(decision, doc.body, snapshot=snapshot, now=now, namespace=ns)
                decisions.append(decision)
                continue
            except Exception as exc:  # a shape no check above foresaw: say where, keep checking the rest
                problem = f"cannot be judged (a bug in comptroller): {type(exc).__name__}: {exc}"
        if errors is None:
            raise ValueError(f"{doc.where}: {problem}")
        errors.append(f"{doc.where}: {problem}")
    return decisions


def result_json(decision: Decision) -> dict[str, Any]:
    """One entry of `check -o json`'s `results` (README.md, "Offline checks in CI"), exactly these keys."""
    return {
        "resource": decision.resource,
        "allowed": decision.allowed,
        "violations": [
            {"policy": v.policy, "rule": v.rule, "message": v.message, "fix": v.fix}
            for v in decision.violations
        ],
        "warnings": [render_warning(v) for v in decision.warnings],
        "patch": decision.patch,
        "fix": fix_json(decision.fix),
    }


def fix_json(fix: Any) -> dict[str, Any] | None:
    """A denial's joint fix in `check -o json` (docs/fix-hints.md): whether it admits, the YAML to
    merge, the same as a JSON Patch, the values only a person can choose, what no paste fixes."""
    if fix is None:
        return None
    return {
        "admitted": fix.admitted,
        "yaml": "\n".join(snippet(fix.edits, fix.manifest)),
        "jsonPatch": fix.json_patch(),
        "choose": [{"path": dotted(e.path), "what": e.choose} for e in fix.choices],
        "unresolved": [f"{v.policy}/{v.rule}" for v in fix.unresolved],
    }


def render_json(decisions: list[Decision], unjudged: Sequence[Unjudged] = ()) -> str:
    """`{"results": [...]}` with one result per line: greppable, and written by json's C encoder
    (an indented dump goes through its pure-Python one, the slowest part of a 10k check). Objects
    of kinds the engine does not know that look like workloads follow under `unjudged` (`[]`)."""
    results, skipped = _json_rows(map(result_json, decisions)), _json_rows(map(unjudged_json, unjudged))
    return f'{{"results": {results}, "unjudged": {skipped}}}\n'


def _json_rows(rows: Iterable[dict[str, Any]]) -> str:
    """A JSON list with one item per line, or `[]`."""
    joined = ",\n  ".join(json.dumps(row) for row in rows)
    return f"[\n  {joined}\n]" if joined else "[]"


def unjudged_json(found: Unjudged) -> dict[str, Any]:
    """One entry of `check -o json`'s `unjudged`: the object, what it asks for, and the `--kinds`
    entry that would judge it (null where it holds no pod template)."""
    return {
        "resource": found.resource,
        "apiVersion": found.api_version,
        "accelerators": [{"path": path, "resource": name} for path, name in found.accelerators],
        "podTemplates": list(found.templates),
        "kindsEntry": found.kinds_entry(),
    }


def render_text(decisions: list[Decision], unjudged: Sequence[Unjudged] = ()) -> str:
    lines = []
    for decision in decisions:
        if decision.allowed:
            extra = f"  ({len(decision.warnings)} warning{'s' * (len(decision.warnings) != 1)})"
            lines.append(f"PASS  {decision.resource}{extra if decision.warnings else ''}")
            lines.extend(f"      warning: {render_warning(v)}" for v in decision.warnings)
            continue
        lines.append(f"FAIL  {decision.resource}")
        for violation in decision.violations:
            lines.append(f"      [{violation.policy}/{violation.rule}] {violation.message}")
            if violation.fix and decision.fix is None:
                lines.append("        fix:")
                lines.extend(f"          {line}" for line in violation.fix.splitlines())
        if decision.fix is not None:
            lines.extend(f"      {line}" for line in render_joint_fix(decision.fix))
        lines.extend(f"      warning: {render_warning(v)}" for v in decision.warnings)
    for found in unjudged:
        lines.extend(render_unjudged(found))
    denied = sum(not d.allowed for d in decisions)
    summary = f"{len(decisions)} resources checked: {len(decisions) - denied} admitted, {denied} denied"
    if unjudged:
        summary += f"; {len(unjudged)} not judged (a kind Comptroller does not know)"
    lines.append(summary)
    return "\n".join(lines)


def render_unjudged(found: Unjudged) -> list[str]:
    """`SKIP` and why, what it asks for, and the `--kinds` entry to paste where there is one."""
    asks = ""
    if found.accelerators:
        names = ", ".join(found.resource_names())
        asks = f"; it asks for {names}"
        if not found.templates:
            asks += f" at {', '.join(dict.fromkeys(path for path, _ in found.accelerators))}"
    lines = [
        f"SKIP  {found.resource}: not judged, Comptroller does not know kind {found.kind} "
        f"({found.api_version}){asks}"
    ]
    entry = found.kinds_entry()
    if entry is None:
        lines.append("      it holds no pod template, so no --kinds entry can judge it here")
    else:
        lines.append("      if it is a workload, pass --kinds FILE to judge it here, FILE holding:")
        text = yaml.safe_dump({"kinds": [entry]}, default_flow_style=False, sort_keys=False)
        lines.extend(f"        {line}" for line in text.splitlines())
    lines.append("      at admission, the pods (or Jobs, JobSets) its controller creates are judged instead,")
    lines.append("      and a denial goes to that controller, not to you")
    return lines


# -- policy test cases -----------------------------------------------------------------------------


@dataclass
class CaseResult:
    test_file: str
    resource: str
    passed: bool
    problems: list[str]
    decision: Decision | None = None


def _ids(violations: Iterable[Any]) -> list[str]:
    return sorted(f"{v.policy}/{v.rule}" for v in violations)


def run_test_file(path: Path) -> tuple[list[CaseResult], list[str]]:
    """Run one `tests.yaml` (see policies/README.md for its format); returns results and input errors."""
    errors: list[str] = []
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [], [f"{path}: {exc}"]
    problem = _test_file_problem(spec)
    if problem:
        return [], [f"{path}: {problem}"]
    base = path.parent
    policy_paths = [base / p for p in spec.get("policies") or [".."]]
    resources = read_documents([base / r for r in spec.get("resources") or ["."]])
    errors += resources.errors
    documents = [d for d in resources.documents if Path(d.source).name != TEST_FILE]
    labels = namespace_labels_from(documents)
    labels.update({k: dict(v or {}) for k, v in (spec.get("namespaceLabels") or {}).items()})
    claims = ClaimIndex(d.body for d in documents)
    snapshot, policy_errors = load_snapshot(policy_paths, namespace_labels=labels, claims=claims)
    errors += policy_errors
    now = parse_now(str(spec.get("now"))) if spec.get("now") else datetime.now(UTC)
    judged = check_documents(documents, snapshot=snapshot, now=now, errors=errors)
    decisions = {d.resource: d for d in judged}
    results = []
    for case in spec.get("cases") or ():
        resource = case.get("resource", "")
        decision = decisions.get(resource)
        problems = []
        if decision is None:
            problems.append(
                f"no workload {resource} among the resources (known: {', '.join(sorted(decisions))})"
            )
        else:
            expect = case.get("expect", "admitted")
            got = "admitted" if decision.allowed else "denied"
            if got != expect:
                problems.append(f"expected {expect}, got {got}: {_ids(decision.violations)}")
            for key, found in (
                ("rules", decision.violations),
                ("warnings", decision.warnings),
                ("audit", decision.audit),
                ("exempted", decision.exempted),
            ):
                if key in case and sorted(case[key] or []) != _ids(found):
                    problems.append(f"{key}: expected {sorted(case[key] or [])}, got {_ids(found)}")
            for op in case.get("patch") or ():
                if op not in decision.patch:
                    problems.append(f"patch lacks {op}; patch is {decision.patch}")
        results.append(CaseResult(str(path), resource, not problems, problems, decision))
    return results, errors


_TEST_FILE_SCHEMA = {
    "policies": [str],
    "resources": [str],
    "namespaceLabels": {},
    "cases": [
        {
            "resource": str,
            "expect": str,
            "rules": [str],
            "warnings": [str],
            "audit": [str],
            "exempted": [str],
            "patch": [{}],
        }
    ],
}


def _test_file_problem(spec: Any) -> str | None:
    """What makes a `tests.yaml` unreadable: a field of the wrong type, or a `now` that is no time."""
    if not isinstance(spec, dict):
        return f"expected a mapping, got {_type_name(spec)}"
    problem = _shape(spec, _TEST_FILE_SCHEMA, ())
    for namespace, labels in (spec.get("namespaceLabels") or {}).items():
        problem = problem or _shape(labels, _STRINGS, ("namespaceLabels", str(namespace)))
    if problem is None and spec.get("now") and parse_time(str(spec["now"])) is None:
        problem = f"`now` must be an RFC 3339 time (2026-11-23T18:00:00Z), not {spec['now']!r}"
    return problem


def find_test_files(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for raw in paths:
        path = Path(raw)
        out.extend(sorted(path.rglob(TEST_FILE)) if path.is_dir() else [path])
    return out


# -- command line ----------------------------------------------------------------------------------


def parse_now(value: str) -> datetime:
    moment = parse_time(value)
    if moment is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not an RFC 3339 time (2026-11-23T18:00:00Z)")
    return moment


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="manifest files, folders, or - for stdin")
    judging_options(parser)
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--fix",
        action="store_true",
        help="first write each denial's fix into its file (as comptroller fix does), then check",
    )
    parser.add_argument(
        "--tests",
        action="store_true",
        help="PATHs hold policy test cases (tests.yaml, Kyverno-style); run them instead",
    )


def judging_options(parser: argparse.ArgumentParser) -> None:
    """What `check` and `fix` judge with (policies, time, namespaces, extra kinds)."""
    parser.add_argument(
        "-p",
        "--policies",
        action="append",
        default=[],
        metavar="POLICIES",
        help="policy files or folders (repeatable; default: ./policies/default if it exists)",
    )
    parser.add_argument("--now", type=parse_now, help="judge as of this RFC 3339 time (default: now)")
    parser.add_argument(
        "--namespace-labels", metavar="FILE", help="namespace -> labels map, or Namespace objects"
    )
    parser.add_argument("--namespace", default="default", help="namespace of documents that name none")
    parser.add_argument(
        "--kinds", metavar="FILE", help="extra workload kinds: {kinds: [{group, kind, templates}]}"
    )


def run(args: argparse.Namespace) -> int:
    if args.tests:
        return _run_tests(args)
    if args.fix:
        from controller.fix import fix_paths

        if fix_paths(args) == 2:
            return 2
    errors: list[str] = []
    unjudged: list[Unjudged] = []
    inputs = read_documents(args.paths)
    errors += inputs.errors
    snapshot = policy_snapshot(args, inputs.documents, errors)
    decisions = check_documents(
        inputs.documents,
        snapshot=snapshot,
        now=args.now or datetime.now(UTC),
        namespace=args.namespace,
        errors=errors,
        explain=True,
        unjudged=unjudged,
    )
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.output == "json":
        sys.stdout.write(render_json(decisions, unjudged))
    else:
        print(render_text(decisions, unjudged))
    if errors:
        return 2
    return 1 if any(not d.allowed for d in decisions) else 0


def policy_snapshot(args: argparse.Namespace, documents: Iterable[Document], errors: list[str]) -> Snapshot:
    """The snapshot `check` and `fix` judge with: the policy files (`-p`, else ./policies/default),
    Namespace labels from `--namespace-labels` and the inputs' own Namespaces, and `--kinds`.
    Problems are appended to `errors`."""
    namespace_labels: dict[str, dict[str, str]] = {}
    kinds = None
    try:
        if args.namespace_labels:
            namespace_labels = read_namespace_labels(args.namespace_labels)
        if args.kinds:
            kinds = read_kinds(args.kinds)
    except (ValueError, KeyError, TypeError) as exc:
        errors.append(str(exc))
    policy_paths = args.policies or ([DEFAULT_POLICIES] if DEFAULT_POLICIES.is_dir() else [])
    if not policy_paths:
        errors.append(
            "no policies: pass -p POLICIES (files or folders of FinOpsPolicy/GPUBudget/FinOpsException)"
        )
    namespace_labels = {**namespace_labels_from(documents), **namespace_labels}
    claims = ClaimIndex(d.body for d in documents)
    snapshot, policy_errors = load_snapshot(
        policy_paths, namespace_labels=namespace_labels, kinds=kinds, claims=claims
    )
    errors += policy_errors
    return snapshot


def _run_tests(args: argparse.Namespace) -> int:
    errors: list[str] = []
    results: list[CaseResult] = []
    files = find_test_files(args.paths)
    if not files:
        errors.append(f"no {TEST_FILE} under {', '.join(args.paths)}")
    for path in files:
        found, file_errors = run_test_file(path)
        results += found
        errors += file_errors
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.output == "json":
        payload = [
            {"test": r.test_file, "resource": r.resource, "passed": r.passed, "problems": r.problems}
            for r in results
        ]
        json.dump({"tests": payload}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.test_file}: {r.resource}")
            for problem in r.problems:
                print(f"      {problem}")
        failed = sum(not r.passed for r in results)
        print(f"{len(results)} cases: {len(results) - failed} passed, {failed} failed")
    if errors:
        return 2
    return 1 if any(not r.passed for r in results) else 0
