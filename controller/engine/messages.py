"""What people read: denial text, one-line warnings, and the YAML fix snippets in violations.

A fix is YAML to merge into the manifest. Nested maps from the top (`metadata: labels: ...`)
where the path holds only map keys; where it goes through a list, the part up to the last list
index is written as one dotted key (`spec.replicatedJobs[0].template:`) with the rest nested
below, since YAML cannot address a list element. The test suite applies every fix to its failing
manifest and checks that the engine then admits it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.engine.api import Decision, Edit, Violation

Path = Sequence[str | int]

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./\[\]-]*")
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"})
WARNING_LIMIT = 120
WIDTH = 100
"""The fix block of a denial stays within this many columns (one violation is one line, so each
stays greppable; a JSON Patch operation is one line, so it stays one paste)."""


class Commented:
    """A scalar with a trailing `# comment` in the rendered YAML; `choose`: only a person can pick
    the value (the scalar is a placeholder the rule accepts)."""

    __slots__ = ("value", "comment", "choose")

    def __init__(self, value: Any, comment: str, *, choose: bool = False) -> None:
        self.value = value
        self.comment = comment
        self.choose = choose


def scalar(value: Any) -> str:
    """A YAML scalar that reads back as the same string or number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)


def dotted(path: Path) -> str:
    """`spec.template.spec.containers[0].resources`; a key with a control character or a space in
    it quoted (`metadata.annotations["a\\r"]`), so a message naming it stays on its one line."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isprintable() or not part or any(c.isspace() for c in part):
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out


def fix_tree(entries: Iterable[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge `(path, mapping)` entries into one tree of maps, dotting paths through lists."""
    tree: dict[str, Any] = {}
    for path, mapping in entries:
        last_index = max((i for i, part in enumerate(path) if isinstance(part, int)), default=-1)
        keys = [dotted(path[: last_index + 1])] if last_index >= 0 else []
        keys += [str(part) for part in path[last_index + 1 :]]
        node = tree
        for key in keys:
            node = node.setdefault(key, {})
        node.update(mapping)
    return tree


def to_yaml(tree: Mapping[str, Any], indent: int = 0) -> list[str]:
    lines = []
    pad = "  " * indent
    for key, value in tree.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{scalar(key)}:")
            lines.extend(to_yaml(value, indent + 1))
        elif isinstance(value, Commented):
            lines.append(f"{pad}{scalar(key)}: {scalar(value.value)}  # {value.comment}")
        else:
            lines.append(f"{pad}{scalar(key)}: {scalar(value)}")
    return lines


