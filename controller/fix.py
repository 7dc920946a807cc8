"""`comptroller fix FILE...`: write each denied workload's joint fix into its manifest.

The fix is the one the webhook's denial prints (controller.engine.fixing, docs/fix-hints.md),
judged with the same policies and options as `comptroller check`. Only the documents that change
are rewritten, and only the values the fix names: ruamel.yaml's round trip keeps the comments, key
order, quoting and indentation of everything else, and every other document of the file stays
byte for byte. A placeholder only a person can fill in (a team, a cost center) is written with a
`# you choose: ...` comment.

Exit status: 0 when every workload is admitted with nothing left to choose; 1 when a placeholder
was written or a workload is still denied (CI notices); 2 on input errors.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.check import (
    Document,
    document_spans,
    files_under,
    has_content,
    judging_options,
    load_yaml,
    policy_snapshot,
    read_documents,
    workload_problem,
)
from controller.engine import Snapshot, evaluate
from controller.engine.fixing import JointFix, joint_fix, set_value
from controller.engine.messages import scalar
from controller.engine.unjudged import unjudged as find_unjudged
from controller.engine.workloads import BUILTIN_KINDS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="manifest files or folders to fix in place, or - (stdin to stdout)",
    )
    judging_options(parser)
    parser.add_argument("--stdout", action="store_true", help="print the fixed files instead of writing them")


def run(args: argparse.Namespace) -> int:
    return fix_paths(args)


@dataclass
class Outcome:
    """What `fix` did to one file."""

    source: str
    text: str
    fixed: list[str] = field(default_factory=list)
    """`Kind/namespace/name` of each workload whose fix was written."""
    choose: list[str] = field(default_factory=list)
    """Placeholders written, as `Kind/namespace/name: key`."""
    denied: list[str] = field(default_factory=list)
    """Workloads still denied with their fix applied, with what no paste can fix."""
    unjudged: list[str] = field(default_factory=list)
    """Objects of a kind the engine does not know that hold pod templates or ask for accelerators."""


def fix_paths(args: argparse.Namespace) -> int:
    """Fix every file named by `args.paths`; the exit status of `comptroller fix`."""
    errors: list[str] = []
    texts: list[tuple[Path | None, str]] = []
    for path in files_under(args.paths):
        try:
            texts.append((path, sys.stdin.read() if path is None else path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{'<stdin>' if path is None else path}: cannot read: {exc}")
    documents: list[Document] = []
    for path, text in texts:
        inputs = read_documents(["-"], stdin=io.StringIO(text))
        errors += [e.replace("<stdin>", str(path), 1) if path else e for e in inputs.errors]
        documents += inputs.documents
    snapshot = policy_snapshot(args, documents, errors)
    now = args.now or datetime.now(UTC)
    outcomes = []
    for path, text in texts:
        source = "<stdin>" if path is None else str(path)
        outcome = fix_text(
            text, source=source, snapshot=snapshot, now=now, namespace=args.namespace, errors=errors
        )
        outcomes.append(outcome)
        if path is None or getattr(args, "stdout", False):
            sys.stdout.write(outcome.text)
        elif outcome.text != text:
            path.write_text(outcome.text, encoding="utf-8")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    for outcome in outcomes:
        for resource in outcome.fixed:
            print(f"fixed {outcome.source}: {resource}", file=sys.stderr)
        for item in outcome.choose:
            print(f"you choose {outcome.source}: {item} (a placeholder is written)", file=sys.stderr)
        for item in outcome.denied:
            print(f"still denied {outcome.source}: {item}", file=sys.stderr)
        for item in outcome.unjudged:
            print(f"not judged {outcome.source}: {item} (a kind Comptroller does not know; "
                  "`comptroller check` says how to judge it)", file=sys.stderr)
    if errors:
        return 2
    return 1 if any(o.choose or o.denied for o in outcomes) else 0


def fix_text(
    text: str, *, source: str, snapshot: Snapshot, now: datetime, namespace: str, errors: list[str]
) -> Outcome:
    """`text` (one YAML stream) with the joint fix of every denied workload in it written in."""
    outcome = Outcome(source=source, text=text)
    kinds = snapshot.kinds or BUILTIN_KINDS
    pieces: list[str] = []
    last = 0
    for start, end in document_spans(text):
        chunk = text[start:end]
        if not has_content(chunk):
            continue
        try:
            body = load_yaml(chunk)
        except Exception:  # `check` reports what does not parse; nothing to fix in it
            continue
        if not isinstance(body, dict):
            continue
        kind = kinds.lookup(body)
        if kind is None:
            found = find_unjudged(body, kinds=kinds, table=snapshot.equivalence, namespace=namespace)
            if found is not None:
                outcome.unjudged.append(found.resource)
            continue
        if workload_problem(body, kind):
            continue
        ns = (body.get("metadata") or {}).get("namespace") or namespace
        decision = evaluate(body, snapshot=snapshot, now=now, namespace=ns)
        if decision.allowed:
            continue
        fix = joint_fix(body, snapshot=snapshot, now=now, namespace=ns)
        if not fix.admitted:
            reasons = ", ".join(f"{v.policy}/{v.rule}" for v in fix.unresolved)
            outcome.denied.append(f"{decision.resource} ({reasons or 'no fix found'})")
        if not fix.edits:
            continue
        try:
            fixed = write_fix(chunk, fix)
        except Exception as exc:  # a layout the round trip cannot keep: say so, leave the file alone
            errors.append(f"{source}: {decision.resource}: cannot write the fix: {type(exc).__name__}: {exc}")
            continue
        if start and text[start - 1] != "\n" and fixed[:1] not in (" ", "\t", "\n"):
            # The document began on its `---` line (`--- {apiVersion: v1, ...}`) and was written
            # anew: it starts on the next line, or `---apiVersion` would join the two.
            fixed = "\n" + fixed
        pieces += [text[last:start], fixed]
        last = end
        outcome.fixed.append(decision.resource)
        outcome.choose += [f"{decision.resource}: {edit.path[-1]}" for edit in fix.choices]
    outcome.text = "".join([*pieces, text[last:]])
    return outcome


def write_fix(chunk: str, fix: JointFix) -> str:
    """One document's text with the fix's edits made.

    Lines are inserted into (or one value replaced in) the document's own text, at the places
    ruamel.yaml's round-trip parser locates, so everything else stays byte for byte, including
    mixed list indentation no dumper reproduces. Where that cannot be done (a flow-style map, a
    list value to replace), or the result does not read back as the fixed manifest, the document
    goes through ruamel.yaml's round trip instead, which keeps comments, order and quoting."""
    expected = fix.apply()
    try:
        text = _insert_lines(chunk, fix)
        if load_yaml(text) == expected:
            return text
    except _NotInPlace:
        pass
    return _dump_fix(chunk, fix)


