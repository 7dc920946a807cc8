"""UPDATE and the scale subresource at the webhook: the old object reaches the engine, a spent
budget refuses a scale-up whichever way it comes, and `/scale` fails open when it cannot read the
workload it scales."""

from __future__ import annotations

import copy
import threading

import pytest
from webhook_fixtures import API, GOOD_LABELS, ML_PLATFORM, deployment, make_client, review

from controller.webhook.admission import SCALE_UNJUDGED_WARNING

SPENT = {
    "apiVersion": API,
    "kind": "GPUBudget",
    "metadata": {"name": "team-nlp"},
    "spec": {"selector": {"matchLabels": {"team": "nlp"}}, "gpuHours": 100, "period": "Monthly"},
    "status": {"usedGPUHours": 100, "period": {"end": "2026-12-01T00:00:00Z"}},
}


def _response(http):
    assert http.status_code == 200, http.text
    return http.json()["response"]


def running(replicas=1, gpus=1):
    manifest = deployment(template_labels=GOOD_LABELS, gpus=gpus)
    manifest["spec"]["replicas"] = replicas
    return manifest


def test_a_replica_patch_past_a_spent_budget_is_denied_not_warned():
    """The bypass: the old object was judged as over budget too, and the denial became a warning."""
    client = make_client(ML_PLATFORM, SPENT)
    response = _response(
        client.post("/validate", json=review(running(8), operation="UPDATE", old=running(1)))
    )
    assert response["allowed"] is False
    assert "team-nlp" in response["status"]["message"]
    assert "this update adds 7 GPUs" in response["status"]["message"]


@pytest.mark.parametrize("new", [running(1), running(0)], ids=["unchanged", "scaled-down"])
def test_updates_that_add_no_gpus_pass_a_spent_budget(new):
    client = make_client(ML_PLATFORM, SPENT)
    response = _response(client.post("/validate", json=review(new, operation="UPDATE", old=running(1))))
    assert response["allowed"] is True


# -- /scale ----------------------------------------------------------------------------------------


def scale_review(
    replicas, old_replicas, *, name="serve", namespace="ml-team", resource=("apps", "v1", "deployments")
):
    def scale(count):
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": count},
        }

    group, version, plural = resource
    body = review(scale(replicas), operation="UPDATE", old=scale(old_replicas))
    body["request"]["kind"] = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    body["request"]["resource"] = {"group": group, "version": version, "resource": plural}
    body["request"]["subResource"] = "scale"
    return body


class Workloads:
    """Stands in for the API server's GET of the scaled workload; counts calls."""

    def __init__(self, *objects, error=None):
        self.objects = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
        self.error = error
        self.calls = []

    def __call__(self, group, version, plural, namespace, name):
        self.calls.append((group, version, plural, namespace, name))
        if self.error:
            raise self.error
        return copy.deepcopy(self.objects.get((namespace, name)))


@pytest.mark.parametrize(("replicas", "allowed"), [(8, False), (1, True), (0, True)])
def test_scale_is_judged_as_an_update_of_the_workload(replicas, allowed):
    workloads = Workloads(running(1))
    client = make_client(ML_PLATFORM, SPENT, fetch_workload=workloads)
    response = _response(client.post("/scale", json=scale_review(replicas, 1)))
    assert response["allowed"] is allowed
    assert workloads.calls == [("apps", "v1", "deployments", "ml-team", "serve")]
    if not allowed:
        assert "GPU budget team-nlp is exhausted" in response["status"]["message"]


def test_scale_fails_open_with_a_warning_when_the_workload_cannot_be_read():
    client = make_client(ML_PLATFORM, SPENT, fetch_workload=Workloads(error=ConnectionError("refused")))
    response = _response(client.post("/scale", json=scale_review(8, 1)))
    assert response["allowed"] is True
    assert response["warnings"] == [SCALE_UNJUDGED_WARNING]


def test_scale_without_api_access_fails_open_with_a_warning():
    client = make_client(ML_PLATFORM, SPENT)  # serving policy files: no fetch_workload
    response = _response(client.post("/scale", json=scale_review(8, 1)))
    assert response["allowed"] is True and response["warnings"] == [SCALE_UNJUDGED_WARNING]


def test_scale_under_failure_mode_deny_is_denied_when_the_workload_cannot_be_read():
    """`failureMode: deny` fails closed on what could not be read, as on an internal error; serving
    policy files (no API access by configuration) still admits with the warning."""
    from controller.webhook.settings import WebhookSettings

    deny = WebhookSettings(failure_mode="deny")
    refused = Workloads(error=ConnectionError("refused"))
    away = make_client(ML_PLATFORM, SPENT, settings=deny, fetch_workload=refused)
    response = _response(away.post("/scale", json=scale_review(8, 1)))
    assert response["allowed"] is False and response["status"]["code"] == 500
    assert response["status"]["message"] == (
        "comptroller: could not read the workload being scaled (refused); denied by failure mode, try again"
    )
    files = _response(make_client(ML_PLATFORM, SPENT, settings=deny).post("/scale", json=scale_review(8, 1)))
    assert files["allowed"] is True and files["warnings"] == [SCALE_UNJUDGED_WARNING]


def test_scale_of_a_workload_that_is_gone_is_admitted():
    client = make_client(ML_PLATFORM, SPENT, fetch_workload=Workloads())
    assert _response(client.post("/scale", json=scale_review(8, 1)))["allowed"] is True


