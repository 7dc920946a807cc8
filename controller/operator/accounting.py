"""The kopf side of metering: one daemon per GPUBudget that meters it every interval, persists its
ledger and status, announces thresholds, and keeps the metering finalizer on GPU pods.

Each tick of a budget: read the pod cache (`controller.k8s.pods.PodWatch`), recompute the
ledger (`budgets.advance`, pure), commit it (one compare-and-swap write), then project the status,
post threshold Events, set metrics. Once per interval, across all budgets, one tick also
reconciles finalizers: add to running GPU pods some budget draws on, release from ended pods
whose final charge every matching budget has committed.

Why kopf daemons: kopf stops them when peering pauses this replica and when the operator exits,
and starts them when it resumes, so only the active replica ever writes. kopf keeps its own
finalizer on GPUBudgets because of the daemons (a budget is deleted once its daemon stopped).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf

from controller import constants
from controller.engine.accelerators import (
    DEFAULT_EQUIVALENCE,
    NODE_LABELS,
    UNRESOLVED_CLAIM,
    ClaimIndex,
    Equivalence,
    NodeFacts,
    allocated_gpus,
    equivalence_of,
)
from controller.engine.api import Snapshot
from controller.engine.evaluation import waived as engine_waived
from controller.engine.loading import build_snapshot, compile_object
from controller.engine.models import FinOpsException
from controller.k8s import ledgers as ledger_store
from controller.k8s import pods as pod_api
from controller.k8s import workloads as workloads_api
from controller.k8s.inputs import compiled, listed, namespace_labels
from controller.k8s.pods import PodWatch
from controller.k8s.workloads import ApiError, Conflict, Workloads
from controller.metering import queue
from controller.metering.budgets import (
    Budget,
    advance,
    first_covering,
    held_by,
    project_status,
    threshold_message,
)
from controller.metering.usage import (
    Choices,
    Counting,
    Ledger,
    NewerLedgerFormat,
    PodRecord,
    count_pod,
    format_time,
    group_key,
    needs_finalizer,
    pod_gpu_total,
    pod_record,
    releasable,
)
from controller.operator import metrics
from controller.operator.settings import MeteringSettings, OperatorConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
NODE_TYPES_TTL = 60.0
NEW_NODE_TTL = 5.0


def end_at_deletion(record: PodRecord, now: datetime) -> PodRecord:
    """A pod that vanished while still running in our view stopped, at the latest, when we saw it go."""
    if record.started is None or record.end(now) is not None:
        return record
    return replace(record, finished=max(now, record.started))


@dataclass
class ExpiryPolicies:
    """The policies that say under which key a pod's expiry is read (`projection_key_of`, the
    engine's answer, as admission projects the pod), for the queue's reservations. Only those with
    a custom `expiry.key`: the others cannot change the answer. None when there are none: every pod
    is read under `expires_at`, as cheaply as that. Read by the pod cache's thread as it makes
    records; replaced whole by `refresh_expiry_policies`."""

    snapshot: Snapshot | None = None
    at: float = float("-inf")
    """time.monotonic() of the last listing."""


@dataclass
class MeteringState:
    """Everything the metering daemons share, kept in kopf's `memo.metering`."""

    config: OperatorConfig
    api: Workloads
    watch: PodWatch
    executor: ThreadPoolExecutor
    ledgers: dict[str, tuple[Ledger, str | None]] = field(default_factory=dict)
    """Committed ledger and its ConfigMap resourceVersion, by budget name."""
    budgets: dict[str, Budget] = field(default_factory=dict)
    """Budgets whose daemon runs (their latest spec)."""
    node_types: dict[str, str] = field(default_factory=dict)
    node_facts: dict[str, NodeFacts] = field(default_factory=dict)
    """Node name -> what its labels say about its GPUs (MIG strategy, product, replicas)."""
    node_types_at: float = float("-inf")
    table: Equivalence = DEFAULT_EQUIVALENCE
    """The GPU-equivalents table: built-in, with the cluster's GPUEquivalences over it."""
    claims: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(namespace, name) -> GPU-equivalents allocated to a ResourceClaim, per pod it is reserved
    for; kept after the claim is gone while a pod still needs it (its final charge)."""
    claims_at: float = float("-inf")
    claim_index: ClaimIndex = field(default_factory=ClaimIndex)
    """The ResourceClaimTemplates and ResourceClaims, as of the last listing: what a claim not
    allocated yet asks (a gated pod's, which is never scheduled), counted as admission counts it."""
    claim_index_version: int = 0
    """Bumped by every listing of `claim_index`: the recounts of pods it resolves are keyed by it."""
    recounts: dict[tuple[Any, ...], tuple[dict[str, float], float, Choices]] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)
    """Uids of gated pods told where they wait (one BudgetQueued Event each per operator run)."""
    released: dict[str, float] = field(default_factory=dict)
    """Uid -> when (monotonic) its gate was removed: the pod cache may show it gated a while yet."""
    listed: list[Budget] = field(default_factory=list)
    """Every GPUBudget in the cluster, listed at most once per interval: which budget holds a pod's
    cells (`first_covering`) must not depend on which daemons have ticked since a restart."""
    listed_at: float = float("-inf")
    last_sweep: float = float("-inf")
    sweep_task: asyncio.Task | None = None
    expiry: ExpiryPolicies = field(default_factory=ExpiryPolicies)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking API call on the write pool (bounded: spares the API server)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def known_budgets(self) -> list[Budget]:
        """Every budget listed, with the latest spec of those whose daemon runs, by name."""
        merged = {**{b.name: b for b in self.listed}, **self.budgets}
        return [merged[name] for name in sorted(merged)]

    def committed(self, budget: str) -> Ledger | None:
        entry = self.ledgers.get(budget)
        return entry[0] if entry else None


