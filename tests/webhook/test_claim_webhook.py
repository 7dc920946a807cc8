"""`/claim`: a DRA claim created after the pods that name it is judged by what it adds to them;
the webhook lists the namespace's unscheduled pods with a deadline and admits unjudged (with a
warning) when it cannot, and never lists for a claim the resource claim controller made for one pod
from its template."""

from __future__ import annotations

import threading

import pytest
from webhook_fixtures import make_client, policy, review

from controller.webhook.admission import CLAIM_UNJUDGED_WARNING
from e2e import accelerators as lab

NS = "ml-team"
MAX_FOUR = policy("max-four", gpu={"maxGPUsPerPod": 4})


def claim(count: int, **metadata) -> dict:
    made = lab.resource_claim("shared", NS, [lab.device_request("gpu", lab.GPU_CLASS, count=count)])
    made["metadata"].update(metadata)
    return made


def waiting_pod() -> dict:
    return lab.pod("trainer", NS, claims={"gpus": {"resourceClaimName": "shared"}}, labels={"team": "nlp"})


class Pods:
    """`list_unscheduled`: the namespaces asked for, and the pods (or error) to answer with."""

    def __init__(self, *pods: dict, error: Exception | None = None) -> None:
        self.pods = list(pods)
        self.error = error
        self.asked: list[str] = []

    def __call__(self, namespace: str) -> list[dict]:
        self.asked.append(namespace)
        if self.error is not None:
            raise self.error
        return self.pods


def answer(client, obj, *, path="/claim", **kwargs):
    http = client.post(path, json=review(obj, **kwargs))
    assert http.status_code == 200, http.text
    return http.json()["response"]


def test_a_claim_giving_a_waiting_pod_too_many_gpus_is_denied_with_the_count_that_fits():
    pods = Pods(waiting_pod())
    response = answer(make_client(MAX_FOUR, list_unscheduled=pods), claim(8))
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert message.startswith("Comptroller denied ResourceClaim ml-team/shared:")
    assert "pod trainer: 8 GPUs per pod; at most 4 per pod allowed" in message
    assert "count: 4" in message and "kubectl delete pod -n ml-team trainer" in message
    assert pods.asked == [NS]


def test_a_claim_that_fits_is_admitted():
    assert answer(make_client(MAX_FOUR, list_unscheduled=Pods(waiting_pod())), claim(4))["allowed"] is True


@pytest.mark.parametrize("error", [ConnectionError("refused"), None], ids=["API away", "no API access"])
def test_a_claim_whose_pods_cannot_be_listed_is_admitted_unjudged_with_a_warning(error):
    kwargs = {"list_unscheduled": Pods(error=error)} if error else {}
    response = answer(make_client(MAX_FOUR, **kwargs), claim(8))
    assert response["allowed"] is True and response["warnings"] == [CLAIM_UNJUDGED_WARNING]


def test_a_slow_api_server_admits_after_the_deadline(monkeypatch):
    from controller.webhook import admission

    monkeypatch.setattr(admission, "PARENT_TIMEOUT_SECONDS", 0.05)
    release = threading.Event()

    def stuck(_namespace):
        release.wait(5)
        return [waiting_pod()]

    client = make_client(MAX_FOUR, list_unscheduled=stuck)
    try:
        response = answer(client, claim(8))
    finally:
        release.set()
    assert response["allowed"] is True and response["warnings"] == [CLAIM_UNJUDGED_WARNING]


OWNED = {
    "ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": "trainer", "uid": "u", "controller": True}
    ]
}
CLAIM_CONTROLLER = "system:serviceaccount:kube-system:resource-claim-controller"


def test_under_failure_mode_deny_a_claim_whose_pods_cannot_be_listed_is_denied():
    from controller.webhook.settings import WebhookSettings

    client = make_client(MAX_FOUR, settings=WebhookSettings(failure_mode="deny"),
                         list_unscheduled=Pods(error=ConnectionError("refused")))
    response = answer(client, claim(1))
    assert response["allowed"] is False and response["status"]["code"] == 500
    assert "could not list the pods waiting for this claim (refused); denied by failure mode" in (
        response["status"]["message"]
    )


