"""The only code that changes workloads: delete, scale to zero, suspend, restore, annotate.

Every loop (expiry, idle, wake) decides elsewhere and hands the effector a workload and what to
do with it. Every action honours dry-run: it then changes nothing, logs `would ...`, and still
emits the Event (marked `[dry-run]`) so a cluster admin can try a policy before trusting it. Every
action returns an `Outcome` saying what it did or would do.

Idle batch workloads (Job, JobSet, Kubeflow jobs, RayJob) are never deleted: a `GPUIdle` notice
(Event + annotations), then, where the policy says `Suspend`, their suspend flag (`spec.suspend`;
`spec.runPolicy.suspend` for PyTorchJob, TFJob and MPIJob), which makes their controller stop the
pods and keep the object. Wake sets the flag back, and only on a suspension the idle loop made
(annotation `idle-suspended-at`): a Job suspended by its owner, by hand or by Kueue stays suspended.

How each kind is terminated (kube-janitor deletes everything; we keep what can be kept):
  Pod, Job, and ML kinds (PyTorchJob, RayJob, ...)  deleted, background propagation
  Deployment, StatefulSet, ReplicaSet               scaled to zero, replicas remembered
  CronJob                                           suspended; its running Jobs deleted
  DaemonSet                                         parked: a nodeSelector no node matches

Scaling to zero records `original-replicas` and never overwrites an existing one: after a crash
between two steps, or a second sweep, the workload's real size must not be replaced by 0. Writes
carry the `resourceVersion` that was read, so a concurrent change makes the API server refuse
the write (409) instead of us undoing someone's edit; the next sweep decides again.

With a HorizontalPodAutoscaler on the workload we scale the workload itself and leave the HPA
as it is: the HPA controller stops acting on a target whose replicas are 0 (condition
ScalingActive=False, ScalingDisabled) and resumes when the replicas are restored, which is the
scale-to-zero contract KEDA relies on. (kube-downscaler lowers the HPA's minReplicas instead,
which cannot reach zero.) We record the HPA's name and minReplicas so wake restores at least that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller import constants
from controller.engine.durations import format_duration
from controller.k8s.workloads import ApiResource, Workloads, object_ref

log = logging.getLogger(__name__)

SCALABLE_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})
DELETED_BUILTIN_KINDS = frozenset({"Pod", "Job"})
PARKING_NODE_SELECTOR = {constants.EXPIRED_ANNOTATION: "true"}


def termination_of(kind: str) -> str:
    """How a top-level workload of `kind` is terminated: delete | scale | suspend | park."""
    if kind in SCALABLE_KINDS:
        return "scale"
    if kind == "CronJob":
        return "suspend"
    if kind == "DaemonSet":
        return "park"
    return "delete"


@dataclass(frozen=True)
class Outcome:
    """What an action did (or, in dry-run, would have done)."""

    action: str
    """delete | scale | suspend | park | notify | restore | clear | skip"""
    target: str
    """Kind/namespace/name"""
    done: bool
    """True when the change was made (False in dry-run, or when the object was already gone)."""
    dry_run: bool = False
    detail: str = ""

    def __str__(self) -> str:
        verb = "would " if self.dry_run else ("" if self.done else "could not ")
        return f"{verb}{self.action} {self.target}" + (f": {self.detail}" if self.detail else "")


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def current_replicas(obj: Mapping[str, Any]) -> int:
    # An unset spec.replicas means 1 for every built-in scalable kind.
    replicas = (obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def stamp(moment: datetime) -> str:
    """RFC 3339 in UTC, to the second: how every annotation of ours writes a time."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_stamp = stamp


def suspend_path(kind: str) -> tuple[str, ...] | None:
    """Where the boolean that suspends a batch kind lives (`constants.SUSPENDABLE_KINDS`)."""
    entry = constants.SUSPENDABLE_KINDS.get(kind)
    return entry[1] if entry else None