def build_state(config: OperatorConfig, api_client: Any) -> MeteringState:
    settings = config.metering
    expiry = ExpiryPolicies()
    watch = PodWatch(
        api_client,
        transform=record_maker(settings, expiry),
        on_deleted=end_at_deletion,
        tombstone_ttl=max(120.0, 4 * settings.interval),
    )
    return MeteringState(
        config=config,
        api=Workloads(api_client),
        watch=watch,
        executor=ThreadPoolExecutor(settings.max_concurrent_writes, thread_name_prefix="metering-api"),
        expiry=expiry,
    )


def record_maker(settings: MeteringSettings, expiry: ExpiryPolicies) -> Callable[[Any], PodRecord | None]:
    """The pod cache's transform: `pod_record`, its expiry read under the key `expiry`'s policies
    (as they are when the pod changes) say."""

    def make(pod: Any) -> PodRecord | None:
        return pod_record(pod, gpu_resources=settings.gpu_resources,
                          instance_type_keys=settings.instance_type_keys, policies=expiry.snapshot)

    return make


# -- which key a pod's expiry is read under ----------------------------------------------------------


def read_expiry_policies(api: Workloads, *, own_namespace: str, table: Equivalence) -> Snapshot | None:
    """The snapshot `ExpiryPolicies` holds: every FinOpsPolicy that compiles (as admission judges
    with them) and has a custom `expiry.key`, in admission's order, with the Namespaces' labels when
    one of them has a namespaceSelector; None when none has a custom key."""
    custom = [
        p for p in compiled(listed(api, ledger_store.POLICIES)).policies
        if p.spec.expiry is not None and p.spec.expiry.key != constants.DEFAULT_EXPIRY_KEY
    ]
    if not custom:
        return None
    selective = any(p.spec.match.namespace_selector is not None for p in custom)
    snapshot = build_snapshot(policies=custom, namespace_labels=namespace_labels(api) if selective else {},
                              excluded_namespaces={own_namespace})
    return replace(snapshot, equivalence=table)


def refresh_expiry_policies(state: MeteringState) -> None:
    """List the expiry policies now (blocking); on failure the ones known stay."""
    state.expiry.at = time.monotonic()
    try:
        snapshot = read_expiry_policies(state.api, own_namespace=state.config.namespace, table=state.table)
    except ApiError as error:
        log.warning("could not list FinOpsPolicies for the expiry key of queued pods: %s", error)
        return
    state.expiry.snapshot = snapshot