@pytest.mark.parametrize(("mode", "allowed"), [("ignore", True), ("deny", False)])
def test_judging_the_waiting_pods_runs_off_the_loop_and_answers_by_the_deadline(monkeypatch, mode, allowed):
    """Every waiting pod is judged (thousands may wait): off the event loop, and when it is late
    the failure mode answers in time, before the API server's own timeout."""
    from controller.engine import claims
    from controller.webhook import admission
    from controller.webhook.settings import WebhookSettings

    monkeypatch.setattr(admission, "REVIEW_DEADLINE_SECONDS", 0.1)
    release = threading.Event()
    judged_on: list[str] = []
    judge = claims.judge_claim

    def slow(*args, **kwargs):
        judged_on.append(threading.current_thread().name)
        release.wait(5)
        return judge(*args, **kwargs)

    monkeypatch.setattr(claims, "judge_claim", slow)
    settings = WebhookSettings(failure_mode=mode)
    client = make_client(MAX_FOUR, settings=settings, list_unscheduled=Pods(waiting_pod()))
    try:
        response = answer(client, claim(1))
    finally:
        release.set()
    assert judged_on and judged_on[0].startswith("comptroller-claim-judge")
    assert response["allowed"] is allowed
    if allowed:
        assert response["warnings"] == [
            "comptroller: could not judge the pods waiting for this claim in time; admitted unjudged"
        ]


def test_claims_past_the_judges_at_work_are_answered_by_the_failure_mode_when_none_frees_up(monkeypatch):
    """Judgments past their deadline keep their threads until done: while every judge stays busy,
    the next claim waits JUDGE_WAIT_SECONDS at most, and is not queued behind them."""
    from controller.engine import claims
    from controller.webhook import admission

    monkeypatch.setattr(admission, "REVIEW_DEADLINE_SECONDS", 0.05)
    monkeypatch.setattr(admission, "JUDGE_WAIT_SECONDS", 0.1)
    release = threading.Event()
    judge = claims.judge_claim

    def stuck(*args, **kwargs):
        release.wait(5)
        return judge(*args, **kwargs)

    monkeypatch.setattr(claims, "judge_claim", stuck)
    client = make_client(MAX_FOUR, list_unscheduled=Pods(waiting_pod()))
    late = "comptroller: could not judge the pods waiting for this claim in time; admitted unjudged"
    try:
        for _ in range(admission.MAX_CLAIM_JUDGES):
            assert answer(client, claim(8))["warnings"] == [late]
        busy = answer(client, claim(8))
        unwaited = answer(client, claim(8, name="no-pod-names-it"))
    finally:
        release.set()
    assert busy["allowed"] is True
    assert busy["warnings"] == ["comptroller: the webhook is busy judging other claims; admitted unjudged"]
    # No pod waits for this one: nothing to judge, answered at once without a judge.
    assert unwaited["allowed"] is True and "warnings" not in unwaited
    # The late judgments free their judges when they end, though nobody waits for them any more.
    assert _judges_free(client.app.state.admission)


