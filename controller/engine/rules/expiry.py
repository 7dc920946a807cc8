"""Rule family `expiry`: `expires_at` required, parseable, in the future, within `maxLifetime`.

Read from the workload's own metadata (annotation, then label), else from its pod template(s)
(see `controller.engine.expiry`). Mutation adds `now + default` as an annotation on the
workload's own metadata when required and missing: the operator terminates the workload, not
its pods, so that is where it looks; the pod template is left alone so a default never triggers
a rollout.

Mutation never sets a default that is already past (an UPDATE of a workload older than
`maxLifetime`); validation reports the missing value instead.

At UPDATE a past `expires_at` is not a violation: the workload is expired and the operator is
about to terminate it; refusing its updates would only block that (and finalizer removal).
`maxLifetime` is measured from `creationTimestamp` when present, else from `now`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from controller.engine.api import Violation
from controller.engine.durations import format_duration
from controller.engine.expiry import (
    ANNOTATION_FORMATS,
    LABEL_FORMATS,
    Source,
    expires_at_in,
    format_annotation,
    format_label,
    parse_expires_at,
)
from controller.engine.messages import fix_fields
from controller.engine.models import ExpirySpec
from controller.engine.rules import Context, when_text
from controller.engine.timestamps import parse_time

FALLBACK_LIFETIME = timedelta(hours=24)


def find(view: Any, key: str) -> tuple[str | None, Source | None, tuple[str | int, ...]]:
    """`(raw value, label|annotation, path of the metadata holding it)` after mutation."""
    raw, source = expires_at_in(view.meta_annotations, view.meta_labels, key=key)
    if source is not None:
        return raw, source, ()
    for index, template in enumerate(view.templates):
        if template.pointer == "":
            continue
        metadata = template.template.get("metadata") or {}
        raw, source = expires_at_in(metadata.get("annotations"), view.labels_per_template[index], key=key)
        if source is not None:
            return raw, source, template.path
    return None, None, ()


def expires_at(view: Any, key: str) -> datetime | None:
    """The workload's parsed `expires_at`, None when unset or unparseable."""
    raw, source, _ = find(view, key)
    if source is None:
        return None
    try:
        return parse_expires_at(raw, source=source)
    except ValueError:
        return None


def created_at(view: Any, now: datetime) -> datetime:
    """When the workload was created; the API server never stamps the future, so a creationTimestamp
    past `now` (a hand-made manifest, fuzzing) counts as `now` rather than overflowing the cap."""
    created = parse_time((view.manifest.get("metadata") or {}).get("creationTimestamp"))
    return min(created, now) if created else now


def mutate(policy: Any, view: Any, ctx: Context) -> None:
    expiry: ExpirySpec | None = policy.spec.expiry
    if expiry is None or expiry.default is None or not expiry.required_for(view.labels()):
        return
    _, source, _ = find(view, expiry.key)
    if source is None:
        moment = _fitting(expiry, created_at(view, ctx.now), ctx.now)
        # A workload already older than maxLifetime (a policy added after it was created) gets no
        # default in the past, which would have the operator end it at once: validation reports it.
        if moment > ctx.now:
            view.add_annotation(expiry.key, format_annotation(moment))


def _fitting(expiry: ExpirySpec, created: datetime, now: datetime) -> datetime:
    """A moment the policy accepts: `now + default` (or the lifetime), capped at creation + maxLifetime,
    to the whole second (truncating keeps it within the cap)."""
    lifetime = expiry.default or expiry.max_lifetime or FALLBACK_LIFETIME
    moment = now + lifetime
    if expiry.max_lifetime is not None:
        moment = min(moment, created + expiry.max_lifetime)
    return moment.replace(microsecond=0)


def validate(policy: Any, view: Any, ctx: Context) -> list[Violation]:
    expiry: ExpirySpec | None = policy.spec.expiry
    if expiry is None:
        return []
    key = expiry.key
    raw, source, path = find(view, key)
    if source is None:
        if not expiry.required_for(view.labels()):
            return []
        when = when_text(expiry.required_when or {}) or "on every matched workload"
        lifetime = (
            f" at most {format_duration(expiry.max_lifetime)} after creation" if expiry.max_lifetime else ""
        )
        return [
            _violation(
                policy.name,
                key,
                f"{key} is required when {when}: set it{lifetime}, as an annotation ({ANNOTATION_FORMATS}) "
                f"or a label ({LABEL_FORMATS})",
                f"{key} required{lifetime}",
                _fix(expiry, "annotation", (), view, ctx.now),
            )
        ]
    try:
        moment = parse_expires_at(raw, source=source)
    except ValueError as exc:
        return [
            _violation(
                policy.name,
                key,
                str(exc),
                f"{key}={raw!r} unparseable",
                _fix(expiry, source, path, view, ctx.now),
            )
        ]
    out = []
    if ctx.operation == "CREATE" and moment <= ctx.now:
        out.append(
            _violation(
                policy.name,
                key,
                f"{key} {format_annotation(moment)} is in the past (now {format_annotation(ctx.now)})",
                f"{key} {format_annotation(moment)} is in the past",
                _fix(expiry, source, path, view, ctx.now),
            )
        )
    if expiry.max_lifetime is not None:
        created = created_at(view, ctx.now)
        if moment - created > expiry.max_lifetime:
            limit = format_duration(expiry.max_lifetime)
            lifetime = format_duration(moment - created)
            out.append(
                _violation(
                    policy.name,
                    key,
                    f"{key} {format_annotation(moment)} is {lifetime} after creation; "
                    f"at most {limit} allowed (until {format_annotation(created + expiry.max_lifetime)})",
                    f"{key} more than {limit} after creation",
                    _fix(expiry, source, path, view, ctx.now),
                )
            )
    return out


def _violation(policy: str, key: str, message: str, summary: str, fix: dict[str, Any]) -> Violation:
    return Violation(policy=policy, rule="expiry", key=key, message=message, summary=summary, **fix)


def _fix(
    expiry: ExpirySpec, source: Source, path: tuple[str | int, ...], view: Any, now: datetime
) -> dict[str, Any]:
    """The `expires_at` to paste: a moment the policy accepts, where the user keeps it."""
    moment = _fitting(expiry, created_at(view, now), now)
    if moment <= now:
        return {
            "fix": "# no expires_at fits: the workload is older than the policy's maxLifetime; recreate it"
        }
    if source == "label":
        return fix_fields([((*path, "metadata", "labels"), {expiry.key: format_label(moment)})])
    return fix_fields([((*path, "metadata", "annotations"), {expiry.key: format_annotation(moment)})])
