"""`judge_claim`: a DRA ResourceClaim or ResourceClaimTemplate created after the pods that name it.

A pod may name a claim that does not exist yet: admission counts it as 1 GPU (with a note) and the
pod waits for it. The claim created then, or an unallocated claim deleted and created again with
other devices, decides what the waiting pod holds without any update of the pod to judge. So the
claim's creation is judged as the pods' creation would be with it: every pod still waiting for the
scheduler that names it is judged with the claim and without it, and what the claim adds (a
maxGPUsPerPod it breaks, a Projected budget it overruns, a spent budget or a limit it takes further
past) denies the claim. What a pod violated without the claim, as it was, is not the claim's doing.
See docs/crds.md#dra-claims-created-after-their-pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from controller.constants import CLAIM_CONTROLLER_USERS, POD_CLAIM_ANNOTATION
from controller.engine.accelerators import (
    DEFAULT_EQUIVALENCE,
    ClaimIndex,
    ClaimLookup,
    ClaimRef,
    claim_gpus,
    claim_refs,
    generated_claims,
)
from controller.engine.api import Decision, Drawn, Snapshot, Violation
from controller.engine.evaluation import GPU_COUNT, evaluate
from controller.engine.messages import gpus_text, render_fix
from controller.engine.view import workload_gpus
from controller.engine.workloads import BUILTIN_KINDS, pod_templates_of


def judge_claim(
    claim: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    *,
    snapshot: Snapshot,
    now: datetime,
    namespace: str | None = None,
    old: Mapping[str, Any] | None = None,
) -> Decision:
    """Judge the creation of `claim` (a ResourceClaim or ResourceClaimTemplate) by what it adds to
    the `pods` of its namespace that still wait for the scheduler and whose devices it decides
    (`_taken`; others are skipped: the caller may pass every pod of the namespace). `namespace`
    overrides `metadata.namespace`. With `old`, an update (`claim_update_judged`): judged only for
    the pods whose devices the claim decides now and did not decide as `old`."""
    ns, key = _namespace_and_key(claim, namespace)
    metadata = claim.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = str(metadata.get("name") or metadata.get("generateName") or "")
    decision = Decision(resource=f"{claim.get('kind', '')}/{ns}/{name}", allowed=True)
    if key is None or ns in snapshot.excluded_namespaces:
        return decision
    matched = _matched(claim, pods, key, old)
    if not matched:
        return decision
    _, kind, name = key
    waiting = [pod for pod, _ in matched]
    taking = [taken for _, taken in matched]
    before = _together(waiting, snapshot, now, ns)
    # The GPUs each GPU limit and budget counts, by the rule and name its violations carry.
    counted: dict[tuple[str, str], tuple[str, ...]] = {
        ("gpu", p.name): p.spec.gpu.resource_tuple for p in snapshot.policies if p.spec.gpu is not None
    }
    counted.update({("budget", b.name): b.spec.resource_tuple for b in snapshot.budgets})

    def added(devices: Mapping[str, Any]) -> tuple[list[Found], list[Found], str]:
        """What the claim with `devices` adds to the waiting pods: violations and warnings, each
        with the pod's name, and the team of the pods."""
        with_claim = replace(snapshot, claims=_overlay(snapshot.claims, {key: devices}))
        violations: list[Found] = []
        warnings: list[Found] = []
        team = ""
        after = _together(taking, with_claim, now, ns)
        for pod, taken, old, new in zip(waiting, taking, before, after, strict=True):
            pod_name = str((pod.get("metadata") or {}).get("name") or "")
            grows = _Grows(pod, snapshot, taken, with_claim)
            # A claim that gives the pod more of the GPUs a GPU limit or a budget counts takes what
            # the pod broke already further past (a spent budget, a limit per pod): that is the
            # claim's doing too. More of other devices (a NIC, GPUs the rule does not count) is
            # not, nor is an instance type it had.
            # Warnings alike (a Warn budget's numbers change with what the pods before it draw).
            for mine, was, now_ in ((violations, old.violations, new.violations),
                                    (warnings, old.warnings, new.warnings)):
                seen = {(v.policy, v.rule, v.key) for v in was}
                mine += [
                    (pod_name, v)
                    for v in now_
                    if v.policy != GPU_COUNT
                    and ((v.policy, v.rule, v.key) not in seen
                         or (v.key != "instanceType" and grows(counted.get((v.rule, v.policy)))))
                ]
            team = team or new.team
        return violations, warnings, team

    devices = ClaimIndex.devices_of(claim, kind)
    violations, warnings, decision.team = added(devices)
    searched = violations and len(waiting) <= MAX_SEARCHED_PODS
    fits = _fitting_count(devices, lambda smaller: not added(smaller)[0]) if searched else None
    adds = sum(claim_gpus(devices, snapshot.equivalence or DEFAULT_EQUIVALENCE).values())
    path: tuple[str | int, ...] = ("spec", "spec") if kind == "ResourceClaimTemplate" else ("spec",)
    if fits is not None:
        path = (*path, "devices", "requests", 0, *fits[1:])
    for listed, found in ((decision.violations, violations), (decision.warnings, warnings)):
        named, others = _named(found)
        listed += [_through(v, kind, name, ns, pod_name, adds, path, fits) for pod_name, v in named]
        if others:
            listed.append(_others(others, kind, name))
    decision.allowed = not decision.violations
    return decision


