"""`evaluate`: one workload, the configuration snapshot and `now` in; a Decision out.

As the API server does it: mutation first (every matching policy adds what it may, the patch is
against the original manifest), then validation of the mutated workload by every matching policy
and every GPUBudget. Matching is done again for validation, on the mutated labels, because that
is what the validating webhook will see after the mutating one ran.

Every matching policy applies and the strictest outcome wins: any violation of an `Enforce`
policy or budget denies; `Warn` violations become warnings; `Audit` ones are only reported.
A FinOpsException covering a (policy, rule family) waives its violations and its mutations.
Policies are applied in the order of `snapshot.policies` (the callers sort them by name), so
when two policies default the same label, the first one wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from controller.constants import BUDGET_GATE, DEFAULT_GPU_RESOURCES
from controller.engine import queueing
from controller.engine.api import Decision, Drawn, Enforcement, Snapshot, Violation
from controller.engine.expiry import projection_key
from controller.engine.matching import namespace_labels_of, placement_matches
from controller.engine.models import RULE_FAMILIES
from controller.engine.rules import Context
from controller.engine.rules import budget as budget_rule
from controller.engine.rules import expiry as expiry_rule
from controller.engine.rules import gpu as gpu_rule
from controller.engine.rules import labels as labels_rule
from controller.engine.update import Update
from controller.engine.view import WorkloadView, view_of
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry

_DEFAULT_RESOURCES = tuple(DEFAULT_GPU_RESOURCES)
_MAX_SCOPES = 4096
_ROUTES = {"Enforce": "violations", "Warn": "warnings", "Audit": "audit"}
_CARRIED: dict[str, Enforcement] = {"Enforce": "Warn", "Warn": "Warn", "Audit": "Audit"}


def evaluate(
    manifest: Mapping[str, Any],
    *,
    snapshot: Snapshot,
    now: datetime,
    mutate: bool = True,
    operation: str = "CREATE",
    namespace: str | None = None,
    old_object: Mapping[str, Any] | None = None,
    gates_owned: frozenset[str] | None = None,
    drawn: Mapping[str, Drawn] | None = None,
) -> Decision:
    """Judge one workload.

    `namespace` overrides `metadata.namespace` (admission requests may omit it from the object).
    `mutate=False` judges the object as given (the validating webhook, after mutation ran).
    `old_object`, at UPDATE, is the object before it: what it already violated is only warned
    about unless the update adds to its cost, and budgets judge only the increase
    (`controller.engine.update`).
    `gates_owned`: the scheduling gates whoever makes the request may take off a pod a queueing
    budget covers (None: all of them): Comptroller's operator owns the budget's gate, Kueue its
    admission gate; taking one off is denied to anyone else (docs/queueing.md).
    `drawn`: judging it together with other workloads, the GPU-hours those judged before it draw
    from each `Projected` budget (by name); the decision's `draws` then says what this one draws.
    Objects that are not a supported workload kind, in an excluded namespace, or operations other
    than CREATE and UPDATE are allowed with an empty decision.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    kinds: KindRegistry = snapshot.kinds or BUILTIN_KINDS
    metadata = manifest.get("metadata") or {}
    ns = namespace or metadata.get("namespace") or ""
    spec = kinds.lookup(manifest)
    if spec is None or operation not in ("CREATE", "UPDATE") or ns in snapshot.excluded_namespaces:
        name = metadata.get("name") or metadata.get("generateName") or ""
        return Decision(resource=f"{manifest.get('kind', '')}/{ns}/{name}", allowed=True)

    where = _scope(snapshot, spec.kind, ns)
    view = view_of(manifest, spec, namespace=ns, snapshot=snapshot)
    update = None
    if operation == "UPDATE" and old_object is not None and kinds.lookup(old_object) is spec:
        update = Update(view_of(old_object, spec, namespace=ns, snapshot=snapshot), view)
    ctx = Context(
        now=now, operation=operation, namespace_labels=where.namespace_labels, update=update, drawn=drawn
    )
    live_exceptions = [e for e in where.exceptions if e.spec.expires_at > now] if where.exceptions else []

    matcher = _Matcher(where, view)
    if mutate and not _made_by_a_controller(manifest, view):
        exceptions = _exceptions_for(live_exceptions, view.labels())
        for policy in matcher.matching():
            if policy.spec.labels is not None and not _waived(exceptions, policy.name, "labels"):
                labels_rule.mutate(policy, view, ctx)
        # Expiry defaults go after every label default: `requiredWhen` reads the final labels.
        for policy in matcher.matching():
            if policy.spec.expiry is not None and not _waived(exceptions, policy.name, "expiry"):
                expiry_rule.mutate(policy, view, ctx)

    labels = view.labels()
    decision = Decision(resource=view.resource, allowed=True, team=labels.get("team", ""))
    exceptions = _exceptions_for(live_exceptions, labels)
    old_matching: list[Any] | None = None
    for policy in matcher.matching():
        found = _validate(policy, view, ctx)
        if found and update is not None:
            if old_matching is None:
                old_matching = _Matcher(where, update.old).matching()
            found, carried = _preexisting(policy, found, update, ctx, matched_before=policy in old_matching)
            if carried:  # what the object violated before the update is warned about, not denied
                _route(decision, carried, _CARRIED[policy.spec.enforcement], exceptions)
        if found:
            _route(decision, found, policy.spec.enforcement, exceptions)
    if snapshot.budgets:
        # Budgets project up to the workload's expires_at, under the key the matching policies use.
        ctx.expiry_key = projection_key(matcher.matching())
    gates: dict[str, str] = {}
    kept = False  # a pod keeps the budget's gate it has (one a budget cannot pay for yet)
    released = update is not None and queueing.claims_released(update)
    # Taking a queueing gate off is starting the pod: the budget's gate is the operator's to take
    # off, in turn, and Kueue's admission gate is Kueue's. By anyone else, a pod queued or claimed
    # by Kueue would start past a spent budget by a patch.
    taken_off = queueing.gates_taken_off(update) if update is not None else frozenset()
    by_hand = taken_off - gates_owned if gates_owned is not None else frozenset()
    for budget in snapshot.budgets:
        covers = _covers(budget, view)
        # Labels choose the budget (a finished pod's charge is final, whatever they say): what an
        # update brings under a budget, or lets go to the scheduler with claims that may hold other
        # devices than at its creation, is judged as a creation under it; a Pod relabelled out of
        # a budget that draws on it is refused.
        moves = update is not None and not _finished(view)
        before = update is not None and moves and _covered_before(budget, update)
        anew = moves and covers and (released or not before)
        found = budget_rule.validate(budget, view, replace(ctx, update=None) if anew else ctx)
        if before and not covers and view.is_pod:
            found = [budget_rule.left(budget, update)]
        if budget.spec.when_exhausted == "Queue" and covers:
            if by_hand:
                found = [queueing.self_released(budget, min(by_hand))]
            else:
                if BUDGET_GATE in taken_off:  # the operator releasing it, judged as at its creation
                    found = budget_rule.validate(budget, view, replace(ctx, update=None))
                queued = queueing.judge(budget, view, operation, found, mutate=mutate,
                                        old=update.old if update is not None else None)
                found = queued.deny
                if (queued.gate or queued.holds) and not _waived(exceptions, budget.name, "budget"):
                    if queued.gate:
                        gates[budget.name] = queued.gate
                    kept = kept or queued.holds
                if queued.warn:
                    _route(decision, queued.warn, "Warn", exceptions)
        if found:
            _route(decision, found, budget.spec.enforcement, exceptions)
        if drawn is not None and covers and budget.spec.admission == "Projected":
            decision.draws[budget.name] = budget_rule.draw(budget, view, ctx)
    if mutate:
        gate = queueing.gate(view, gates) if gates else None
        decision.patch = view.patch()
        if gate is not None:
            decision.patch.append(gate)
        elif snapshot.budgets and not kept:
            decision.patch += queueing.handed_to_kueue(view, operation)
    for note in view.gpu_notes():
        decision.warnings.append(
            Violation(
                policy=GPU_COUNT,
                rule="gpu",
                key="resourceClaims",
                message=note,
                summary=note,
                fix="# create the ResourceClaimTemplate or ResourceClaim before the workload, so its "
                "devices are counted as they are",
                enforcement="Warn",
            )
        )
    decision.allowed = not decision.violations
    return decision


