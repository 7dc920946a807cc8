"""Cost per run (controller/operator/runs.py) against a fake of our client layer and pod cache:
per-run totals with departed pods, restarts that never lower an annotation, the write cadence
with an injected clock, one GPUCost Event per finished run, the write scope, owner resolution."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta

import pytest
from lifecycle_fakes import merge
from metering_fakes import FakeWatch, state_for

from controller import constants
from controller.k8s import workloads as workloads_api
from controller.k8s.workloads import (
    BUILTIN_RESOURCES,
    ApiError,
    ApiResource,
    NotFound,
    NotWritable,
    WriteScope,
)
from controller.metering.budgets import Budget
from controller.metering.usage import PodRecord
from controller.operator import runs as runs_module
from controller.operator.runs import (
    Owners,
    RunCosts,
    RunRef,
    Written,
    carry_over,
    finished,
    format_hours,
)

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
H = constants.GPU_HOURS_ANNOTATION
C = constants.COST_ANNOTATION
GROUPS = {"JobSet": "jobset.x-k8s.io", "RayJob": "ray.io", "RayCluster": "ray.io", "RayService": "ray.io",
          "PyTorchJob": "kubeflow.org", "CronJob": "batch", "Job": "batch", "Deployment": "apps",
          "ReplicaSet": "apps"}


class FakeApi:
    """The subset of `Workloads` the runs loop uses, over objects keyed by (kind, namespace, name).

    Like the API server, a merge patch whose `metadata.uid` differs from the object's is refused."""

    def __init__(self, *objects: dict) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.gets: list[tuple[str, str, str]] = []
        self.patches: list[tuple[str, str, str, dict]] = []
        self.events: list[dict] = []
        for obj in objects:
            self.add(obj)

    def add(self, obj: dict) -> dict:
        md = obj["metadata"]
        self.objects[(obj["kind"], md.get("namespace", ""), md["name"])] = copy.deepcopy(obj)
        return obj

    def annotations(self, kind: str, namespace: str, name: str) -> dict:
        return self.objects[(kind, namespace, name)]["metadata"].get("annotations") or {}

    def resolve(self, kind, *, group=None, version=None):
        return BUILTIN_RESOURCES.get(kind) or ApiResource(group or "", "v1", kind.lower() + "s", kind)

    def get(self, resource, namespace, name):
        self.gets.append((resource.kind, namespace, name))
        obj = self.objects.get((resource.kind, namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    def patch(self, resource, namespace, name, body, *, content_type=None):
        if not workloads_api.WRITES.allows(namespace):
            raise NotWritable(namespace)
        self.patches.append((resource.kind, namespace, name, copy.deepcopy(body)))
        obj = self.objects.get((resource.kind, namespace, name))
        if obj is None:
            raise NotFound(404, "gone")
        if body["metadata"].get("uid") not in (None, obj["metadata"].get("uid")):
            raise ApiError(422, "metadata.uid: field is immutable")
        merge(obj, {k: v for k, v in body.items()})
        return copy.deepcopy(obj)

    def emit_event(self, obj, *, reason, message, type_="Normal", now=None):
        self.events.append({"kind": obj["kind"], "name": obj["metadata"]["name"],
                            "uid": obj["metadata"].get("uid"), "reason": reason, "message": message})

    def patched(self, kind: str | None = None) -> list[tuple[str, str]]:
        return [(k, n) for k, _, n, _ in self.patches if kind is None or k == kind]


def obj(kind: str, name: str, uid: str, *, namespace: str = "ml", owner: tuple[str, str, str] | None = None,
        conditions: list[tuple[str, str]] = (), status: dict | None = None, annotations: dict | None = None):
    group = GROUPS.get(kind, "")
    metadata: dict = {"name": name, "namespace": namespace, "uid": uid}
    if owner:
        okind, oname, ouid = owner
        ogroup = GROUPS.get(okind, "")
        metadata["ownerReferences"] = [{"apiVersion": f"{ogroup}/v1" if ogroup else "v1", "kind": okind,
                                        "name": oname, "uid": ouid, "controller": True}]
    if annotations:
        metadata["annotations"] = dict(annotations)
    body = {"apiVersion": f"{group}/v1" if group else "v1", "kind": kind, "metadata": metadata,
            "status": dict(status or {})}
    if conditions:
        body["status"]["conditions"] = [{"type": t, "status": s} for t, s in conditions]
    return body


def pod(uid: str, gpus: float, since: datetime | None, *, until: datetime | None = None, workload: str = "",
        labels: dict | None = None, namespace: str = "ml", itype: str = "") -> PodRecord:
    return PodRecord(uid=uid, namespace=namespace, name=uid, labels={"team": "nlp", **(labels or {})},
                     gpus=gpus, started=since, finished=until, workload=workload or f"Pod/{uid}",
                     instance_type=itype)


def job_pod(uid: str, job: str, job_uid: str, gpus: float, since: datetime | None, **kwargs) -> PodRecord:
    labels = {"batch.kubernetes.io/job-name": job, "batch.kubernetes.io/controller-uid": job_uid}
    return pod(uid, gpus, since, workload=f"Job/{job}", labels=labels, **kwargs)


def budget(name: str = "team-nlp", team: str = "nlp", prices: dict | None = None) -> Budget:
    return Budget.from_object({
        "apiVersion": constants.API_VERSION, "kind": "GPUBudget",
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {"selector": {"matchLabels": {"team": team}}, "gpuHours": 1000, "period": "Monthly",
                 "pricePerGPUHour": prices or {"default": 2.0}},
    })


@pytest.fixture(autouse=True)
def write_everywhere(monkeypatch):
    monkeypatch.setattr(workloads_api, "WRITES", WriteScope())


class World:
    """An operator process: metering state, clock and the runs loop; `restart()` loses memory."""

    def __init__(self, api: FakeApi, watch: FakeWatch, executor, *, now: datetime, budgets=None):
        self.api, self.watch, self.executor = api, watch, executor
        self.clock = [now]
        self.budgets = [budget()] if budgets is None else list(budgets)
        self.restart()

    def restart(self) -> None:
        self.state = state_for(self.api, self.watch, self.executor, self.clock)
        self.state.budgets = {b.name: b for b in self.budgets}
        self.state.node_types_at = float("inf")  # no node listing in these tests
        self.runs = RunCosts(self.state)
        self.runs.daemon_started()

    def at(self, when: datetime):
        self.clock[0] = when
        return asyncio.run(self.runs.tick())


def hours_of(api: FakeApi, kind: str, name: str) -> float:
    return float(api.annotations(kind, "ml", name)[H])


# -- totals ------------------------------------------------------------------------------------------


def test_departed_pods_stay_in_the_run_total_until_it_finishes(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    a = job_pod("a", "train", "j1", 2, T0)
    b = job_pod("b", "train", "j1", 1, T0)
    world = World(api, FakeWatch([a, b]), executor, now=T0)
    world.at(T0 + timedelta(hours=1))
    assert hours_of(api, "Job", "train") == pytest.approx(3.0)
    assert api.annotations("Job", "ml", "train")[C] == "6.00"

    world.watch.pods = [a]  # b deleted (a failed attempt, say): its hour stays
    world.at(T0 + timedelta(hours=1, minutes=6))
    assert hours_of(api, "Job", "train") == pytest.approx(2 * 66 / 60 + 1, abs=1e-4)

    end = T0 + timedelta(hours=2)
    world.watch.pods = [job_pod("a", "train", "j1", 2, T0, until=end)]
    api.objects[("Job", "ml", "train")]["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    world.at(end + timedelta(seconds=30))
    annotations = api.annotations("Job", "ml", "train")
    assert (annotations[H], annotations[C]) == ("5.0000", "10.00")
    assert constants.COST_FINAL_ANNOTATION in annotations
    assert [(e["reason"], e["name"], e["uid"]) for e in api.events] == [
        (constants.REASON_GPU_COST, "train", "j1")]
    message = api.events[0]["message"]
    assert "5.0000 GPU-hours" in message and "estimated cost 10.00" in message
    assert "2 GPU pods" in message and "GPUBudget team-nlp" in message


def test_prices_come_from_the_first_budget_by_name_and_the_instance_type(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 1, T0, itype="p4d.24xlarge")]), executor,
                  now=T0, budgets=[budget("z-all", prices={"default": 9.0}),
                                   budget("a-nlp", prices={"default": 2.0, "p4d.24xlarge": 4.0})])
    world.at(T0 + timedelta(hours=2))
    assert api.annotations("Job", "ml", "train")[C] == "8.00"


def test_without_budgets_gpu_hours_are_written_at_no_cost(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 0.5, T0)]), executor, now=T0, budgets=())
    world.at(T0 + timedelta(hours=2))
    assert api.annotations("Job", "ml", "train")[H] == "1.0000"  # half a GPU (a MIG slice) for 2 h
    assert api.annotations("Job", "ml", "train")[C] == "0.00"