def test_a_slow_api_server_does_not_hold_the_scale_review(monkeypatch):
    from controller.webhook import admission

    monkeypatch.setattr(admission, "PARENT_TIMEOUT_SECONDS", 0.05)
    release = threading.Event()

    def stuck(*_):
        release.wait(5)
        return running(1)

    client = make_client(ML_PLATFORM, SPENT, fetch_workload=stuck)
    try:
        response = _response(client.post("/scale", json=scale_review(8, 1)))
    finally:
        release.set()
    assert response["allowed"] is True and response["warnings"] == [SCALE_UNJUDGED_WARNING]


def test_scale_in_an_excluded_namespace_is_never_read():
    workloads = Workloads(running(1))
    client = make_client(ML_PLATFORM, SPENT, fetch_workload=workloads)
    response = _response(client.post("/scale", json=scale_review(8, 1, namespace="kube-system")))
    assert response["allowed"] is True and workloads.calls == []


def test_malformed_scale_review_is_a_400():
    client = make_client(ML_PLATFORM, fetch_workload=Workloads())
    assert client.post("/scale", content=b"{").status_code == 400


# -- who takes a queueing budget's gate off ---------------------------------------------------------

OPERATOR = "system:serviceaccount:comptroller-system:comptroller-operator"


def queueing(used):
    budget = copy.deepcopy(SPENT)
    budget["spec"].update(whenExhausted="Queue", admission="Projected", gpuHours=100_000)
    budget["status"]["usedGPUHours"] = used
    return budget


@pytest.mark.parametrize(
    ("username", "settings", "allowed"),
    [
        (OPERATOR, None, True),
        ("data-scientist", None, False),
        ("system:serviceaccount:other:comptroller-operator", None, False),
        ("releaser", frozenset({"releaser"}), True),
        (OPERATOR, frozenset({"releaser"}), False),
    ],
)
def test_only_the_operator_takes_the_budget_gate_off_even_with_room(username, settings, allowed):
    """Under Projected, the operator releases queued pods in turn against what remains after the
    reservations of those it released before; a user taking the gate off themselves would skip
    that, so it is denied even when the hours look free."""
    from webhook_fixtures import pod

    from controller.constants import BUDGET_GATE
    from controller.webhook.settings import WebhookSettings

    old = pod(labels=GOOD_LABELS)
    old["spec"]["schedulingGates"] = [{"name": BUDGET_GATE}]
    body = review(pod(labels=GOOD_LABELS), operation="UPDATE", old=old)
    body["request"]["userInfo"] = {"username": username}
    client = make_client(ML_PLATFORM, queueing(used=0), settings=WebhookSettings(queue_releasers=settings))
    response = _response(client.post("/validate", json=body))
    assert response["allowed"] is allowed, response
    if not allowed:
        assert "operator" in response["status"]["message"]


KUEUE = "system:serviceaccount:kueue-system:kueue-controller-manager"


@pytest.mark.parametrize(
    ("flags", "controllers"),
    [
        ([], {KUEUE}),
        (["--kueue-controller", "system:serviceaccount:kueue:kueue"], {"system:serviceaccount:kueue:kueue"}),
        (["--kueue-controller", ""], set()),  # no Kueue here: nobody may take its gate off
    ],
)
def test_who_kueue_is_comes_from_the_command_line(flags, controllers):
    import argparse

    from controller.webhook.server import configure, settings_of

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--cert-file", "c", "--key-file", "k", *flags])
    settings = settings_of(args)
    assert settings.kueue_controllers == controllers
    assert (KUEUE_GATE_NAME in settings.gates_owned(KUEUE)) == (KUEUE in controllers)


KUEUE_GATE_NAME = "kueue.x-k8s.io/admission"


@pytest.mark.parametrize(
    ("username", "controllers", "allowed"),
    [
        (KUEUE, None, True),
        ("data-scientist", None, False),
        (OPERATOR, None, False),
        ("system:serviceaccount:kueue:kueue-controller-manager", None, False),
        ("system:serviceaccount:kueue:kueue-controller-manager",
         frozenset({"system:serviceaccount:kueue:kueue-controller-manager"}), True),
    ],
)
def test_only_kueue_takes_its_gate_off_a_pod_a_queueing_budget_covers(username, controllers, allowed):
    """Kueue's gate and queue-name label are things a user can write on their own pod: the webhook
    takes the gate coming off as Kueue's release only from Kueue's controller (`--kueue-controller`)."""
    from webhook_fixtures import pod

    from controller.constants import KUEUE_GATE, KUEUE_QUEUE_LABEL
    from controller.webhook.settings import WebhookSettings

    labels = {**GOOD_LABELS, KUEUE_QUEUE_LABEL: "team-q"}
    old = pod(labels=labels)
    old["spec"]["schedulingGates"] = [{"name": KUEUE_GATE}]
    body = review(pod(labels=labels), operation="UPDATE", old=old)
    body["request"]["userInfo"] = {"username": username}
    settings = WebhookSettings() if controllers is None else WebhookSettings(kueue_controllers=controllers)
    response = _response(make_client(ML_PLATFORM, queueing(used=0), settings=settings)
                         .post("/validate", json=body))
    assert response["allowed"] is allowed, response
    if not allowed:
        assert "Kueue" in response["status"]["message"]
