"""`comptroller wake`: target parsing and the request/wait flow, with our client layer faked."""

from __future__ import annotations

import argparse
import copy

import pytest

from controller import constants, wake
from controller.k8s.workloads import BUILTIN_RESOURCES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployment/llm", ("Deployment", "llm")),
        ("Deployment/llm", ("Deployment", "llm")),
        ("deploy/llm", ("Deployment", "llm")),
        ("deployments.apps/llm", ("Deployment", "llm")),
        ("sts/db", ("StatefulSet", "db")),
        ("cj/nightly", ("CronJob", "nightly")),
        ("ds/agent", ("DaemonSet", "agent")),
        ("rs/x-1", ("ReplicaSet", "x-1")),
    ],
)
def test_parse_target(text, expected):
    assert wake.parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("llm", "expected KIND/NAME"),
        ("deployment/", "expected KIND/NAME"),
        ("pod/p", "cannot be woken"),
        ("deployment/a/b", "expected KIND/NAME"),
    ],
)
def test_parse_target_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        wake.parse_target(text)


class FakeCluster:
    """Our Workloads client, faked; `operator_running` wakes on the wake annotation like the operator."""

    def __init__(self, obj, *, operator_running=True):
        self.obj = obj
        self.operator_running = operator_running
        self.patches = []

    def __call__(self, api):  # stands in for the Workloads class
        return self

    def resolve(self, kind, **_):
        return BUILTIN_RESOURCES[kind]

    def get(self, resource, namespace, name):
        if self.obj is None or self.obj["metadata"]["name"] != name:
            return None
        return copy.deepcopy(self.obj)

    def patch(self, resource, namespace, name, body, **_):
        self.patches.append(body)
        self.obj["metadata"]["annotations"].update(body["metadata"]["annotations"])
        if self.operator_running:
            annotations = self.obj["metadata"]["annotations"]
            self.obj["spec"]["replicas"] = int(annotations.pop(constants.ORIGINAL_REPLICAS_ANNOTATION))
            annotations.pop(constants.WAKE_ANNOTATION)


def sleeping(annotations=None):
    return {
        "kind": "Deployment",
        "metadata": {
            "name": "llm",
            "namespace": "ml",
            "annotations": annotations
            if annotations is not None
            else {constants.ORIGINAL_REPLICAS_ANNOTATION: "3"},
        },
        "spec": {"replicas": 0},
    }


def run(monkeypatch, fake, target="deployment/llm", **flags):
    import controller.k8s.config
    import controller.k8s.workloads

    monkeypatch.setattr(controller.k8s.config, "load_api_client", lambda *a, **k: object())
    monkeypatch.setattr(controller.k8s.workloads, "Workloads", fake)
    parser = argparse.ArgumentParser()
    wake.configure(parser)
    args = parser.parse_args([target, "-n", "ml", "--timeout", "0.3", *flags.get("extra", [])])
    args.poll_interval = 0.05
    return wake.run(args)


def test_wake_sets_the_annotation_and_waits_for_the_operator(monkeypatch, capsys):
    fake = FakeCluster(sleeping())
    assert run(monkeypatch, fake) == 0
    assert list(fake.patches[0]["metadata"]["annotations"]) == [constants.WAKE_ANNOTATION]
    assert "Deployment/ml/llm woken: 3 replicas" in capsys.readouterr().out


def test_without_an_operator_it_says_so_and_fails(monkeypatch, capsys):
    fake = FakeCluster(sleeping(), operator_running=False)
    assert run(monkeypatch, fake) == 1
    assert "is the Comptroller operator running?" in capsys.readouterr().err
    assert constants.WAKE_ANNOTATION in fake.obj["metadata"]["annotations"]  # it will be woken later