def edits_of(entries: Iterable[tuple[Path, Mapping[str, Any]]]) -> tuple[Edit, ...]:
    """The `(path, mapping)` entries of a fix as one Edit per value (nested maps flattened)."""
    out: list[Edit] = []

    def walk(path: tuple[str | int, ...], mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                walk((*path, key), value)
            elif isinstance(value, Commented):
                choose = value.comment if value.choose else ""
                out.append(
                    Edit((*path, key), value.value, note="" if choose else value.comment, choose=choose)
                )
            else:
                out.append(Edit((*path, key), value))

    for path, mapping in entries:
        walk(tuple(path), mapping)
    return tuple(out)


def fix_fields(entries: Iterable[tuple[Path, Mapping[str, Any]]], *, note: str = "") -> dict[str, Any]:
    """`fix` (the snippet) and `edits` (the same as data) of a Violation, from one set of entries."""
    entries = list(entries)
    return {"fix": render_fix(entries, note=note), "edits": edits_of(entries)}


def render_fix(entries: Iterable[tuple[Path, Mapping[str, Any]]], *, note: str = "") -> str:
    """The YAML snippet for a violation's `fix`, optionally headed by a `# note` line."""
    lines = [f"# {line}" for line in note.splitlines()] if note else []
    lines.extend(to_yaml(fix_tree(entries)))
    return "\n".join(lines)


def location(path: Path) -> str:
    """`spec.template.metadata.labels`-style, for messages."""
    return dotted(path)


def render_denial(decision: Decision) -> str:
    """The multi-line `status.message` of a denied admission: every violation, then one fix for them
    all (`decision.fix`, docs/fix-hints.md). Without one, each violation's own fix follows it."""
    fix = decision.fix
    kind, namespace, name = (decision.resource.split("/", 2) + ["", ""])[:3]
    target = f"{namespace}/{name}" if namespace else name
    lines = [f"Comptroller denied {kind} {target}:"]
    for violation in decision.violations:
        lines.append(f"- [{violation.policy}/{violation.rule}] {violation.message}")
        if violation.fix and fix is None:
            lines.append("  fix:")
            lines.extend(f"    {line}" for line in violation.fix.splitlines())
    if fix is not None:
        lines.extend(render_joint_fix(fix))
    return "\n".join(lines)


def gpus_text(count: float) -> str:
    """A GPU count as a person reads it: `1 GPU`, `8 GPUs`, `0.43 GPU-equivalents` (a MIG slice)."""
    if abs(count - round(count)) < 1e-9:
        whole = round(count)
        return f"{whole} GPU" if whole == 1 else f"{whole} GPUs"
    return f"{count:.3g} GPU-equivalents"


def shorten(values: Sequence[str], limit: int = 6) -> str:
    """`a, b, c` or, for a long list, its first `limit` values and how many more."""
    shown = ", ".join(values[:limit])
    return shown if len(values) <= limit else f"{shown} and {len(values) - limit} more"


def render_joint_fix(fix: Any, *, file: str = "FILE") -> list[str]:
    """The joint fix as people read it: one YAML snippet to merge into the manifest; where it goes
    through a list, also a `kubectl patch --local` line with a JSON Patch, whose paths name list
    items exactly; then what only a person can choose, and what no paste can fix."""
    lines: list[str] = []
    if fix.edits:
        outcome = "admitted with it" if fix.admitted else "still denied with it, see below"
        lines.append(f"fix ({outcome}), to merge into the manifest:")
        lines.extend(f"  {line}" for line in snippet(fix.edits, fix.manifest))
        if any(isinstance(part, int) for edit in fix.edits for part in edit.path):
            ops = [json.dumps(op) for op in fix.json_patch()]
            lines.append("or, exactly (JSON Patch paths name list items by index):")
            lines.append(f"  kubectl patch --local -f {file} --type=json -o yaml -p '[")
            lines.extend(f"    {op.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}," for op in ops)
            lines[-1] = lines[-1][:-1]
            lines.append("  ]'")
    choices = list(dict.fromkeys(str(edit.path[-1]) for edit in fix.choices))
    if choices:
        lines.append(f"you choose: {', '.join(choices)} (placeholders marked above; only you know them)")
    for violation in fix.unresolved:
        hint = " ".join(
            line.lstrip("# ").strip() for line in violation.fix.splitlines() if line.startswith("#")
        )
        lines.append(f"no paste fixes [{violation.policy}/{violation.rule}]" + (f": {hint}" if hint else ""))
    return lines


def snippet(edits: Iterable[Edit], manifest: Mapping[str, Any]) -> list[str]:
    """Edits as one nested YAML mapping. A list item is written as a list entry holding only the
    changes, headed by its identifying field (`name`, `groupName`, `key`) from the manifest and a
    comment with its index: YAML cannot address a list element, so this is for finding it; merge
    tools replace whole lists, which is why the JSON Patch comes with it."""
    tree: dict[Any, Any] = {}
    for edit in edits:
        node = tree
        for part in edit.path[:-1]:
            node = node.setdefault(part, {})
        node[edit.path[-1]] = edit
    return _snippet_lines(tree, manifest, 0)


_ID_FIELDS = ("name", "groupName", "key", "replicaType")


def _snippet_lines(tree: Mapping[Any, Any], original: Any, indent: int) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for key, sub in tree.items():
        here = original.get(key) if isinstance(original, Mapping) else None
        if isinstance(sub, Edit):
            lines.append(f"{pad}{scalar(key)}: {_value(sub.value)}{_comment(sub)}")
        elif sub and all(isinstance(k, int) for k in sub):
            lines.append(f"{pad}{scalar(key)}:")
            for index, item_tree in sub.items():
                item = here[index] if isinstance(here, list) and -len(here) <= index < len(here) else None
                ident = next(
                    (f for f in _ID_FIELDS if isinstance(item, Mapping) and _is_scalar(item.get(f))), None
                )
                body = _snippet_lines(item_tree, item, indent + 2)
                if isinstance(item, Mapping) and ident is not None and ident not in item_tree:
                    lines.append(f"{pad}- {scalar(ident)}: {scalar(item[ident])}  # item {index}")
                else:
                    lines.append(f"{pad}-  # item {index}")
                lines.extend(body)
        else:
            lines.append(f"{pad}{scalar(key)}:")
            lines.extend(_snippet_lines(sub, here, indent + 2))
    return lines


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value)
    return scalar(value)


def _comment(edit: Edit) -> str:
    if edit.choose:
        return f"  # {edit.choose}"
    return f"  # {edit.note}" if edit.note else ""


def render_warning(violation: Violation) -> str:
    """One short line for an admission warning (kubectl prints each on its own line)."""
    text = f"{violation.policy}: {violation.summary or violation.message}"
    return text if len(text) <= WARNING_LIMIT else text[: WARNING_LIMIT - 1] + "…"
