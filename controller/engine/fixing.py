"""The joint fix: one set of changes that makes a denied workload admitted on the first paste.

Each violation knows its own fix (`Violation.edits`), but fixes interact: a label changes which
allowlist, `requiredWhen` and budget apply, and a new label can change which policies match. So
the fix is worked out for the whole decision, as a person pasting it would meet it: apply the
edits to a copy, judge again (mutation included, as the two webhooks will), and repeat until the
copy is admitted or a round adds nothing. Label edits go first in a round, since every other
rule reads the labels; the rest are worked out again under the labels they will meet.

Where a required label the manifest leaves out takes one of a few values (`environment`), each
value is tried, and the fix that keeps most of what the user wrote wins: a `p5.48xlarge` pin with
no `environment` leads to `environment: production`, not to another instance type. A value only
a person can choose (a team, a cost center) is a marked placeholder the rule accepts; what nothing
pasteable can fix (a spent budget) is left in `unresolved`. docs/fix-hints.md is the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controller.engine.api import Decision, Edit, Snapshot, Violation
from controller.engine.evaluation import evaluate, matching_policies
from controller.engine.view import WorkloadView, defaulted_labels
from controller.engine.workloads import BUILTIN_KINDS, is_map, pointer_of

MAX_ROUNDS = 6
MAX_CANDIDATES = 24
"""Label values tried at most, over all labels: each costs a few evaluations, on the deny path only."""

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class JointFix:
    """What to change in a manifest so that every rule admits it together."""

    edits: tuple[Edit, ...]
    """In the order they were found; one per path."""
    admitted: bool
    """Whether the manifest with every edit applied is admitted."""
    unresolved: tuple[Violation, ...] = ()
    """Enforced violations still there after the edits: nothing to paste fixes them."""
    manifest: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The manifest the edits apply to (for the snippet's list items and the JSON Patch)."""

    @property
    def choices(self) -> tuple[Edit, ...]:
        """Placeholders only a person can fill in."""
        return tuple(e for e in self.edits if e.choose)

    def apply(self) -> dict[str, Any]:
        """A copy of the manifest with the edits applied."""
        return apply_edits(self.manifest, self.edits)

    def json_patch(self) -> list[dict[str, Any]]:
        """The edits as an RFC 6902 JSON Patch against the manifest."""
        return json_patch(self.manifest, self.edits)


def explain(decision: Decision, manifest: Mapping[str, Any], *, aliases: bool = True, **how: Any) -> Decision:
    """`decision` with its joint fix attached when it is a denial (`how`: as given to `evaluate`;
    `mutate` is ignored, the fix is judged as the webhooks judge a pasted manifest; `aliases`: as
    `joint_fix` takes it)."""
    if not decision.allowed:
        how.pop("mutate", None)
        decision.fix = joint_fix(manifest, aliases=aliases, **how)
    return decision


def joint_fix(
    manifest: Mapping[str, Any],
    *,
    snapshot: Snapshot,
    now: datetime,
    namespace: str | None = None,
    operation: str = "CREATE",
    old_object: Mapping[str, Any] | None = None,
    gates_owned: frozenset[str] | None = None,
    aliases: bool = True,
) -> JointFix:
    """The fix for the whole decision on `manifest`, judged as `evaluate` judges it (mutation first).

    `aliases=False` says no map or list appears twice in `manifest`, as in parsed JSON (an
    AdmissionReview): the copies judged then share what no edit touches without looking for YAML
    aliases first, a walk of the whole manifest that costs a denial a sixth of its time."""
    judge = _Judge(
        manifest, snapshot=snapshot, now=now, namespace=namespace, operation=operation, old=old_object,
        gates_owned=gates_owned,
    )
    if not aliases:
        judge.shared = True
    best = judge.converge({})
    if not (best.admitted and not _overwritten(manifest, best.edits)):
        ranked = [(_score(manifest, best), best)]
        for order, start in enumerate(_label_candidates(manifest, snapshot, now, namespace)):
            found = judge.converge(start)
            ranked.append(((*_score(manifest, found)[:-1], order + 1), found))
        best = min(ranked, key=lambda item: item[0])[1]
    edits = _payers_choose(best.edits, payer_keys(snapshot), old_object)
    return replace(best, manifest=manifest, edits=edits)


def payer_keys(snapshot: Snapshot) -> frozenset[str]:
    """Label keys GPUBudgets select on (`team`, `cost_center`): their value decides who pays."""
    keys: set[str] = set()
    for budget in snapshot.budgets:
        compiled = budget.spec.selector.compiled
        keys.update(key for key, _ in compiled.match_labels)
        keys.update(key for key, _, _ in compiled.expressions)
    return frozenset(keys)


def _payers_choose(
    edits: tuple[Edit, ...], payers: frozenset[str], old: Mapping[str, Any] | None
) -> tuple[Edit, ...]:
    """A label that decides which budget pays is the user's to choose, even where the rule's allowed
    values gave a valid one: the fix keeps it as a marked placeholder. Not where the fix puts back
    what the object had before the update (a pod keeps the budget it was created under)."""
    if not payers:
        return edits
    return tuple(
        replace(edit, note="", choose=f"you choose: {edit.path[-1]} decides which GPUBudget pays")
        if not edit.choose
        and edit.path[-1] in payers
        and edit.path[-3:-1] == ("metadata", "labels")
        and not _had(old, edit)
        else edit
        for edit in edits
    )


