"""The `expires_at` convention (docs/crds.md#workload-conventions): where it is read from and
which formats it takes.

Annotations hold RFC 3339 (`2026-11-23T18:00:00Z`) or a date (`2026-11-23`, midnight UTC).
Label values cannot hold `:`, so labels hold a date, `2026-11-23T18-00-00Z`, or Unix seconds.
Annotations accept the label formats too, so moving a value from a label to an annotation never
breaks it. Every parsed time is timezone-aware UTC.

The operator's expiry sweep and the engine's expiry rule both read through `expires_at_of`,
so they never disagree on when a workload expires. Budgets project a workload to its expiry under
the key the policies matching it use (`projection_key`): admission and the operator's queue both
ask it, so they reserve up to the same time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from controller.constants import DEFAULT_EXPIRY_KEY

Source = Literal["label", "annotation"]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_LABEL_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2})-(\d{2})-(\d{2})Z")
_UNIX = re.compile(r"\d{1,12}")

LABEL_FORMATS = "a date (2026-11-23), 2026-11-23T18-00-00Z, or Unix seconds (1795456800)"
ANNOTATION_FORMATS = (
    "RFC 3339 (2026-11-23T18:00:00Z), a date (2026-11-23), 2026-11-23T18-00-00Z or Unix seconds"
)


def parse_expires_at(value: object, *, source: Source) -> datetime:
    """Parse an `expires_at` value read from a label or an annotation; ValueError names the formats."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        if source == "annotation" and _RFC3339.fullmatch(text):
            # fromisoformat takes at most 6 fractional digits; RFC 3339 allows more.
            text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("z", "Z"))
            return datetime.fromisoformat(text).astimezone(UTC)
        if match := _DATE.fullmatch(text):
            year, month, day = map(int, match.groups())
            return datetime(year, month, day, tzinfo=UTC)
        if match := _LABEL_TIME.fullmatch(text):
            year, month, day, hour, minute, second = map(int, match.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        if _UNIX.fullmatch(text):
            return datetime.fromtimestamp(int(text), tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"{value!r} is not a valid time ({exc})") from None
    accepted = LABEL_FORMATS if source == "label" else ANNOTATION_FORMATS
    raise ValueError(f"{value!r} is not a valid expires_at {source}; use {accepted}")


def format_annotation(moment: datetime) -> str:
    """RFC 3339 in UTC to the second: `2026-11-23T18:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_label(moment: datetime) -> str:
    """A label-safe time in UTC to the second: `2026-11-23T18-00-00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")


def read_expires_at(metadata: Mapping[str, Any] | None, *, key: str) -> tuple[str | None, Source | None]:
    """The raw value and where it was found in one object's metadata."""
    if not metadata:
        return None, None
    return expires_at_in(metadata.get("annotations"), metadata.get("labels"), key=key)


def expires_at_in(
    annotations: Mapping[str, Any] | None, labels: Mapping[str, Any] | None, *, key: str
) -> tuple[str | None, Source | None]:
    """The raw value and where it was found; an annotation wins over a label of the same key."""
    if annotations and key in annotations:
        return annotations[key], "annotation"
    if labels and key in labels:
        return labels[key], "label"
    return None, None


def expires_at_of(
    manifest: Mapping[str, Any], *, key: str, kinds: Any = None
) -> tuple[datetime | None, str | None]:
    """When a workload expires: `(time, None)`, `(None, None)` when unset, `(None, error)` when unparseable.

    Read from the object's own metadata; when absent there, from its pod template(s), where users
    who put every FinOps label on the template naturally put `expires_at` too.
    """
    raw, source = read_expires_at(manifest.get("metadata"), key=key)
    if source is None:
        from controller.engine.workloads import BUILTIN_KINDS, pod_templates

        for _, template in pod_templates(manifest, kinds or BUILTIN_KINDS):
            if template is manifest:
                continue
            raw, source = read_expires_at(template.get("metadata"), key=key)
            if source is not None:
                break
    if source is None:
        return None, None
    try:
        return parse_expires_at(raw, source=source), None
    except ValueError as exc:
        return None, str(exc)


# -- which key budgets project to ---------------------------------------------------------------


def projection_key(policies: Iterable[Any]) -> str:
    """The key budgets read a workload's expiry under, given the policies that match it (in snapshot
    order): the first non-default `spec.expiry.key` among them, else `expires_at`."""
    for policy in policies:
        expiry = policy.spec.expiry
        if expiry is not None and expiry.key != DEFAULT_EXPIRY_KEY:
            return str(expiry.key)
    return DEFAULT_EXPIRY_KEY
