"""The engine's public surface: what goes in (a Snapshot of configuration, a manifest, `now`)
and what comes out (a Decision). Every front door (webhook, operator, CLI) speaks only these types.

Nothing here does I/O or reads a clock: callers pass `now` and the state of the world in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Enforcement = Literal["Enforce", "Warn", "Audit"]
RuleFamily = Literal["labels", "gpu", "expiry", "budget"]


@dataclass(frozen=True, slots=True)
class Edit:
    """One value a fix sets: the manifest's value at `path` becomes `value` (maps created as needed).

    The engine's joint fix (controller.engine.fixing) applies edits, re-judges and repeats; the
    snippet, the JSON Patch and `comptroller fix` are all rendered from the same edits."""

    path: tuple[str | int, ...]
    """Keys and list indexes from the top of the manifest to the value."""
    value: Any
    note: str = ""
    """What the value is (a label's description), shown as a comment beside it."""
    choose: str = ""
    """Set when only a person can choose the value (a team, a cost center): what to put there.
    The value is then a placeholder that satisfies the rule, so the rest of the fix can be checked."""


@dataclass(frozen=True)
class Violation:
    """One thing wrong with a workload, and how to fix it."""

    policy: str
    """Name of the FinOpsPolicy (or GPUBudget, for rule `budget`) that was violated."""
    rule: RuleFamily
    message: str
    """What is wrong, naming the allowed values or pattern."""
    fix: str
    """A snippet to paste (YAML), or for budgets what would fit in what remains."""
    enforcement: Enforcement = "Enforce"
    key: str = ""
    """The label, resource or field the violation is about (for metrics and grouping)."""
    summary: str = ""
    """A one-line version of `message` for admission warnings (which must stay short)."""
    edits: tuple[Edit, ...] = ()
    """The same fix as data, for the joint fix; empty when nothing can be pasted (a spent budget)."""


@dataclass(slots=True)
class Decision:
    """The verdict on one workload. Mutation comes first, validation judges the mutated object."""

    resource: str
    """`Kind/namespace/name` (namespace empty for cluster-scoped or unknown)."""
    allowed: bool
    violations: list[Violation] = field(default_factory=list)
    """Violations of Enforce policies and budgets: any of these denies."""
    warnings: list[Violation] = field(default_factory=list)
    """Violations of Warn policies and budgets: admitted, shown to the user."""
    audit: list[Violation] = field(default_factory=list)
    """Violations of Audit policies and budgets: admitted, reported only."""
    patch: list[dict[str, Any]] = field(default_factory=list)
    """RFC 6902 JSON Patch the mutating webhook returns (empty when nothing to add)."""
    team: str = ""
    """The workload's `team` label after mutation, if any (for metrics)."""
    exempted: list[Violation] = field(default_factory=list)
    """Violations a FinOpsException waived: not enforced, kept for audit and reports."""
    fix: Any = None
    """For a denial whose caller asked (`controller.engine.fixing.explain`): the JointFix, one set of
    changes that admits the workload, which the denial message then prints instead of each
    violation's own fix."""
    draws: dict[str, Draw] = field(default_factory=dict)
    """Judged together with others (`evaluate(drawn=...)`): what this workload draws from each
    `Projected` budget that covers it, by name."""

    @property
    def all_violations(self) -> list[Violation]:
        return [*self.violations, *self.warnings, *self.audit]


@dataclass(frozen=True)
class Draw:
    """What one workload judged together with others draws from a `Projected` budget at worst."""

    held: float
    """GPU-hours of the GPUs its pods hold on their own, from now to its `expires_at` (or the
    period's end)."""
    claims: Mapping[str, float]
    """The GPUs of each ResourceClaim it shares with others (by name), held as long as any sharer."""
    hours: float
    """The hours it may run this period."""


@dataclass(frozen=True)
class Drawn:
    """What the workloads judged before one draw from a `Projected` budget, together."""

    gpu_hours: float = 0.0
    claims: Mapping[str, float] = field(default_factory=dict)
    """The longest a sharer holds each shared ResourceClaim so far, in hours: one that runs longer
    draws only the claim's extra hours, one that ends sooner nothing more."""

    def add(self, draw: Draw) -> Drawn:
        claims = dict(self.claims)
        gpu_hours = self.gpu_hours + draw.held
        for name, gpus in draw.claims.items():
            longest = claims.get(name, 0.0)
            gpu_hours += gpus * max(draw.hours - longest, 0.0)
            claims[name] = max(longest, draw.hours)
        return Drawn(gpu_hours, claims)

    def before(self, shared: Mapping[str, float], hours: float) -> float:
        """The GPU-hours drawn before a workload that shares the `shared` claims (GPUs by name) for
        `hours`, less what it counts itself: the hours of its shared claims others already drew."""
        counted = sum(gpus * min(hours, self.claims[name]) for name, gpus in shared.items()
                      if name in self.claims)
        return max(self.gpu_hours - counted, 0.0)


@dataclass(frozen=True)
class BudgetState:
    """What the engine needs to know of a GPUBudget's status (the operator's metering)."""

    used_gpu_hours: float = 0.0
    period_end: str | None = None
    """RFC 3339 end of the current period, if known."""


@dataclass(frozen=True)
class Snapshot:
    """Everything the engine decides with, besides the manifest and `now`.

    Built by the caller: from files (CLI), from the webhook's watch cache, or from the operator's
    listings. Policies, budgets and exceptions are already validated models (see `models`).
    """

    policies: tuple[Any, ...] = ()
    """controller.engine.models.FinOpsPolicy, each with `.name` and `.spec`."""
    budgets: tuple[Any, ...] = ()
    """controller.engine.models.GPUBudget, each with `.name`, `.spec` and `.state` (BudgetState)."""
    exceptions: tuple[Any, ...] = ()
    """controller.engine.models.FinOpsException, each with `.name`, `.namespace`, `.spec`."""
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Labels of each known Namespace, for namespaceSelector and inheritFromNamespace."""
    kinds: Any = None
    """controller.engine.workloads.KindRegistry; None means the built-in kinds
    (docs/crds.md#workload-kinds)."""
    equivalence: Any = None
    """controller.engine.accelerators.Equivalence, the GPU-equivalents table; None: the built-in one."""
    claims: Any = None
    """`(namespace, kind, name) -> devices` of the DRA ResourceClaims and ResourceClaimTemplates
    known (controller.engine.accelerators.ClaimLookup); None: none are known."""
    excluded_namespaces: frozenset[str] = frozenset({"kube-system"})
    """Namespaces no policy ever matches (kube-system and Comptroller's own)."""
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """The evaluator's own cache of what follows from this snapshot alone (which policies can
    match a kind in a namespace); a new snapshot starts empty, so it is never stale."""