async def maybe_refresh_expiry_policies(state: MeteringState) -> None:
    """`refresh_expiry_policies`, at most once per metering interval, across budgets. A pod's record
    takes a change of policy at the pod's next change, or the pod cache's next relist."""
    if time.monotonic() - state.expiry.at >= state.config.metering.interval:
        state.expiry.at = time.monotonic()  # one listing, however many budgets tick meanwhile
        await state.call(refresh_expiry_policies, state)


def visible_pods(state: MeteringState) -> list[PodRecord]:
    """The cache's GPU pods, plus pods seen deleted recently (their charge is being closed)."""
    live = list(state.watch.records())
    seen = {p.uid for p in live}
    live.extend(t.record for t in state.watch.tombstones() if t.record.uid not in seen)
    return live


async def refresh_node_types(state: MeteringState, pods: Iterable[PodRecord] = ()) -> None:
    """Nodes (instance types and GPU facts) and the GPU-equivalents table, at most once a minute,
    or every few seconds while a pod runs on a node not known yet: a MIG slice or a shared GPU on
    it would count as a whole GPU until then."""
    since = time.monotonic() - state.node_types_at
    unknown = any(p.node and p.node not in state.node_facts for p in pods)
    if since < NODE_TYPES_TTL and not (unknown and since >= NEW_NODE_TTL):
        return
    state.node_types_at = time.monotonic()
    keys = state.config.metering.instance_type_keys
    try:
        labels = await state.call(pod_api.node_labels, state.api, (*keys, *NODE_LABELS))
    except ApiError as error:
        log.warning("could not list nodes for instance types and GPU facts: %s", error)
    else:
        state.node_types = {
            name: next(values[k] for k in keys if values.get(k))
            for name, values in labels.items()
            if any(values.get(k) for k in keys)
        }
        state.node_facts = {name: NodeFacts.of(values) for name, values in labels.items()}
    try:
        overrides = await state.call(state.api.list_objects, pod_api.GPU_EQUIVALENCES)
    except ApiError as error:  # the CRD not installed yet: the built-in table
        log.debug("could not list GPUEquivalences: %s", error)
        return
    models = []
    for obj in overrides:
        try:
            models.append(compile_object("GPUEquivalence", obj))
        except ValueError as error:
            log.error("GPUEquivalence %s is left out of metering: %s", obj["metadata"].get("name"), error)
    state.table = equivalence_of(sorted(models, key=lambda m: m.name))


async def refresh_claims(
    state: MeteringState, pods: Sequence[PodRecord], *, within: float | None = None
) -> None:
    """DRA claims (when some pod has claims), at most once per half metering interval (or
    `within` seconds): those allocated, and the index of ResourceClaimTemplates and ResourceClaims
    the claims not allocated yet are resolved with. A listing that fails keeps what is known."""
    if not any(p.claims for p in pods):  # entries, named or not yet generated from their template
        return
    if within is None:
        within = max(state.config.metering.interval / 2, 1.0)
    if time.monotonic() - state.claims_at < within:
        return
    state.claims_at = time.monotonic()
    try:
        listed = await state.call(state.api.list_objects, pod_api.RESOURCE_CLAIMS)
        claims = pod_api.allocated_claims(listed)
        # A MIG device counts by the profile its slice publishes, a partition by its GPU's
        # partition mode, a shared one by its capacity.
        devices = await state.call(pod_api.slice_devices, state.api) if claims else {}
    except ApiError as error:
        log.warning("could not list DRA ResourceClaims: %s", error)
        return
    state.claims = merged_claims(state.claims, claims, pods, table=state.table, devices=devices)
    try:
        index = await state.call(pod_api.claim_index, state.api, claims=listed, strict=True)
    except ApiError as error:
        log.warning("could not list DRA ResourceClaimTemplates (claims not allocated yet are counted as "
                    "last listed): %s", error)
        return
    state.claim_index = index
    state.claim_index_version += 1