GPU_COUNT = "gpu-equivalents"
"""The name warnings about how GPUs were counted go under (they belong to no policy)."""


def _covers(budget: Any, view: WorkloadView) -> bool:
    """Whether a budget draws on the workload: it asks for GPUs the budget counts, and its
    effective labels match the budget's selector."""
    return view.gpus(budget.spec.resource_tuple) > 0 and budget.spec.selector.compiled.matches(view.labels())


def _covered_before(budget: Any, update: Update) -> bool:
    """Whether the budget drew on the object before the update. A required label the mutating
    webhook fills in on this very update (a default, or the Namespace's) counts as there before:
    the user did not move the object, Comptroller only wrote down what it already was."""
    old = update.old
    if old.gpus(budget.spec.resource_tuple) <= 0:
        return False
    labels = old.labels()
    new_labels = update.new.labels()
    filled = {k: new_labels[k] for k in update.new.defaulted() if k not in labels and k in new_labels}
    return bool(budget.spec.selector.compiled.matches({**labels, **filled} if filled else labels))


def _finished(view: WorkloadView) -> bool:
    """A Pod that ended: its GPUs are released and its final charge is the ledger's already."""
    status = view.manifest.get("status")
    return isinstance(status, Mapping) and status.get("phase") in ("Succeeded", "Failed")