# -- writes ------------------------------------------------------------------------------------------


def test_a_running_run_is_rewritten_every_five_minutes_and_no_more(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 1, T0)]), executor, now=T0)
    for minutes in (1, 2, 5, 5.9, 6, 10, 10.99, 11, 16):
        world.at(T0 + timedelta(minutes=minutes))
    # first sight, then 5 minutes after each write
    stamps = [b["metadata"]["annotations"][constants.COST_METERED_AT_ANNOTATION] for *_, b in api.patches]
    assert stamps == ["2026-11-10T12:01:00Z", "2026-11-10T12:06:00Z", "2026-11-10T12:11:00Z",
                      "2026-11-10T12:16:00Z"]
    assert hours_of(api, "Job", "train") == pytest.approx(16 / 60, abs=1e-4)
    assert all(set(b) == {"metadata"} and set(b["metadata"]) == {"uid", "annotations"}
               for *_, b in api.patches)


def test_nothing_is_written_when_the_rounded_values_did_not_change(executor):
    api = FakeApi(obj("Job", "train", "j1"))  # never says it finished (a suspended Job, say)
    ended = job_pod("a", "train", "j1", 1, T0, until=T0 + timedelta(hours=1))
    world = World(api, FakeWatch([ended]), executor, now=T0)
    world.at(T0 + timedelta(hours=1, minutes=1))
    assert len(api.patches) == 1
    ticks = 60
    for tick in range(1, ticks + 1):  # every 30 s for half an hour
        world.at(T0 + timedelta(hours=1, minutes=1, seconds=30 * tick))
    assert len(api.patches) == 1 and api.events == []
    # Asked whether it finished with a back-off (up to 5 minutes), not every tick.
    asks = [g for g in api.gets if g == ("Job", "ml", "train")]
    assert 5 <= len(asks) <= 16