def merged_claims(
    known: dict[tuple[str, str], dict[str, float]],
    claims: Iterable[dict[str, Any]],
    pods: Iterable[PodRecord],
    *,
    table: Equivalence,
    devices: dict[tuple[str, str, str], dict[str, Any]],
) -> dict[tuple[str, str], dict[str, float]]:
    """What each allocated claim is worth per pod it is reserved for, merged with what was known:
    a claim the controller-manager deleted when its pod ended stays known while a visible pod
    names it, so the pod's final charge does not fall to what its requests alone say."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for claim in claims:
        metadata = claim.get("metadata") or {}
        value = allocated_gpus(
            claim,
            table,
            attributes=lambda *key: (devices.get(key) or {}).get("attributes"),
            capacity=lambda *key: (devices.get(key) or {}).get("capacity"),
        )
        if value is None:
            continue
        sharers = max(len((claim.get("status") or {}).get("reservedFor") or ()), 1)
        out[(str(metadata.get("namespace", "")), str(metadata.get("name", "")))] = {
            k: v / sharers for k, v in value.items()
        }
    named = {(p.namespace, c) for p in pods for c in p.claims if c}
    for key, value in known.items():
        if key not in out and key in named:
            out[key] = value
    return out


def with_instance_types(pods: Iterable[PodRecord], node_types: dict[str, str]) -> list[PodRecord]:
    return [
        replace(p, instance_type=node_types[p.node]) if not p.instance_type and p.node in node_types else p
        for p in pods
    ]


def counted(state: MeteringState, pods: Iterable[PodRecord]) -> list[PodRecord]:
    """The pods with their instance types resolved from their nodes, and their GPU-equivalents
    counted again on their nodes (a MIG slice or a shared GPU is only known there) and from their
    DRA claims: allocated ones by their allocation, the others by what the claim index resolves
    them to. Memoized: a pod is recounted only when something it depends on changed."""
    counting = Counting(table=state.table, nodes=state.node_facts, claims=state.claims,
                        lookup=state.claim_index)
    resources = state.config.metering.gpu_resources
    out = []
    if len(state.recounts) > 100_000:
        state.recounts.clear()
    for pod in with_instance_types(pods, state.node_types):
        facts = state.node_facts.get(pod.node)
        if not pod.asks or (facts is None and not pod.claims):
            out.append(pod)
            continue
        allocations = tuple(tuple(sorted((state.claims.get((pod.namespace, c)) or {}).items()))
                            for c in pod.claims)
        # A claim not allocated counts what the index resolves it to: a new listing may change that.
        asked = any((pod.namespace, c) not in state.claims for c in pod.claims)
        key = (pod.uid, pod.asks, facts, id(state.table), allocations,
               state.claim_index_version if asked else None)
        found = state.recounts.get(key)
        if found is None:
            devices, choices = count_pod(pod.asks, namespace=pod.namespace, node=facts, counting=counting,
                                         claims=pod.claims)
            found = state.recounts[key] = (devices, pod_gpu_total(devices, resources, choices), choices)
        out.append(replace(pod, devices=found[0], gpus=found[1], choices=found[2]))
    return out


async def cells_of(state: MeteringState, budget: Budget) -> Callable[[PodRecord], str | None]:
    """Which pods' per-day cells `budget`'s ledger holds: those `first_covering` gives it, among
    every budget listed (at most once per interval), grouped by the team and cost-center labels.
    A pod no budget covers by its labels any more (a relabel admission did not judge), which a
    budget's ledger still charges, goes in the cells of the first by name of those charging it."""
    if time.monotonic() - state.listed_at >= state.config.metering.interval:
        try:
            state.listed = await state.call(list_budgets, state.api)
            state.listed_at = time.monotonic()
        except ApiError as error:
            log.warning("could not list GPUBudgets for showback cells: %s", error)
    known = state.known_budgets()
    labels = state.config.metering.group_labels

    def cell_of(pod: PodRecord) -> str | None:
        first = first_covering(pod, known) or next(  # `known` is in name order
            (b for b in known if pod.uid in held_by(b, state.committed(b.name))), None
        )
        return group_key(pod.labels, labels) if first is not None and first.name == budget.name else None

    return cell_of


