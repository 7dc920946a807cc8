"""Cost per run: the GPU-hours and estimated cost of each run, written back onto the workload.

A *run* is a workload that finishes: a Job, JobSet, Kubeflow job (PyTorchJob, TFJob, MPIJob),
RayJob, a Pod nothing controls, or a kind added with `extra_run_kinds`. While it runs the operator
keeps `finops.comptroller.dev/gpu-hours` and `.../cost` on it (with `.../cost-metered-at`), updated
every 5 minutes (at the first tick past them: ticks are `--metering-interval` apart, 30 s by
default, so no sooner and at most one tick later); when it finishes it writes the final values, sets
`.../cost-final` and posts a `GPUCost` Event on it, which `kubectl describe` shows the data scientist.
`comptroller report --by workload` reads these annotations back.

The run of a pod
    Its top-level workload, found by walking `ownerReferences` up from the pod, with a GET of each
    controller (through the API, so it is what the garbage collector believes, not what a label
    claims). The run is the top-most object of a run kind on that chain:

    - JobSet pods: Pod -> Job -> JobSet; the JobSet is the run (not each child Job).
    - RayJob pods: Pod -> RayCluster -> RayJob; the RayCluster is passed through, the RayJob is
      the run. A RayCluster nobody owns, or a RayService's, is no run.
    - A Job owned by a CronJob is a run of its own: the walk never goes above it.
    - A Pod is a run only when nothing controls it. Pods of a ReplicaSet, StatefulSet or DaemonSet
      (Deployments, LeaderWorkerSets, ...) are never runs, and are dismissed without any call.
    - Above a controller of a kind Comptroller does not know (not one of the engine's workload
      kinds nor a run kind), the walk stops: the operator has no RBAC to read it, and the run is
      the top-most run kind below it (a JobSet under some custom trainer, say).

    The pod's direct controller comes from its record (`workload`, `Kind/name`); a Job's name and
    uid from the labels the Job controller sets on its pods (`batch.kubernetes.io/job-name`,
    `.../controller-uid`), since `workload` shortens CronJob children. Owners never change, so
    every object on a chain is fetched once and cached by uid (a name lookup is re-checked after
    `NAME_TTL`, for namesakes); each pod's run is cached until the pod is gone. A JobSet with 64
    child Jobs therefore costs 65 GETs once, not one per pod or per tick. Labels alone (say
    `jobset.sigs.k8s.io/jobset-name`) would save those GETs but anyone can write them on a bare pod.

Totals
    For each pod of the run, its GPU-hours from `started` to its end (`PodRecord.gpu_hours`, all
    the GPUs the operator counts, not clipped to any budget period), priced with `price_for` by
    the `pricePerGPUHour` of the first GPUBudget (by name, as `comptroller report` does) whose
    selector matches the pod's labels, for the pod's instance type (no budget: cost 0). Every
    tick recomputes each visible pod's charge from its timestamps, so late status updates are
    corrected. A pod that is no longer visible (deleted, including a Job's failed attempts or a
    JobSet restart) keeps its last charge in memory, frozen into the run's `departed` total: the
    pod cache shows a deleted pod's final state for a while (its tombstone), so that charge is its
    final one unless it was deleted while this replica was not ticking (then it is short by at most
    the time since the last tick).

Writes
    One JSON merge patch of `metadata.annotations` (with the run's uid, so a namesake created
    since is never written) per run per update, only when a rounded value changed: the first time
    a run is seen running, then at most every `WRITE_EVERY` (5 min) while it runs, and once when it
    finishes (with `cost-final`, then the Event). Only runs in namespaces the write scope allows
    (`--write-namespaces`) are followed at all; Deployments and StatefulSets are never written
    (they are not runs). "Finished" is asked of the workload itself (a GET) only once none of its
    pods runs any more: a Job's `Complete`/`Failed` condition, a JobSet's `Completed`/`Failed`, a
    Kubeflow job's `Succeeded`/`Failed`, a RayJob's `jobDeploymentStatus` `Complete`/`Failed`; a
    bare Pod has finished when its containers have. A workload that is not finished yet (a Job
    between retries, a suspended one) is asked again with a back-off up to `WRITE_EVERY`.
    A RayJob that keeps its cluster after the job (`shutdownAfterJobFinishes: false`) is charged
    for that cluster until it goes: its Event comes then.

Restarts and hand-overs: the annotation never goes down
    The in-memory state (departed pods' charges) dies with the process or is stale after a peering
    pause, so whenever this replica becomes active (its first daemon starts) it forgets every run
    and adopts each again from its annotations, with one GET. From the written GPU-hours `A` at
    `cost-metered-at` `t`, it keeps `carry = max(0, A - sum of the visible pods' GPU-hours up to t)`
    (recomputed from the same timestamps, so exactly the pods that had gone by then), and the total
    becomes `carry + the visible pods' charges now`. Every value written is also at least what is
    already there (`max`), so the annotation never goes down, whatever happened (a price lowered,
    a budget deleted, a changed `started`).

    Residual error of a total (never an over-count, up to rounding). A deleted pod is exact while
    the pod cache still shows its final state (its tombstone, kept `max(120 s, 4 ticks)`), which
    every tick of an active replica sees. What can be missed is the GPU time of a pod *after the
    last moment it was counted* when it vanished unseen: after the last tick, for a pod deleted
    while the pod watch was disconnected (the relist drops it; bounded by the disconnection plus a
    tick); after the last write (at most `WRITE_EVERY`, plus the time no replica was active), for
    a pod gone for longer than its tombstone when a replica (re)adopts the run after a restart or
    hand-over. Per such pod: its GPUs x min(that gap, the rest of its run). Plus the annotations'
    rounding (0.00005 GPU-hours, 0.005 of cost) once per adoption. A run whose workload is deleted
    within a tick of finishing (`ttlSecondsAfterFinished: 0`) has nothing left to write on.

Why kopf daemons, and on what: the loop must run on the active replica only. kopf stops daemons
when peering pauses a replica, so every GPUBudget and every FinOpsPolicy gets a `run-costs`
daemon (one of either suffices; they share one `RunCosts` in `memo.runs`, which ticks at most once
per `--metering-interval`, whatever the number of daemons).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import kopf

from controller import constants
from controller.engine.timestamps import parse_time
from controller.engine.workloads import BUILTIN_KINDS, KindRegistry
from controller.k8s import workloads as workloads_api
from controller.k8s.workloads import ApiError, NotFound, NotWritable
from controller.metering.budgets import Budget
from controller.metering.usage import PodRecord, format_time, price_for
from controller.operator import accounting
from controller.operator.accounting import MeteringState

log = logging.getLogger(__name__)

WRITE_EVERY = timedelta(minutes=5)
"""How often the annotations of a running run are rewritten (when their rounded value changed)."""
NAME_TTL = 600.0
"""Seconds a controller found by name (the first step of a walk) is trusted before it is fetched
again: a Job deleted and recreated under the same name is a different run."""
FORGET_AFTER = 3600.0
"""Seconds after which cached owners no pod refers to any more are dropped."""
NEVER_RUNS = frozenset({"ReplicaSet", "StatefulSet", "DaemonSet", "Deployment", "LeaderWorkerSet"})
"""Direct controllers whose pods belong to no run, known without a call."""
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
JOB_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
FINISHED_CONDITIONS = frozenset({"Complete", "Completed", "Succeeded", "Failed"})
"""Condition types that mark a run finished when True: Job (Complete, Failed), JobSet (Completed,
Failed), Kubeflow jobs (Succeeded, Failed), and whichever kind follows the same convention."""
RAY_FINISHED = frozenset({"Complete", "Failed"})


# -- pure pieces -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """The workload that is a run."""

    group: str
    kind: str
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Charge:
    hours: float = 0.0
    cost: float = 0.0

    def __add__(self, other: Charge) -> Charge:
        return Charge(self.hours + other.hours, self.cost + other.cost)


def format_hours(hours: float) -> str:
    return f"{max(hours, 0.0):.4f}"


def format_cost(cost: float) -> str:
    return f"{max(cost, 0.0):.2f}"


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


@dataclass(frozen=True)
class Written:
    """What a workload's annotations say (all None/False when it has none)."""

    hours: float | None = None
    cost: float | None = None
    metered_at: datetime | None = None
    final: bool = False

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Written:
        annotations = metadata.get("annotations") or {}
        return cls(
            hours=_float(annotations.get(constants.GPU_HOURS_ANNOTATION)),
            cost=_float(annotations.get(constants.COST_ANNOTATION)),
            metered_at=parse_time(annotations.get(constants.COST_METERED_AT_ANNOTATION)),
            final=bool(annotations.get(constants.COST_FINAL_ANNOTATION)),
        )


