"""What an UPDATE introduces: the object before and after, compared as the rules need it.

A rule judges an update in full when the update adds to what the workload costs, and otherwise
only for what the update itself breaks (see docs/crds.md#updates-and-scaling):

- more GPUs (per pod in any template, or in all, through replicas, parallelism, a new template):
  every rule applies in full, as at CREATE;
- a different instance type pinned by a GPU template: the `gpu` rule applies in full, and a
  budget counts that template's GPUs as new capacity (there is no price list to say the new type
  is cheaper, so any change of type is new spend);
- a later `expires_at` (or one removed): the `expiry` rule applies in full, and a `Projected`
  budget charges the extra time;
- anything else (a relabel, a restart annotation, fewer replicas): a violation the object had
  before the update is pre-existing and only warned about, so a workload admitted before a
  policy existed can still be updated, scaled down, or fixed one field at a time.

Budgets are never grandfathered: they are judged on the increase only (`added_gpus`,
`extra_gpu_hours`), so a restart, or a relabel within the same budgets, is never hit by a spent
budget. Labels choose the budget: what a relabel moves is judged by the budget rule
(controller.engine.rules.budget).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.engine.workloads import pinned_terms


class Update:
    """An UPDATE's old and new WorkloadViews (same kind and namespace)."""

    __slots__ = ("old", "new", "_grew", "_pins")

    def __init__(self, old: Any, new: Any) -> None:
        self.old = old
        self.new = new
        self._grew: dict[tuple[str, ...], bool] = {}
        self._pins: dict[tuple[tuple[str, ...], tuple[str, ...]], frozenset[str]] = {}

    def _old_counts(self, resources: tuple[str, ...]) -> dict[str, tuple[float, float]]:
        """Per template pointer of the old object: (GPUs per pod, GPUs of the template)."""
        counts = self.old.pod_gpus(resources)
        return {
            t.pointer: (count, count * t.replicas)
            for t, count in zip(self.old.templates, counts, strict=True)
        }

    def gpus_grew(self, resources: tuple[str, ...]) -> bool:
        """Whether any template asks more GPUs per pod or in all than before, or a new template
        asks any (templates are matched by their JSON pointer)."""
        grew = self._grew.get(resources)
        if grew is None:
            old = self._old_counts(resources)
            grew = False
            for template, count in zip(self.new.templates, self.new.pod_gpus(resources), strict=True):
                before = old.get(template.pointer, (0, 0))
                if count > before[0] or count * template.replicas > before[1]:
                    grew = True
                    break
            self._grew[resources] = grew
        return grew

    def retyped(self, resources: tuple[str, ...], keys: tuple[str, ...]) -> frozenset[str]:
        """Pointers of the GPU templates whose instance-type pins differ from before (a template
        new in this update counts as retyped only if it has GPUs: it is all new anyway)."""
        found = self._pins.get((resources, keys))
        if found is None:
            old = {t.pointer: t for t in self.old.templates}
            changed = set()
            for template, count in zip(self.new.templates, self.new.pod_gpus(resources), strict=True):
                before = old.get(template.pointer)
                if count and before is not None and _pins(template, keys) != _pins(before, keys):
                    changed.add(template.pointer)
            found = self._pins[(resources, keys)] = frozenset(changed)
        return found

    def added_gpus(self, resources: tuple[str, ...], keys: tuple[str, ...]) -> float:
        """GPUs the update adds, template by template (never netted across templates: moving GPUs
        from the head to the workers adds the workers' increase). A template whose instance type
        changed counts in full."""
        old = self._old_counts(resources)
        retyped = self.retyped(resources, keys)
        added = 0.0
        for template, count in zip(self.new.templates, self.new.pod_gpus(resources), strict=True):
            total = count * template.replicas
            before = 0 if template.pointer in retyped else old.get(template.pointer, (0, 0))[1]
            if total > before:
                added += total - before
        return added

    def expiry_extended(self, old_until: datetime | None, new_until: datetime | None) -> bool:
        """A later expires_at, or one removed (a workload with none runs until someone stops it)."""
        if new_until is None:
            return old_until is not None
        return old_until is not None and new_until > old_until


def _pins(template: Any, keys: tuple[str, ...]) -> list[list[tuple[str, tuple[str, ...]]]]:
    return [sorted(term) for term in pinned_terms(template.spec, keys)]