def test_a_finished_run_gets_one_event_even_across_restarts(executor):
    api = FakeApi(obj("Job", "train", "j1", conditions=[("Failed", "True")]))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 4, T0, until=T0 + timedelta(minutes=30))]),
                  executor, now=T0)
    world.at(T0 + timedelta(minutes=31))
    world.at(T0 + timedelta(minutes=40))
    assert len(api.events) == 1 and len(api.patches) == 1
    world.restart()
    world.at(T0 + timedelta(minutes=50))
    world.at(T0 + timedelta(hours=2))
    assert len(api.events) == 1 and len(api.patches) == 1
    assert api.annotations("Job", "ml", "train")[H] == "2.0000"


def test_a_retried_job_is_not_finished_between_attempts(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    first = job_pod("a", "train", "j1", 1, T0, until=T0 + timedelta(minutes=10))
    world = World(api, FakeWatch([first]), executor, now=T0)
    world.at(T0 + timedelta(minutes=11))  # attempt 1 failed, the Job has not
    second = job_pod("b", "train", "j1", 1, T0 + timedelta(minutes=12), until=T0 + timedelta(minutes=40))
    world.watch.pods = [first, second]
    world.at(T0 + timedelta(minutes=20))
    assert api.events == []
    api.objects[("Job", "ml", "train")]["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    world.at(T0 + timedelta(minutes=41))  # asked at once: the back-off restarted with the new attempt
    assert len(api.events) == 1
    assert api.annotations("Job", "ml", "train")[H] == format_hours((10 + 28) / 60)


def test_writes_only_where_the_write_scope_allows(executor, monkeypatch):
    monkeypatch.setattr(workloads_api, "WRITES", WriteScope(["team-a"], own="comptroller-system"))
    api = FakeApi(obj("Job", "train", "j1", conditions=[("Complete", "True")]),
                  obj("Job", "train", "j2", namespace="team-a", conditions=[("Complete", "True")]))
    world = World(api, FakeWatch([
        job_pod("a", "train", "j1", 1, T0, until=T0 + timedelta(hours=1)),
        job_pod("b", "train", "j2", 1, T0, until=T0 + timedelta(hours=1), namespace="team-a"),
    ]), executor, now=T0)
    world.at(T0 + timedelta(hours=2))
    assert [(ns, name) for _, ns, name, _ in api.patches] == [("team-a", "train")]
    assert all(ns == "team-a" for _, ns, _ in api.gets)  # not even read elsewhere
    assert [e["uid"] for e in api.events] == ["j2"]


def test_a_namesake_is_never_written(executor):
    # The Job the pods belonged to was replaced by another of the same name (another uid).
    api = FakeApi(obj("Job", "train", "new-uid"))
    world = World(api, FakeWatch([job_pod("a", "train", "old-uid", 1, T0)]), executor, now=T0)
    world.at(T0 + timedelta(hours=1))
    assert api.patches == [] and api.events == []


# -- restarts ----------------------------------------------------------------------------------------


def test_a_restart_continues_exactly_from_the_annotations(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    a = job_pod("a", "train", "j1", 1, T0)
    b = job_pod("b", "train", "j1", 1, T0, until=T0 + timedelta(hours=1))
    world = World(api, FakeWatch([a, b]), executor, now=T0)
    world.at(T0 + timedelta(hours=1))
    world.watch.pods = [a]  # b is deleted; its hour is in memory only
    world.at(T0 + timedelta(hours=1, minutes=5))
    assert hours_of(api, "Job", "train") == pytest.approx(1 + 65 / 60, abs=1e-4)

    world.restart()  # memory lost: only `a` is visible
    world.at(T0 + timedelta(hours=1, minutes=10))
    # carry = written - a's hours up to cost-metered-at = b's hour, exactly
    assert hours_of(api, "Job", "train") == pytest.approx(1 + 70 / 60, abs=1e-4)
    # cost too, within the rounding of the annotation it continued from and of the one written
    assert float(api.annotations("Job", "ml", "train")[C]) == pytest.approx(2 * (1 + 70 / 60), abs=0.01)


def test_a_restart_never_lowers_what_is_written(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    a = job_pod("a", "train", "j1", 1, T0)
    world = World(api, FakeWatch([a]), executor, now=T0)
    world.at(T0 + timedelta(hours=5))
    assert api.annotations("Job", "ml", "train")[C] == "10.00"
    world.budgets = [budget(prices={"default": 0.5})]  # a cheaper price from now on
    world.state.budgets = {b.name: b for b in world.budgets}
    world.at(T0 + timedelta(hours=5, minutes=5))  # recomputed at 0.5: 2.54, but never lowered
    assert api.annotations("Job", "ml", "train")[C] == "10.00"
    assert hours_of(api, "Job", "train") == pytest.approx(5 + 5 / 60, abs=1e-4)
    world.restart()
    values = []
    for minutes in (10, 15, 20):
        world.at(T0 + timedelta(hours=5, minutes=minutes))
        values.append((hours_of(api, "Job", "train"), float(api.annotations("Job", "ml", "train")[C])))
    assert values == sorted(values)
    assert values[0][1] >= 10.0
    # Something else wrote a larger value without a timestamp: taken as it is, never lowered.
    api.objects[("Job", "ml", "train")]["metadata"]["annotations"] = {H: "99.0", C: "500.00"}
    world.restart()
    world.at(T0 + timedelta(hours=6))
    assert hours_of(api, "Job", "train") >= 99.0 and float(api.annotations("Job", "ml", "train")[C]) >= 500


def test_carry_over_is_what_the_visible_pods_do_not_explain():
    a = pod("a", 2, T0)
    written = Written(hours=5.0, cost=10.0, metered_at=T0 + timedelta(hours=1))
    carried = carry_over(written, [(a, 2.0)], now=T0 + timedelta(hours=3))
    assert (carried.hours, carried.cost) == pytest.approx((3.0, 6.0))
    assert carry_over(Written(), [(a, 2.0)], now=T0).hours == 0.0
    assert carry_over(Written(hours=1.0, cost=1.0, metered_at=T0 + timedelta(hours=1)), [(a, 2.0)],
                      now=T0 + timedelta(hours=2)).hours == 0.0  # never negative


def test_becoming_active_again_rereads_the_annotations(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 1, T0)]), executor, now=T0)
    world.at(T0 + timedelta(hours=1))
    world.runs.daemon_stopped()  # paused by peering; a peer writes meanwhile
    api.objects[("Job", "ml", "train")]["metadata"]["annotations"].update(
        {H: "7.0000", C: "14.00", constants.COST_METERED_AT_ANNOTATION: "2026-11-10T13:30:00Z"})
    world.runs.daemon_started()
    world.runs.daemon_started()  # a second daemon: no second reset
    world.at(T0 + timedelta(hours=1, minutes=40))
    assert hours_of(api, "Job", "train") == pytest.approx(7.0 + 10 / 60, abs=1e-4)


# -- the run of a pod --------------------------------------------------------------------------------


def owners_for(api: FakeApi) -> Owners:
    return Owners(api, clock=lambda: 0.0)


def test_jobset_pods_belong_to_the_jobset_with_one_get_per_owner():
    api = FakeApi(obj("JobSet", "js", "s1"),
                  obj("Job", "js-workers-0", "j0", owner=("JobSet", "js", "s1")),
                  obj("Job", "js-workers-1", "j1", owner=("JobSet", "js", "s1")))
    owners = owners_for(api)
    pods = [job_pod(f"p{i}{k}", f"js-workers-{i}", f"j{i}", 1, T0) for i in (0, 1) for k in range(3)]
    assert owners.resolve_all(pods) == 0
    assert {owners.run_of(p.uid) for p in pods} == {RunRef("jobset.x-k8s.io", "JobSet", "ml", "js", "s1")}
    assert sorted(api.gets) == [("Job", "ml", "js-workers-0"), ("Job", "ml", "js-workers-1"),
                                ("JobSet", "ml", "js")]
    owners.resolve_all([job_pod("late", "js-workers-1", "j1", 1, T0)])  # a restarted worker
    assert len(api.gets) == 3


def test_rayjob_pods_belong_to_the_rayjob_through_its_raycluster():
    api = FakeApi(obj("RayJob", "rj", "r1"),
                  obj("RayCluster", "rj-raycluster-x7", "c1", owner=("RayJob", "rj", "r1")),
                  obj("RayCluster", "lone", "c2"),
                  obj("RayService", "svc", "v1"),
                  obj("RayCluster", "svc-raycluster-a", "c3", owner=("RayService", "svc", "v1")))
    owners = owners_for(api)
    head = pod("head", 0, T0, workload="RayCluster/rj-raycluster-x7",
               labels={"ray.io/cluster": "rj-raycluster-x7"})
    worker = pod("w", 1, T0, workload="RayCluster/rj-raycluster-x7")
    lone = pod("lone-w", 1, T0, workload="RayCluster/lone")
    served = pod("svc-w", 1, T0, workload="RayCluster/svc-raycluster-a")
    owners.resolve_all([head, worker, lone, served])
    assert owners.run_of("head") == owners.run_of("w") == RunRef("ray.io", "RayJob", "ml", "rj", "r1")
    assert owners.run_of("lone-w") is None and owners.run_of("svc-w") is None
    assert api.gets.count(("RayJob", "ml", "rj")) == 1
    assert api.gets.count(("RayCluster", "ml", "rj-raycluster-x7")) == 1


def test_a_cronjobs_job_is_a_run_of_its_own():
    api = FakeApi(obj("CronJob", "nightly", "cj"),
                  obj("Job", "nightly-29000000", "j9", owner=("CronJob", "nightly", "cj")))
    owners = owners_for(api)
    # usage.py reports such pods as CronJob/<name>; the Job's own labels name it
    record = job_pod("p", "nightly-29000000", "j9", 1, T0)
    record = PodRecord(**{**record.__dict__, "workload": "CronJob/nightly"})
    owners.resolve_all([record])
    assert owners.run_of("p") == RunRef("batch", "Job", "ml", "nightly-29000000", "j9")
    assert ("CronJob", "ml", "nightly") not in api.gets


def test_kubeflow_jobs_and_bare_pods_are_runs_and_deployments_never_are():
    api = FakeApi(obj("PyTorchJob", "bert", "pt"))
    owners = owners_for(api)
    owners.resolve_all([pod("m", 1, T0, workload="PyTorchJob/bert"), pod("bare", 1, T0),
                        pod("web", 1, T0, workload="Deployment/serve"),
                        pod("db", 1, T0, workload="StatefulSet/db"),
                        pod("x", 1, T0, workload="Workflow/argo-1")])
    assert owners.run_of("m") == RunRef("kubeflow.org", "PyTorchJob", "ml", "bert", "pt")
    assert owners.run_of("bare") == RunRef("", "Pod", "ml", "bare", "bare")
    assert owners.run_of("web") is None and owners.run_of("db") is None and owners.run_of("x") is None
    assert api.gets == [("PyTorchJob", "ml", "bert")]  # nothing asked for the others


def test_a_job_under_an_unknown_controller_is_the_run():
    api = FakeApi(obj("Job", "step-1", "j1", owner=("Workflow", "wf", "w1")))
    owners = owners_for(api)
    owners.resolve_all([job_pod("p", "step-1", "j1", 1, T0)])
    assert owners.run_of("p") == RunRef("batch", "Job", "ml", "step-1", "j1")


def test_only_runs_are_ever_patched(executor):
    api = FakeApi(obj("Deployment", "serve", "d1"), obj("StatefulSet", "db", "s1"),
                  obj("Pod", "bare", "bare", status={"phase": "Succeeded"}))
    world = World(api, FakeWatch([pod("web", 1, T0, workload="Deployment/serve"),
                                  pod("db-0", 1, T0, workload="StatefulSet/db"),
                                  pod("bare", 1, T0, until=T0 + timedelta(hours=1))]), executor, now=T0)
    world.at(T0 + timedelta(hours=2))
    world.at(T0 + timedelta(hours=3))
    assert api.patched() == [("Pod", "bare")]
    assert [(e["kind"], e["name"]) for e in api.events] == [("Pod", "bare")]
    assert api.annotations("Pod", "ml", "bare")[H] == "1.0000"


def test_a_deleted_workload_is_dropped_without_writes(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 1, T0)]), executor, now=T0)
    world.at(T0 + timedelta(minutes=1))
    del api.objects[("Job", "ml", "train")]
    world.watch.pods = [job_pod("a", "train", "j1", 1, T0, until=T0 + timedelta(minutes=2))]
    world.at(T0 + timedelta(minutes=3))
    world.at(T0 + timedelta(minutes=4))
    assert api.events == [] and len(api.patches) == 1
    world.watch.pods = []
    world.at(T0 + timedelta(minutes=5))
    assert world.runs.runs == {}