def is_suspended(obj: Mapping[str, Any]) -> bool:
    """Whether a batch workload's suspend flag is set (by anyone: us, its owner, Kueue, a person)."""
    path = suspend_path(obj.get("kind", ""))
    value: Any = obj
    for key in path or ("-",):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value is True


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """`("spec", "runPolicy", "suspend"), True` -> `{"spec": {"runPolicy": {"suspend": True}}}`."""
    body: Any = value
    for key in reversed(path):
        body = {key: body}
    return dict(body)


def _wake_command(obj: Mapping[str, Any]) -> str:
    metadata = obj["metadata"]
    return f"comptroller wake {obj['kind']}/{metadata['name']} -n {metadata.get('namespace')}"


class Effector:
    """Carries out decisions on the cluster, or in dry-run only says what it would do."""

    def __init__(self, workloads: Workloads, *, dry_run: bool = False) -> None:
        self.workloads = workloads
        self.dry_run = dry_run

    def _resource(self, obj: Mapping[str, Any]) -> ApiResource:
        api_version = obj.get("apiVersion") or "v1"
        group = api_version.rpartition("/")[0]
        version = api_version.rpartition("/")[2]
        resource = self.workloads.resolve(obj["kind"], group=group, version=version)
        if resource is None:
            raise LookupError(f"{obj['kind']} ({api_version}) is not served by this cluster")
        return resource

    def _event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, now: datetime, type_: str = "Normal"
    ) -> None:
        prefix = "[dry-run] " if self.dry_run else ""
        self.workloads.emit_event(obj, reason=reason, message=prefix + message, type_=type_, now=now)

    def _patch(self, obj: Mapping[str, Any], body: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        # resourceVersion in a merge patch is a precondition: 409 if the object changed since read.
        body.setdefault("metadata", {})["resourceVersion"] = metadata.get("resourceVersion")
        self.workloads.patch(self._resource(obj), metadata.get("namespace"), metadata["name"], body)

    # -- expiry ----------------------------------------------------------------------------------

    def notify_expiring(
        self, obj: Mapping[str, Any], *, expires_at: datetime, policy: str, now: datetime
    ) -> Outcome:
        """Event `ExpiringSoon`, and a note on the workload so it is sent once per expires_at.

        The note is written first: if writing it fails, the next sweep tries again, and no second
        Event has been sent for nothing.
        """
        target = object_ref(obj)
        message = (
            f"expires at {_stamp(expires_at)} (in {format_duration(expires_at - now)}) "
            f"under policy {policy}; it will then be {_PAST[termination_of(obj['kind'])]}. "
            f"To keep it, set a later expires_at (within the policy's maxLifetime)."
        )
        if self.dry_run:
            log.info("dry-run: would note %s as notified of its expiry at %s", target, _stamp(expires_at))
            self._event(obj, reason=constants.REASON_EXPIRING_SOON, message=message, now=now, type_="Warning")
            return Outcome("notify", target, done=False, dry_run=True, detail=message)
        self._patch(
            obj,
            {"metadata": {"annotations": {constants.EXPIRING_SOON_NOTIFIED_ANNOTATION: _stamp(expires_at)}}},
        )
        self._event(obj, reason=constants.REASON_EXPIRING_SOON, message=message, now=now, type_="Warning")
        log.info("notified %s: %s", target, message)
        return Outcome("notify", target, done=True, detail=message)

    def terminate(
        self, obj: Mapping[str, Any], *, expires_at: datetime, policy: str, now: datetime
    ) -> Outcome:
        """Terminate an expired top-level workload the way its kind allows (see module doc)."""
        how = termination_of(obj["kind"])
        target = object_ref(obj)
        message = f"expired at {_stamp(expires_at)} under policy {policy}; {_PAST[how]}"
        if how == "scale":
            message += f" (was {current_replicas(obj)} replicas; `comptroller wake` restores it)"
        if self.dry_run:
            log.warning(
                "dry-run: would %s %s (expired at %s, policy %s)", how, target, _stamp(expires_at), policy
            )
            self._event(obj, reason=constants.REASON_EXPIRED, message=message, now=now, type_="Warning")
            return Outcome(how, target, done=False, dry_run=True, detail=message)
        done = getattr(self, f"_terminate_by_{how}")(obj, now=now)
        if done:
            self._event(obj, reason=constants.REASON_EXPIRED, message=message, now=now, type_="Warning")
            log.warning("%s %s: expired at %s (policy %s)", _PAST[how], target, _stamp(expires_at), policy)
        return Outcome(how, target, done=done, detail=message)

    def _terminate_by_delete(self, obj: Mapping[str, Any], *, now: datetime) -> bool:
        metadata = obj["metadata"]
        return self.workloads.delete(
            self._resource(obj),
            metadata.get("namespace"),
            metadata["name"],
            uid=metadata.get("uid"),
            propagation="Background",
        )

    def _terminate_by_scale(self, obj: Mapping[str, Any], *, now: datetime) -> bool:
        annotations = {constants.EXPIRED_ANNOTATION: _stamp(now)}
        annotations.update(self._scale_down_annotations(obj))
        self._patch(obj, {"metadata": {"annotations": annotations}, "spec": {"replicas": 0}})
        return True

    def _terminate_by_suspend(self, obj: Mapping[str, Any], *, now: datetime) -> bool:
        self._patch(
            obj,
            {
                "metadata": {"annotations": {constants.EXPIRED_ANNOTATION: _stamp(now)}},
                "spec": {"suspend": True},
            },
        )
        # Suspending stops new runs; the Jobs it already started would run (and bill) on.
        jobs = self.workloads.resolve("Job", group="batch")
        namespace = obj["metadata"].get("namespace")
        for ref in (obj.get("status") or {}).get("active") or []:
            self.workloads.delete(jobs, namespace, ref["name"], uid=ref.get("uid"))
        return True

    def _terminate_by_park(self, obj: Mapping[str, Any], *, now: datetime) -> bool:
        self._patch(
            obj,
            {
                "metadata": {"annotations": {constants.EXPIRED_ANNOTATION: _stamp(now)}},
                "spec": {"template": {"spec": {"nodeSelector": PARKING_NODE_SELECTOR}}},
            },
        )
        return True

    def _scale_down_annotations(self, obj: Mapping[str, Any]) -> dict[str, str]:
        existing = _annotations(obj)
        annotations: dict[str, str] = {}
        if constants.ORIGINAL_REPLICAS_ANNOTATION not in existing:
            annotations[constants.ORIGINAL_REPLICAS_ANNOTATION] = str(current_replicas(obj))
        metadata = obj["metadata"]
        if obj["kind"] in SCALABLE_KINDS and metadata.get("namespace"):
            hpas = self.workloads.hpas_targeting(
                metadata["namespace"], kind=obj["kind"], name=metadata["name"]
            )
            if hpas and constants.HPA_ANNOTATION not in existing:
                hpa = hpas[0]
                annotations[constants.HPA_ANNOTATION] = (
                    f"{hpa['metadata']['name']}:{(hpa.get('spec') or {}).get('minReplicas', 1)}"
                )
        return annotations

    # -- idle ------------------------------------------------------------------------------------

    def scale_to_zero(self, obj: Mapping[str, Any], *, reason: str, now: datetime) -> Outcome:
        """Scale an idle workload to zero, remembering its replicas (Event `ScaledToZero`)."""
        target = object_ref(obj)
        message = (
            f"scaled to zero from {current_replicas(obj)} replicas: {reason}. "
            f"Run `comptroller wake {obj['kind']}/{obj['metadata']['name']} -n "
            f"{obj['metadata'].get('namespace')}` or annotate it with {constants.WAKE_ANNOTATION} "
            f"to restore it."
        )
        if self.dry_run:
            log.info("dry-run: would scale %s to zero: %s", target, reason)
            self._event(obj, reason=constants.REASON_SCALED_TO_ZERO, message=message, now=now)
            return Outcome("scale", target, done=False, dry_run=True, detail=message)
        annotations = self._scale_down_annotations(obj)
        annotations[constants.SCALED_TO_ZERO_ANNOTATION] = _stamp(now)
        self._patch(obj, {"metadata": {"annotations": annotations}, "spec": {"replicas": 0}})
        self._event(obj, reason=constants.REASON_SCALED_TO_ZERO, message=message, now=now)
        log.info("scaled %s to zero: %s", target, reason)
        return Outcome("scale", target, done=True, detail=message)

    # -- idle GPUs: notice, suspension of batch workloads --------------------------------------------

    def notify_idle(
        self,
        obj: Mapping[str, Any],
        *,
        reason: str,
        policy: str,
        suspend_at: datetime | None,
        now: datetime,
        note: str = "",
    ) -> Outcome:
        """Event `GPUIdle` and annotation `idle-notified-at` (with `idle-suspend-at` when a suspension
        follows): what the data scientist sees in `kubectl describe`. Nothing else changes."""
        target = object_ref(obj)
        if suspend_at is not None:
            path = ".".join(suspend_path(obj["kind"]) or ("spec", "suspend"))
            message = (
                f"{reason} (policy {policy}). It will be suspended at {_stamp(suspend_at)} "
                f"(in {format_duration(suspend_at - now)}) if they stay idle ({path}: true: its pods "
                f"stop, nothing is deleted). To keep it running, run `{_wake_command(obj)}`; "
                f"once suspended, the same command resumes it."
            )
        else:
            message = (
                f"{reason} (policy {policy}). Nothing is changed"
                + (f": {note}" if note else "")
                + ". If it is done or stuck, end it to free the GPUs."
            )
        annotations: dict[str, str | None] = {
            constants.IDLE_NOTIFIED_ANNOTATION: _stamp(now),
            constants.IDLE_SUSPEND_AT_ANNOTATION: _stamp(suspend_at) if suspend_at is not None else None,
        }
        if self.dry_run:
            log.info("dry-run: would note %s as idle: %s", target, message)
            self._event(obj, reason=constants.REASON_GPU_IDLE, message=message, now=now, type_="Warning")
            return Outcome("notify", target, done=False, dry_run=True, detail=message)
        # The note first: if writing it fails, the next sweep tries again, and no Event went out for nothing.
        self._patch(obj, {"metadata": {"annotations": annotations}})
        self._event(obj, reason=constants.REASON_GPU_IDLE, message=message, now=now, type_="Warning")
        log.info("notified %s: %s", target, message)
        return Outcome("notify", target, done=True, detail=message)

    def suspend_idle(self, obj: Mapping[str, Any], *, reason: str, policy: str, now: datetime) -> Outcome:
        """Set the suspend flag of an idle batch workload (Event `IdleSuspended`); never deletes it."""
        target = object_ref(obj)
        path = suspend_path(obj["kind"])
        if path is None:
            raise LookupError(f"{obj['kind']} cannot be suspended")
        message = (
            f"suspended ({'.'.join(path)}: true): {reason} (policy {policy}). Its pods are stopped, "
            f"nothing is deleted. Resume it with `{_wake_command(obj)}`."
        )
        if self.dry_run:
            log.warning("dry-run: would suspend %s: %s", target, reason)
            self._event(
                obj, reason=constants.REASON_IDLE_SUSPENDED, message=message, now=now, type_="Warning"
            )
            return Outcome("suspend", target, done=False, dry_run=True, detail=message)
        body = _nested(path, True)
        body["metadata"] = {"annotations": {constants.IDLE_SUSPENDED_ANNOTATION: _stamp(now)}}
        self._patch(obj, body)
        self._event(obj, reason=constants.REASON_IDLE_SUSPENDED, message=message, now=now, type_="Warning")
        log.warning("suspended %s: %s (policy %s)", target, reason, policy)
        return Outcome("suspend", target, done=True, detail=message)

    def clear_idle_notice(self, obj: Mapping[str, Any], *, why: str) -> Outcome:
        """Remove the idle annotations (no Event): the next idle stretch starts with a fresh notice."""
        target = object_ref(obj)
        if self.dry_run:
            log.info("dry-run: would clear the idle notice of %s: %s", target, why)
            return Outcome("clear", target, done=False, dry_run=True, detail=why)
        existing = _annotations(obj)
        gone = [a for a in _IDLE_ANNOTATIONS if a in existing]
        if gone:
            self._patch(obj, {"metadata": {"annotations": dict.fromkeys(gone)}})
        log.info("cleared the idle notice of %s: %s", target, why)
        return Outcome("clear", target, done=bool(gone), detail=why)

    # -- wake ------------------------------------------------------------------------------------

    def wake(self, obj: Mapping[str, Any], *, now: datetime, grace_note: str = "") -> Outcome:
        """Restore a workload the operator scaled to zero, suspended or parked (Event `Woken`).

        Removes our annotations (wake included) and stamps `woken-at`, which the idle and expiry
        loops honour as a grace period before deciding on this workload again.
        """
        target = object_ref(obj)
        existing = _annotations(obj)
        annotations: dict[str, str | None] = {
            constants.WAKE_ANNOTATION: None,
            constants.ORIGINAL_REPLICAS_ANNOTATION: None,
            constants.EXPIRED_ANNOTATION: None,
            constants.SCALED_TO_ZERO_ANNOTATION: None,
            constants.HPA_ANNOTATION: None,
            constants.EXPIRING_SOON_NOTIFIED_ANNOTATION: None,
            **dict.fromkeys(_IDLE_ANNOTATIONS),
            constants.WOKEN_AT_ANNOTATION: _stamp(now),
        }
        spec: dict[str, Any] = {}
        restored = "nothing to restore"
        kind = obj["kind"]
        path = suspend_path(kind)
        if path is not None and constants.IDLE_SUSPENDED_ANNOTATION in existing and is_suspended(obj):
            spec = _nested(path[1:], False)
            restored = "resumed"
        elif kind in SCALABLE_KINDS and constants.ORIGINAL_REPLICAS_ANNOTATION in existing:
            replicas = restored_replicas(existing)
            spec["replicas"] = replicas
            restored = f"restored to {replicas} replicas"
        elif (
            kind == "CronJob"
            and (obj.get("spec") or {}).get("suspend")
            and constants.EXPIRED_ANNOTATION in existing
        ):
            spec["suspend"] = False
            restored = "resumed"
        elif kind == "DaemonSet" and constants.EXPIRED_ANNOTATION in existing:
            spec["template"] = {"spec": {"nodeSelector": {constants.EXPIRED_ANNOTATION: None}}}
            restored = "unparked"
        message = restored + (f"; {grace_note}" if grace_note else "")
        if self.dry_run:
            log.info("dry-run: would wake %s: %s", target, message)
            self._event(obj, reason=constants.REASON_WOKEN, message=message, now=now)
            return Outcome("restore", target, done=False, dry_run=True, detail=message)
        body: dict[str, Any] = {"metadata": {"annotations": annotations}}
        if spec:
            body["spec"] = spec
        self._patch(obj, body)
        self._event(obj, reason=constants.REASON_WOKEN, message=message, now=now)
        log.info("woke %s: %s", target, message)
        return Outcome("restore", target, done=True, detail=message)


def restored_replicas(annotations: Mapping[str, str]) -> int:
    """The replicas to restore: the remembered count, at least the HPA's minReplicas, at least 1.

    A workload scaled to zero by hand before we ever touched it would remember 0; waking it to
    zero would look like wake did nothing, so wake always brings up at least one replica.
    """
    try:
        replicas = int(annotations.get(constants.ORIGINAL_REPLICAS_ANNOTATION, "1"))
    except ValueError:
        replicas = 1
    hpa = annotations.get(constants.HPA_ANNOTATION, "")
    if ":" in hpa:
        try:
            replicas = max(replicas, int(hpa.rpartition(":")[2]))
        except ValueError:
            pass
    return max(replicas, 1)


_IDLE_ANNOTATIONS = (
    constants.IDLE_NOTIFIED_ANNOTATION,
    constants.IDLE_SUSPEND_AT_ANNOTATION,
    constants.IDLE_SUSPENDED_ANNOTATION,
)

_PAST = {
    "delete": "deleted",
    "scale": "scaled to zero",
    "suspend": "suspended",
    "park": "parked (its pods removed from every node)",
}