def finished(obj: Mapping[str, Any]) -> bool:
    """Whether a run's workload says it has finished (succeeded or failed for good)."""
    status = obj.get("status") or {}
    if obj.get("kind") == "Pod":
        return status.get("phase") in ("Succeeded", "Failed")
    if obj.get("kind") == "RayJob":
        deployment = status.get("jobDeploymentStatus")
        if deployment:
            return deployment in RAY_FINISHED
        return status.get("jobStatus") in ("SUCCEEDED", "FAILED", "STOPPED")
    return any(
        c.get("type") in FINISHED_CONDITIONS and c.get("status") == "True"
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    )


def prices_for(pod: PodRecord, budgets: Sequence[Budget]) -> tuple[float, str | None]:
    """Price of one GPU-hour of `pod` and the budget it comes from (the first whose selector
    matches, budgets in name order), or (0, None)."""
    for budget in budgets:
        if budget.selector.matches(pod.labels):
            return price_for(budget.prices, pod.instance_type), budget.name
    return 0.0, None


def charge_of(pod: PodRecord, price: float, *, now: datetime, until: datetime | None = None) -> Charge:
    """GPU-hours (and their cost) of `pod` from its start up to `until` (default: now)."""
    if pod.started is None:
        return Charge()
    hours = pod.gpu_hours(pod.started, until or now, now=now)
    return Charge(hours, hours * price)


