"""Rule family `labels`: required labels, their allowed values or pattern, defaults, inheritance.

Judged on each pod template's labels (a Pod's own labels): that is what every pod, and so every
cost tool, will carry. Mutation fills a missing label, per template, from (in order) the
controller's own metadata, the Namespace's labels (`inheritFromNamespace`), then `default`.
Inherited and defaulted labels also go on a controller's own metadata, so `kubectl get -l` and
tools that read the controller find them too; only values the rule accepts are inherited or
defaulted, while a value copied from the controller's metadata is copied as written, so a wrong
value is reported where the user put it rather than silently replaced.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Any

from controller.engine.api import Violation
from controller.engine.messages import Commented, fix_fields, location, shorten
from controller.engine.models import RequiredLabel, is_label_value
from controller.engine.rules import Context
from controller.engine.view import WorkloadView

try:  # The regex parser is private API; hints degrade to a placeholder if it ever moves.
    import re._parser as _sre  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _sre = None

PLACEHOLDER = "set-me"


def mutate(policy: Any, view: WorkloadView, ctx: Context) -> None:
    spec = policy.spec.labels
    if spec is None:
        return
    for rule in spec.required:
        key = rule.key
        added = None
        for index in range(len(view.templates)):
            if key in view.labels_per_template[index]:
                continue
            if not view.is_pod and key in view.meta_labels:
                view.add_template_label(index, key, view.meta_labels[key])
                continue
            value = _inherited_or_default(rule, inherit=spec.inherit_from_namespace, ctx=ctx)
            if value is not None:
                view.add_template_label(index, key, value)
                view.mark_defaulted(key)
                added = value
        if added is not None and not view.is_pod and key not in view.meta_labels:
            view.add_meta_label(key, added)


def _inherited_or_default(rule: RequiredLabel, *, inherit: bool, ctx: Context) -> str | None:
    if inherit:
        value = ctx.namespace_labels.get(rule.key)
        if value is not None and is_label_value(value) and rule.accepts(value):
            return value
    return rule.default


def validate(policy: Any, view: WorkloadView, ctx: Context) -> list[Violation]:
    spec = policy.spec.labels
    if spec is None:
        return []
    if all(map(spec.satisfied_by, view.labels_per_template)):  # the common case, remembered
        return []
    out: list[Violation] = []
    for rule in spec.required:
        out += _violations(policy.name, rule, view, ctx)
    return out


def _violations(policy: str, rule: RequiredLabel, view: WorkloadView, ctx: Context) -> list[Violation]:
    """A missing label and a wrong value of one rule, each naming every template concerned."""
    missing: list[int] = []
    wrong: list[tuple[int, str]] = []
    for index, labels in enumerate(view.labels_per_template):
        value = labels.get(rule.key)
        if value is None:
            missing.append(index)
        elif not rule.accepts(value):
            wrong.append((index, value))
    out = []
    if missing:
        out.append(_missing(policy, rule, view, missing, ctx))
    if wrong:
        out.append(_wrong(policy, rule, view, wrong))
    return out


def _labels_path(view: WorkloadView, index: int) -> tuple[str | int, ...]:
    return (*view.templates[index].path, "metadata", "labels")


def _where(view: WorkloadView, indexes: list[int]) -> str:
    if view.is_pod:
        return ""
    return " in " + ", ".join(location(_labels_path(view, i)) for i in indexes)


def constraint(rule: RequiredLabel) -> str:
    parts = []
    if rule.allowed_values is not None:
        parts.append(f"allowed values: {shorten(rule.allowed_values)}")
    if rule.pattern is not None:
        parts.append(f"must match {rule.pattern}")
    return "; ".join(parts) or "any value"


def _short(rule: RequiredLabel) -> str:
    if rule.allowed_values is not None and len("|".join(rule.allowed_values)) <= 60:
        return f" ({'|'.join(rule.allowed_values)})"
    if rule.pattern is not None and len(rule.pattern) <= 40:
        return f" ({rule.pattern})"
    return ""


def _fix(
    rule: RequiredLabel, view: WorkloadView, indexes: list[int], value: str, *, chosen: bool
) -> dict[str, Any]:
    """`chosen`: the value came from the Namespace, the rule's default or its allowed values; otherwise
    it is a placeholder the rule accepts, and only a person can choose the real one."""
    what = rule.description or f"the workload's {rule.key}"
    shown: Any = Commented(value, rule.description) if rule.description else value
    if value == PLACEHOLDER or not chosen:
        shown = Commented(value, f"you choose: {what}", choose=True)
    return fix_fields((_labels_path(view, i), {rule.key: shown}) for i in indexes)


def _chosen(rule: RequiredLabel, value: str, namespace_value: str | None = None) -> bool:
    return value in (rule.default, namespace_value) or value in (rule.allowed_values or ())


def _missing(
    policy: str, rule: RequiredLabel, view: WorkloadView, indexes: list[int], ctx: Context
) -> Violation:
    about = f" ({rule.description})" if rule.description else ""
    namespace_value = ctx.namespace_labels.get(rule.key)
    value = suggest(rule, namespace_value=namespace_value)
    return Violation(
        policy=policy,
        rule="labels",
        key=rule.key,
        message=f'missing required label "{rule.key}"{about}{_where(view, indexes)}; {constraint(rule)}',
        summary=f"missing label {rule.key}{_short(rule)}",
        **_fix(rule, view, indexes, value, chosen=_chosen(rule, value, namespace_value)),
    )


def _wrong(policy: str, rule: RequiredLabel, view: WorkloadView, wrong: list[tuple[int, str]]) -> Violation:
    values = sorted({value for _, value in wrong})
    shown = ", ".join(f'"{v}"' for v in values)
    where = _where(view, [i for i, _ in wrong])
    value = suggest(rule, wrong=values[0])
    return Violation(
        policy=policy,
        rule="labels",
        key=rule.key,
        message=f'label "{rule.key}" has value {shown}{where}; {constraint(rule)}',
        summary=f"label {rule.key}={values[0]} not allowed{_short(rule)}",
        **_fix(rule, view, [i for i, _ in wrong], value, chosen=_chosen(rule, value)),
    )


def suggest(rule: RequiredLabel, *, wrong: str | None = None, namespace_value: str | None = None) -> str:
    """A value the rule accepts, as close to what the user meant as we can tell."""
    if namespace_value is not None and is_label_value(namespace_value) and rule.accepts(namespace_value):
        return namespace_value
    candidates = [v for v in rule.allowed_values or () if rule.accepts(v)]
    if wrong is not None:
        # A typo (`traning`, `prod`) most likely meant the closest allowed value.
        close = difflib.get_close_matches(wrong, candidates, n=1, cutoff=0.5)
        if not close:
            close = [v for v in candidates if v.startswith(wrong) or wrong.startswith(v)]
        if close:
            return close[0]
    if rule.default is not None:
        return rule.default
    if candidates:
        return candidates[0]
    if rule.accepts(PLACEHOLDER):
        return PLACEHOLDER
    if rule.pattern is not None:
        example = example_for(rule.pattern)
        if example is not None:
            return example
    return PLACEHOLDER


@lru_cache(maxsize=256)
def example_for(pattern: str) -> str | None:
    """The shortest-ish string a simple regex fully matches (`^cc-[0-9]{3}$` -> `cc-000`), or None.

    Remembered per pattern: the patterns are the policies' own, and every denial for a missing
    label asks again (parsing the regex is most of what a denial's fix hints cost)."""
    if _sre is None:
        return None
    try:
        text = _generate(_sre.parse(pattern))
    except (re.error, ValueError, TypeError, IndexError, RecursionError):
        return None
    if text is None or not is_label_value(text) or re.fullmatch(pattern, text) is None:
        return None
    return text


def _generate(items: Any) -> str | None:
    out = []
    for op, arg in items:
        if op is _sre.LITERAL:
            out.append(chr(arg))
        elif op is _sre.ANY:
            out.append("a")
        elif op is _sre.IN:
            char = _one_of(arg)
            if char is None:
                return None
            out.append(char)
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            piece = _generate(sub)
            if piece is None:
                return None
            out.append(piece * max(low, min(1, high)))
        elif op is _sre.SUBPATTERN:
            piece = _generate(arg[-1])
            if piece is None:
                return None
            out.append(piece)
        elif op is _sre.BRANCH:
            piece = _generate(arg[1][0])
            if piece is None:
                return None
            out.append(piece)
        elif op is _sre.AT:
            continue
        else:
            return None
    return "".join(out)


def _one_of(items: Any) -> str | None:
    for op, arg in items:
        if op is _sre.NEGATE:
            return None
        if op is _sre.LITERAL:
            return chr(arg)
        if op is _sre.RANGE:
            return chr(arg[0])
        if op is _sre.CATEGORY:
            return {_sre.CATEGORY_DIGIT: "0", _sre.CATEGORY_WORD: "a"}.get(arg)
    return None