async def load(state: MeteringState, budget: Budget) -> tuple[Ledger | None, str | None]:
    stored = await state.call(
        ledger_store.load_ledger, state.api, namespace=state.config.namespace, budget=budget.name
    )
    if stored.data is None:
        return None, stored.resource_version
    try:
        return Ledger.from_json(stored.data), stored.resource_version
    except NewerLedgerFormat:
        raise  # not broken: this operator is too old to read it (see `tick`)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        # Keeping the broken ledger would stop metering for good; visible pods are recounted.
        log.error("ledger of GPUBudget %s is unreadable (%s); restarting it from visible pods", budget.name,
                  error)
        return None, stored.resource_version


async def tick(state: MeteringState, body: Any, *, logger: logging.Logger | None = None) -> Ledger | None:
    """One metering tick of one budget. Returns the committed ledger (None: nothing committed)."""
    logger = logger or log
    budget = Budget.from_object(body)
    state.budgets[budget.name] = budget
    started = time.monotonic()
    if budget.name not in state.ledgers:
        try:
            state.ledgers[budget.name] = await load(state, budget)  # type: ignore[assignment]
        except NewerLedgerFormat as error:
            # A rollback to an older operator: recounting from visible pods would overwrite the
            # charges of every pod that ended this period. The budget keeps its last status, and
            # the pods it matches keep their finalizer, until an operator that reads the ledger runs.
            raise NewerLedgerFormat(
                f"its ledger (ConfigMap {state.config.namespace}/{ledger_store.ledger_name(budget.name)}) "
                f"was {error}. It is left untouched; run that Comptroller again, or delete the ConfigMap "
                "to restart the period from the pods in the cluster"
            ) from None
    previous, resource_version = state.ledgers[budget.name]

    now = state.clock()
    if previous is not None and previous.metered_at and (previous.metered_at - now).total_seconds() > 60:
        logger.warning("the clock (%s) is behind the last commit of GPUBudget %s's ledger (%s): metering "
                       "it as of that commit until the clock catches up", format_time(now), budget.name,
                       format_time(previous.metered_at))
    held = held_by(budget, previous)
    pods = [p for p in visible_pods(state) if budget.meters(p, held)]
    await refresh_node_types(state, pods)
    await refresh_claims(state, pods)
    await maybe_refresh_expiry_policies(state)
    pods = counted(state, pods)
    ledger, announce = advance(budget, previous, pods, now=now, cell_of=await cells_of(state, budget),
                               present=state.watch.uids(), group_labels=state.config.metering.group_labels)
    try:
        resource_version = await state.call(
            ledger_store.store_ledger,
            state.api,
            namespace=state.config.namespace,
            budget=budget.name,
            budget_uid=budget.uid,
            data=ledger.to_json(),
            resource_version=resource_version,
        )
    except Conflict:
        # Someone else committed (a peer during hand-over, or our own write whose answer was
        # lost): reread and recompute next time; metering is idempotent so nothing is lost.
        state.ledgers.pop(budget.name, None)
        metrics.METERING_TICKS.labels("conflict").inc()
        logger.info("ledger of GPUBudget %s changed under us; rereading it", budget.name)
        return None
    state.ledgers[budget.name] = (ledger, resource_version)

    running = sum(p.gpus_of(budget.resources) for p in pods if p.running(now))
    usage = queue.Usage(ledger.used_gpu_hours, ledger.period_end, held_by(budget, ledger))
    queued, reserved = queue.figures(budget, pods, usage, now=now)
    status = project_status(budget, ledger, running_gpus=running, previous=body.get("status"), now=now,
                            queued=queued, reserved=reserved)
    await state.call(ledger_store.patch_budget_status, state.api, name=budget.name, uid=budget.uid,
                     status=status)
    for threshold in announce:
        message = threshold_message(budget, ledger, threshold)
        logger.warning(message) if threshold >= 100 else logger.info(message)
        await state.call(
            state.api.emit_event,
            {"apiVersion": constants.API_VERSION, "kind": "GPUBudget", "metadata": dict(body["metadata"])},
            reason=constants.REASON_BUDGET_THRESHOLD,
            message=message,
            type_="Warning" if threshold >= 100 else "Normal",
        )
    reached = status["thresholdsReached"]
    metrics.observe_budget(budget.name, used=ledger.used_gpu_hours, limit=budget.gpu_hours, running=running,
                           cost=ledger.cost, threshold=max(reached) if reached else 0)
    metrics.METERING_TICK_SECONDS.labels(budget.name).set(time.monotonic() - started)
    metrics.METERING_TICKS.labels("committed").inc()
    return ledger


