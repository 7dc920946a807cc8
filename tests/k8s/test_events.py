"""Events are advisory: a refused one is logged, never raised; one refused because its namespace is
being deleted is not a problem worth a warning."""

from __future__ import annotations

import logging

import pytest

from controller.k8s.workloads import ApiError, Workloads


class Refusing(Workloads):
    def __init__(self, error: ApiError) -> None:
        super().__init__(api=None)  # type: ignore[arg-type]  (no HTTP: request is overridden)
        self.error = error

    def request(self, method, path, **_):
        raise self.error


JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train", "namespace": "ml", "uid": "u"}}


@pytest.mark.parametrize(
    ("error", "level"),
    [
        (ApiError(403, 'events "train.1" is forbidden: unable to create new content in namespace ml because '
                       "it is being terminated"), None),
        (ApiError(403, 'events is forbidden: User "system:serviceaccount:x:y" cannot create resource'),
         logging.WARNING),
        (ApiError(500, "etcdserver: request timed out"), logging.WARNING),
    ],
)
def test_a_refused_event_is_logged_only_when_it_says_something(caplog, error, level):
    caplog.set_level(logging.DEBUG, logger="controller.k8s.workloads")
    Refusing(error).emit_event(JOB, reason="GPUCost", message="used 1 GPU-hour")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in warnings] == ([level] if level else [])
