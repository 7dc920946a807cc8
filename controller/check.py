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
that does not parse or validate: reported on stderr with its file and document number, while all
other documents are still checked). 2 wins over 1: with bad input the verdict is incomplete.

Imports stay light (no kubernetes, kopf or fastapi): a check of 10,000 manifests is mostly YAML
parsing, done with libyaml's C loader when available.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from controller.engine import Decision, Snapshot, evaluate
from controller.engine.loading import snapshot_from_objects
from controller.engine.messages import render_warning
from controller.engine.timestamps import parse_time
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
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

    @property
    def where(self) -> str:
        return f"{self.source} (document {self.index})"


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
    if "---" not in text:
        return [(0, text)]
    out = []
    start = 0
    # The lookahead keeps content that follows `---` on its line (`--- {a: 1}`) with its document.
    for match in _SEPARATOR.finditer(text):
        out.append((start, text[start : match.start()]))
        start = match.end()
    out.append((start, text[start:]))
    return [(text.count("\n", 0, begin), chunk) for begin, chunk in out if _has_content(chunk)]


def _first_content_line(chunk: str) -> int:
    for number, line in enumerate(chunk.split("\n"), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return number
    return 1


def _has_content(chunk: str) -> bool:
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
            try:
                body = load_yaml(chunk)
            except yaml.YAMLError as exc:
                start = offset + _first_content_line(chunk)
                problem = _yaml_problem(exc, offset)
                out.errors.append(f"{source} (document {index}, from line {start}): invalid YAML: {problem}")
                continue
            if body is None:
                continue
            if not isinstance(body, dict):
                out.errors.append(
                    f"{source} (document {index}): expected a mapping, got {type(body).__name__}"
                )
                continue
            problem = shape_problem(body)
            if problem is not None:
                out.errors.append(f"{source} (document {index}): {problem}")
                continue
            kind = body.get("kind") or ""
            if kind == "List" or (kind.endswith("List") and isinstance(body.get("items"), list)):
                for number, item in enumerate(body.get("items") or (), start=1):
                    problem = shape_problem(item) if isinstance(item, dict) else "is not a mapping"
                    if problem is None:
                        out.documents.append(Document(source, index, item))
                    else:
                        out.errors.append(f"{source} (document {index}): List item {number} {problem}")
                continue
            out.documents.append(Document(source, index, body))
    return out


def shape_problem(body: dict[str, Any]) -> str | None:
    """What makes a document unjudgeable as a Kubernetes object, before any rule reads it: the
    fields every object has, of the wrong type (the API server refuses these too)."""
    for key in ("apiVersion", "kind"):
        if key in body and not isinstance(body[key], str):
            return f"`{key}` must be a string, not {_type_name(body[key])}"
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return f"`metadata` must be a mapping, not {_type_name(metadata)}"
    for key in ("labels", "annotations"):
        values = (metadata or {}).get(key)
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"`metadata.{key}` must be a mapping, not {_type_name(values)}"
        for name, value in values.items():
            if not isinstance(name, str) or not isinstance(value, str):
                shown = f"quote it: \"{value}\"" if isinstance(name, str) else "keys are strings"
                return f"`metadata.{key}.{name}` must be a string ({shown}), not {_type_name(value)}"
    return None


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "a mapping", str: "a string"}.get(type(value), type(value).__name__)


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