def waiting_on(
    claim: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    *,
    namespace: str | None = None,
    old: Mapping[str, Any] | None = None,
) -> list[Mapping[str, Any]]:
    """The `pods` `judge_claim` judges `claim` for (those waiting whose devices it decides), oldest
    first: a caller with none to pass has nothing to judge, and need not wait for a judge."""
    _, key = _namespace_and_key(claim, namespace)
    return [pod for pod, _ in _matched(claim, pods, key, old)] if key is not None else []


def _namespace_and_key(claim: Mapping[str, Any], namespace: str | None) -> tuple[str, ClaimKey | None]:
    """The claim's namespace (`namespace` overrides its metadata's) and its key (None: not a claim)."""
    metadata = claim.get("metadata")
    ns = namespace or (metadata.get("namespace") if isinstance(metadata, Mapping) else None) or ""
    return ns, _key(claim, ns)


def _matched(
    claim: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], key: ClaimKey, old: Mapping[str, Any] | None
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Each waiting pod whose devices the claim decides (and did not decide as `old`), oldest first,
    with the pod as it is judged with the claim (`_taken`)."""
    _, kind, name = key
    matched = [
        (pod, taken)
        for pod in pods
        if (taken := _taken(pod, claim, kind, name)) is not None
        and (old is None or _taken(pod, old, kind, name) != taken)
    ]
    matched.sort(key=lambda pair: _age(pair[0]))
    return matched


MAX_NAMED_PODS = 10
"""A denial names the pods the claim takes past a rule up to this many, and counts the rest: a
claim a thousand pods wait for must not be answered with megabytes."""


def _named(found: list[Found]) -> tuple[list[Found], list[Found]]:
    """What the claim adds to the first MAX_NAMED_PODS pods, and to the others."""
    pods = set(list(dict.fromkeys(pod for pod, _ in found))[:MAX_NAMED_PODS])
    return [f for f in found if f[0] in pods], [f for f in found if f[0] not in pods]


def _others(others: list[Found], kind: str, name: str) -> Violation:
    """One line for what the claim adds to the pods a denial does not name."""
    first = others[0][1]
    pods = len({pod for pod, _ in others})
    rules = ", ".join(sorted({f"{v.policy}/{v.rule}" for _, v in others}))
    return replace(
        first,
        message=f"{pods} more pods waiting for {kind} {name}: the same from {rules}",
        summary=f"{pods} more pods: the same from {rules}",
        fix=f"# ask for fewer devices, or delete the pods waiting for {kind} {name} first",
        edits=(),
    )


Found = tuple[str, Violation]
"""A pod's name and a violation the claim adds to it."""