@pytest.mark.parametrize(
    ("body", "done"),
    [
        (obj("Job", "j", "1", conditions=[("Complete", "True")]), True),
        (obj("Job", "j", "1", conditions=[("SuccessCriteriaMet", "True")]), False),
        (obj("Job", "j", "1", conditions=[("Failed", "False")]), False),
        (obj("JobSet", "s", "1", conditions=[("Completed", "True")]), True),
        (obj("PyTorchJob", "p", "1", conditions=[("Running", "False"), ("Succeeded", "True")]), True),
        (obj("RayJob", "r", "1", status={"jobDeploymentStatus": "Running", "jobStatus": "SUCCEEDED"}), False),
        (obj("RayJob", "r", "1", status={"jobDeploymentStatus": "Complete"}), True),
        (obj("Pod", "p", "1", status={"phase": "Failed"}), True),
    ],
)
def test_finished(body, done):
    assert finished(body) is done


def test_one_tick_at_a_time_whatever_the_number_of_daemons(executor):
    api = FakeApi(obj("Job", "train", "j1"))
    world = World(api, FakeWatch([job_pod("a", "train", "j1", 1, T0)]), executor, now=T0 + timedelta(hours=1))
    calls = []

    async def counting_tick():
        calls.append(1)
        await asyncio.sleep(0.05)
        return runs_module.TickReport()

    world.runs.tick = counting_tick

    async def scenario():
        await asyncio.gather(*(world.runs.tick_if_due() for _ in range(5)))
        await asyncio.sleep(0.1)
        await world.runs.tick_if_due()  # within the interval (1 s): not yet
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert len(calls) == 1