def test_no_wait_returns_at_once(monkeypatch, capsys):
    fake = FakeCluster(sleeping(), operator_running=False)
    assert run(monkeypatch, fake, extra=["--no-wait"]) == 0
    assert "wake requested" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("obj", "target", "code", "says"),
    [
        (sleeping(annotations={}), "deployment/llm", 0, "is not asleep"),
        (None, "deployment/llm", 2, "not found"),
        (sleeping(), "pod/llm", 2, "cannot be woken"),
    ],
)
def test_nothing_to_wake_or_bad_input(monkeypatch, capsys, obj, target, code, says):
    fake = FakeCluster(obj)
    assert run(monkeypatch, fake, target=target) == code
    captured = capsys.readouterr()
    assert says in captured.out + captured.err
    assert fake.patches == []


# -- batch workloads the idle loop suspended -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("job/train", ("Job", "train")),
        ("jobs.batch/train", ("Job", "train")),
        ("jobset/ft", ("JobSet", "ft")),
        ("PyTorchJob/bert", ("PyTorchJob", "bert")),
        ("pytorchjobs.kubeflow.org/bert", ("PyTorchJob", "bert")),
        ("tfjob/t", ("TFJob", "t")),
        ("mpijob/m", ("MPIJob", "m")),
        ("rayjob/tune", ("RayJob", "tune")),
    ],
)
def test_parse_batch_targets(text, expected):
    assert wake.parse_target(text) == expected


class FakeBatchCluster(FakeCluster):
    """A PyTorchJob the idle loop suspended; the 'operator' resumes it on the wake annotation."""

    def __init__(self, obj, *, served=True, **kwargs):
        super().__init__(obj, **kwargs)
        self.served = served
        self.resolved = []

    def resolve(self, kind, group=None, **_):
        self.resolved.append((kind, group))
        if not self.served:
            return None
        from controller.k8s.workloads import ApiResource

        return ApiResource(group, "v1", kind.lower() + "s", kind)

    def patch(self, resource, namespace, name, body, **_):
        self.patches.append(body)
        annotations = self.obj["metadata"]["annotations"]
        annotations.update(body["metadata"]["annotations"])
        if self.operator_running:
            for key in (constants.WAKE_ANNOTATION, constants.IDLE_SUSPENDED_ANNOTATION):
                annotations.pop(key, None)
            self.obj["spec"]["runPolicy"]["suspend"] = False


def suspended_pytorchjob(annotations=None):
    return {
        "kind": "PyTorchJob",
        "metadata": {
            "name": "bert",
            "namespace": "ml",
            "annotations": {constants.IDLE_SUSPENDED_ANNOTATION: "2026-11-22T12:15:00Z"}
            if annotations is None
            else annotations,
        },
        "spec": {"runPolicy": {"suspend": True}},
    }


def test_wake_resumes_a_suspended_pytorchjob_found_in_its_own_api_group(monkeypatch, capsys):
    fake = FakeBatchCluster(suspended_pytorchjob())
    assert run(monkeypatch, fake, target="pytorchjob/bert") == 0
    assert fake.resolved == [("PyTorchJob", "kubeflow.org")]
    assert list(fake.patches[0]["metadata"]["annotations"]) == [constants.WAKE_ANNOTATION]
    assert "PyTorchJob/ml/bert woken: running (spec.runPolicy.suspend: false)" in capsys.readouterr().out


def test_a_job_with_only_an_idle_notice_can_be_kept_running(monkeypatch):
    notice = {constants.IDLE_NOTIFIED_ANNOTATION: "2026-11-22T12:00:00Z"}
    assert wake.asleep(suspended_pytorchjob(notice))
    assert not wake.asleep(suspended_pytorchjob({}))  # suspended by someone else: not ours to resume


def test_a_kind_the_cluster_does_not_serve_is_bad_input(monkeypatch, capsys):
    fake = FakeBatchCluster(suspended_pytorchjob(), served=False)
    assert run(monkeypatch, fake, target="rayjob/bert") == 2
    assert "RayJob is not served by this cluster" in capsys.readouterr().err
    assert fake.patches == []
