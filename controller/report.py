"""`comptroller report`: showback from the cluster. GPU-hours, estimated cost and budget use per
team and cost center, and the top workloads, as a table for people or json/csv for tools.

Budgets come from the GPUBudgets' status (the operator's metering: exact, including pods long
gone). The team and cost-center breakdowns, over the current calendar period, add up the
budgets' ledgers (their per-team, per-day cells of pods that ended, deleted ones included) and
the GPU pods in the cluster not folded into them yet, each pod priced with the budget that holds
its cells (`first_covering`); pods no budget covers count while they are in the cluster. Top
workloads come from the GPU pods in the cluster. Reading the ledgers (ConfigMaps in Comptroller's
namespace) needs `get` on them; without it the breakdown falls back to the pods, said on stderr.

`--by workload` ranks whole runs instead (not clipped to a period): a finished Job, JobSet,
Kubeflow job, RayJob or bare Pod by the `finops.comptroller.dev/gpu-hours` and `.../cost`
annotations the operator wrote on it (controller/operator/runs.py), so it still counts once its
pods are deleted; a running one by the larger of its annotations and its pods in the cluster;
other workloads (Deployments, ...) by their pods. Each row says which source its numbers come
from. A pod's run is found as the operator finds it, by walking `ownerReferences` up through the
listed workloads (JobSet pods count for the JobSet, RayJob pods for the RayJob, a CronJob's Jobs
each for themselves).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from controller import constants
from controller.engine.budgets import period_bounds
from controller.metering.budgets import PERIODS, Budget, first_covering
from controller.metering.usage import Ledger, PodRecord, format_time, pod_record, price_for

NONE = "(none)"
CSV_FIELDS = ("scope", "name", "team", "cost_center", "gpu_hours", "estimated_cost", "running_gpus",
              "pods", "budget_gpu_hours", "budget_used_percent", "state")
WORKLOAD_CSV_FIELDS = ("namespace", "workload", "team", "cost_center", "gpu_hours", "estimated_cost",
                       "running_gpus", "pods", "state", "source")
OWNER_KINDS = (("ray.io", "RayCluster"),)
"""Kinds listed only to walk through from a pod to its run (a RayJob's pods are its RayCluster's)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="top workloads shown (default: 10)")
    parser.add_argument("--period", choices=PERIODS, default="Monthly",
                        help="calendar period (UTC) of the team/cost-center breakdown (default: Monthly)")
    parser.add_argument("--namespace", default="comptroller-system", metavar="NS",
                        help="Comptroller's namespace, where the operator keeps the budgets' ledgers "
                        "(default: %(default)s)")
    parser.add_argument("--team-label", default="team", metavar="KEY")
    parser.add_argument("--cost-center-label", default="cost_center", metavar="KEY")
    parser.add_argument("--gpu-resource", action="append", metavar="NAME",
                        help="resource or DeviceClass counted as GPUs (repeatable; default: *, every "
                        "accelerator, as the operator meters)")
    parser.add_argument("--by", choices=["all", "workload"], default="all",
                        help="all: budgets, teams, cost centers and top workloads this period (default); "
                        "workload: the top spending runs over their whole life, finished ones included "
                        "from the cost annotations the operator writes on them")


# -- building (pure) -------------------------------------------------------------------------------


