"""The kopf side of the lifecycle loops: expiry, idle scale-to-zero, the background audit, wake.

The three sweeps are cluster-wide, yet must run on the active replica only. kopf stops daemons
when peering pauses a replica and restarts them when it resumes, so the sweeps are driven from a
daemon on each FinOpsPolicy (the loops have nothing to do without policies anyway): every daemon
asks the shared `Lifecycle` to tick, and a tick runs each sweep whose interval has elapsed, at
most one of each kind at a time, whatever the number of policies. A paused replica has no
daemons, so it sweeps nothing.

Sweeps are synchronous (the kubernetes client is), so they run on a small executor of their own:
a long audit never occupies the threads kopf needs for its handlers, and never blocks the event
loop. Every sweep re-reads policies, exceptions and namespaces, so it always acts on what the
cluster says now, and a broken policy is skipped (its status says why; see `policies.py`).

Wake is event-driven: an `on.event` handler on every kind Comptroller puts to sleep, filtered on
the wake annotation, restores the workload as soon as the annotation appears (by `comptroller
wake` or by hand), including annotations set while the operator was down (kopf's initial list).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from controller import constants
from controller.engine import Snapshot
from controller.engine.models import FinOpsException, FinOpsPolicy
from controller.engine.workloads import BUILTIN_KINDS
from controller.k8s.inputs import compiled, listed, namespace_labels
from controller.k8s.ledgers import BUDGETS, EXCEPTIONS, POLICIES
from controller.k8s.pods import claim_index
from controller.k8s.workloads import ApiError, ApiResource, Conflict, Workloads
from controller.operator import metrics
from controller.operator.audit import Auditor, Finding
from controller.operator.brake import Brake
from controller.operator.effector import Effector, Outcome
from controller.operator.expiry import ExpirySweeper
from controller.operator.idle import idle_rules, sweep_idle
from controller.operator.settings import OperatorConfig
from controller.operator.webhook_scope import WebhookScope

log = logging.getLogger(__name__)

EQUIVALENCES = ApiResource(constants.GROUP, constants.VERSION, "gpuequivalences", "GPUEquivalence", False)
AUDIT_FIRST_DELAY = 30.0
"""Seconds after startup before the first audit (or the audit interval, if shorter)."""
WAKE_KINDS: tuple[tuple[str, str | None, str], ...] = (
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "replicasets"),
    ("apps", "v1", "daemonsets"),
    ("batch", "v1", "cronjobs"),
    # Batch workloads the idle loop suspends (`constants.SUSPENDABLE_KINDS`); custom kinds in the
    # version the cluster prefers, watched once their CRD is installed.
    ("batch", "v1", "jobs"),
    ("jobset.x-k8s.io", None, "jobsets"),
    ("kubeflow.org", None, "pytorchjobs"),
    ("kubeflow.org", None, "tfjobs"),
    ("kubeflow.org", None, "mpijobs"),
    ("ray.io", None, "rayjobs"),
)


@dataclass(frozen=True)
class Inputs:
    """What every sweep decides with, read fresh from the cluster: the engine's Snapshot, compiled
    by the loader every door uses (`controller.engine.loading`)."""

    snapshot: Snapshot

    @property
    def policies(self) -> tuple[FinOpsPolicy, ...]:
        return self.snapshot.policies

    @property
    def exceptions(self) -> tuple[FinOpsException, ...]:
        return self.snapshot.exceptions

    @property
    def namespace_labels(self) -> Mapping[str, Mapping[str, str]]:
        return self.snapshot.namespace_labels

    @property
    def excluded_namespaces(self) -> frozenset[str]:
        return self.snapshot.excluded_namespaces


def read_policies(workloads: Workloads, *, with_deleting: bool = False) -> tuple[FinOpsPolicy, ...]:
    """The FinOpsPolicies that compile, by name."""
    return compiled(listed(workloads, POLICIES, with_deleting=with_deleting)).policies


def read_inputs(workloads: Workloads, *, own_namespace: str) -> Inputs:
    snapshot = compiled(
        [*listed(workloads, POLICIES), *listed(workloads, EXCEPTIONS), *listed(workloads, EQUIVALENCES)],
        namespace_labels=namespace_labels(workloads),
        excluded_namespaces={own_namespace},
        claims=claim_index(workloads),
    )
    return Inputs(snapshot)


def _count_terminated(outcome: Outcome) -> None:
    metrics.EXPIRED_TERMINATED.inc()


def _count_scaled(outcome: Outcome) -> None:
    metrics.IDLE_SCALED_TO_ZERO.inc()


def _count_suspended(outcome: Outcome) -> None:
    metrics.IDLE_SUSPENDED.inc()


def _count_finding(finding: Finding) -> None:
    metrics.count_audit_finding(finding.policy, finding.rule, finding.team)


@dataclass
class Lifecycle:
    """The lifecycle loops of one operator process (kopf's `memo.lifecycle`)."""

    config: OperatorConfig
    workloads: Workloads
    effector: Effector
    expiry: ExpirySweeper
    auditor: Auditor
    webhook_scope: WebhookScope | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(3, "lifecycle"))
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _last: dict[str, float] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _idle_memory: dict[str, dict[str, str]] = field(default_factory=dict)
    """Dry-run: the idle notices and suspensions only reported, so each is reported once."""
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)
    _started: float = field(default_factory=time.monotonic)

    @classmethod
    def build(cls, config: OperatorConfig, workloads: Workloads) -> Lifecycle:
        dry_run = config.dry_run or config.expiry.dry_run
        effector = Effector(workloads, dry_run=dry_run)
        expiry = ExpirySweeper(
            workloads=workloads,
            effector=effector,
            brake=Brake(limit=config.expiry.max_terminations_per_minute),
            kinds=BUILTIN_KINDS,
            grace_period=timedelta(seconds=config.idle.grace_period),
            on_terminated=_count_terminated,
        )
        auditor = Auditor(
            workloads=workloads,
            kinds=BUILTIN_KINDS,
            max_results_per_report=config.audit.max_results_per_report,
            on_new_finding=_count_finding,
            reports_format=config.audit.reports_format,
        )
        scope = None
        if config.webhook_configuration:
            scope = WebhookScope(
                workloads,
                config.webhook_configuration,
                # The webhook judges with a policy until it is gone, so its defaults count until then.
                policies=lambda: list(read_policies(workloads, with_deleting=True)),
                skip_settled_pods=config.skip_settled_pods,
                queueing=lambda: any(
                    (b.get("spec") or {}).get("whenExhausted") == "Queue" for b in listed(workloads, BUDGETS)
                ),
            )
        if dry_run:
            log.warning("dry-run: expiry and idle only log and emit Events; no workload will be changed")
        return cls(
            config=config,
            workloads=workloads,
            effector=effector,
            expiry=expiry,
            auditor=auditor,
            webhook_scope=scope,
        )

    @property
    def tick_every(self) -> float:
        return max(
            min(self.config.expiry.interval, self.config.idle.interval, self.config.audit.interval), 0.5
        )

    # -- the sweeps (run in the executor) ----------------------------------------------------------

    def _inputs(self) -> Inputs:
        return read_inputs(self.workloads, own_namespace=self.config.namespace)

    def sweep_expiry(self) -> None:
        inputs, now = self._inputs(), self.clock()
        report = self.expiry.sweep(
            policies=inputs.policies,
            now=now,
            namespace_labels=inputs.namespace_labels,
            excluded_namespaces=inputs.excluded_namespaces,
            exceptions=inputs.exceptions,
        )
        if report.notified or report.terminated or report.held_back or report.failed:
            log.info(
                "expiry: %d notified, %d terminated, %d held back by the brake, %d failed",
                report.notified,
                report.terminated,
                report.held_back,
                report.failed,
            )

    def sweep_idle(self) -> None:
        inputs = self._inputs()
        rules = idle_rules(
            inputs.policies,
            namespace_labels=inputs.namespace_labels,
            excluded_namespaces=inputs.excluded_namespaces,
        )
        if not rules:
            return
        sweep_idle(
            rules=rules,
            workloads=self.workloads,
            effector=self.effector,
            now=self.clock(),
            grace_period=timedelta(seconds=self.config.idle.grace_period),
            prometheus_timeout=self.config.idle.prometheus_timeout,
            prometheus_url_override=self.config.idle.prometheus_url,
            on_scaled=_count_scaled,
            on_suspended=_count_suspended,
            memory=self._idle_memory if self.effector.dry_run else None,
        )

    def sweep_audit(self) -> None:
        inputs = self._inputs()
        metrics.AUDIT_TEAMS.learn(inputs.snapshot)  # the teams its findings' `team` label may name
        summary = self.auditor.run(snapshot=inputs.snapshot, now=self.clock())
        metrics.AUDIT_VIOLATIONS.clear()
        for (policy, rule), count in summary.by_policy_rule.items():
            metrics.AUDIT_VIOLATIONS.labels(policy, rule).set(count)

    # -- scheduling --------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Start each sweep whose interval has elapsed and that is not already running.

        Sweeps run as tasks of their own: a long audit must not hold up the next expiry sweep of
        the daemon that started it (with one policy there is one daemon).
        """
        if self.webhook_scope is not None:
            # Cheap (a GET and a LIST), so every tick: it also repairs a condition someone removed.
            self.webhook_scope.sync_soon()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for name, interval, fn in (
            ("expiry", self.config.expiry.interval, self.sweep_expiry),
            ("idle", self.config.idle.interval, self.sweep_idle),
            ("audit", self.config.audit.interval, self.sweep_audit),
        ):
            if (
                name in self._running
                or now - self._last.get(name, self._first_due(name, interval)) < interval
            ):
                continue
            self._running.add(name)
            self._last[name] = now
            task = asyncio.ensure_future(self._run(loop, name, fn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the sweeps running now (tests; a clean stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _first_due(self, name: str, interval: float) -> float:
        """A fictitious last run, so the first run comes at once, except the audit's: it waits
        a little (at most its interval), so a fresh operator first does the urgent work (expiry)
        instead of judging every workload at the same moment."""
        if name == "audit":
            return self._started - interval + min(interval, AUDIT_FIRST_DELAY)
        return -math.inf

    async def _run(self, loop: asyncio.AbstractEventLoop, name: str, fn: Callable[[], None]) -> None:
        try:
            await loop.run_in_executor(self.executor, fn)
        except ApiError as exc:
            log.warning("%s sweep failed, retried next interval: %s", name, exc)
        except Exception:
            log.exception("%s sweep crashed, retried next interval", name)
        finally:
            self._running.discard(name)

    # -- wake --------------------------------------------------------------------------------------

    def wake(self, obj: dict[str, Any]) -> Outcome | None:
        """Restore a workload whose wake annotation is set; retried on a concurrent change."""
        grace = timedelta(seconds=self.config.idle.grace_period)
        for _ in range(3):
            now = self.clock()
            note = f"neither idle nor expiry puts it back to sleep before {(now + grace):%Y-%m-%dT%H:%M:%SZ}"
            try:
                return self.effector.wake(obj, now=now, grace_note=note)
            except Conflict:
                metadata = obj["metadata"]
                resource = self.workloads.resolve(obj["kind"], group=obj["apiVersion"].rpartition("/")[0])
                fresh = self.workloads.get(resource, metadata.get("namespace"), metadata["name"])
                if fresh is None or constants.WAKE_ANNOTATION not in (
                    fresh["metadata"].get("annotations") or {}
                ):
                    return None
                obj = fresh
        log.warning(
            "wake: %s/%s kept changing under us; the next event retries", obj["kind"], obj["metadata"]["name"]
        )
        return None


@kopf.on.startup()
async def start_lifecycle(memo: Any, **_: Any) -> None:
    config: OperatorConfig = memo.config
    api_client = getattr(memo, "api_client", None)
    if api_client is None:
        from controller.k8s.config import load_api_client

        api_client = load_api_client(config.kubeconfig)
    memo.lifecycle = Lifecycle.build(config, Workloads(api_client))


@kopf.on.cleanup()
async def stop_lifecycle(memo: Any, **_: Any) -> None:
    lifecycle: Lifecycle | None = getattr(memo, "lifecycle", None)
    if lifecycle is not None:
        lifecycle.executor.shutdown(wait=False, cancel_futures=True)
        if lifecycle.webhook_scope is not None:
            lifecycle.webhook_scope.close()


@kopf.daemon(
    constants.GROUP, constants.VERSION, constants.POLICY_PLURAL, id="lifecycle", cancellation_timeout=30.0
)
async def drive_lifecycle(stopped: kopf.DaemonStopped, memo: Any, **_: Any) -> None:
    """Tick the shared lifecycle loops while this replica is active (see the module doc)."""
    lifecycle: Lifecycle = memo.lifecycle
    while not stopped:
        await lifecycle.tick()
        await stopped.wait(lifecycle.tick_every)


def _wake_handler(body: Any, type: str | None, memo: Any, **_: Any) -> None:  # noqa: A002 (kopf's name)
    if type == "DELETED":
        return
    obj = dict(body)
    if constants.WAKE_ANNOTATION not in ((obj.get("metadata") or {}).get("annotations") or {}):
        return
    memo.lifecycle.wake(obj)


for _group, _version, _plural in WAKE_KINDS:
    kopf.on.event(
        group=_group,
        version=_version,
        plural=_plural,
        id=f"wake-{_plural}",
        annotations={constants.WAKE_ANNOTATION: kopf.PRESENT},
    )(_wake_handler)