def _had(old: Mapping[str, Any] | None, edit: Edit) -> bool:
    """Whether the object before the update had the edit's value at its path."""
    found, value = lookup(old, edit.path)
    return found and value is not None and value == edit.value


class _Judge:
    def __init__(self, manifest: Mapping[str, Any], **how: Any) -> None:
        self.manifest = manifest
        self.how = how
        self.shared: bool | None = None
        """Whether the copies judged may share maps and lists with the manifest (None: not known yet)."""

    def apply(self, manifest: Mapping[str, Any], edits: Any) -> dict[str, Any]:
        """The manifest with the edits made, to judge. The copies are only read (by `evaluate`):
        they share what no edit touches with the manifest, unless a map or list appears in it twice
        (a YAML alias), where only a deep copy gives every appearance the edit."""
        if self.shared is None:
            self.shared = not _aliased(self.manifest)
        return with_edits(manifest, edits) if self.shared else apply_edits(manifest, edits)

    def decide(self, manifest: Mapping[str, Any]) -> Decision:
        how = self.how
        return evaluate(
            manifest,
            snapshot=how["snapshot"],
            now=how["now"],
            namespace=how["namespace"],
            operation=how["operation"],
            old_object=how["old"],
            gates_owned=how["gates_owned"],
        )

    def converge(self, start: dict[Path, Edit]) -> JointFix:
        edits = dict(start)
        current = self.apply(self.manifest, edits.values()) if edits else self.manifest
        decision: Decision | None = None
        for _ in range(MAX_ROUNDS):
            if decision is None:
                decision = self.decide(current)
            if decision.allowed:
                return JointFix(tuple(edits.values()), admitted=True)
            found = _round_edits(decision.violations)
            new = {p: e for p, e in found.items() if p not in edits or edits[p].value != e.value}
            if not new:
                break
            edits.update(new)
            current = self.apply(self.manifest, edits.values())
            decision = None
        if decision is None:
            decision = self.decide(current)
        unresolved = tuple(v for v in decision.violations if not v.edits)
        if decision.allowed:
            return JointFix(tuple(edits.values()), admitted=True)
        return JointFix(
            tuple(edits.values()), admitted=False, unresolved=unresolved or tuple(decision.violations)
        )


def _round_edits(violations: list[Violation]) -> dict[Path, Edit]:
    """This round's edits: the labels ones alone when there are any (every other rule reads the
    labels, so its fix is worked out again under the new ones); the first edit of a path wins."""
    labels = [v for v in violations if v.rule == "labels" and v.edits]
    out: dict[Path, Edit] = {}
    for violation in labels or violations:
        for edit in violation.edits:
            out.setdefault(edit.path, edit)
    return out


def _label_candidates(
    manifest: Mapping[str, Any], snapshot: Snapshot, now: datetime, namespace: str | None
) -> list[dict[Path, Edit]]:
    """For each required label with a few allowed values that some pod template leaves out, one
    start per value: that label set on every template missing it."""
    kinds = snapshot.kinds or BUILTIN_KINDS
    spec = kinds.lookup(manifest)
    if spec is None:
        return []
    ns = namespace or (manifest.get("metadata") or {}).get("namespace") or ""
    view = WorkloadView(manifest, spec, namespace=ns)
    defaulted = view.defaulted()
    starts: list[dict[Path, Edit]] = []
    # Who pays is never chosen to make a workload fit: no trying another team's budget.
    seen: set[str] = set(payer_keys(snapshot))
    for match in matching_policies(manifest, snapshot=snapshot, now=now, namespace=namespace):
        labels = match.policy.spec.labels
        if labels is None or "labels" in match.waived:
            continue
        for rule in labels.required:
            values = [v for v in rule.allowed_values or () if rule.accepts(v)]
            if rule.key in seen or len(values) < 2:
                continue
            seen.add(rule.key)
            # Left out by the user, or filled in by the mutating webhook before this judgement
            # (the validating webhook sees the mutated object): either way, not the user's choice.
            chosen_for_them = rule.key in defaulted
            missing = [
                t
                for t, own in zip(view.templates, view.labels_per_template, strict=True)
                if rule.key not in own or chosen_for_them
            ]
            if not missing:
                continue
            for value in values:
                if len(starts) >= MAX_CANDIDATES:
                    return starts
                note = f"one of: {', '.join(values)}"
                starts.append(
                    {
                        path: Edit(path, value, note=note)
                        for path in ((*t.path, "metadata", "labels", rule.key) for t in missing)
                    }
                )
    return starts


