"""The operator never writes in kube-system, and with `--write-namespaces` only where it is told
(controller/k8s/workloads.py `WriteScope`): refused before any request is sent."""

from __future__ import annotations

import pytest

from controller.k8s import workloads
from controller.k8s.workloads import BUILTIN_RESOURCES, NotWritable, WriteScope


@pytest.mark.parametrize(
    ("scope", "namespace", "allowed"),
    [
        (WriteScope(), "ml", True),
        (WriteScope(), "kube-system", False),
        (WriteScope(), None, True),  # cluster-scoped
        (WriteScope(["ml"], own="comptroller-system"), "ml", True),
        (WriteScope(["ml"], own="comptroller-system"), "comptroller-system", True),
        (WriteScope(["ml"], own="comptroller-system"), "research", False),
        (WriteScope(["ml", "kube-system"], own="c"), "kube-system", False),
    ],
)
def test_where_the_operator_may_write(scope, namespace, allowed):
    assert scope.allows(namespace) is allowed


class Recorder:
    """An ApiClient that records what would be sent."""

    def __init__(self):
        self.sent = []

    def param_serialize(self, method, path, **_):
        self.sent.append((method, path))
        return None, path, {}, None, None

    def call_api(self, *_, **__):
        raise AssertionError("no request should reach the API server")


def test_a_write_outside_the_scope_is_refused_before_it_is_sent(monkeypatch):
    monkeypatch.setattr(workloads, "WRITES", WriteScope(["ml"], own="comptroller-system"))
    recorder = Recorder()
    api = workloads.Workloads(recorder)
    pods = BUILTIN_RESOURCES["Pod"]
    with pytest.raises(NotWritable):
        api.patch(pods, "research", "p", {"metadata": {}})
    with pytest.raises(NotWritable):
        api.delete(pods, "kube-system", "p")
    assert recorder.sent == []
    with pytest.raises(workloads.ApiError, match="no request"):  # an allowed write goes through
        api.patch(pods, "ml", "p", {"metadata": {}})
    assert recorder.sent == [("PATCH", "/api/v1/namespaces/ml/pods/p")]


def test_the_operator_flag_sets_the_scope_and_refuses_kube_system():
    import argparse

    from controller.operator.main import _namespace_list, build_config, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    config = build_config(parser.parse_args(["--write-namespaces", "ml, research", "--namespace", "cs"]))
    assert config.write_namespaces == frozenset({"ml", "research"})
    assert build_config(parser.parse_args([])).write_namespaces is None
    with pytest.raises(SystemExit, match="never writes in kube-system"):
        _namespace_list("ml,kube-system")
