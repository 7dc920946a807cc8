"""Test doubles for the operator's API client (controller/k8s/workloads.py)."""

from __future__ import annotations

from controller.k8s.workloads import NotFound, Workloads


class Discovery(Workloads):
    """Workloads with the API server's discovery answered from `served` (group -> resources)."""

    def __init__(self) -> None:
        super().__init__(api=None)  # type: ignore[arg-type]  (no HTTP: request is overridden)
        self.served: dict[str, list[dict]] = {}
        self.asked: list[str] = []
        self.now = 0.0
        self.clock = lambda: self.now

    def request(self, method, path, **_):
        self.asked.append(path)
        group = path.split("/")[2]
        if group not in self.served:
            raise NotFound(404, path)
        if path.count("/") == 2:
            return {"preferredVersion": {"version": "v1alpha2"}}
        return {"resources": self.served[group]}
