"""`comptroller wake KIND/NAME -n NS`: restore a workload Comptroller scaled to zero or suspended.

Batch workloads the idle loop suspended (Job, JobSet, PyTorchJob, TFJob, MPIJob, RayJob) are
resumed; one that only carries an idle notice is kept running (the wake grace period holds the
idle loop off). A suspension Comptroller did not make (Kueue, the job's owner, a person) is never
undone.

The command only sets the wake annotation (docs/crds.md#workload-conventions), exactly what a
user without the CLI does with `kubectl annotate`; the operator restores the workload, so there
is one code path and it needs no more RBAC than annotating. By default the command then waits for
the operator to finish and prints what was restored.

Exit status: 0 woken (or nothing to wake), 1 not woken within --timeout (is the operator
running?), 2 bad input or no such workload.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from controller import constants

# kubectl's names for the kinds Comptroller can put to sleep.
KIND_ALIASES = {
    "Deployment": ("deployment", "deployments", "deploy", "deployments.apps", "deployment.apps"),
    "StatefulSet": ("statefulset", "statefulsets", "sts", "statefulsets.apps", "statefulset.apps"),
    "ReplicaSet": ("replicaset", "replicasets", "rs", "replicasets.apps", "replicaset.apps"),
    "DaemonSet": ("daemonset", "daemonsets", "ds", "daemonsets.apps", "daemonset.apps"),
    "CronJob": ("cronjob", "cronjobs", "cj", "cronjobs.batch", "cronjob.batch"),
    "Job": ("job", "jobs", "jobs.batch", "job.batch"),
    "JobSet": ("jobset", "jobsets", "jobsets.jobset.x-k8s.io", "jobset.jobset.x-k8s.io"),
    "PyTorchJob": ("pytorchjob", "pytorchjobs", "pytorchjobs.kubeflow.org", "pytorchjob.kubeflow.org"),
    "TFJob": ("tfjob", "tfjobs", "tfjobs.kubeflow.org", "tfjob.kubeflow.org"),
    "MPIJob": ("mpijob", "mpijobs", "mpijobs.kubeflow.org", "mpijob.kubeflow.org"),
    "RayJob": ("rayjob", "rayjobs", "rayjobs.ray.io", "rayjob.ray.io"),
}
_BY_ALIAS = {alias: kind for kind, aliases in KIND_ALIASES.items() for alias in aliases}
_GROUPS = {
    "Deployment": "apps",
    "StatefulSet": "apps",
    "ReplicaSet": "apps",
    "DaemonSet": "apps",
    "CronJob": "batch",
}
_GROUPS.update({kind: group for kind, (group, _) in constants.SUSPENDABLE_KINDS.items()})


def parse_target(text: str) -> tuple[str, str]:
    """`deploy/llm` -> `("Deployment", "llm")`; ValueError naming what is accepted."""
    kind_text, sep, name = text.partition("/")
    kind = _BY_ALIAS.get(kind_text.lower())
    if not sep or not name or "/" in name:
        raise ValueError(f"{text!r}: expected KIND/NAME, e.g. deployment/llm-dev")
    if kind is None:
        raise ValueError(f"{text!r}: {kind_text!r} cannot be woken; use one of {', '.join(KIND_ALIASES)}")
    return kind, name


def asleep(obj: dict) -> bool:
    """Whether Comptroller put this workload to sleep (so there is something to restore)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return any(
        key in annotations
        for key in (
            constants.ORIGINAL_REPLICAS_ANNOTATION,
            constants.EXPIRED_ANNOTATION,
            constants.IDLE_SUSPENDED_ANNOTATION,
            # Only a notice so far: waking keeps it running (the idle loop leaves it alone a while).
            constants.IDLE_NOTIFIED_ANNOTATION,
            constants.IDLE_SUSPEND_AT_ANNOTATION,
        )
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="KIND/NAME",
        help="e.g. deployment/llm-dev, sts/vector-db, cronjob/sweep, pytorchjob/bert, job/train",
    )
    parser.add_argument(
        "-n", "--namespace", default="default", help="namespace of the workload (default: default)"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the operator to restore it (default 60)",
    )
    parser.add_argument("--no-wait", action="store_true", help="set the wake annotation and return at once")
    parser.set_defaults(poll_interval=0.5)


def run(args: argparse.Namespace) -> int:
    try:
        kind, name = parse_target(args.target)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from controller.k8s.config import load_api_client
    from controller.k8s.workloads import ApiError, Workloads

    workloads = Workloads(load_api_client(args.kubeconfig, context=args.context))
    ref = f"{kind}/{args.namespace}/{name}"
    try:
        resource = workloads.resolve(kind, group=_GROUPS.get(kind))
        if resource is None:
            print(f"error: {kind} is not served by this cluster (is its CRD installed?)", file=sys.stderr)
            return 2
        obj = workloads.get(resource, args.namespace, name)
        if obj is None:
            print(f"error: {ref} not found", file=sys.stderr)
            return 2
        if not asleep(obj):
            print(
                f"{ref} is not asleep: Comptroller has not scaled it to zero, suspended it or noted it "
                f"idle; nothing to do"
            )
            return 0
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        workloads.patch(
            resource, args.namespace, name, {"metadata": {"annotations": {constants.WAKE_ANNOTATION: stamp}}}
        )
        if args.no_wait:
            print(f"{ref}: wake requested; the operator will restore it")
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            time.sleep(args.poll_interval)
            obj = workloads.get(resource, args.namespace, name)
            if obj is None:
                print(f"error: {ref} was deleted while waking", file=sys.stderr)
                return 1
            # The operator removes the wake annotation when it has restored the workload.
            if constants.WAKE_ANNOTATION not in (obj["metadata"].get("annotations") or {}):
                print(f"{ref} woken: {describe(obj)}")
                return 0
    except ApiError as exc:
        print(f"error: {ref}: {exc}", file=sys.stderr)
        return 2
    print(
        f"{ref}: wake requested but not done within {args.timeout:g}s; is the Comptroller operator running? "
        f"(the {constants.WAKE_ANNOTATION} annotation stays, so it will be woken when the operator runs)",
        file=sys.stderr,
    )
    return 1


def describe(obj: dict) -> str:
    spec = obj.get("spec") or {}
    suspendable = constants.SUSPENDABLE_KINDS.get(obj.get("kind", ""))
    if suspendable is not None:
        value: object = obj
        for key in suspendable[1]:
            value = value.get(key) if isinstance(value, dict) else None
        flag = "true" if value is True else "false"
        return f"{'suspended' if value is True else 'running'} ({'.'.join(suspendable[1])}: {flag})"
    if obj.get("kind") == "CronJob":
        return "suspended" if spec.get("suspend") else "resumed"
    if obj.get("kind") == "DaemonSet":
        return "back on its nodes"
    return f"{spec.get('replicas', 1)} replicas"