def carry_over(written: Written, pods: Iterable[tuple[PodRecord, float]], *, now: datetime) -> Charge:
    """What the annotations hold beyond the visible pods: the pods gone by the time they were
    computed. `pods` are (pod, price) of the run's visible pods."""
    if written.hours is None:
        return Charge()
    if written.metered_at is None:
        # Written by hand or by something else: take it all as carried (an over-count at worst
        # by the visible pods' time until now, never an under-count).
        return Charge(written.hours, written.cost or 0.0)
    seen = Charge()
    for pod, price in pods:
        seen = seen + charge_of(pod, price, now=now, until=min(written.metered_at, now))
    return Charge(max(0.0, written.hours - seen.hours), max(0.0, (written.cost or 0.0) - seen.cost))


def event_message(run: RunRef, total: Charge, *, pods: int | None, budgets: Iterable[str]) -> str:
    """The GPUCost Event's text; `pods` None when not all of them are known (some went before
    this replica became active)."""
    priced = sorted(set(budgets))
    if priced:
        source = f"priced by GPUBudget {', '.join(priced)}"
    else:
        source = "no GPUBudget prices it"
    counted = "" if pods is None else f"{pods} GPU pod{'' if pods == 1 else 's'}; "
    return (f"{run.kind} {run.name} used {format_hours(total.hours)} GPU-hours, estimated cost "
            f"{format_cost(total.cost)} ({counted}{source})")


# -- owners ------------------------------------------------------------------------------------------


@dataclass
class _Node:
    """One object on an owner chain, as fetched."""

    group: str
    kind: str
    namespace: str
    name: str
    uid: str
    controller: Mapping[str, Any] | None
    used: float = 0.0


class Unresolved(Exception):
    """A pod whose run could not be found now (an API error): asked again next tick."""