# -- finalizers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalizerPlan:
    add: tuple[PodRecord, ...]
    release: tuple[PodRecord, ...]


def plan_finalizers(
    pods: Iterable[PodRecord],
    budgets: Sequence[Budget],
    committed: Callable[[str], Ledger | None],
    *,
    now: datetime,
    protect: bool,
) -> FinalizerPlan:
    """Which pods get the metering finalizer and which are released from it (pure).

    A pod no budget draws on any more (its budget deleted) is released even while it runs: no
    ledger waits for its end, and a finalizer nothing would ever release again makes its deletion
    hang. A budget whose ledger charges the pod still draws on it, whatever its labels say now; so
    while some budget's ledger is not loaded (after a restart, a conflict), a pod no budget
    matches may still be one it charges, and keeps its finalizer until it is."""
    add: list[PodRecord] = []
    release: list[PodRecord] = []
    ledgers = {b.name: committed(b.name) for b in budgets}
    held = {b.name: held_by(b, ledgers[b.name]) for b in budgets}
    unknown = any(ledger is None for ledger in ledgers.values())
    for pod in pods:
        matching = [b for b in budgets if b.draws_on(pod, held[b.name])]
        if protect and needs_finalizer(pod, matched=bool(matching), now=now):
            add.append(pod)
        elif pod.finalizer and (
            releasable(pod, [ledgers[b.name] for b in matching], now=now) if matching else not unknown
        ):
            release.append(pod)
    return FinalizerPlan(tuple(add), tuple(release))


async def reconcile_finalizers(state: MeteringState, *, stopped: Any = None) -> FinalizerPlan:
    """Apply `plan_finalizers` to the cache's pods (tombstones are gone already: nothing to do)."""
    now = state.clock()
    # Every budget listed, not only those whose daemon ticked since this replica started: one that
    # has not committed its ledger yet holds the pods it matches (their final charge is not in it).
    plan = plan_finalizers(
        state.watch.records(),
        state.known_budgets(),
        state.committed,
        now=now,
        protect=state.config.metering.finalizer and not state.config.dry_run,
    )
    # Pods in namespaces the operator may not write in are metered without the finalizer.
    writable = workloads_api.WRITES.allows
    jobs = [
        *(state.call(pod_api.add_finalizer, state.api, namespace=p.namespace, name=p.name, uid=p.uid)
          for p in plan.add if writable(p.namespace)),
        *(state.call(pod_api.remove_finalizer, state.api, namespace=p.namespace, name=p.name, uid=p.uid)
          for p in plan.release),
    ]
    batch = max(1, state.config.metering.max_concurrent_writes * 4)
    failures = 0
    for start in range(0, len(jobs), batch):
        if stopped is not None and stopped:
            # Paused or exiting: the rest waits for the next active tick.
            for job in jobs[start:]:
                job.close()
            break
        for result in await asyncio.gather(*jobs[start:start + batch], return_exceptions=True):
            if isinstance(result, Exception):
                failures += 1
                log.debug("finalizer update failed: %s", result)
    if plan.add or plan.release:
        log.info("metering finalizer: added to %d pods, released from %d (%d failed)",
                 len(plan.add), len(plan.release), failures)
    return plan