def _together(waiting: list[Mapping[str, Any]], snapshot: Snapshot, now: datetime, ns: str) -> list[Decision]:
    """The waiting pods judged together, oldest first: under a `Projected` budget each one fits in
    what remains after what the pods before it draw (a template gives every pod of a Job its own
    devices, and each alone may fit where all of them do not)."""
    decisions: list[Decision] = []
    drawn: dict[str, Drawn] = {}
    for pod in waiting:
        decision = evaluate(pod, snapshot=snapshot, now=now, mutate=False, namespace=ns, drawn=dict(drawn))
        for budget, draw in decision.draws.items():
            drawn[budget] = drawn.get(budget, Drawn()).add(draw)
        decisions.append(decision)
    return decisions


def _age(pod: Mapping[str, Any]) -> tuple[str, str]:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("creationTimestamp") or ""), str(metadata.get("name") or "")


class _Grows:
    """Whether a claim gives a pod more of the GPUs a rule counts (its `resources`), asked once
    per list: None (a rule that counts none) is never more."""

    def __init__(
        self, pod: Mapping[str, Any], without: Snapshot, taken: Mapping[str, Any], with_claim: Snapshot
    ) -> None:
        self.pod = pod
        self.without = without
        self.taken = taken
        self.with_claim = with_claim
        self.known: dict[tuple[str, ...], bool] = {}

    def __call__(self, resources: tuple[str, ...] | None) -> bool:
        if resources is None:
            return False
        grows = self.known.get(resources)
        if grows is None:
            grows = self.known[resources] = workload_gpus(
                self.taken, snapshot=self.with_claim, resources=resources
            ) > workload_gpus(self.pod, snapshot=self.without, resources=resources)
        return grows


def _counted(devices: Mapping[str, Any]) -> tuple[Mapping[str, Any], str] | None:
    """The one `ExactCount` request of a claim asking for one kind of device, and where its count
    is (`exactly` in resource.k8s.io/v1, the request itself before): what a fix can make smaller."""
    requests = devices.get("requests")
    if not isinstance(requests, list) or len(requests) != 1 or not isinstance(requests[0], Mapping):
        return None
    request = requests[0]
    exactly = request.get("exactly")
    body, where = (exactly, "exactly") if isinstance(exactly, Mapping) else (request, "")
    if body.get("allocationMode", "ExactCount") != "ExactCount" or request.get("firstAvailable"):
        return None
    return body, where


def _fitting_count(
    devices: Mapping[str, Any], fits: Callable[[Mapping[str, Any]], bool]
) -> tuple[int, *tuple[str, ...]] | None:
    """The largest smaller device count with which the claim adds nothing the pods may not have,
    and the keys from its request to where the count goes; None when there is no such count, or
    the claim's count is not one a fix can simply lower."""
    counted = _counted(devices)
    if counted is None:
        return None
    body, where = counted
    try:
        count = int(body.get("count", 1))
    except (TypeError, ValueError):
        return None
    request = devices["requests"][0]

    def fits_with(smaller: int) -> bool:
        changed = {**request, where: {**body, "count": smaller}} if where else {**request, "count": smaller}
        return fits({**devices, "requests": [changed]})

    # Fewer devices never add a violation: the largest count that fits is found by bisection.
    low, high = 0, min(count - 1, MAX_TRIED_COUNT)
    while low < high:
        middle = (low + high + 1) // 2
        if fits_with(middle):
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return None
    return (low, where) if where else (low,)


MAX_TRIED_COUNT = 64
"""A fix looks for the count that fits at or below this one (claims ask for a few devices)."""
MAX_SEARCHED_PODS = 32
"""A claim more pods than this wait for gets the plain fix: each count tried judges every pod, and
the review must answer within the webhook's timeout."""


def made_by_the_claim_controller(claim: Mapping[str, Any], username: str) -> bool:
    """A ResourceClaim the resource claim controller made for one pod from its template: the
    template was judged with the pod, and no pod names the claim it makes (it is found through the
    pod's status), so judging it would only list pods for nothing. A Pod owner alone does not make
    one: anyone may write it on a claim they create for a pod that names it."""
    return username in CLAIM_CONTROLLER_USERS and _pod_owner(claim) is not None


