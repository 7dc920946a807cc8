"""Discovery in the operator's client: where a kind is served is remembered; that it is not served
only for a while, so a CRD installed after the operator started is found without a restart."""

from __future__ import annotations

from controller.k8s.workloads import NOT_SERVED_RECHECK_SECONDS
from tests.k8s.fakes import Discovery


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


def test_a_name_read_from_a_manifest_stays_one_path_segment():
    """A claim or workload name comes from a manifest (a custom kind's template may hold anything):
    a `/` in it must not reach another resource or subresource of the API."""
    from controller.k8s.workloads import ApiResource

    claims = ApiResource("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim")
    assert claims.path("ml", "a/../../secrets/x") == (
        "/apis/resource.k8s.io/v1/namespaces/ml/resourceclaims/a%2F..%2F..%2Fsecrets%2Fx"
    )
    assert claims.path("ml", "gpus", subresource="status").endswith("/resourceclaims/gpus/status")