def maybe_reconcile_finalizers(state: MeteringState, *, stopped: Any = None) -> asyncio.Task | None:
    """Start `reconcile_finalizers` in the background if no sweep ran within the last interval.

    In the background so that thousands of pod patches never delay a budget's next tick; it
    stops between batches once `stopped` (the starting daemon's flag: paused, exiting) is set.
    """
    running = state.sweep_task is not None and not state.sweep_task.done()
    if running or time.monotonic() - state.last_sweep < state.config.metering.interval:
        return None
    state.last_sweep = time.monotonic()

    async def sweep() -> None:
        try:  # queued pods first: thousands of finalizer patches must not delay a release
            await release_queue(state)
        except Exception as error:  # the next sweep retries; never kill the daemon over it
            log.warning("budget queue sweep failed: %s", error)
        try:
            await reconcile_finalizers(state, stopped=stopped)
        except Exception as error:
            log.warning("metering finalizer sweep failed: %s", error)
        finally:
            state.last_sweep = time.monotonic()

    state.sweep_task = asyncio.create_task(sweep(), name="metering finalizer sweep")
    return state.sweep_task


# -- queues -----------------------------------------------------------------------------------------


async def release_queue(state: MeteringState) -> queue.Plan:
    """Release the gated pods queueing budgets can pay for now (`queue.plan_release`, pure), and
    tell the others where they wait, once. Gates are removed concurrently, in batches (bounded like
    the finalizer sweep); a gang's pods all in the same sweep, and a removal that failed is retried
    by the next one."""
    pods = [p for p in visible_pods(state) if p.end(state.clock()) is None]
    if not any(p.gated for p in pods):
        return queue.Plan()
    await refresh_claims(state, pods)  # a gated pod's claims count what they ask, as at admission
    found = counted(state, pods)
    if any(p.gated and UNRESOLVED_CLAIM in (p.devices or {}) for p in found):
        # A claim (template) created since the last listing counts 1 GPU until listed: list again
        # before releasing on that guess (at most every CLAIMS_RELIST s, for one that never comes).
        version = state.claim_index_version
        await refresh_claims(state, pods, within=CLAIMS_RELIST)
        if state.claim_index_version != version:
            found = counted(state, pods)
    now = state.clock()
    # Every budget there is, not only those whose daemon has ticked since this operator started:
    # a pod a budget queues must not look unqueued for lack of its first tick (it waits for it).
    listed = await state.call(list_budgets, state.api)
    # The listed spec is the freshest (a raised gpuHours counts before the budget's next tick).
    by_name = {**state.budgets, **{b.name: b for b in listed}}
    budgets = list(by_name.values())
    usage = {
        budget.name: queue.Usage(ledger.used_gpu_hours, ledger.period_end, held_by(budget, ledger))
        for budget in budgets
        if (ledger := state.committed(budget.name)) is not None
    }
    exceptions = await state.call(read_exceptions, state.api)

    def waived(pod: PodRecord, budget: Budget) -> bool:
        return engine_waived(exceptions, budget.name, "budget", namespace=pod.namespace, labels=pod.labels,
                             now=now)

    plan = queue.plan_release(found, budgets, usage, now=now, waived=waived)
    writable = workloads_api.WRITES.allows
    recently = time.monotonic() - RELEASE_MEMORY
    state.released = {uid: at for uid, at in state.released.items() if at > recently}

    async def release(pod: PodRecord) -> None:
        remove = pod_api.remove_gate
        if await state.call(remove, state.api, namespace=pod.namespace, name=pod.name, uid=pod.uid):
            state.released[pod.uid] = time.monotonic()
            state.announced.discard(pod.uid)
            waited = f" after {format_duration_short(now - pod.created)}" if pod.created else ""
            await state.call(state.api.emit_event, _pod_ref(pod), reason=constants.REASON_RELEASED,
                             message=f"released by its GPU budget{waited}: it may be scheduled now")

    todo = []
    for pod in plan.release:
        if pod.uid in state.released:
            continue  # released already; the cache has not seen it yet
        if state.config.dry_run or not writable(pod.namespace):
            log.info("dry-run or read-only namespace: would release %s/%s from its budget queue",
                     pod.namespace, pod.name)
            continue
        todo.append(pod)
    batch = max(1, state.config.metering.max_concurrent_writes * 4)
    for start in range(0, len(todo), batch):
        for result in await asyncio.gather(*(release(p) for p in todo[start:start + batch]),
                                           return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("could not release a pod from its budget queue (next sweep retries): %s", result)
    for name, gangs in plan.waiting.items():
        budget = by_name.get(name)
        if budget is None or name not in usage:
            continue
        for place, gang in enumerate(gangs, start=1):
            message = queue.waiting_message(budget, usage[name], place=place, of=len(gangs), gang=gang)
            for pod in gang:
                if pod.uid not in state.announced:
                    state.announced.add(pod.uid)
                    await state.call(state.api.emit_event, _pod_ref(pod), reason=constants.REASON_QUEUED,
                                     type_="Warning", message=message)
    if plan.release:
        log.info("budget queues: released %d pods, %d gangs still waiting", len(plan.release),
                 sum(len(g) for g in plan.waiting.values()))
    return plan


CLAIMS_RELIST = 2.0
"""Seconds between listings of DRA claims while a gated pod's claim is not known."""
RELEASE_MEMORY = 300.0
"""Seconds a released pod is not released again while the pod cache still shows it gated."""


def read_exceptions(api: Workloads) -> tuple[FinOpsException, ...]:
    """Every FinOpsException that compiles (one admission leaves out waives nothing)."""
    return compiled(listed(api, ledger_store.EXCEPTIONS)).exceptions


def list_budgets(api: Workloads) -> list[Budget]:
    """Every GPUBudget that compiles (one the engine leaves out queues nothing)."""
    budgets = []
    for obj in api.iter_objects(ledger_store.BUDGETS):
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        try:
            budgets.append(Budget.from_object(obj))
        except ValueError as error:
            name = (obj.get("metadata") or {}).get("name")
            log.debug("GPUBudget %s left out of the queue: %s", name, error)
    return budgets


def _pod_ref(pod: PodRecord) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid}}