def claim_update_judged(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether an update of a ResourceClaim may change what a waiting pod holds: its spec cannot
    change, but an owner and an annotation written on it later make it the claim the resource
    claim controller takes for a pod's template entry (`_pod_entry`), as if created so."""
    entry = _pod_entry(new)
    return new.get("kind") == "ResourceClaim" and entry is not None and entry != _pod_entry(old or {})


def waiting_for(pod: Mapping[str, Any], kind: str, name: str) -> bool:
    """Whether `pod` names the claim (or template) and has not been bound to a node, finished or
    been deleted: what the claim holds is still to decide what it runs with."""
    return _waiting(pod) and any(ref.kind == kind and ref.name == name for ref in _refs(pod))


def _waiting(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec")
    if pod.get("kind", "Pod") != "Pod" or not isinstance(spec, Mapping) or spec.get("nodeName"):
        return False
    metadata, status = pod.get("metadata"), pod.get("status")
    if isinstance(metadata, Mapping) and metadata.get("deletionTimestamp"):
        return False
    return not (isinstance(status, Mapping) and status.get("phase") in ("Succeeded", "Failed"))


def _refs(pod: Mapping[str, Any]) -> list[ClaimRef]:
    spec = pod.get("spec")
    return list(claim_refs(spec.get("resourceClaims"))) if isinstance(spec, Mapping) else []


def _taken(
    pod: Mapping[str, Any], claim: Mapping[str, Any], kind: str, name: str
) -> Mapping[str, Any] | None:
    """The waiting pod as it is judged with the claim, when the claim decides what it holds; None
    when it does not. A pod holds a ResourceClaim it names, one its status records as made for one
    of its entries (made again after a deletion), and one whose controller ownerReference and
    POD_CLAIM_ANNOTATION make it the claim of a template entry: the resource claim controller takes
    it instead of making one, whoever created it. A template decides what its pods hold through
    the claims made from it: the claims made from it before (perhaps from an older template of the
    name) count no longer, as they may be deleted and made again from this one."""
    if not _waiting(pod):
        return None
    refs = _refs(pod)
    made = generated_claims(pod)
    if kind == "ResourceClaimTemplate":
        entries = {ref.entry for ref in refs if ref.kind == kind and ref.name == name}
        if not entries:
            return None
        if not entries & made.keys():
            return pod
        return _with_statuses(pod, lambda s: s.get("name") not in entries)
    if any(ref.kind == kind and ref.name == name for ref in refs) or name in made.values():
        return pod
    entry = _entry_claimed(claim, pod)
    templates = {ref.entry for ref in refs if ref.kind == "ResourceClaimTemplate"}
    if entry is None or entry not in templates:
        return None
    return _with_statuses(pod, lambda s: s.get("name") != entry, {"name": entry, "resourceClaimName": name})


def _with_statuses(
    pod: Mapping[str, Any], keep: Callable[[Mapping[str, Any]], bool], *added: Mapping[str, Any]
) -> Mapping[str, Any]:
    """The pod with only the `resourceClaimStatuses` it `keep`s, and those `added`."""
    status = pod.get("status")
    status = status if isinstance(status, Mapping) else {}
    statuses = status.get("resourceClaimStatuses")
    kept = [s for s in statuses if isinstance(s, Mapping) and keep(s)] if isinstance(statuses, list) else []
    return {**pod, "status": {**status, "resourceClaimStatuses": [*kept, *added]}}


def _entry_claimed(claim: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    """The pod's entry the claim is for, when the claim is the pod's by `_pod_entry`."""
    entry = _pod_entry(claim)
    metadata = pod.get("metadata")
    uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
    return entry[1] if entry is not None and uid and entry[0] == uid else None


def _pod_entry(claim: Mapping[str, Any]) -> tuple[str, str] | None:
    """`(pod uid, entry)`: the pod whose template entry the resource claim controller takes the
    claim for instead of making one, and that entry (POD_CLAIM_ANNOTATION). It finds such claims
    by their controller Pod's uid alone, whatever name the reference gives."""
    metadata = claim.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    entry = annotations.get(POD_CLAIM_ANNOTATION) if isinstance(annotations, Mapping) else None
    owner = _pod_owner(claim)
    return (owner, entry) if isinstance(entry, str) and owner else None


def _pod_owner(claim: Mapping[str, Any]) -> str | None:
    """The uid of the claim's controller, when that is a Pod (the API allows one controller)."""
    metadata = claim.get("metadata")
    owners = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    for owner in owners if isinstance(owners, list) else ():
        if (
            isinstance(owner, Mapping)
            and owner.get("controller") is True
            and owner.get("apiVersion") == "v1"
            and owner.get("kind") == "Pod"
        ):
            return str(owner.get("uid") or "")
    return None


ClaimKey = tuple[str, str, str]
"""`(namespace, kind, name)` of a ResourceClaim or ResourceClaimTemplate."""


def _key(obj: Mapping[str, Any], namespace: str) -> ClaimKey | None:
    """The object's key, in `namespace` when its manifest names none (an admission request's)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    in_namespace = {**metadata, "namespace": metadata.get("namespace") or namespace}
    return ClaimIndex.key_of({**obj, "metadata": in_namespace})


def _overlay(lookup: ClaimLookup | None, known: Mapping[ClaimKey, Mapping[str, Any]]) -> ClaimLookup:
    """The claim lookup with the `known` keys resolved to their devices, whatever the cache holds
    for them (an older claim of the same name, deleted)."""

    def resolve(namespace: str, kind: str, name: str) -> Mapping[str, Any] | None:
        found = known.get((namespace, kind, name))
        if found is not None:
            return found
        return lookup(namespace, kind, name) if lookup is not None else None

    return resolve


def unresolved_claims(
    manifest: Mapping[str, Any], *, snapshot: Snapshot, namespace: str | None = None
) -> list[tuple[str, str]]:
    """`(kind, name)` of the DRA claims and templates the workload's pods name that the snapshot's
    claims do not know (each would count as 1 GPU): what a caller may read from the API server
    before judging (a claim created a moment before the pod, not yet in the webhook's cache)."""
    spec = (snapshot.kinds or BUILTIN_KINDS).lookup(manifest)
    if spec is None:
        return []
    ns = namespace or (manifest.get("metadata") or {}).get("namespace") or ""
    missing: list[tuple[str, str]] = []
    for template in pod_templates_of(manifest, spec):
        for ref in claim_refs(template.spec.get("resourceClaims")):
            known = snapshot.claims(ns, ref.kind, ref.name) if snapshot.claims is not None else None
            if known is None and (ref.kind, ref.name) not in missing:
                missing.append((ref.kind, ref.name))
    return missing


def with_claims(snapshot: Snapshot, objects: Iterable[Mapping[str, Any]], *, namespace: str) -> Snapshot:
    """The snapshot with these ResourceClaims and templates known as well (read for one review)."""
    known: dict[ClaimKey, Mapping[str, Any]] = {}
    for obj in objects:
        key = _key(obj, namespace)
        if key is not None:
            known[key] = ClaimIndex.devices_of(obj, key[1])
    return replace(snapshot, claims=_overlay(snapshot.claims, known)) if known else snapshot


def _through(
    found: Violation,
    kind: str,
    name: str,
    namespace: str,
    pod: str,
    adds: float,
    path: tuple[str | int, ...],
    fits: tuple[int, *tuple[str, ...]] | None,
) -> Violation:
    """A pod's violation as the claim's: it names the pod, and the fix is to the claim (a smaller
    device count, when one fits) or to delete the pod that waits for it."""
    what = f"{kind} {name} gives it {gpus_text(adds)}" if adds else f"counted with {kind} {name}"
    delete = f"or delete the pod first: kubectl delete pod -n {namespace} {pod}"
    if fits is not None:
        fitting = f"{fits[0]} device fits" if fits[0] == 1 else f"{fits[0]} devices fit"
        fix = render_fix([(path, {"count": fits[0]})], note=f"{fitting}; {delete}")
    else:
        fix = f"# ask for fewer devices in spec.devices.requests,\n# {delete}"
    return replace(
        found,
        message=f"pod {pod}: {found.message} ({what})",
        summary=f"pod {pod}: {found.summary or found.message}",
        fix=fix,
        edits=(),
    )