class _NotInPlace(Exception):
    """An edit that line insertion cannot make."""


def _insert_lines(chunk: str, fix: JointFix) -> str:
    yaml = round_trip_yaml(chunk)
    document = yaml.load(chunk)
    step, _ = guess_indent(chunk)
    lines = chunk.splitlines(keepends=True)
    replaced: list[tuple[int, int, str]] = []  # (line, column, new scalar)
    added: dict[int, tuple[Any, dict[Any, Any]]] = {}  # id(map) -> (map, keys to add, nested)
    for edit in fix.edits:
        node, depth = document, 0
        for part in edit.path[:-1]:
            child = _child(node, part)
            if child is None:
                break
            node, depth = child, depth + 1
        if depth == len(edit.path) - 1 and _child(node, edit.path[-1]) is not None:
            key = edit.path[-1]
            if not isinstance(node, dict) or isinstance(node[key], dict | list):
                raise _NotInPlace(edit.path)
            line, column = node.lc.value(key)
            replaced.append((line, column, _scalar_text(edit.value)))
            continue
        if not isinstance(node, dict) or any(isinstance(p, int) for p in edit.path[depth:]):
            raise _NotInPlace(edit.path)
        tree = added.setdefault(id(node), (node, {}))[1]
        for part in edit.path[depth:-1]:
            tree = tree.setdefault(part, {})
        tree[edit.path[-1]] = edit
    for line, column, text in sorted(replaced, reverse=True):
        lines[line] = lines[line][:column] + text + _after_scalar(lines[line][column:])
    for at, column, block in sorted(
        (_where_to_insert(node, lines) + (tree,) for node, tree in added.values()), reverse=True
    ):
        lines[at:at] = _block(block, column, step)
    return "".join(lines)


def _child(node: Any, part: str | int) -> Any:
    if isinstance(part, int):
        return node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


def _where_to_insert(node: Any, lines: list[str]) -> tuple[int, int]:
    """`(line, column)` where new keys of a block map go: before its first key, or before its
    second when the first shares its line with a list item's `-`."""
    if node.fa.flow_style() or not node:
        raise _NotInPlace("flow-style or empty map")
    keys = list(node)
    line, column = node.lc.key(keys[0])
    if lines[line][:column].strip():
        if len(keys) < 2:
            raise _NotInPlace("a one-key list item")
        line, column = node.lc.key(keys[1])
    return line, column