def load_yaml(text: str) -> Any:
    """One YAML document, as `yaml.load(text, Loader=CSafeLoader)` returns it, about 25 % faster.

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
        extra.extend(doc.body.get("kinds") or [])
    return BUILTIN_KINDS.with_extra(extra)


# -- judging ---------------------------------------------------------------------------------------


def check_documents(
    documents: Iterable[Document],
    *,
    snapshot: Snapshot,
    now: datetime,
    namespace: str = "default",
    errors: list[str] | None = None,
) -> list[Decision]:
    """A Decision for every supported workload among `documents` (others skipped). A document the
    engine cannot judge is named in `errors` (when given; else the error is raised) and skipped,
    so the others are still checked."""
    kinds = snapshot.kinds or BUILTIN_KINDS
    decisions = []
    for doc in documents:
        if kinds.lookup(doc.body) is None:
            continue
        ns = (doc.body.get("metadata") or {}).get("namespace") or namespace
        try:
            decisions.append(evaluate(doc.body, snapshot=snapshot, now=now, namespace=ns))
        except Exception as exc:  # a shape no rule expected: say where, keep checking the rest
            if errors is None:
                raise
            errors.append(f"{doc.where}: cannot be judged: {type(exc).__name__}: {exc}")
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
    }


def render_json(decisions: list[Decision]) -> str:
    """`{"results": [...]}` with one result per line: greppable, and written by json's C encoder
    (an indented dump goes through its pure-Python one, the slowest part of a 10k check)."""
    if not decisions:
        return '{"results": []}\n'
    rows = ",\n  ".join(json.dumps(result_json(d)) for d in decisions)
    return f'{{"results": [\n  {rows}\n]}}\n'


def render_text(decisions: list[Decision]) -> str:
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
            if violation.fix:
                lines.append("        fix:")
                lines.extend(f"          {line}" for line in violation.fix.splitlines())
        lines.extend(f"      warning: {render_warning(v)}" for v in decision.warnings)
    denied = sum(not d.allowed for d in decisions)
    lines.append(f"{len(decisions)} resources checked: {len(decisions) - denied} admitted, {denied} denied")
    return "\n".join(lines)


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
    base = path.parent
    policy_paths = [base / p for p in spec.get("policies") or [".."]]
    resources = read_documents([base / r for r in spec.get("resources") or ["."]])
    errors += resources.errors
    documents = [d for d in resources.documents if Path(d.source).name != TEST_FILE]
    labels = namespace_labels_from(documents)
    labels.update({k: dict(v) for k, v in (spec.get("namespaceLabels") or {}).items()})
    snapshot, policy_errors = load_snapshot(policy_paths, namespace_labels=labels)
    errors += policy_errors
    now = parse_now(str(spec.get("now"))) if spec.get("now") else datetime.now(UTC)
    decisions = {d.resource: d for d in check_documents(documents, snapshot=snapshot, now=now)}
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
    parser.add_argument(
        "-p",
        "--policies",
        action="append",
        default=[],
        metavar="POLICIES",
        help="policy files or folders (repeatable; default: ./policies/default if it exists)",
    )
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--now", type=parse_now, help="judge as of this RFC 3339 time (default: now)")
    parser.add_argument(
        "--namespace-labels", metavar="FILE", help="namespace -> labels map, or Namespace objects"
    )
    parser.add_argument("--namespace", default="default", help="namespace of documents that name none")
    parser.add_argument(
        "--kinds", metavar="FILE", help="extra workload kinds: {kinds: [{group, kind, templates}]}"
    )
    parser.add_argument(
        "--tests",
        action="store_true",
        help="PATHs hold policy test cases (tests.yaml, Kyverno-style); run them instead",
    )


def run(args: argparse.Namespace) -> int:
    if args.tests:
        return _run_tests(args)
    errors: list[str] = []
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
    inputs = read_documents(args.paths)
    errors += inputs.errors
    namespace_labels = {**namespace_labels_from(inputs.documents), **namespace_labels}
    snapshot, policy_errors = load_snapshot(policy_paths, namespace_labels=namespace_labels, kinds=kinds)
    errors += policy_errors
    decisions = check_documents(
        inputs.documents,
        snapshot=snapshot,
        now=args.now or datetime.now(UTC),
        namespace=args.namespace,
        errors=errors,
    )
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.output == "json":
        sys.stdout.write(render_json(decisions))
    else:
        print(render_text(decisions))
    if errors:
        return 2
    return 1 if any(not d.allowed for d in decisions) else 0


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