def _judges_free(admission_, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while admission_._judging and time.monotonic() < deadline:
        time.sleep(0.01)
    return admission_._judging == 0


NO_JUDGE = "comptroller: could not start judging the pods waiting for this claim; admitted unjudged"


def test_a_claim_no_judge_could_take_is_answered_by_the_failure_mode_and_frees_its_judge():
    """A judges' pool that takes no more work (shut down) is answered by the failure mode."""
    client = make_client(MAX_FOUR, list_unscheduled=Pods(waiting_pod()))
    admission_ = client.app.state.admission
    admission_._judges.shutdown()
    response = answer(client, claim(8))
    assert response["allowed"] is True
    assert response["warnings"] == [NO_JUDGE]
    assert admission_._judging == 0


def test_a_judgment_queued_by_a_pool_that_then_failed_frees_its_judge_once():
    """A pool may queue the judgment and then fail to start a thread for it (a process short of
    threads); a thread it already has runs it later. Answered by the failure mode, and the judge is
    freed once, not again by that thread: the count never goes below zero."""
    client = make_client(MAX_FOUR, list_unscheduled=Pods(waiting_pod()))
    admission_ = client.app.state.admission
    ran = threading.Event()

    class QueuedThenFailed:
        def submit(self, fn, *args):
            def later():
                fn(*args)
                ran.set()

            threading.Timer(0.05, later).start()
            raise RuntimeError("can't start new thread")

    admission_._judges = QueuedThenFailed()
    response = answer(client, claim(8))
    assert response["warnings"] == [NO_JUDGE]
    assert ran.wait(5)
    assert admission_._judging == 0


@pytest.mark.parametrize(("pods", "allowed"), [((), True), ((waiting_pod(),), False)])
def test_while_the_policies_sync_only_a_claim_some_pod_waits_for_meets_the_failure_mode(pods, allowed):
    """Under `--failure-mode deny` a webhook not yet synced refuses what it must judge; a claim no
    pod waits for (the usual order: claim, then pod) has nothing to judge, and is admitted."""
    from fastapi.testclient import TestClient
    from webhook_fixtures import NOW, NeverReady

    from controller.webhook.app import create_app
    from controller.webhook.settings import WebhookSettings

    app = create_app(view=NeverReady(), settings=WebhookSettings(failure_mode="deny"), clock=lambda: NOW,
                     list_unscheduled=Pods(*pods))
    response = answer(TestClient(app), claim(8))
    assert response["allowed"] is allowed, response
    if not allowed:
        assert response["status"]["code"] == 500


def test_a_claim_waits_for_a_judge_that_frees_up_and_is_judged(monkeypatch):
    """One judgment runs late; the next claim arrives while it still runs and gets the judge once
    it is done, within JUDGE_WAIT_SECONDS: judged (denied), not waved through as busy."""
    from controller.engine import claims
    from controller.webhook import admission

    monkeypatch.setattr(admission, "MAX_CLAIM_JUDGES", 1)
    monkeypatch.setattr(admission, "REVIEW_DEADLINE_SECONDS", 0.5)
    release = threading.Event()
    judge = claims.judge_claim
    calls: list[int] = []

    def first_stuck(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            release.wait(5)
        return judge(*args, **kwargs)

    monkeypatch.setattr(claims, "judge_claim", first_stuck)
    client = make_client(MAX_FOUR, list_unscheduled=Pods(waiting_pod()))
    try:
        assert answer(client, claim(1))["warnings"] == [
            "comptroller: could not judge the pods waiting for this claim in time; admitted unjudged"
        ]
        threading.Timer(0.1, release.set).start()  # the late judgment ends while the next one waits
        waited = answer(client, claim(8))
    finally:
        release.set()
    assert waited["allowed"] is False, waited
    assert "pod trainer: 8 GPUs per pod" in waited["status"]["message"]


def entry_pod() -> dict:
    """A pod whose claim is made from a template for its entry `gpus`, as the API server lists it."""
    template = {"gpus": {"resourceClaimTemplateName": "per-pod"}}
    pod = lab.pod("trainer", NS, claims=template, labels={"team": "nlp"})
    pod["metadata"]["uid"] = "u"
    return pod


def test_a_claim_updated_to_be_a_waiting_pods_is_judged():
    """Created plain (no pod waits for it), then given the pod as controller and the annotation
    naming its entry: the resource claim controller would take it instead of making one from the
    template. The update is judged as the creation would have been."""
    plain = claim(8, name="mine")
    owned = claim(8, name="mine", annotations={"resource.kubernetes.io/pod-claim-name": "gpus"}, **OWNED)
    pods = Pods(entry_pod())
    client = make_client(MAX_FOUR, list_unscheduled=pods)
    assert "warnings" not in answer(client, plain)  # no pod waits for it: admitted
    response = answer(client, owned, operation="UPDATE", old=plain)
    assert response["allowed"] is False
    assert "pod trainer: 8 GPUs per pod; at most 4 per pod allowed" in response["status"]["message"]
    relabelled = {**owned, "metadata": {**owned["metadata"], "labels": {"reviewed": "yes"}}}
    asked = len(pods.asked)
    assert answer(client, relabelled, operation="UPDATE", old=owned)["allowed"] is True
    assert len(pods.asked) == asked  # nothing a pod holds changed: no pods listed


@pytest.mark.parametrize(
    ("obj", "kwargs"),
    [
        (claim(8, **OWNED), {"username": CLAIM_CONTROLLER}),
        (claim(8, **OWNED), {"username": "system:kube-controller-manager"}),
        (claim(8), {"namespace": "kube-system"}),
        (claim(8), {"operation": "UPDATE"}),
    ],
    ids=["made for one pod by the claim controller", "by the controller-manager", "excluded namespace",
         "not a creation"],
)
def test_claims_there_is_nothing_to_judge_for_never_list_pods(obj, kwargs):
    pods = Pods(waiting_pod())
    kwargs = {**kwargs, "old": obj} if kwargs.get("operation") else kwargs
    assert answer(make_client(MAX_FOUR, list_unscheduled=pods), obj, **kwargs)["allowed"] is True
    assert pods.asked == []


@pytest.mark.parametrize("user", ["data-scientist", "system:serviceaccount:ml-team:default"])
def test_a_pod_owner_anyone_else_writes_on_a_claim_does_not_skip_it(user):
    """Anyone may write a Pod ownerReference on a claim: created for an admitted pod that names
    it, 8 GPUs past maxGPUsPerPod are refused, not waved through as the claim controller's."""
    pods = Pods(waiting_pod())
    response = answer(make_client(MAX_FOUR, list_unscheduled=pods), claim(8, **OWNED), username=user)
    assert response["allowed"] is False
    assert "pod trainer: 8 GPUs per pod; at most 4 per pod allowed" in response["status"]["message"]
    assert pods.asked == [NS]


# -- /validate reads the claims a pod names that the cache does not know yet ---------------------


class Claims:
    """`fetch_claim`: what the API server holds, and what was asked for."""

    def __init__(self, *objects: dict, error: Exception | None = None) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.error = error
        self.asked: list[tuple[str, str, str]] = []

    def __call__(self, namespace: str, kind: str, name: str) -> dict | None:
        self.asked.append((namespace, kind, name))
        if self.error is not None:
            raise self.error
        return self.objects.get((kind, name))


def test_a_pod_whose_claim_the_cache_does_not_know_yet_is_judged_with_it_read_from_the_api():
    """A claim and its pod applied together: the pod's review may come before the watch brings the
    claim. Counted as 1 GPU it went past maxGPUsPerPod; read, it counts its 8."""
    claims = Claims(claim(8))
    response = answer(make_client(MAX_FOUR, fetch_claim=claims), waiting_pod(), path="/validate")
    assert response["allowed"] is False
    assert "8 GPUs per pod; at most 4 per pod allowed" in response["status"]["message"]
    assert claims.asked == [(NS, "ResourceClaim", "shared")]


def test_under_failure_mode_deny_a_pod_whose_claims_cannot_be_read_is_denied():
    """Counted as 1 GPU, a claim created before the pod would never be judged: /claim has seen
    its creation, with no pod waiting for it yet."""
    from controller.webhook.settings import WebhookSettings

    client = make_client(MAX_FOUR, settings=WebhookSettings(failure_mode="deny"),
                         fetch_claim=Claims(error=ConnectionError("refused")))
    response = answer(client, waiting_pod(), path="/validate")
    assert response["allowed"] is False and response["status"]["code"] == 500
    assert response["status"]["message"].startswith(
        "comptroller: could not read the DRA claims this workload names (refused); denied by failure mode"
    )


@pytest.mark.parametrize("claims", [Claims(), Claims(error=ConnectionError("refused"))],
                         ids=["not there", "API away"])
def test_a_claim_that_cannot_be_read_counts_1_gpu_with_the_note(claims):
    response = answer(make_client(MAX_FOUR, fetch_claim=claims), waiting_pod(), path="/validate")
    assert response["allowed"] is True
    assert any("ResourceClaim shared is not known here: counted as 1 GPU" in w for w in response["warnings"])


def test_pods_without_claims_never_read_any():
    claims = Claims(claim(8))
    pod = lab.pod("plain", NS, limits={"nvidia.com/gpu": 1}, labels={"team": "nlp"})
    assert answer(make_client(MAX_FOUR, fetch_claim=claims), pod, path="/validate")["allowed"] is True
    assert claims.asked == []


@pytest.mark.parametrize("path", ["/validate", "/claim"])
@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
         "spec": [{"resourceClaims": [{"name": "gpus", "resourceClaimName": "shared"}]}]},
        {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
         "metadata": {"name": "c", "namespace": NS, "ownerReferences": "Pod"}, "spec": "resourceClaims"},
    ],
    ids=["pod spec a list", "claim owners a string"],
)
def test_malformed_objects_get_an_admission_answer_never_a_500(obj, path):
    client = make_client(MAX_FOUR, fetch_claim=Claims(), list_unscheduled=Pods(waiting_pod()))
    http = client.post(path, json=review(obj))
    assert http.status_code == 200, http.text
    assert http.json()["response"]["allowed"] is True