def test_the_loop_is_registered_on_budgets_and_policies_as_daemons():
    import kopf

    handlers = [(h.id, h.selector.any_name) for h in kopf.get_default_registry()._spawning.get_all_handlers()]
    assert ("run-costs", constants.BUDGET_PLURAL) in handlers
    assert ("run-costs", constants.POLICY_PLURAL) in handlers


def test_a_jobset_and_a_rayjob_are_annotated_themselves_never_their_jobs_or_cluster(executor):
    api = FakeApi(obj("JobSet", "js", "s1"),
                  obj("Job", "js-w-0", "j0", owner=("JobSet", "js", "s1")),
                  obj("Job", "js-w-1", "j1", owner=("JobSet", "js", "s1")),
                  obj("RayJob", "rj", "r1", status={"jobDeploymentStatus": "Running"}),
                  obj("RayCluster", "rj-c", "c1", owner=("RayJob", "rj", "r1")))
    end = T0 + timedelta(hours=1)
    pods = [job_pod("w0", "js-w-0", "j0", 4, T0, until=end), job_pod("w1", "js-w-1", "j1", 4, T0, until=end),
            pod("head", 1, T0, until=end, workload="RayCluster/rj-c"),
            pod("rw", 2, T0, until=end, workload="RayCluster/rj-c")]
    world = World(api, FakeWatch(pods), executor, now=T0)
    world.at(T0 + timedelta(minutes=30))
    assert sorted(api.patched()) == [("JobSet", "js"), ("RayJob", "rj")]
    api.objects[("JobSet", "ml", "js")]["status"]["conditions"] = [{"type": "Completed", "status": "True"}]
    api.objects[("RayJob", "ml", "rj")]["status"]["jobDeploymentStatus"] = "Complete"
    world.at(end + timedelta(minutes=1))
    assert {k for k, _ in api.patched()} == {"JobSet", "RayJob"}
    assert api.annotations("JobSet", "ml", "js")[H] == "8.0000"
    assert api.annotations("RayJob", "ml", "rj")[H] == "3.0000"
    assert sorted((e["kind"], e["name"]) for e in api.events) == [("JobSet", "js"), ("RayJob", "rj")]


def test_the_event_says_how_many_pods_only_when_it_knows_them_all():
    run = RunRef("batch", "Job", "ml", "train", "j1")
    total = runs_module.Charge(1.5, 3.0)
    assert runs_module.event_message(run, total, pods=1, budgets=["b"]) == (
        "Job train used 1.5000 GPU-hours, estimated cost 3.00 (1 GPU pod; priced by GPUBudget b)")
    assert runs_module.event_message(run, total, pods=None, budgets=[]) == (
        "Job train used 1.5000 GPU-hours, estimated cost 3.00 (no GPUBudget prices it)")