def _block(tree: dict[Any, Any], column: int, step: int) -> list[str]:
    out = []
    pad = " " * column
    for key, value in tree.items():
        if isinstance(value, dict):
            out.append(f"{pad}{scalar(key)}:\n")
            out.extend(_block(value, column + step, step))
        else:
            comment = f"  # {value.choose}" if value.choose else ""
            out.append(f"{pad}{scalar(key)}: {_scalar_text(value.value)}{comment}\n")
    return out


def _scalar_text(value: Any) -> str:
    if isinstance(value, dict | list):
        raise _NotInPlace("a map or list value")
    return scalar(value)


def _after_scalar(rest: str) -> str:
    """What follows a one-line scalar at the start of `rest`: its comment and line end."""
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = rest.find(quote, 1)
        while quote == '"' and end > 0 and rest[end - 1] == "\\":
            end = rest.find(quote, end + 1)
        if end < 0:
            raise _NotInPlace("a multi-line quoted scalar")
        return rest[end + 1 :]
    if rest[:1] in ("|", ">", "&", "*", "!", "[", "{"):
        raise _NotInPlace("a block, anchored or tagged scalar")
    match = re.search(r"\s#|\s*$", rest.rstrip("\n"))
    return rest[match.start() :] if match else rest


def _dump_fix(chunk: str, fix: JointFix) -> str:
    """The fix made by a ruamel.yaml round trip of the whole document."""
    yaml = round_trip_yaml(chunk)
    document = yaml.load(chunk)
    for edit in fix.edits:
        _make_room(document, edit.path)
        if not set_value(document, edit.path, edit.value, new_map=_new_map):
            raise ValueError(f"cannot set {'.'.join(map(str, edit.path))}")
        if edit.choose:
            # A comment cannot sit inside `{a: 1, b: 2}`, nor a block map inside a flow one: the
            # maps and lists down to the placeholder are written in block style.
            parent = document
            for part in edit.path[:-1]:
                if parent.fa.flow_style():
                    parent.fa.set_block_style()
                parent = parent[part]
            if parent.fa.flow_style():
                parent.fa.set_block_style()
            parent.yaml_add_eol_comment(f"# {edit.choose}", edit.path[-1])
    out = io.StringIO()
    yaml.dump(document, out)
    # Keep what surrounds the document in the stream (the rest of a `---` line, blank lines).
    lead = chunk[: len(chunk) - len(chunk.lstrip("\n"))]
    trail = chunk[len(chunk.rstrip("\n")) :]
    return lead + out.getvalue().rstrip("\n") + (trail or "\n")


def round_trip_yaml(text: str) -> Any:
    """A ruamel.yaml round-trip loader/dumper set to the document's own indentation."""
    from ruamel.yaml import YAML

    mapping, offset = guess_indent(text)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long strings
    yaml.indent(mapping=mapping, sequence=mapping + offset, offset=offset)
    return yaml


_KEY = re.compile(r"^( *)(?:- +)?[^\s#-][^:#]*:(?:\s|$)")
_ITEM = re.compile(r"^( *)- ")


def guess_indent(text: str) -> tuple[int, int]:
    """`(mapping indent, dash offset)` most used in `text`: how far a nested key sits right of its
    parent, and where a list's `-` sits relative to its parent key (0: `key:` then `- a` below it)."""
    steps: Counter[int] = Counter()
    dashes: Counter[int] = Counter()
    parent: int | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = _ITEM.match(line)
        key = _KEY.match(line)
        if parent is not None and item is not None:
            dashes[len(item.group(1)) - parent] += 1
        elif parent is not None and key is not None and len(key.group(1)) > parent:
            steps[len(key.group(1)) - parent] += 1
        parent = len(key.group(1)) if key is not None and line.rstrip().endswith(":") else None
    mapping = steps.most_common(1)[0][0] if steps else 2
    offset = dashes.most_common(1)[0][0] if dashes else 0
    return mapping, max(offset, 0)


def _new_map() -> Any:
    from ruamel.yaml.comments import CommentedMap

    return CommentedMap()


def _make_room(document: Any, path: tuple[str | int, ...]) -> None:
    """Create a missing `metadata` map first in its parent, where people look for it."""
    node = document
    for part in path[:-1]:
        if part == "metadata" and isinstance(node, dict) and node.get(part) is None:
            if part in node:  # `metadata:` left empty: fill it where it stands
                node[part] = _new_map()
            else:
                node.insert(0, part, _new_map())
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
