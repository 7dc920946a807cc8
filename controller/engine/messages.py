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

from controller.engine.api import Decision, Violation

Path = Sequence[str | int]

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./\[\]-]*")
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"})
WARNING_LIMIT = 120


class Commented:
    """A scalar with a trailing `# comment` in the rendered YAML."""

    __slots__ = ("value", "comment")

    def __init__(self, value: Any, comment: str) -> None:
        self.value = value
        self.comment = comment


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


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def fix_tree(entries: Iterable[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge `(path, mapping)` entries into one tree of maps, dotting paths through lists."""
    tree: dict[str, Any] = {}
    for path, mapping in entries:
        last_index = max((i for i, part in enumerate(path) if isinstance(part, int)), default=-1)
        keys = [_dotted(path[: last_index + 1])] if last_index >= 0 else []
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


def render_fix(entries: Iterable[tuple[Path, Mapping[str, Any]]], *, note: str = "") -> str:
    """The YAML snippet for a violation's `fix`, optionally headed by a `# note` line."""
    lines = [f"# {line}" for line in note.splitlines()] if note else []
    lines.extend(to_yaml(fix_tree(entries)))
    return "\n".join(lines)


def location(path: Path) -> str:
    """`spec.template.metadata.labels`-style, for messages."""
    return _dotted(path)


def render_denial(decision: Decision) -> str:
    """The multi-line `status.message` of a denied admission: every violation, each with its fix."""
    kind, namespace, name = (decision.resource.split("/", 2) + ["", ""])[:3]
    target = f"{namespace}/{name}" if namespace else name
    lines = [f"Comptroller denied {kind} {target}:"]
    for violation in decision.violations:
        lines.append(f"- [{violation.policy}/{violation.rule}] {violation.message}")
        if violation.fix:
            lines.append("  fix:")
            lines.extend(f"    {line}" for line in violation.fix.splitlines())
    return "\n".join(lines)


def render_warning(violation: Violation) -> str:
    """One short line for an admission warning (kubectl prints each on its own line)."""
    text = f"{violation.policy}: {violation.summary or violation.message}"
    return text if len(text) <= WARNING_LIMIT else text[: WARNING_LIMIT - 1] + "…"