def _validate(policy: Any, view: WorkloadView, ctx: Context) -> list[Violation]:
    pspec = policy.spec
    found: list[Violation] = []
    if pspec.labels is not None:
        found += labels_rule.validate(policy, view, ctx)
    if pspec.gpu is not None:
        found += gpu_rule.validate(policy, view, ctx)
    if pspec.expiry is not None:
        found += expiry_rule.validate(policy, view, ctx)
    return found


def _preexisting(
    policy: Any, found: list[Violation], update: Update, ctx: Context, *, matched_before: bool
) -> tuple[list[Violation], list[Violation]]:
    """`(introduced, carried)`: which of an UPDATE's violations the update itself brings, and which
    the object had already (see controller.engine.update for when a rule is judged in full)."""
    gpu = policy.spec.gpu
    resources = gpu.resource_tuple if gpu is not None else _DEFAULT_RESOURCES
    if not matched_before or update.gpus_grew(resources):
        return found, []
    before = {(v.rule, v.key) for v in _validate(policy, update.old, ctx)}
    if not before:
        return found, []
    introduced: list[Violation] = []
    carried: list[Violation] = []
    for violation in found:
        if (violation.rule, violation.key) in before and not _widened(violation, policy, update):
            carried.append(violation)
        else:
            introduced.append(violation)
    return introduced, carried


def _widened(violation: Violation, policy: Any, update: Update) -> bool:
    """Whether the update widened what this violation is about: a GPU template's instance type
    changed (rule gpu), or `expires_at` moved later or went away (rule expiry)."""
    if violation.rule == "gpu":
        gpu = policy.spec.gpu
        return bool(update.retyped(gpu.resource_tuple, gpu.key_tuple))
    if violation.rule == "expiry":
        key = policy.spec.expiry.key
        before, after = expiry_rule.expires_at(update.old, key), expiry_rule.expires_at(update.new, key)
        return update.expiry_extended(before, after)
    return False


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a snapshot says about every workload of one kind in one namespace."""

    namespace_labels: Mapping[str, str]
    policies: tuple[Any, ...]
    """Policies whose kind and namespace conditions hold; gpuOnly and the label selector depend
    on the workload."""
    exceptions: tuple[Any, ...]
    """FinOpsExceptions of the namespace, expired or not."""
    selective: bool
    """Whether any of the policies has a label selector."""


def _scope(snapshot: Snapshot, kind: str, namespace: str) -> _Scope:
    """Worked out once per kind and namespace of a snapshot, then read from `snapshot.memo`."""
    key = (kind, namespace)
    scope = snapshot.memo.get(key)
    if scope is None:
        ns_labels = namespace_labels_of(namespace, snapshot.namespace_labels)
        policies = tuple(
            p
            for p in snapshot.policies
            if placement_matches(p.spec.match, kind=kind, namespace=namespace, namespace_labels=ns_labels)
        )
        scope = _Scope(
            namespace_labels=ns_labels,
            policies=policies,
            exceptions=tuple(e for e in snapshot.exceptions if e.namespace == namespace),
            selective=any(p.spec.match.selector is not None for p in policies),
        )
        if len(snapshot.memo) >= _MAX_SCOPES:  # namespaces come and go; a snapshot may live long
            snapshot.memo.clear()
        snapshot.memo[key] = scope
    return scope


class _Matcher:
    """The policies matching the workload. Kind and namespace conditions come from the scope,
    GPUs are counted once, label selectors are judged again only when mutation changed the labels."""

    __slots__ = ("view", "_candidates", "_selective", "_version", "_matched")

    def __init__(self, scope: _Scope, view: WorkloadView) -> None:
        self.view = view
        self._candidates = [p for p in scope.policies if not p.spec.match.gpu_only or _gpus_for(p, view) > 0]
        self._selective = scope.selective
        self._version = -1
        self._matched: list[Any] = []

    def matching(self) -> list[Any]:
        if not self._selective:
            return self._candidates
        view = self.view
        if view.version != self._version:
            self._version = view.version
            labels = view.labels()
            self._matched = [
                p
                for p in self._candidates
                if p.spec.match.selector is None or p.spec.match.selector.compiled.matches(labels)
            ]
        return self._matched


def _made_by_a_controller(manifest: Mapping[str, Any], view: WorkloadView) -> bool:
    """A controller object made by another controller (a Deployment's ReplicaSet, a JobSet's Job)
    is not mutated: its parent was, and patching the child's template would make the parent see a
    template that differs from its own and roll out a new child, again and again. Pods are still
    mutated: nothing compares a pod with its template."""
    if view.is_pod:
        return False
    owners = (manifest.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(o, Mapping) and o.get("controller") for o in owners)


@dataclass(frozen=True, slots=True)
class PolicyMatch:
    """A policy that matches a workload, as `evaluate` would apply it."""

    policy: Any
    gpus: float
    """The workload's GPU-equivalents as this policy counts them (its own `gpu.resources`, if any)."""
    waived: frozenset[str]
    """Rule families a live FinOpsException waives for this policy on this workload."""