def _score(manifest: Mapping[str, Any], fix: JointFix) -> tuple[int, ...]:
    """Lower is better: admitted, fewest placeholders, fewest of the user's values changed, fewest
    edits; the last place is the candidate's order (the rules' own suggestion first)."""
    return (
        0 if fix.admitted else 1,
        len(fix.unresolved),
        len(fix.choices),
        _overwritten(manifest, fix.edits),
        len(fix.edits),
        0,
    )


def _overwritten(manifest: Mapping[str, Any], edits: tuple[Edit, ...]) -> int:
    """How many edits change a value the user wrote (labels the mutating webhook filled in are not)."""
    chosen = defaulted_labels((manifest.get("metadata") or {}).get("annotations"))
    count = 0
    for edit in edits:
        if len(edit.path) >= 3 and edit.path[-3:-1] == ("metadata", "labels") and edit.path[-1] in chosen:
            continue
        found, value = lookup(manifest, edit.path)
        if found and value is not None and value != edit.value:
            count += 1
    return count


def lookup(document: Any, path: Path) -> tuple[bool, Any]:
    """`(True, value)` at `path` in a document, or `(False, None)` when it is not there."""
    node = document
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                return False, None
            node = node[part]
        else:
            if not isinstance(node, Mapping) or part not in node:
                return False, None
            node = node[part]
    return True, node


def apply_edits(manifest: Mapping[str, Any], edits: Any) -> dict[str, Any]:
    """A deep copy of `manifest` with each edit's value set; missing (or null) maps on the way are
    created. An edit through a list item that is not there is skipped."""
    fixed: dict[str, Any] = copy.deepcopy(dict(manifest))
    for edit in edits:
        set_value(fixed, edit.path, copy.deepcopy(edit.value), new_map=dict)
    return fixed


def with_edits(manifest: Mapping[str, Any], edits: Any) -> dict[str, Any]:
    """`apply_edits` without the deep copy, for reading only: the maps and lists each edit goes
    through are copied (each once), everything else, and the values set, are `manifest`'s own. A
    denial's joint fix judges a few such copies of a whole manifest to change a label or two.

    Equal to `apply_edits` when no map or list appears twice in `manifest` (see `_aliased`)."""
    fixed = dict(manifest)
    owned = {id(fixed)}
    for edit in edits:
        set_value(fixed, edit.path, edit.value, new_map=dict, owned=owned)
    return fixed


def _aliased(document: Any) -> bool:
    """Whether a map or list appears at two places in `document` (YAML anchors and aliases)."""
    seen: set[int] = set()
    stack = [document]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        for child in node.values() if is_map(node) else node:
            # By concrete type first (no ABC check): parsed JSON is dicts, lists and scalars.
            kind = type(child)
            if kind is dict or kind is list or (kind not in _SCALARS and isinstance(child, Mapping | list)):
                stack.append(child)
    return False


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _own(parent: Any, key: Any, child: Any, owned: set[int] | None) -> Any:
    """`parent[key]`, copied into `parent` first unless the edited document already owns it."""
    if owned is None or id(child) in owned or not isinstance(child, dict | list):
        return child
    copied = dict(child) if isinstance(child, dict) else list(child)
    parent[key] = copied
    owned.add(id(copied))
    return copied


def set_value(
    document: Any, path: Path, value: Any, *, new_map: Any, owned: set[int] | None = None
) -> bool:
    """Set `value` at `path` in a nested document in place (`new_map()` makes missing maps, so a
    round-trip YAML document gets its own map type). False when the path runs through a list item
    that does not exist, or through a scalar.

    `owned`: the ids of the maps and lists `document` owns; the others on the path are shared with
    another document, and are copied before they change (`with_edits`)."""
    node = document
    for part, following in zip(path, path[1:], strict=False):
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                return False
            node = _own(node, part, node[part], owned)
            continue
        if not isinstance(node, dict):
            return False
        child = node.get(part)
        if child is None:
            if isinstance(following, int):
                return False
            child = node[part] = new_map()
            if owned is not None:
                owned.add(id(child))
        node = _own(node, part, child, owned)
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not -len(node) <= last < len(node):
            return False
        node[last] = value
        return True
    if not isinstance(node, dict):
        return False
    node[last] = value
    return True


def json_patch(manifest: Mapping[str, Any], edits: tuple[Edit, ...]) -> list[dict[str, Any]]:
    """RFC 6902 operations that make the edits on `manifest`: `add` of each value where its parent
    exists (on an object member `add` replaces), else of the whole missing map, built once."""
    ops: list[dict[str, Any]] = []
    made: dict[Path, dict[str, Any]] = {}
    for edit in edits:
        path = edit.path
        depth = len(path)
        # The longest prefix whose node is a map or list already in the manifest.
        while depth > 0:
            found, node = lookup(manifest, path[: depth - 1])
            if found and isinstance(node, Mapping | list):
                break
            depth -= 1
        if depth == len(path):
            ops.append({"op": "add", "path": pointer_of(path), "value": edit.value})
            continue
        top = path[:depth]
        value = made.get(top)
        if value is None:
            value = made[top] = {}
            ops.append({"op": "add", "path": pointer_of(top), "value": value})
        set_value(value, path[depth:], edit.value, new_map=dict)
    return ops
