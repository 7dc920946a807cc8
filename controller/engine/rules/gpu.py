"""Rule family `gpu`: GPUs per pod, and which instance types a GPU pod may be pinned to.

Only pod templates that request GPUs (the scheduler's effective request of `spec.gpu.resources`)
are judged. A pod is pinned when every way it can be scheduled (each required node-affinity term,
with `nodeSelector` ANDed in) is restricted to allowed types by at least one of its pins: a
`nodeSelector` entry or an `In` expression on one of `instanceTypeKeys` whose values all match
the allowlist. `NotIn` and `Exists` pin nothing.

The allowlist is the first `allowedInstanceTypes` entry whose `when` matches the effective labels.
When no entry matches there is no allowlist for that workload (only `requireInstanceType`
applies): list a catch-all last (no `when`) to forbid everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from controller.engine.accelerators import resource_filter
from controller.engine.api import Violation
from controller.engine.messages import Commented, fix_fields, gpus_text, location, shorten
from controller.engine.models import GPUSpec, InstanceTypeRule, is_label_value
from controller.engine.rules import Context, when_text
from controller.engine.workloads import Pin, PodTemplate, container_request, pinned_terms

PLACEHOLDER = "INSTANCE-TYPE"


def validate(policy: Any, view: Any, ctx: Context) -> list[Violation]:
    gpu: GPUSpec | None = policy.spec.gpu
    if gpu is None:
        return []
    counts = view.pod_gpus(gpu.resource_tuple)
    if not any(counts):
        return []
    allow = gpu.allowlist_for(view.labels())
    limit = gpu.max_gpus_per_pod
    too_many: list[tuple[int, float]] = []
    unpinned: list[int] = []
    disallowed: list[tuple[int, list[str]]] = []
    for index, count in enumerate(counts):
        if not count:
            continue
        if limit is not None and count > limit + 1e-9:  # shares add up with float error
            too_many.append((index, count))
        terms = pinned_terms(view.templates[index].spec, gpu.key_tuple)
        if gpu.require_instance_type and not all(terms):  # a way to be scheduled that pins nothing
            unpinned.append(index)
        if allow is not None:
            bad = _disallowed_values(terms, allow)
            if bad:
                disallowed.append((index, bad))
    out = []
    if too_many:
        out.append(_too_many(policy.name, gpu, view, too_many))
    if unpinned:
        out.append(_unpinned(policy.name, gpu, allow, view, unpinned))
    if disallowed:
        out.append(_disallowed(policy.name, gpu, allow, view, disallowed))
    return out


def _disallowed_values(terms: list[list[Pin]], allow: InstanceTypeRule) -> list[str]:
    """The pinned values of every way to be scheduled that no pin restricts to allowed types."""
    allowed = allow.globs.matches
    bad: list[str] = []
    for pins in terms:
        if _restricted(pins, allowed):
            continue
        for _, values in pins:
            for value in values:
                if not allowed(value) and value not in bad:
                    bad.append(value)
    return bad


def _restricted(pins: list[Pin], allowed: Callable[[str], bool]) -> bool:
    """Whether one of the pins restricts the pod to allowed types (it names some, all allowed)."""
    for _, values in pins:
        if values and all(map(allowed, values)):
            return True
    return False


def _where(view: Any, indexes: list[int]) -> str:
    if view.is_pod:
        return ""
    return " in " + ", ".join(location((*view.templates[i].path, "spec")) for i in indexes)


def suggest_type(gpu: GPUSpec, allow: InstanceTypeRule | None, key: str = "") -> str:
    """A literal instance type the allowlist accepts, for a nodeSelector to paste under `key`.

    Allowlists mix machine types (`g5.xlarge`, `n1-standard-8`) with accelerator names
    (`nvidia-l4`, `NVIDIA-A100-SXM4-80GB`); a key that names the accelerator (GKE's
    `cloud.google.com/gke-accelerator`, NVIDIA's `nvidia.com/gpu.product`) gets one of the latter
    when the list has one, any other key a machine type first."""
    accelerator_key = key.endswith(("accelerator", "gpu.product"))

    def preferred(literal: str) -> bool:
        accelerator_like = "." not in literal and not literal.startswith(("n1-", "a2-", "a3-", "g2-"))
        return accelerator_like == accelerator_key

    pools = [allow] if allow is not None else list(gpu.allowed_instance_types)
    literals = [lit for rule in pools for lit in rule.globs.literals if is_label_value(lit)]
    if allow is not None and not literals:
        # Only wildcards: borrow a literal another entry names, if this one takes it.
        literals = [
            lit
            for rule in gpu.allowed_instance_types
            for lit in rule.globs.literals
            if allow.globs.matches(lit) and is_label_value(lit)
        ]
    for literal in literals:
        if preferred(literal):
            return literal
    return literals[0] if literals else PLACEHOLDER


def _selector_fix(
    gpu: GPUSpec, allow: InstanceTypeRule | None, view: Any, indexes: list[int], note: str = ""
) -> dict[str, Any]:
    allowed = allow.globs.matches if allow is not None else None
    entries: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
    for index in indexes:
        template = view.templates[index]
        selector = template.spec.get("nodeSelector") or {}
        # Reuse the key the pod already pins with, so the fix replaces its value, not contradicts it.
        key = next((k for k in gpu.key_tuple if k in selector), gpu.key_tuple[0])
        value = suggest_type(gpu, allow, key)
        shown: Any = value
        if value == PLACEHOLDER:
            shown = Commented(value, "you choose: an allowed instance type", choose=True)
        entries.append(((*template.path, "spec", "nodeSelector"), {key: shown}))
        if allowed is not None and value != PLACEHOLDER:
            entries += _affinity_entries(template, gpu, allow, allowed)
    return fix_fields(entries, note=note)


def _affinity_entries(
    template: PodTemplate, gpu: GPUSpec, allow: InstanceTypeRule | None, allowed: Callable[[str], bool]
) -> list[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Required node-affinity `In` terms that pin other types get the type suggested for their key
    instead, so the nodeSelector the fix sets and the affinity the pod keeps agree."""
    keys = gpu.key_tuple
    affinity = template.spec.get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    out: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
    base = (
        *template.path,
        "spec",
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
    )
    for t, term in enumerate(required.get("nodeSelectorTerms") or ()):
        for e, expr in enumerate((term or {}).get("matchExpressions") or ()):
            if not isinstance(expr, Mapping) or expr.get("operator") != "In" or expr.get("key") not in keys:
                continue
            if not all(allowed(str(v)) for v in expr.get("values") or ()):
                value = suggest_type(gpu, allow, str(expr["key"]))
                out.append(((*base, "nodeSelectorTerms", t, "matchExpressions", e), {"values": [value]}))
    return out


def _allowed_text(allow: InstanceTypeRule | None) -> str:
    if allow is None:
        return ""
    scope = f" when {when_text(allow.compiled_when)}" if allow.when else ""
    return f"; allowed{scope}: {shorten(allow.instance_types)}"


def _unpinned(
    policy: str, gpu: GPUSpec, allow: InstanceTypeRule | None, view: Any, idx: list[int]
) -> Violation:
    keys = ", ".join(gpu.key_tuple)
    return Violation(
        policy=policy,
        rule="gpu",
        key="instanceType",
        message=(
            f"GPU pods must pin an instance type{_where(view, idx)}: set a nodeSelector (or a required node "
            f"affinity In term) on one of {keys}{_allowed_text(allow)}"
        ),
        summary="GPU pod must pin an instance type (nodeSelector)"
        + (f"; allowed: {', '.join(allow.instance_types)}" if allow else ""),
        **_selector_fix(gpu, allow, view, idx),
    )


def _disallowed(
    policy: str, gpu: GPUSpec, allow: InstanceTypeRule | None, view: Any, found: list[tuple[int, list[str]]]
) -> Violation:
    values: list[str] = []
    for _, bad in found:
        values.extend(v for v in bad if v not in values)
    indexes = [i for i, _ in found]
    affinity = any(
        ((view.templates[i].spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        for i in indexes
    )
    # The fix also re-pins required node-affinity `In` terms, so nothing is left to drop by hand.
    note = "the required node affinity terms are re-pinned to the same type" if affinity else ""
    return Violation(
        policy=policy,
        rule="gpu",
        key="instanceType",
        message=f"instance type {', '.join(values)} not allowed{_where(view, indexes)}{_allowed_text(allow)}",
        summary=f"instance type {values[0]} not allowed"
        + (f"; allowed: {', '.join(allow.instance_types)}" if allow else ""),
        **_selector_fix(gpu, allow, view, indexes, note=note),
    )


def _too_many(policy: str, gpu: GPUSpec, view: Any, found: list[tuple[int, float]]) -> Violation:
    limit = gpu.max_gpus_per_pod or 0
    entries = []
    counted = resource_filter(gpu.resource_tuple)
    for index, _ in found:
        asked = view.asks()[index]
        names = tuple(n for n in (*asked.per_pod, *asked.unknown) if counted is None or counted(n))
        entries.extend(_reduce(view.templates[index], names, limit))
    worst = gpus_text(max(count for _, count in found))
    # GPUs asked through DRA claims or a scheduler's fraction annotations are not in the containers:
    # no paste of the pod alone fixes those, so say where the count comes from.
    fix = fix_fields(entries) if entries else {
        "fix": f"# at most {limit} GPU per pod: ask for fewer devices in the pod's ResourceClaimTemplates "
        "or claims, or a smaller share",
    }
    return Violation(
        policy=policy,
        rule="gpu",
        key="maxGPUsPerPod",
        message=f"{worst} per pod{_where(view, [i for i, _ in found])}; at most {limit} per pod allowed "
        "(split the work over more pods)",
        summary=f"{worst} per pod; at most {limit} allowed",
        **fix,
    )


def _reduce(
    template: PodTemplate, resources: tuple[str, ...], limit: int
) -> list[tuple[tuple[str | int, ...], dict[str, dict[str, int]]]]:
    """New GPU requests that fit `limit`: sidecars, then app containers, share it as they run together;
    each init container gets what the sidecars started before it leave over."""
    spec = template.spec
    pool = limit
    entries = []

    def fit(container: Mapping[str, Any], path: tuple[str | int, ...], allowance: int) -> int:
        used = 0
        resources_fix: dict[str, dict[str, int]] = {}
        for resource in resources:
            request = container_request(container, resource)
            new = min(request, max(allowance - used, 0))
            used += new
            if new != request:
                current = container.get("resources") or {}
                for field in ("limits", "requests"):
                    if resource in (current.get(field) or {}):
                        resources_fix.setdefault(field, {})[resource] = new
        if resources_fix:
            entries.append(((*template.path, "spec", *path, "resources"), resources_fix))
        return used

    sidecars_before = 0
    for index, container in enumerate(spec.get("initContainers") or ()):
        if container.get("restartPolicy") == "Always":
            kept = fit(container, ("initContainers", index), pool)
            pool -= kept
            sidecars_before += kept
        else:
            fit(container, ("initContainers", index), limit - sidecars_before)
    for index, container in enumerate(spec.get("containers") or ()):
        pool -= fit(container, ("containers", index), pool)
    return entries
