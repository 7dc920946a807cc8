"""Discovery in the operator's client: where a kind is served is remembered; that it is not served
only for a while, so a CRD installed after the operator started is found without a restart."""

from __future__ import annotations

from controller.k8s.workloads import NOT_SERVED_RECHECK_SECONDS, NotFound, Workloads


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


def test_a_kind_installed_later_is_found_after_the_recheck_interval():
    api = Discovery()
    assert api.resolve("PolicyReport", group="wgpolicyk8s.io") is None
    asked = len(api.asked)
    api.served["wgpolicyk8s.io"] = [{"name": "policyreports", "kind": "PolicyReport", "namespaced": True}]

    api.now = NOT_SERVED_RECHECK_SECONDS / 2
    assert api.resolve("PolicyReport", group="wgpolicyk8s.io") is None  # believed, not asked again
    assert len(api.asked) == asked

    api.now = NOT_SERVED_RECHECK_SECONDS + 1
    found = api.resolve("PolicyReport", group="wgpolicyk8s.io")
    assert found is not None
    assert found.path("ns") == "/apis/wgpolicyk8s.io/v1alpha2/namespaces/ns/policyreports"


def test_a_served_kind_is_remembered():
    api = Discovery()
    api.served["ray.io"] = [{"name": "rayjobs", "kind": "RayJob", "namespaced": True}]
    assert api.resolve("RayJob", group="ray.io") is not None
    asked = len(api.asked)
    api.now = 10 * NOT_SERVED_RECHECK_SECONDS
    assert api.resolve("RayJob", group="ray.io") is not None
    assert len(api.asked) == asked
