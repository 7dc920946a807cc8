"""Policy views that do not watch a cluster: a fixed Snapshot, typically loaded from policy files
(`comptroller webhook --policies DIR`, the tests and the benchmark)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from controller.engine.api import Snapshot
from controller.engine.loading import snapshot_from_objects

log = logging.getLogger(__name__)


class StaticView:
    """A view that is always ready and never changes."""

    def __init__(self, snapshot: Snapshot, *, errors: Mapping[str, str] | None = None) -> None:
        self._snapshot = snapshot
        self._errors = dict(errors or {})

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def ready(self) -> bool:
        return True

    def errors(self) -> dict[str, str]:
        return dict(self._errors)


def view_from_objects(
    objects: Iterable[Mapping[str, Any]],
    *,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    excluded_namespaces: Iterable[str] = (),
) -> StaticView:
    """Compile FinOpsPolicy/GPUBudget/FinOpsException objects; others are ignored, bad ones logged."""
    snapshot, errors = snapshot_from_objects(
        objects, namespace_labels=namespace_labels, excluded_namespaces=excluded_namespaces
    )
    for key, error in errors.items():
        log.error("%s is left out of admission: %s", key, error)
    return StaticView(snapshot, errors=errors)


def view_from_path(path: Path, *, excluded_namespaces: Iterable[str] = ()) -> StaticView:
    """The policies in a file or directory, read as `comptroller check -p` reads them."""
    from controller.check import read_documents

    inputs = read_documents([path])
    for error in inputs.errors:
        log.error("%s", error)
    return view_from_objects([d.body for d in inputs.documents], excluded_namespaces=excluded_namespaces)
