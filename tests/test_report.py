"""`comptroller report`: the showback built from budget objects and pod records, and its renderings."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from controller import constants
from controller.metering.usage import PodRecord
from controller.report import (
    CSV_FIELDS,
    build_report,
    build_workload_report,
    render_csv,
    render_table,
    render_workloads_csv,
    render_workloads_table,
    run_keys,
)

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def budget(name: str, team: str, *, used: float, limit: float = 100, exhausted: bool = False,
           reached: str | None = None, prices: dict | None = None) -> dict:
    conditions = [{"type": "Exhausted", "status": "True" if exhausted else "False"},
                  {"type": "ThresholdReached", "status": "True" if reached else "False",
                   "reason": reached or "BelowThresholds"}]
    return {
        "apiVersion": constants.API_VERSION, "kind": "GPUBudget",
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": limit, "period": "Monthly",
                 "pricePerGPUHour": prices or {"default": 2.0}},
        "status": {"usedGPUHours": used, "runningGPUs": 4, "estimatedCost": used * 2,
                   "period": {"start": "2026-11-01T00:00:00Z"}, "conditions": conditions},
    }


def pod(name: str, team: str | None, gpus: int, hours: float, *, cc: str = "cc-100", running: bool = True,
        workload: str = "", itype: str = "") -> PodRecord:
    labels = {"cost_center": cc, **({"team": team} if team else {})}
    return PodRecord(uid=name, namespace=f"ml-{team}", name=name, labels=labels, gpus=gpus,
                     started=NOW - timedelta(hours=hours), finished=None if running else NOW,
                     workload=workload or f"Pod/{name}", instance_type=itype)


BUDGETS = [
    budget("team-nlp", "nlp", used=80, reached="80"),
    budget("team-cv", "cv", used=120, exhausted=True, prices={"default": 1.0, "p4d": 4.0}),
]
PODS = [
    pod("bert-0", "nlp", 4, 10, workload="Job/bert"),
    pod("bert-1", "nlp", 4, 10, workload="Job/bert"),
    pod("serve", "nlp", 1, 2, cc="cc-200", workload="Deployment/serve"),
    pod("yolo", "cv", 8, 1, running=False, itype="p4d"),
    pod("stray", None, 2, 1),
    pod("old", "cv", 8, 24 * 20, running=False),  # started in October, ended now
]


def report(**kwargs):
    return build_report(BUDGETS, PODS, now=NOW, **kwargs)


def test_budgets_come_from_status_with_a_state():
    rows = {b["name"]: b for b in report()["budgets"]}
    assert rows["team-nlp"]["state"] == "Reached 80%"
    assert rows["team-nlp"]["usedPercent"] == 80.0
    assert rows["team-cv"]["state"] == "Exhausted"
    assert rows["team-cv"]["remainingGPUHours"] == 0.0


def test_teams_sum_gpu_hours_and_price_with_their_budget():
    teams = {t["name"]: t for t in report()["teams"]}
    assert teams["nlp"]["gpuHours"] == pytest.approx(4 * 10 * 2 + 2)
    assert teams["nlp"]["estimatedCost"] == pytest.approx(82 * 2.0)
    assert teams["nlp"]["runningGPUs"] == 9
    assert teams["nlp"]["budgets"] == [{"name": "team-nlp", "usedPercent": 80.0, "state": "Reached 80%"}]
    # "old" ran since October: only November's part counts (9.5 days)
    assert teams["cv"]["gpuHours"] == pytest.approx(8 * 1 + 8 * (9 * 24 + 12))
    assert teams["cv"]["estimatedCost"] == pytest.approx(8 * 4.0 + 8 * (9 * 24 + 12) * 1.0)
    assert teams["(none)"]["estimatedCost"] == 0  # no budget covers it: no price
    assert [t["name"] for t in report()["teams"]][0] == "cv"  # biggest first


def test_cost_centers_and_top_workloads():
    data = report(top=2)
    centers = {c["name"]: c for c in data["costCenters"]}
    assert centers["cc-200"]["gpuHours"] == pytest.approx(2.0)
    assert centers["cc-100"]["teams"] == ["(none)", "cv", "nlp"]
    top = data["topWorkloads"]
    assert len(top) == 2
    assert (top[1]["namespace"], top[1]["workload"], top[1]["pods"]) == ("ml-nlp", "Job/bert", 2)


def test_period_choice_changes_the_window():
    daily = {t["name"]: t for t in report(period="Daily")["teams"]}
    assert daily["cv"]["gpuHours"] == pytest.approx(8 * 1 + 8 * 12)
    assert report(period="Daily")["period"]["start"] == "2026-11-10T00:00:00Z"


def test_table_names_every_section_and_shows_budget_state():
    text = render_table(report())
    for heading in ("BUDGETS", "BY TEAM", "BY COST CENTER", "TOP 5 WORKLOADS"):
        assert heading in text
    line = next(line for line in text.splitlines() if line.startswith("team-cv"))
    assert "Exhausted" in line and "120.00" in line


def test_json_is_serializable_and_csv_has_one_row_per_item():
    data = report()
    assert json.loads(json.dumps(data))["totals"]["runningGPUs"] == 11
    rows = list(csv.DictReader(io.StringIO(render_csv(data))))
    scopes = [r["scope"] for r in rows]
    assert (scopes.count("budget"), scopes.count("team"), scopes.count("workload")) == (2, 3, 5)
    budget_row = next(r for r in rows if r["name"] == "team-cv")
    assert (budget_row["state"], budget_row["budget_used_percent"]) == ("Exhausted", "120.0")


def test_empty_cluster_renders():
    empty = build_report([], [], now=NOW)
    assert "(no GPUBudgets)" in render_table(empty)
    assert render_csv(empty).strip() == ",".join(CSV_FIELDS)


# -- --by workload: whole runs, from the operator's cost annotations and the pods still there ------------


def annotated(kind: str, name: str, hours: float, cost: float, *, final: bool = True,
              namespace: str = "ml-nlp", labels: dict | None = None, uid: str = "",
              owner: dict | None = None) -> dict:
    annotations = {constants.GPU_HOURS_ANNOTATION: f"{hours:.4f}", constants.COST_ANNOTATION: f"{cost:.2f}",
                   constants.COST_METERED_AT_ANNOTATION: "2026-11-10T11:00:00Z"}
    if final:
        annotations[constants.COST_FINAL_ANNOTATION] = "2026-11-10T11:00:00Z"
    group = {"Job": "batch/v1", "JobSet": "jobset.x-k8s.io/v1alpha2", "RayJob": "ray.io/v1"}.get(kind, "v1")
    metadata = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "annotations": annotations,
                "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {"apiVersion": group, "kind": kind, "metadata": metadata}


def owned(kind: str, api_version: str, name: str, uid: str, owner: tuple[str, str, str, str] | None = None,
          namespace: str = "ml-nlp") -> dict:
    metadata: dict = {"name": name, "namespace": namespace, "uid": uid}
    if owner:
        okind, oversion, oname, ouid = owner
        metadata["ownerReferences"] = [{"apiVersion": oversion, "kind": okind, "name": oname, "uid": ouid,
                                        "controller": True}]
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def test_by_workload_ranks_whole_runs_with_finished_ones_from_their_annotations():
    workloads = [
        # finished last week; its pods are long deleted: only the annotation knows
        annotated("Job", "finetune", 40.0, 164.0, labels={"team": "nlp"}),
        # running: the operator wrote 5 minutes ago, the pods say a little more now
        annotated("JobSet", "pretrain", 7.9, 15.8, final=False),
        # finished bare pod still in the cluster: one row, from the annotation
        annotated("Pod", "notebook-run", 2.0, 4.0),
    ]
    pods = [
        pod("pt-0", "nlp", 4, 1, workload="Job/pretrain-workers-0"),
        pod("pt-1", "nlp", 4, 1, workload="Job/pretrain-workers-1"),
        PodRecord(uid="notebook-run", namespace="ml-nlp", name="notebook-run", labels={"team": "nlp"}, gpus=1,
                  started=NOW - timedelta(hours=2), finished=NOW, workload="Pod/notebook-run"),
        pod("serve", "nlp", 1, 30, workload="Deployment/serve"),  # started in October: whole life counts
    ]
    runs = {"pt-0": "JobSet/pretrain", "pt-1": "JobSet/pretrain", "notebook-run": "Pod/notebook-run"}
    data = build_workload_report(workloads, pods, BUDGETS, now=NOW, runs=runs, top=10)
    rows = [(w["workload"], w["gpuHours"], w["estimatedCost"], w["source"], w["state"])
            for w in data["workloads"]]
    assert rows == [
        ("Job/finetune", 40.0, 164.0, "annotation", "Finished"),
        ("Deployment/serve", 30.0, 60.0, "pods", "Running"),
        ("JobSet/pretrain", 8.0, 16.0, "pods", "Running"),  # pods (8.0) beat the older annotation (7.9)
        ("Pod/notebook-run", 2.0, 4.0, "annotation", "Finished"),
    ]
    by_name = {w["workload"]: w for w in data["workloads"]}
    assert by_name["JobSet/pretrain"]["pods"] == 2 and by_name["JobSet/pretrain"]["runningGPUs"] == 8
    assert by_name["Job/finetune"]["teams"] == ["nlp"] and by_name["Job/finetune"]["pods"] == 0
    assert data["totals"] == {"workloads": 4, "gpuHours": 80.0, "estimatedCost": 244.0, "runningGPUs": 9}
    assert [w["workload"] for w in build_workload_report(workloads, pods, BUDGETS, now=NOW, runs=runs,
                                                          top=2)["workloads"]] == ["Job/finetune",
                                                                                  "Deployment/serve"]


def test_by_workload_json_table_and_csv():
    workloads = [annotated("Job", "finetune", 40.0, 164.0, labels={"team": "nlp", "cost_center": "cc-9"})]
    data = build_workload_report(workloads, [pod("x", "cv", 2, 3, workload="Job/x")], BUDGETS, now=NOW)
    decoded = json.loads(json.dumps(data))
    assert decoded["by"] == "workload"
    assert decoded["workloads"][0] == {
        "namespace": "ml-nlp", "workload": "Job/finetune", "teams": ["nlp"], "costCenters": ["cc-9"],
        "gpuHours": 40.0, "estimatedCost": 164.0, "runningGPUs": 0, "pods": 0, "state": "Finished",
        "source": "annotation"}
    assert decoded["workloads"][1]["workload"] == "Job/x" and decoded["workloads"][1]["estimatedCost"] == 6.0
    text = render_workloads_table(data)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NAMESPACE"))
    assert "SOURCE" in lines[header] and lines[header + 1].split()[:2] == ["ml-nlp", "Job/finetune"]
    assert lines[header + 1].split()[-2:] == ["Finished", "annotation"]
    rows = list(csv.DictReader(io.StringIO(render_workloads_csv(data))))
    assert [(r["workload"], r["source"]) for r in rows] == [("Job/finetune", "annotation"), ("Job/x", "pods")]


def test_an_annotation_that_is_not_a_number_is_ignored():
    broken = annotated("Job", "odd", 1.0, 1.0)
    broken["metadata"]["annotations"][constants.GPU_HOURS_ANNOTATION] = "lots"
    assert build_workload_report([broken], [], now=NOW)["workloads"] == []


def test_run_keys_walk_owners_as_the_operator_does():
    jobset = owned("JobSet", "jobset.x-k8s.io/v1alpha2", "js", "s1")
    child = owned("Job", "batch/v1", "js-w-0", "j1", ("JobSet", "jobset.x-k8s.io/v1alpha2", "js", "s1"))
    rayjob = owned("RayJob", "ray.io/v1", "rj", "r1")
    cluster = owned("RayCluster", "ray.io/v1", "rj-c", "c1", ("RayJob", "ray.io/v1", "rj", "r1"))
    lone = owned("RayCluster", "ray.io/v1", "lone", "c2")
    cron_job = owned("Job", "batch/v1", "nightly-29000000", "j9", ("CronJob", "batch/v1", "nightly", "cj"))
    pods = [
        owned("Pod", "v1", "a", "p1", ("Job", "batch/v1", "js-w-0", "j1")),
        owned("Pod", "v1", "b", "p2", ("RayCluster", "ray.io/v1", "rj-c", "c1")),
        owned("Pod", "v1", "c", "p3", ("RayCluster", "ray.io/v1", "lone", "c2")),
        owned("Pod", "v1", "d", "p4", ("Job", "batch/v1", "nightly-29000000", "j9")),
        owned("Pod", "v1", "e", "p5", ("ReplicaSet", "apps/v1", "serve-5d4f", "rs1")),
        owned("Pod", "v1", "bare", "p6"),
    ]
    keys = run_keys(pods, [jobset, child, rayjob, cluster, lone, cron_job])
    assert keys == {"p1": "JobSet/js", "p2": "RayJob/rj", "p4": "Job/nightly-29000000", "p6": "Pod/bare"}


def test_report_by_workload_reads_the_cluster(monkeypatch, capsys):
    """`comptroller report --by workload -o json` end to end over a fake client: run kinds listed
    as metadata, a Job whose pods were deleted still listed from its annotation."""
    import argparse

    from controller import report as report_module
    from controller.k8s import config as k8s_config
    from controller.k8s import workloads as k8s_workloads
    from controller.k8s.workloads import BUILTIN_RESOURCES, ApiResource

    objects = {
        "Job": [annotated("Job", "finetune", 3.5, 7.0)],
        "Pod": [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "train-0", "namespace": "ml-nlp", "uid": "p1",
                              "labels": {"team": "nlp"},
                              "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "live",
                                                   "uid": "uid-live", "controller": True}]},
                 "spec": {"containers": [{"name": "m", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
                 "status": {"phase": "Running", "containerStatuses": [
                     {"name": "m", "state": {"running": {"startedAt": "2026-11-10T11:00:00Z"}}}]}}],
    }
    objects["Job"].append(owned("Job", "batch/v1", "live", "uid-live"))
    listed = []

    class FakeWorkloads:
        def __init__(self, _client):
            pass

        def resolve(self, kind, *, group=None, version=None):
            if kind in ("JobSet", "RayJob", "RayCluster", "PyTorchJob", "TFJob", "MPIJob"):
                return None  # not served here
            return BUILTIN_RESOURCES.get(kind) or ApiResource(group, "v1", kind.lower() + "s", kind)

        def list_objects(self, resource, **kwargs):
            listed.append((resource.kind, kwargs.get("metadata_only", False)))
            return [dict(o) for o in objects.get(resource.kind, [])]

        def iter_objects(self, resource, **kwargs):
            return iter(self.list_objects(resource, **kwargs))

    monkeypatch.setattr(k8s_config, "load_api_client", lambda kubeconfig: None)
    monkeypatch.setattr(k8s_workloads, "Workloads", FakeWorkloads)
    parser = argparse.ArgumentParser()
    report_module.configure(parser)
    assert report_module.run(parser.parse_args(["--by", "workload", "-o", "json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(w["workload"], w["source"]) for w in data["workloads"]] == [
        ("Job/finetune", "annotation"), ("Job/live", "pods")]
    assert ("Job", True) in listed  # metadata only


def test_teams_add_the_ledgers_cells_and_the_pods_not_folded_yet():
    from controller.metering.usage import Ledger

    month = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    folded = pod("done", "nlp", 2, 3, running=False)  # still in the cluster, and folded already
    deleted_cells = {"nlp/cc-100": {"2026-11-03": (50.0, 100.0), "2026-10-30": (7.0, 14.0)},
                     "vision/cc-300": {"2026-11-04": (5.0, 10.0)}}
    ledger = Ledger(budget_uid="uid-team-nlp", period_start=month[0], period_end=month[1],
                    folded=frozenset({"done"}), cells=deleted_cells)
    report = build_report(BUDGETS, [*PODS, folded], now=NOW, ledgers={"team-nlp": ledger})
    teams = {t["name"]: t for t in report["teams"]}
    # 80 GPU-hours of running pods + 2 of serve, and the 50 of pods long deleted (October's 7 are
    # another period); "done" is in the cells, not counted a second time from the cluster
    assert teams["nlp"]["gpuHours"] == pytest.approx(80 + 2 + 50)
    assert teams["nlp"]["pods"] == 3
    assert teams["vision"]["gpuHours"] == pytest.approx(5.0)  # only in the ledger now
    top = {w["workload"]: w for w in report["topWorkloads"]}
    assert top["Pod/done"]["gpuHours"] == pytest.approx(6.0)  # the cluster's pods, as they are


def test_a_pod_not_folded_yet_counts_what_its_budget_will_fold():
    """A budget that counts only NVIDIA GPUs folds only those into its cells: the pod's row counts the
    same while it runs, so a team's hours do not drop when the pod ends."""
    from dataclasses import replace

    from controller.metering.usage import Ledger

    nvidia = budget("team-nlp", "nlp", used=0)
    nvidia["spec"]["resources"] = ["nvidia.com/gpu"]
    mixed = replace(pod("mixed", "nlp", 3, 10), devices={"nvidia.com/gpu": 2, "amd.com/gpu": 1})
    ledger = Ledger(budget_uid="uid-team-nlp", period_start=datetime(2026, 11, 1, tzinfo=UTC),
                    period_end=datetime(2026, 12, 1, tzinfo=UTC))
    report = build_report([nvidia], [mixed], now=NOW, ledgers={"team-nlp": ledger})
    assert report["teams"][0]["gpuHours"] == pytest.approx(2 * 10)
    assert report["topWorkloads"][0]["gpuHours"] == pytest.approx(3 * 10)  # the pod as it is