def format_duration_short(delta: Any) -> str:
    seconds = int(max(delta.total_seconds(), 0))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# -- kopf handlers -----------------------------------------------------------------------------------


@kopf.daemon(constants.GROUP, constants.VERSION, constants.BUDGET_PLURAL, cancellation_timeout=15.0)
async def meter_budget(name: str, body: Any, stopped: kopf.DaemonStopped, memo: Any, logger: Any,
                       **_: Any) -> None:
    """Meter one GPUBudget every `--metering-interval` seconds, while this replica is active."""
    state: MeteringState = memo.metering
    interval = state.config.metering.interval
    while not state.watch.ready():
        await stopped.wait(0.5)
        if stopped:
            return
    try:
        while not stopped:
            begun = time.monotonic()
            try:
                committed = await tick(state, body, logger=logger)
                if committed is None:
                    await stopped.wait(1.0)  # conflict: reread and retry soon
                    continue
                maybe_reconcile_finalizers(state, stopped=stopped)
            except NewerLedgerFormat as error:  # after a rollback: retried every interval, as errors are
                logger.error("GPUBudget %s is not metered: %s", name, error)
                metrics.METERING_TICKS.labels("refused").inc()
                # New GPU pods still get the finalizer; this budget's pods are held (not committed).
                maybe_reconcile_finalizers(state, stopped=stopped)
            except ValueError as error:
                logger.error("GPUBudget %s cannot be metered: %s", name, error)
                metrics.METERING_TICKS.labels("error").inc()
            except ApiError as error:
                logger.warning("metering GPUBudget %s failed, retrying next tick: %s", name, error)
                metrics.METERING_TICKS.labels("error").inc()
            await stopped.wait(max(0.0, interval - (time.monotonic() - begun)))
    finally:
        state.budgets.pop(name, None)
        if stopped.reason and kopf.DaemonStoppingReason.RESOURCE_DELETED in stopped.reason:
            state.ledgers.pop(name, None)
            state.listed = [b for b in state.listed if b.name != name]
            metrics.forget_budget(name)
            if not state.budgets:
                # The last budget is gone: nothing will meter the pods it protected; let them go.
                await reconcile_finalizers(state)