def projection_key_of(
    manifest: Mapping[str, Any], *, snapshot: Snapshot, namespace: str | None = None
) -> str:
    """The key budgets project the workload to its expiry under (`projection_key` of the policies
    matching it), as `evaluate` does: the operator's queue reserves a released pod up to it."""
    matches = matching_policies(manifest, snapshot=snapshot, namespace=namespace)
    return projection_key(match.policy for match in matches)


def matching_policies(
    manifest: Mapping[str, Any],
    *,
    snapshot: Snapshot,
    now: datetime | None = None,
    namespace: str | None = None,
) -> list[PolicyMatch]:
    """The policies of `snapshot` that match a workload (kind, namespace, namespaceSelector,
    gpuOnly with each policy's own GPU resources, label selector on the effective labels), in
    snapshot order. The operator's expiry and idle loops ask this instead of matching themselves,
    so they select exactly what admission judges. `waived` is worked out from the snapshot's
    FinOpsExceptions live at `now` (none without `now`)."""
    kinds = snapshot.kinds or BUILTIN_KINDS
    ns = namespace or (manifest.get("metadata") or {}).get("namespace") or ""
    spec = kinds.lookup(manifest)
    if spec is None or ns in snapshot.excluded_namespaces:
        return []
    where = _scope(snapshot, spec.kind, ns)
    view = view_of(manifest, spec, namespace=ns, snapshot=snapshot)
    live = [e for e in where.exceptions if e.spec.expires_at > now] if now is not None else []
    exceptions = _exceptions_for(live, view.labels())
    return [
        PolicyMatch(
            policy=policy,
            gpus=_gpus_for(policy, view),
            waived=frozenset(r for r in RULE_FAMILIES if _waived(exceptions, policy.name, r)),
        )
        for policy in _Matcher(where, view).matching()
    ]


def _gpus_for(policy: Any, view: WorkloadView) -> float:
    """The workload's GPUs as a gpuOnly policy counts them (its own `gpu.resources`, if any)."""
    gpu = policy.spec.gpu
    return view.gpus(gpu.resource_tuple if gpu is not None else _DEFAULT_RESOURCES)


def waived(
    exceptions: Iterable[Any],
    policy: str,
    rule: str,
    *,
    namespace: str,
    labels: Mapping[str, str],
    now: datetime,
) -> bool:
    """Whether a FinOpsException of `namespace`, live at `now`, whose selector matches `labels`
    waives `rule` of `policy` (a GPUBudget's name and "budget": the operator releases a pod that
    budget queued), as `evaluate` waives it."""
    live = [e for e in exceptions if e.namespace == namespace and e.spec.expires_at > now]
    return _waived(_exceptions_for(live, labels), policy, rule)


def _exceptions_for(exceptions: list[Any], labels: Mapping[str, str]) -> list[Any]:
    return [e for e in exceptions if e.spec.selector.compiled.matches(labels)] if exceptions else []


def _waived(exceptions: list[Any], policy: str, rule: str) -> bool:
    return any(e.spec.covers(policy, rule) for e in exceptions)


def _route(
    decision: Decision, found: list[Violation], enforcement: Enforcement, exceptions: list[Any]
) -> None:
    for violation in found:
        if enforcement != "Enforce":
            violation = _with_enforcement(violation, enforcement)
        if exceptions and _waived(exceptions, violation.policy, violation.rule):
            decision.exempted.append(violation)
        else:
            getattr(decision, _ROUTES[enforcement]).append(violation)


def _with_enforcement(violation: Violation, enforcement: Enforcement) -> Violation:
    return replace(violation, enforcement=enforcement)
