"""`comptroller report`: showback from the cluster. GPU-hours, estimated cost and budget use per
team and cost center, and the top workloads, as a table for people or json/csv for tools.

Budgets come from the GPUBudgets' status (the operator's metering: exact, including pods long
gone). The team, cost-center and workload breakdowns are computed from the GPU pods still in
the cluster (running, or finished and not yet deleted) over the current calendar period, priced
with the first budget that covers each pod; deleted pods are only in the budget totals.
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

from controller.metering.budgets import PERIODS, Budget, period_bounds
from controller.metering.usage import PodRecord, format_time, pod_record, price_for

NONE = "(none)"
CSV_FIELDS = ("scope", "name", "team", "cost_center", "gpu_hours", "estimated_cost", "running_gpus",
              "pods", "budget_gpu_hours", "budget_used_percent", "state")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="top workloads shown (default: 10)")
    parser.add_argument("--period", choices=PERIODS, default="Monthly",
                        help="calendar period (UTC) of the team/cost-center breakdown (default: Monthly)")
    parser.add_argument("--team-label", default="team", metavar="KEY")
    parser.add_argument("--cost-center-label", default="cost_center", metavar="KEY")
    parser.add_argument("--gpu-resource", action="append", metavar="NAME",
                        help="extended resource counted as GPUs (repeatable; default: nvidia.com/gpu)")


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
        group["pods"] += 1
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
) -> dict[str, Any]:
    """The showback report (json shape) from GPUBudget objects and GPU pod records."""
    budget_objects = list(budgets)
    budget_rows = sorted((_budget_row(b) for b in budget_objects), key=lambda r: r["name"])
    compiled = []
    for obj in budget_objects:
        try:
            compiled.append(Budget.from_object(obj))
        except ValueError:
            continue
    start, end = period_bounds(period, now)

    pod_rows = []
    for pod in pods:
        hours = pod.gpu_hours(start, end, now=now)
        running = pod.gpus if pod.running(now) else 0
        if hours <= 0 and not running:
            continue
        covering = next((b for b in compiled if b.selector.matches(pod.labels)), None)
        price = price_for(covering.prices, pod.instance_type) if covering else 0.0
        pod_rows.append({
            "namespace": pod.namespace,
            "workload": pod.workload,
            "team": pod.labels.get(team_label) or NONE,
            "costCenter": pod.labels.get(cost_center_label) or NONE,
            "gpuHours": hours,
            "estimatedCost": hours * price,
            "runningGPUs": running,
        })

    teams = _group(pod_rows, "team")
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
        "costCenters": _group(pod_rows, "costCenter"),
        "topWorkloads": workloads,
        "totals": {
            "gpuHours": round(sum(r["gpuHours"] for r in pod_rows), 3),
            "estimatedCost": round(sum(r["estimatedCost"] for r in pod_rows), 2),
            "runningGPUs": sum(r["runningGPUs"] for r in pod_rows),
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
    out.append("BY TEAM (GPU pods in the cluster)")
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
    from controller.engine.models import DEFAULT_INSTANCE_TYPE_KEYS
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import list_budgets
    from controller.k8s.pods import PODS
    from controller.k8s.workloads import ApiError, Workloads

    resources = tuple(args.gpu_resource or ("nvidia.com/gpu",))
    try:
        api = Workloads(load_api_client(args.kubeconfig))
        try:
            budgets = list_budgets(api)
        except ApiError as error:
            if error.status != 404:
                raise
            budgets = []  # the CRDs are not installed: pods only
        records = (pod_record(p, gpu_resources=resources, instance_type_keys=DEFAULT_INSTANCE_TYPE_KEYS)
                   for p in api.iter_objects(PODS))
        pods = [r for r in records if r is not None]
    except Exception as error:  # no cluster, no credentials: one clear line, not a traceback
        print(f"comptroller report: cannot read the cluster: {error}", file=sys.stderr)
        return 2
    now = datetime.now(UTC).replace(microsecond=0)
    report = build_report(budgets, pods, now=now, period=args.period, top=args.top,
                          team_label=args.team_label, cost_center_label=args.cost_center_label)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    elif args.output == "csv":
        sys.stdout.write(render_csv(report))
    else:
        sys.stdout.write(render_table(report))
    return 0