def _budget_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    limit = float(spec.get("gpuHours") or 0)
    used = float(status.get("usedGPUHours") or 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    exhausted = (conditions.get("Exhausted") or {}).get("status") == "True"
    threshold = conditions.get("ThresholdReached") or {}
    if exhausted:
        state = "Exhausted"
    elif threshold.get("status") == "True":
        state = f"Reached {threshold.get('reason')}%"
    elif not status:
        state = "NotMetered"
    else:
        state = "OK"
    return {
        "name": obj["metadata"]["name"],
        "selector": (spec.get("selector") or {}).get("matchLabels") or {},
        "period": spec.get("period") or "Monthly",
        "periodStart": (status.get("period") or {}).get("start"),
        "gpuHours": limit,
        "usedGPUHours": round(used, 3),
        "remainingGPUHours": round(max(limit - used, 0.0), 3),
        "usedPercent": round(100.0 * used / limit, 1) if limit else None,
        "runningGPUs": int(status.get("runningGPUs") or 0),
        "estimatedCost": round(float(status.get("estimatedCost") or 0), 2),
        "enforcement": spec.get("enforcement") or "Enforce",
        "state": state,
        "lastMeteredAt": status.get("lastMeteredAt"),
    }


def _group(rows: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(row[key], {"name": row[key], "gpuHours": 0.0, "estimatedCost": 0.0,
                                             "runningGPUs": 0, "pods": 0, "teams": set(),
                                             "costCenters": set()})
        group["gpuHours"] += row["gpuHours"]
        group["estimatedCost"] += row["estimatedCost"]
        group["runningGPUs"] += row["runningGPUs"]
        group["pods"] += row.get("pods", 1)  # a ledger's cells are many pods, counted in none
        group["teams"].add(row["team"])
        group["costCenters"].add(row["costCenter"])
    out = []
    for group in sorted(groups.values(), key=lambda g: (-g["gpuHours"], g["name"])):
        group["gpuHours"] = round(group["gpuHours"], 3)
        group["estimatedCost"] = round(group["estimatedCost"], 2)
        group["teams"] = sorted(group["teams"])
        group["costCenters"] = sorted(group["costCenters"])
        out.append(group)
    return out


def build_report(
    budgets: Iterable[Mapping[str, Any]],
    pods: Iterable[PodRecord],
    *,
    now: datetime,
    period: str = "Monthly",
    top: int = 10,
    team_label: str = "team",
    cost_center_label: str = "cost_center",
    ledgers: Mapping[str, Ledger] | None = None,
) -> dict[str, Any]:
    """The showback report (json shape) from GPUBudget objects, GPU pod records and the budgets'
    ledgers (by budget name; none: pods only).

    A pod counts for the budget that holds its cells (`first_covering`). Its ledger's cells hold
    the pods that ended (and shares of closed budget periods), by team and day, so finished pods
    count after they are deleted; the pods in the cluster add what is not folded yet, from where
    the ledger's cells end (`cells_start`). Pods no budget covers count from the pods alone. Top
    workloads come from the pods in the cluster.
    """
    budget_objects = list(budgets)
    budget_rows = sorted((_budget_row(b) for b in budget_objects), key=lambda r: r["name"])
    compiled = []
    for obj in budget_objects:
        try:
            compiled.append(Budget.from_object(obj))
        except ValueError:
            continue
    compiled.sort(key=lambda b: b.name)
    ledgers = ledgers or {}
    start, end = period_bounds(period, now)

    pod_rows: list[dict[str, Any]] = []  # every GPU pod in the cluster: the top workloads
    team_rows: list[dict[str, Any]] = []  # what teams and cost centers add up: cells + unfolded pods
    for pod in pods:
        hours = pod.gpu_hours(start, end, now=now)
        running = pod.gpus if pod.running(now) else 0
        if hours <= 0 and not running:
            continue
        covering = first_covering(pod, compiled)
        price = price_for(covering.prices, pod.instance_type) if covering else 0.0
        row = {
            "namespace": pod.namespace,
            "workload": pod.workload,
            "team": pod.labels.get(team_label) or NONE,
            "costCenter": pod.labels.get(cost_center_label) or NONE,
            "gpuHours": hours,
            "estimatedCost": hours * price,
            "runningGPUs": running,
        }
        pod_rows.append(row)
        ledger = ledgers.get(covering.name) if covering else None
        if ledger is None or covering is None:
            team_rows.append(row)
        elif pod.uid not in ledger.folded:
            # As its ledger will fold it: of the resources that budget counts.
            since = pod.gpu_hours(max(start, ledger.cells_start), end, now=now, resources=covering.resources)
            team_rows.append({**row, "gpuHours": since, "estimatedCost": since * price})
    first_day, last_day = start.date().isoformat(), end.date().isoformat()
    for ledger in ledgers.values():
        for group, days in ledger.cells.items():
            team, _, cost_center = group.partition("/")
            hours = sum(h for day, (h, _) in days.items() if first_day <= day < last_day)
            cost = sum(c for day, (_, c) in days.items() if first_day <= day < last_day)
            if hours > 0:
                team_rows.append({"team": team or NONE, "costCenter": cost_center or NONE, "gpuHours": hours,
                                  "estimatedCost": cost, "runningGPUs": 0, "pods": 0})

    teams = _group(team_rows, "team")
    for team in teams:
        # Budget use of a team: the budgets whose selector pins exactly this team.
        team["budgets"] = [
            {"name": b["name"], "usedPercent": b["usedPercent"], "state": b["state"]}
            for b in budget_rows if b["selector"].get(team_label) == team["name"]
        ]
    for row in pod_rows:
        row["key"] = f"{row['namespace']}/{row['workload']}"
    workloads = _group(pod_rows, "key")[: max(top, 0)]
    for workload in workloads:
        workload["namespace"], _, workload["workload"] = workload.pop("name").partition("/")

    return {
        "generatedAt": format_time(now),
        "period": {"name": period, "start": format_time(start), "end": format_time(end)},
        "budgets": budget_rows,
        "teams": teams,
        "costCenters": _group(team_rows, "costCenter"),
        "topWorkloads": workloads,
        "totals": {
            "gpuHours": round(sum(r["gpuHours"] for r in team_rows), 3),
            "estimatedCost": round(sum(r["estimatedCost"] for r in team_rows), 2),
            "runningGPUs": sum(r["runningGPUs"] for r in team_rows),
        },
    }


# -- by workload (pure) ----------------------------------------------------------------------------


def _group_of(api_version: Any) -> str:
    return str(api_version or "").rpartition("/")[0]


def _controller(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in metadata.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller"):
            return ref
    return None


def run_keys(
    pods: Iterable[Mapping[str, Any]],
    owners: Iterable[Mapping[str, Any]],
    *,
    run_kinds: Iterable[tuple[str, str]] = constants.RUN_KINDS,
) -> dict[str, str]:
    """Pod uid -> `Kind/name` of its run (same namespace), for the pods that belong to one.

    The rule of the operator (controller/operator/runs.py), walked through `owners` (listed
    workloads, by uid) instead of GETs: the top-most object of a run kind on the pod's chain of
    controllers, never above a CronJob's Job, stopping at an owner that was not listed; a Pod is a
    run only when nothing controls it.
    """
    kinds = frozenset(run_kinds)
    schedulers = constants.RUN_SCHEDULER_KINDS
    by_uid = {str((o.get("metadata") or {}).get("uid")): o for o in owners}
    keys: dict[str, str] = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        ref = _controller(metadata)
        if ref is None:
            keys[str(metadata.get("uid"))] = f"Pod/{metadata.get('name', '')}"
            continue
        top: str | None = None
        for _ in range(8):
            if ref is None or (_group_of(ref.get("apiVersion")), ref.get("kind")) in schedulers:
                break  # each Job a CronJob creates is a run of its own
            owner = by_uid.get(str(ref.get("uid")))
            if owner is None:
                break
            if (_group_of(owner.get("apiVersion")), owner.get("kind")) in kinds:
                top = f"{owner.get('kind')}/{(owner.get('metadata') or {}).get('name', '')}"
            ref = _controller(owner.get("metadata") or {})
        if top is not None:
            keys[str(metadata.get("uid"))] = top
    return keys


def _annotated(obj: Mapping[str, Any]) -> tuple[float, float, bool] | None:
    """(GPU-hours, cost, final) from the operator's cost annotations, if it wrote them."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        hours = float(annotations[constants.GPU_HOURS_ANNOTATION])
        cost = float(annotations.get(constants.COST_ANNOTATION) or 0)
    except (KeyError, TypeError, ValueError):
        return None
    return hours, cost, bool(annotations.get(constants.COST_FINAL_ANNOTATION))


def build_workload_report(
    workloads: Iterable[Mapping[str, Any]],
    pods: Iterable[PodRecord],
    budgets: Iterable[Mapping[str, Any]] = (),
    *,
    now: datetime,
    runs: Mapping[str, str] | None = None,
    top: int = 10,
    team_label: str = "team",
    cost_center_label: str = "cost_center",
) -> dict[str, Any]:
    """The top spending workloads over their whole life (json shape).

    `workloads` are objects that may carry the operator's cost annotations (metadata is enough);
    `pods` the GPU pods in the cluster, each counted for `runs[pod uid]` (see `run_keys`), else
    for its own `workload`. A row's numbers come from one `source`: `annotation` (what the operator
    wrote: the whole run, deleted pods included) or `pods` (the pods in the cluster, priced as
    `build_report` prices them), whichever is larger; a finished run's always from its annotation.
    """
    compiled = []
    for obj in budgets:
        try:
            compiled.append(Budget.from_object(obj))
        except ValueError:
            continue
    compiled.sort(key=lambda b: b.name)
    runs = runs or {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(namespace: str, workload: str) -> dict[str, Any]:
        return rows.setdefault((namespace, workload), {
            "namespace": namespace, "workload": workload, "teams": set(), "costCenters": set(),
            "podGPUHours": 0.0, "podCost": 0.0, "runningGPUs": 0.0, "pods": 0, "annotation": None,
        })

    for obj in workloads:
        annotated = _annotated(obj)
        if annotated is None:
            continue
        metadata = obj.get("metadata") or {}
        entry = row(str(metadata.get("namespace") or ""), f"{obj.get('kind')}/{metadata.get('name', '')}")
        entry["annotation"] = annotated
        labels = metadata.get("labels") or {}
        entry["objectLabels"] = labels
    for pod in pods:
        if pod.started is None:
            continue
        hours = pod.gpu_hours(pod.started, now, now=now)
        covering = first_covering(pod, compiled)  # priced as in the team rows
        price = price_for(covering.prices, pod.instance_type) if covering else 0.0
        entry = row(pod.namespace, runs.get(pod.uid) or pod.workload)
        entry["podGPUHours"] += hours
        entry["podCost"] += hours * price
        entry["runningGPUs"] += pod.gpus if pod.running(now) else 0
        entry["pods"] += 1
        entry["teams"].add(pod.labels.get(team_label) or NONE)
        entry["costCenters"].add(pod.labels.get(cost_center_label) or NONE)

    out = []
    for entry in rows.values():
        annotation = entry.pop("annotation")
        labels = entry.pop("objectLabels", {})
        if not entry["teams"]:
            entry["teams"].add(labels.get(team_label) or NONE)
            entry["costCenters"].add(labels.get(cost_center_label) or NONE)
        hours, cost = entry.pop("podGPUHours"), entry.pop("podCost")
        source, state = "pods", "Running" if entry["runningGPUs"] else "Ended"
        if annotation is not None:
            a_hours, a_cost, final = annotation
            if final or (a_hours, a_cost) >= (hours, cost):
                source = "annotation"
                hours, cost = max(a_hours, hours), max(a_cost, cost)
            if final:
                state = "Finished"
        entry.update(gpuHours=round(hours, 4), estimatedCost=round(cost, 2), source=source, state=state,
                     teams=sorted(entry["teams"]), costCenters=sorted(entry["costCenters"]),
                     runningGPUs=round(entry["runningGPUs"], 3))
        out.append(entry)
    out.sort(key=lambda r: (-r["estimatedCost"], -r["gpuHours"], r["namespace"], r["workload"]))
    return {
        "generatedAt": format_time(now),
        "by": "workload",
        "workloads": out[: max(top, 0)],
        "totals": {
            "workloads": len(out),
            "gpuHours": round(sum(r["gpuHours"] for r in out), 4),
            "estimatedCost": round(sum(r["estimatedCost"] for r in out), 2),
            "runningGPUs": round(sum(r["runningGPUs"] for r in out), 3),
        },
    }


# -- rendering --------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric,
                                                                              strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%").replace(",", ""))
    except ValueError:
        return False
    return True


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def render_table(report: Mapping[str, Any]) -> str:
    period = report["period"]
    out = [f"GPU showback, {period['name'].lower()} period from {period['start']} (generated "
           f"{report['generatedAt']})", ""]
    budgets = report["budgets"]
    out.append("BUDGETS")
    out.append(_table(
        ["NAME", "PERIOD", "USED", "BUDGET", "USED%", "LEFT", "RUNNING GPUS", "EST. COST", "STATE"],
        [[b["name"], b["period"], f"{b['usedGPUHours']:.2f}", f"{b['gpuHours']:g}",
          _percent(b["usedPercent"]), f"{b['remainingGPUHours']:.2f}",
          b["runningGPUs"], _money(b["estimatedCost"]), b["state"]] for b in budgets],
    ) if budgets else "(no GPUBudgets)")
    out.append("")
    out.append("BY TEAM (ended pods from the budgets' ledgers, plus the GPU pods in the cluster)")
    out.append(_table(
        ["TEAM", "GPU-HOURS", "EST. COST", "RUNNING GPUS", "PODS", "BUDGET USE"],
        [[t["name"], f"{t['gpuHours']:.2f}", _money(t["estimatedCost"]), t["runningGPUs"], t["pods"],
          ", ".join(f"{b['name']} {_percent(b['usedPercent'])}" for b in t["budgets"]) or "-"]
         for t in report["teams"]],
    ) if report["teams"] else "(no GPU usage this period)")
    out.append("")
    out.append("BY COST CENTER")
    out.append(_table(
        ["COST CENTER", "GPU-HOURS", "EST. COST", "RUNNING GPUS", "PODS", "TEAMS"],
        [[c["name"], f"{c['gpuHours']:.2f}", _money(c["estimatedCost"]), c["runningGPUs"], c["pods"],
          ",".join(c["teams"])] for c in report["costCenters"]],
    ) if report["costCenters"] else "(no GPU usage this period)")
    out.append("")
    out.append(f"TOP {len(report['topWorkloads'])} WORKLOADS")
    out.append(_table(
        ["NAMESPACE", "WORKLOAD", "TEAM", "GPU-HOURS", "EST. COST", "RUNNING GPUS", "PODS"],
        [[w["namespace"], w["workload"], ",".join(w["teams"]), f"{w['gpuHours']:.2f}",
          _money(w["estimatedCost"]), w["runningGPUs"], w["pods"]] for w in report["topWorkloads"]],
    ) if report["topWorkloads"] else "(none)")
    return "\n".join(out) + "\n"


def render_workloads_table(report: Mapping[str, Any]) -> str:
    totals = report["totals"]
    out = [f"GPU cost by workload, whole runs (generated {report['generatedAt']}): "
           f"top {len(report['workloads'])} of {totals['workloads']}, "
           f"{totals['gpuHours']:.2f} GPU-hours, {_money(totals['estimatedCost'])} estimated", ""]
    out.append(_table(
        ["NAMESPACE", "WORKLOAD", "TEAM", "GPU-HOURS", "EST. COST", "RUNNING GPUS", "PODS", "STATE",
         "SOURCE"],
        [[w["namespace"], w["workload"], ",".join(w["teams"]), f"{w['gpuHours']:.4f}",
          _money(w["estimatedCost"]), f"{w['runningGPUs']:g}", w["pods"], w["state"], w["source"]]
         for w in report["workloads"]],
    ) if report["workloads"] else "(no GPU workloads)")
    out.append("")
    out.append("SOURCE annotation: the cost the operator wrote on the workload (deleted pods included); "
               "pods: its GPU pods still in the cluster.")
    return "\n".join(out) + "\n"


def render_workloads_csv(report: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=WORKLOAD_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for w in report["workloads"]:
        writer.writerow({"namespace": w["namespace"], "workload": w["workload"], "team": ";".join(w["teams"]),
                         "cost_center": ";".join(w["costCenters"]), "gpu_hours": w["gpuHours"],
                         "estimated_cost": w["estimatedCost"], "running_gpus": w["runningGPUs"],
                         "pods": w["pods"], "state": w["state"], "source": w["source"]})
    return buffer.getvalue()


def render_csv(report: Mapping[str, Any]) -> str:
    """One flat table, a `scope` column per row kind: what spreadsheets and BI tools load."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for b in report["budgets"]:
        writer.writerow({"scope": "budget", "name": b["name"], "team": b["selector"].get("team", ""),
                         "gpu_hours": b["usedGPUHours"], "estimated_cost": b["estimatedCost"],
                         "running_gpus": b["runningGPUs"], "budget_gpu_hours": b["gpuHours"],
                         "budget_used_percent": "" if b["usedPercent"] is None else b["usedPercent"],
                         "state": b["state"]})
    for scope, rows in (("team", report["teams"]), ("cost_center", report["costCenters"])):
        for r in rows:
            writer.writerow({"scope": scope, "name": r["name"], "team": ";".join(r["teams"]),
                             "cost_center": ";".join(r["costCenters"]), "gpu_hours": r["gpuHours"],
                             "estimated_cost": r["estimatedCost"], "running_gpus": r["runningGPUs"],
                             "pods": r["pods"]})
    for w in report["topWorkloads"]:
        writer.writerow({"scope": "workload", "name": f"{w['namespace']}/{w['workload']}",
                         "team": ";".join(w["teams"]), "cost_center": ";".join(w["costCenters"]),
                         "gpu_hours": w["gpuHours"], "estimated_cost": w["estimatedCost"],
                         "running_gpus": w["runningGPUs"], "pods": w["pods"]})
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from controller.constants import DEFAULT_GPU_RESOURCES
    from controller.engine.models import DEFAULT_INSTANCE_TYPE_KEYS
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import list_budgets
    from controller.k8s.pods import PODS
    from controller.k8s.workloads import ApiError, Workloads

    # As the operator counts by default, so a pod's live hours match what its ledger will fold.
    resources = tuple(args.gpu_resource or DEFAULT_GPU_RESOURCES)
    by_workload = getattr(args, "by", "all") == "workload"
    workloads: list[dict[str, Any]] = []
    runs: dict[str, str] = {}
    try:
        api = Workloads(load_api_client(args.kubeconfig))
        try:
            budgets = list_budgets(api)
        except ApiError as error:
            if error.status != 404:
                raise
            budgets = []  # the CRDs are not installed: pods only
        pods: list[PodRecord] = []
        gpu_pods: list[dict[str, Any]] = []  # their metadata, to find their runs
        for obj in api.iter_objects(PODS):
            record = pod_record(obj, gpu_resources=resources, instance_type_keys=DEFAULT_INSTANCE_TYPE_KEYS)
            if record is not None:
                pods.append(record)
                if by_workload:
                    gpu_pods.append({"apiVersion": "v1", "kind": "Pod",
                                     "metadata": obj.get("metadata") or {}})
        if by_workload:
            workloads = _list_workloads(api)
            runs = run_keys(gpu_pods, workloads)
            workloads += gpu_pods  # a bare pod carries its own cost annotations
    except Exception as error:  # no cluster, no credentials: one clear line, not a traceback
        print(f"comptroller report: cannot read the cluster: {error}", file=sys.stderr)
        return 2
    now = datetime.now(UTC).replace(microsecond=0)
    ledgers = {} if by_workload else _load_ledgers(api, budgets, namespace=args.namespace)
    if by_workload:
        by = build_workload_report(workloads, pods, budgets, now=now, runs=runs, top=args.top,
                                   team_label=args.team_label, cost_center_label=args.cost_center_label)
        _write(by, args.output, csv=render_workloads_csv, table=render_workloads_table)
        return 0
    report = build_report(budgets, pods, now=now, period=args.period, top=args.top, ledgers=ledgers,
                          team_label=args.team_label, cost_center_label=args.cost_center_label)
    _write(report, args.output, csv=render_csv, table=render_table)
    return 0


def _write(report: Any, output: str, *, csv: Any, table: Any) -> None:
    """The report as json, or rendered by `csv` or `table`, on standard output."""
    if output == "json":
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(csv(report) if output == "csv" else table(report))


def _load_ledgers(api: Any, budgets: Iterable[Mapping[str, Any]], *, namespace: str) -> dict[str, Ledger]:
    """Each budget's committed ledger, by budget name (those that cannot be read are left out, said
    on stderr: the breakdown then counts their pods from the cluster only)."""
    from controller.k8s.ledgers import load_ledger
    from controller.k8s.workloads import ApiError

    ledgers: dict[str, Ledger] = {}
    for obj in budgets:
        name = str((obj.get("metadata") or {}).get("name", ""))
        uid = (obj.get("metadata") or {}).get("uid")
        try:
            stored = load_ledger(api, namespace=namespace, budget=name)
            ledger = Ledger.from_json(stored.data) if stored.data is not None else None
        except (ApiError, ValueError, KeyError, TypeError) as error:
            print(f"comptroller report: ledger of GPUBudget {name} left out: {error}", file=sys.stderr)
            continue
        if ledger is not None and (uid is None or ledger.budget_uid == uid):
            ledgers[name] = ledger
    return ledgers


def _list_workloads(api: Any) -> list[dict[str, Any]]:
    """Every run-kind workload (and RayCluster, to walk through), metadata only: labels, owners and
    the operator's cost annotations are all this needs. Kinds the cluster does not serve, or that
    the caller may not list, are left out (said on stderr)."""
    from controller.k8s.workloads import ApiError

    objects: list[dict[str, Any]] = []
    for group, kind in (*constants.RUN_KINDS, *OWNER_KINDS):
        if kind == "Pod":
            continue
        try:
            resource = api.resolve(kind, group=group)
            if resource is not None:
                objects += api.list_objects(resource, metadata_only=True)
        except ApiError as error:
            print(f"comptroller report: {kind} left out: {error}", file=sys.stderr)
    return objects