def _controller(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in metadata.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller"):
            return ref
    return None


class Owners:
    """Finds the run of each pod by walking owner references with cached GETs (blocking: run it in
    a worker thread). See the module docstring for the rule."""

    def __init__(
        self,
        api: Any,
        *,
        run_kinds: Iterable[tuple[str, str]] = constants.RUN_KINDS,
        kinds: KindRegistry = BUILTIN_KINDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.run_kinds = frozenset(run_kinds)
        self.groups = {spec.kind: spec.group for spec in kinds}
        self.groups.update({kind: group for group, kind in self.run_kinds})
        self.clock = clock
        self._by_uid: dict[str, _Node] = {}
        self._by_name: dict[tuple[str, str, str, str], tuple[str, float]] = {}
        self._runs: dict[str, RunRef | None] = {}
        self.gets = 0
        """GETs made so far (tests, logs)."""

    # -- the cache of pods ----------------------------------------------------------------------

    def known(self, pod_uid: str) -> bool:
        return pod_uid in self._runs

    def run_of(self, pod_uid: str) -> RunRef | None:
        return self._runs.get(pod_uid)

    def forget(self, pod_uids: Iterable[str]) -> None:
        for uid in pod_uids:
            self._runs.pop(uid, None)

    def retain(self, pod_uids: Iterable[str]) -> None:
        """Forget the pods not in `pod_uids` (gone from the cache)."""
        keep = set(pod_uids)
        self.forget([uid for uid in self._runs if uid not in keep])

    def prune(self) -> None:
        """Drop owners nothing used for `FORGET_AFTER` seconds."""
        cutoff = self.clock() - FORGET_AFTER
        for uid in [uid for uid, node in self._by_uid.items() if node.used < cutoff]:
            del self._by_uid[uid]
        for key in [key for key, (uid, _) in self._by_name.items() if uid not in self._by_uid]:
            del self._by_name[key]

    def resolve_all(self, pods: Iterable[PodRecord]) -> int:
        """Find and cache the run of each pod; returns how many could not be resolved now."""
        failed = 0
        for pod in pods:
            try:
                self._runs[pod.uid] = self._resolve(pod)
            except Unresolved as error:
                failed += 1
                log.debug("run of pod %s/%s not resolved yet: %s", pod.namespace, pod.name, error)
        return failed

    # -- the walk --------------------------------------------------------------------------------

    def _resolve(self, pod: PodRecord) -> RunRef | None:
        kind, _, name = pod.workload.partition("/")
        if kind == "Pod" or not kind:
            return RunRef("", "Pod", pod.namespace, pod.name, pod.uid)
        job = next((pod.labels[k] for k in JOB_NAME_LABELS if pod.labels.get(k)), None)
        uid_hint = None
        if kind in ("Job", "CronJob") and job:
            kind, name = "Job", job
            uid_hint = next((pod.labels[k] for k in JOB_UID_LABELS if pod.labels.get(k)), None)
        elif kind in NEVER_RUNS:
            return None
        elif kind == "CronJob":
            # `workload` names the CronJob and the pod has no job-name label: ask the pod itself.
            ref = self._pod_controller(pod)
            if ref is None:
                return None
            kind, name, uid_hint = str(ref.get("kind")), str(ref.get("name")), ref.get("uid")
        group = self.groups.get(kind)
        if group is None:
            return None  # a controller of a kind we do not know: cannot read it, not a run we know
        node = self._by_name_lookup(group, kind, pod.namespace, name, uid_hint)
        if node is None:
            return None  # its controller is gone: the pod goes too
        chain = [node]
        while (ref := node.controller) is not None:
            parent_group = str(ref.get("apiVersion", "")).rpartition("/")[0]
            parent_kind = str(ref.get("kind", ""))
            if (parent_group, parent_kind) in constants.RUN_SCHEDULER_KINDS:
                break  # each Job a CronJob creates is a run
            if self.groups.get(parent_kind) != parent_group or len(chain) > 8:
                break  # a kind we do not know (or a chain too long to be sane): stop below it
            parent = self._by_uid_lookup(parent_group, parent_kind, pod.namespace, ref)
            if parent is None:
                break
            chain.append(parent)
            node = parent
        top = next((n for n in reversed(chain) if (n.group, n.kind) in self.run_kinds and n.kind != "Pod"),
                   None)
        if top is None:
            return None
        return RunRef(top.group, top.kind, top.namespace, top.name, top.uid)

    def _get(self, group: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        resource = self.api.resolve(kind, group=group)
        if resource is None:
            return None
        self.gets += 1
        try:
            obj: Mapping[str, Any] | None = self.api.get(resource, namespace, name)
            return obj
        except NotFound:
            return None
        except ApiError as error:
            if error.status == 403:
                log.warning("cannot read %s %s/%s for its cost per run (RBAC): %s", kind, namespace, name,
                            error)
                return None
            raise Unresolved(str(error)) from error

    def _pod_controller(self, pod: PodRecord) -> Mapping[str, Any] | None:
        obj = self._get("", "Pod", pod.namespace, pod.name)
        return _controller((obj or {}).get("metadata") or {})

    def _node(self, group: str, kind: str, obj: Mapping[str, Any]) -> _Node:
        metadata = obj.get("metadata") or {}
        node = _Node(group, kind, str(metadata.get("namespace", "")), str(metadata.get("name", "")),
                     str(metadata.get("uid", "")), _controller(metadata), self.clock())
        self._by_uid[node.uid] = node
        self._by_name[(group, kind, node.namespace, node.name)] = (node.uid, node.used)
        return node

    def _by_name_lookup(self, group: str, kind: str, namespace: str, name: str,
                        uid_hint: str | None) -> _Node | None:
        now = self.clock()
        cached = self._by_name.get((group, kind, namespace, name))
        if cached is not None:
            uid, fetched = cached
            node = self._by_uid.get(uid)
            fresh = uid == uid_hint if uid_hint else now - fetched < NAME_TTL
            if node is not None and fresh:
                node.used = now
                return node
        if uid_hint and uid_hint in self._by_uid:
            node = self._by_uid[uid_hint]
            node.used = now
            return node
        obj = self._get(group, kind, namespace, name)
        if obj is None:
            return None
        node = self._node(group, kind, obj)
        if uid_hint and node.uid != uid_hint:
            return None  # a namesake: the pod's own controller is gone
        return node

    def _by_uid_lookup(self, group: str, kind: str, namespace: str, ref: Mapping[str, Any]) -> _Node | None:
        uid = str(ref.get("uid", ""))
        node = self._by_uid.get(uid)
        if node is None:
            obj = self._get(group, kind, namespace, str(ref.get("name", "")))
            if obj is None:
                return None
            node = self._node(group, kind, obj)
            if node.uid != uid:
                return None  # the owner is gone and a namesake took its name
        node.used = self.clock()
        return node


# -- runs ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What this replica knows of one run (since it became active)."""

    ref: RunRef
    live: dict[str, Charge] = field(default_factory=dict)
    """This tick's charge of each visible pod, by pod uid."""
    departed: Charge = field(default_factory=Charge)
    """Frozen charges of the pods no longer visible."""
    departed_uids: set[str] = field(default_factory=set)
    carry: Charge = field(default_factory=Charge)
    """What the annotations held beyond the pods visible when the run was adopted."""
    written: Written | None = None
    """The annotations as last read or written (None: not adopted yet)."""
    written_at: datetime | None = None
    """When this replica (or the one before, per `cost-metered-at`) last wrote them."""
    final: bool = False
    started: bool = False
    """Some pod of it has started: there is something to say."""
    ended: bool = False
    """No visible pod of it is pending or running."""
    budgets: set[str] = field(default_factory=set)
    check_at: datetime | None = None
    check_every: float = 0.0
    fetched: Mapping[str, Any] | None = None
    """The workload as read by this tick's adoption (spares a second GET for `finished`)."""

    @property
    def total(self) -> Charge:
        total = self.carry + self.departed
        for charge in self.live.values():
            total = total + charge
        if self.written is not None:
            total = Charge(max(total.hours, self.written.hours or 0.0),
                           max(total.cost, self.written.cost or 0.0))
        return total

    @property
    def pods(self) -> int:
        return len(self.live) + len(self.departed_uids)


@dataclass
class TickReport:
    runs: int = 0
    writes: int = 0
    events: int = 0
    unresolved: int = 0


class RunCosts:
    """The cost-per-run loop of one operator process (kopf's `memo.runs`)."""

    def __init__(
        self,
        state: MeteringState,
        *,
        extra_run_kinds: Iterable[tuple[str, str]] = (),
        kinds: KindRegistry = BUILTIN_KINDS,
        write_every: timedelta = WRITE_EVERY,
    ) -> None:
        self.state = state
        self.run_kinds = frozenset((*constants.RUN_KINDS, *extra_run_kinds))
        self.owners = Owners(state.api, run_kinds=self.run_kinds, kinds=kinds)
        self.write_every = write_every
        self.runs: dict[str, Run] = {}
        self.gone: set[str] = set()
        """Runs whose workload is gone: their pods are ignored until they go too."""
        self._daemons = 0
        self._last_tick = float("-inf")
        self._task: asyncio.Task[TickReport] | None = None

    @property
    def tick_every(self) -> float:
        return max(self.state.config.metering.interval, 0.5)

    # -- activity (kopf daemons) ---------------------------------------------------------------

    def daemon_started(self) -> None:
        """A daemon starts. The first after none ran (startup, or resuming after a peering pause)
        begins a new active period: runs are adopted afresh from their annotations, which another
        replica may have advanced meanwhile."""
        if self._daemons == 0:
            self.runs.clear()
            self.gone.clear()
        self._daemons += 1

    def daemon_stopped(self) -> None:
        self._daemons = max(0, self._daemons - 1)
        if self._daemons == 0 and self._task is not None and not self._task.done():
            self._task.cancel()  # paused or exiting: writes are for the active replica

    async def tick_if_due(self) -> None:
        """Start a tick in the background if the interval has elapsed and none is running."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done():
            return
        if loop.time() - self._last_tick < self.tick_every:
            return
        self._last_tick = loop.time()
        self._task = asyncio.create_task(self._guarded_tick(), name="cost per run")

    async def _guarded_tick(self) -> TickReport:
        try:
            return await self.tick()
        except asyncio.CancelledError:
            raise
        except Exception:  # the next tick retries; never kill the daemons over it
            log.exception("cost per run: tick failed")
            return TickReport()

    # -- one tick --------------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        state = self.state
        report = TickReport()
        if not state.watch.ready():
            return report
        budgets = sorted(state.budgets.values(), key=lambda b: b.name)
        if any(key != "default" for b in budgets for key in b.prices):
            await accounting.refresh_node_types(state)
        now = state.clock()
        writable = workloads_api.WRITES.allows
        pods = [p for p in accounting.visible_pods(state) if writable(p.namespace)]
        pods = accounting.with_instance_types(pods, state.node_types)

        unknown = [p for p in pods if not self.owners.known(p.uid)]
        if unknown:
            report.unresolved = await state.call(self.owners.resolve_all, unknown)

        by_run: dict[str, list[tuple[PodRecord, float, str | None]]] = {}
        refs: dict[str, RunRef] = {}
        referenced: set[str] = set()
        for pod in pods:
            ref = self.owners.run_of(pod.uid)
            if ref is None:
                continue
            referenced.add(ref.uid)
            if ref.uid in self.gone:
                continue
            price, budget = prices_for(pod, budgets)
            by_run.setdefault(ref.uid, []).append((pod, price, budget))
            refs[ref.uid] = ref

        for uid, ref in refs.items():
            if uid not in self.runs:
                self.runs[uid] = Run(ref)
        adopting = [run for run in self.runs.values() if run.written is None]
        if adopting:
            await asyncio.gather(*(self._adopt(run, by_run.get(run.ref.uid, []), now) for run in adopting))

        for uid, run in list(self.runs.items()):
            self._update(run, by_run.get(uid, []), now)
        report.runs = len(self.runs)
        results = await asyncio.gather(*(self._settle(run, now) for run in list(self.runs.values())))
        for wrote, evented in results:
            report.writes += wrote
            report.events += evented

        for uid, run in list(self.runs.items()):
            run.fetched = None
            if not run.live and (run.final or uid in self.gone or not run.started or self._current(run)):
                # Nothing visible any more and the annotations say it all (or nothing to say):
                # a pod that shows up later re-adopts it from them, exactly.
                del self.runs[uid]
        self.gone &= referenced
        self.owners.retain(p.uid for p in pods)
        self.owners.prune()
        if report.writes or report.events:
            log.info("cost per run: %d runs followed, %d annotations written, %d GPUCost Events",
                     report.runs, report.writes, report.events)
        return report

    def _update(self, run: Run, pods: Sequence[tuple[PodRecord, float, str | None]], now: datetime) -> None:
        live = {pod.uid: charge_of(pod, price, now=now) for pod, price, _ in pods
                if pod.uid not in run.departed_uids}
        for uid, charge in run.live.items():
            if uid not in live:
                run.departed = run.departed + charge
                run.departed_uids.add(uid)
        self.owners.forget(uid for uid in run.live if uid not in live)
        run.live = live
        run.budgets.update(budget for _, _, budget in pods if budget)
        run.started = run.started or any(pod.started is not None for pod, _, _ in pods)
        run.ended = all(pod.end(now) is not None for pod, _, _ in pods)
        if not run.ended:
            run.check_at, run.check_every = None, 0.0  # running again (a retry): ask at once next time

    def _current(self, run: Run) -> bool:
        written = run.written or Written()
        total = run.total
        return (written.hours is not None and format_hours(total.hours) == format_hours(written.hours)
                and format_cost(total.cost) == format_cost(written.cost or 0.0))

    # -- API calls --------------------------------------------------------------------------------

    def _resource(self, ref: RunRef) -> Any:
        return self.state.api.resolve(ref.kind, group=ref.group)

    async def _get(self, ref: RunRef) -> Mapping[str, Any] | None:
        resource = self._resource(ref)
        if resource is None:
            return None
        obj = await self.state.call(self.state.api.get, resource, ref.namespace, ref.name)
        if obj is None or (obj.get("metadata") or {}).get("uid") != ref.uid:
            return None
        obj.setdefault("kind", ref.kind)
        return obj

    async def _adopt(
        self, run: Run, pods: Sequence[tuple[PodRecord, float, str | None]], now: datetime
    ) -> None:
        """Read what the run's annotations already hold (see "Restarts" in the module doc)."""
        try:
            obj = await self._get(run.ref)
        except ApiError as error:
            log.debug("cost per run: cannot read %s yet: %s", run.ref, error)
            return  # adopted next tick
        if obj is None:
            self.gone.add(run.ref.uid)
            return
        written = Written.of(obj.get("metadata") or {})
        run.fetched = obj
        run.written = written
        run.written_at = written.metered_at
        run.final = written.final
        run.carry = carry_over(written, [(pod, price) for pod, price, _ in pods], now=now)

    async def _settle(self, run: Run, now: datetime) -> tuple[int, int]:
        """Write what is due for one run; returns (writes, events)."""
        if run.written is None or run.ref.uid in self.gone or not run.started:
            return 0, 0
        if not run.final and run.ended and (run.check_at is None or now >= run.check_at):
            done = await self._finished(run, now)
            if done is None:
                self.gone.add(run.ref.uid)
                return 0, 0
            if done:
                if not await self._write(run, now, final=True):
                    return 0, 0
                await self.state.call(
                    self.state.api.emit_event,
                    {"apiVersion": self._api_version(run.ref), "kind": run.ref.kind,
                     "metadata": {"name": run.ref.name, "namespace": run.ref.namespace, "uid": run.ref.uid}},
                    reason=constants.REASON_GPU_COST,
                    message=event_message(run.ref, run.total, pods=None if run.carry.hours else run.pods,
                                          budgets=run.budgets),
                    now=now,
                )
                return 1, 1
        due = run.written_at is None or now - run.written_at >= self.write_every
        if due and not self._current(run):
            return int(await self._write(run, now, final=False)), 0
        return 0, 0

    def _api_version(self, ref: RunRef) -> str:
        resource = self._resource(ref)
        if resource is not None:
            return str(resource.api_version)
        return "v1" if not ref.group else ref.group

    async def _finished(self, run: Run, now: datetime) -> bool | None:
        """Whether the run's workload has finished (None: it is gone). A bare pod's own record
        says so; other kinds are asked, with a back-off while they are not finished."""
        if run.ref.kind == "Pod":
            return True  # every container of it has terminated (`ended`)
        obj, run.fetched = run.fetched, None
        if obj is None:
            try:
                obj = await self._get(run.ref)
            except ApiError as error:
                log.debug("cost per run: cannot read %s: %s", run.ref, error)
                return False
        if obj is None:
            return None
        if finished(obj):
            return True
        run.check_every = min(max(2 * run.check_every, self.tick_every), self.write_every.total_seconds())
        run.check_at = now + timedelta(seconds=run.check_every)
        return False

    async def _write(self, run: Run, now: datetime, *, final: bool) -> bool:
        """One merge patch of the run's annotations. False when it could not be written."""
        if (run.ref.group, run.ref.kind) not in self.run_kinds:
            raise AssertionError(f"{run.ref} is not a run")  # never a Deployment or StatefulSet
        total = run.total
        annotations = {
            constants.GPU_HOURS_ANNOTATION: format_hours(total.hours),
            constants.COST_ANNOTATION: format_cost(total.cost),
            constants.COST_METERED_AT_ANNOTATION: format_time(now),
        }
        if final:
            annotations[constants.COST_FINAL_ANNOTATION] = format_time(now.replace(microsecond=0))
        body = {"metadata": {"uid": run.ref.uid, "annotations": annotations}}
        resource = self._resource(run.ref)
        if resource is None:
            return False
        try:
            await self.state.call(self.state.api.patch, resource, run.ref.namespace, run.ref.name, body)
        except NotWritable:
            return False
        except ApiError as error:
            if isinstance(error, NotFound) or error.status in (409, 422):
                # Gone, or a namesake (our uid in the patch no longer matches): not this run.
                self.gone.add(run.ref.uid)
                return False
            log.warning("cost per run: could not annotate %s, retried next tick: %s", run.ref, error)
            return False
        run.written = Written(float(annotations[constants.GPU_HOURS_ANNOTATION]),
                              float(annotations[constants.COST_ANNOTATION]), now, final or run.final)
        run.written_at = now
        run.final = run.final or final
        return True


# -- kopf handlers -----------------------------------------------------------------------------------


@kopf.on.startup()
async def start_run_costs(memo: Any, **_: Any) -> None:
    state: MeteringState | None = getattr(memo, "metering", None)
    if state is not None:
        memo.runs = RunCosts(state)


async def drive_run_costs(stopped: kopf.DaemonStopped, memo: Any, **_: Any) -> None:
    """Tick the shared cost-per-run loop while this replica is active (see the module doc)."""
    runs: RunCosts | None = getattr(memo, "runs", None)
    if runs is None:
        return
    runs.daemon_started()
    try:
        while not stopped:
            await runs.tick_if_due()
            await stopped.wait(runs.tick_every)
    finally:
        runs.daemon_stopped()


for _plural in (constants.BUDGET_PLURAL, constants.POLICY_PLURAL):
    kopf.daemon(constants.GROUP, constants.VERSION, _plural, id="run-costs",
                cancellation_timeout=15.0)(drive_run_costs)
