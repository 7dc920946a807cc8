"""Fuzzing `/validate`, `/mutate` and `/noop`: random bytes, random JSON, mutated and
hostile-but-well-formed AdmissionReviews, oversized bodies, deep nesting, wrong types, unknown
kinds. The contract: never a 500; a malformed request gets 400 (413 when too large) with a
message; every 200 is a valid AdmissionReview with the request's uid echoed; a review the API
server could really send is judged (never answered by the failure mode); and every patch applies.

Schemathesis is not used: the app serves no OpenAPI document (the AdmissionReview is Kubernetes'
schema, not ours), so hypothesis strategies shaped like the API server's requests go further.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonpatch
import pytest
from admission_strategies import JSON_VALUES, kube_reviews, mutated
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.check import read_documents
from controller.webhook.app import FAILURE_WARNING, create_app
from controller.webhook.settings import WebhookSettings
from controller.webhook.views import view_from_objects

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MAX_BODY = 64 * 1024
ENDPOINTS = ("/validate", "/mutate")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The default policies and the example budgets and exceptions, so every rule family runs."""
    paths = [REPO / "policies" / "default", REPO / "policies" / "examples"]
    objects = [d.body for d in read_documents(paths).documents]
    view = view_from_objects(objects)
    assert not view.errors()
    app = create_app(view=view, settings=WebhookSettings(max_body_bytes=MAX_BODY), clock=lambda: NOW)
    return TestClient(app, raise_server_exceptions=False)


def check_review(http, uid: str, *, obj=None) -> dict:
    """The answer is a valid admission.k8s.io/v1 AdmissionReview for `uid`; returns its response."""
    assert http.status_code == 200, http.text
    assert http.headers["content-type"] == "application/json"
    body = http.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert response["uid"] == uid
    assert isinstance(response["allowed"], bool)
    if not response["allowed"]:
        status = response["status"]
        assert isinstance(status["code"], int) and 400 <= status["code"] < 600
        assert isinstance(status["message"], str) and status["message"]
    for warning in response.get("warnings", []):
        # Warnings travel as HTTP headers: one printable line each.
        assert isinstance(warning, str) and warning and warning.isprintable(), warning
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"], validate=True))
        assert ops and all(op["op"] in ("add", "replace", "remove") for op in ops)
        if obj is not None:
            # The API server applies the patch; one that does not apply fails the request.
            jsonpatch.apply_patch(copy.deepcopy(obj), ops)
    return response


def check_refused(http, *, statuses=(400,)) -> None:
    assert http.status_code in statuses, http.text
    assert isinstance(http.json()["message"], str) and http.json()["message"]


def post(client, path: str, body) -> object:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=data, headers={"content-type": "application/json"})


# ---- garbage in ------------------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=2048), path=st.sampled_from([*ENDPOINTS, "/noop"]))
def test_random_bytes_get_a_400_never_a_500(client, body, path):
    http = post(client, path, body)
    if http.status_code == 200:  # the odd valid review hypothesis may build
        check_review(http, json.loads(body)["request"]["uid"])
    else:
        check_refused(http)


@FUZZ
@given(body=JSON_VALUES, path=st.sampled_from([*ENDPOINTS, "/noop"]))
def test_random_json_gets_a_400_never_a_500(client, body, path):
    http = post(client, path, body)
    if path == "/noop" and http.status_code == 200:
        assert http.json()["response"]["uid"] == body["request"]["uid"]
    else:
        check_refused(http)


@FUZZ
@given(review=mutated(kube_reviews()), path=st.sampled_from(ENDPOINTS))
def test_mutated_reviews_get_a_400_or_a_valid_review(client, review, path):
    http = post(client, path, review)
    if http.status_code == 200:
        request = review["request"]
        check_review(http, request["uid"])
    else:
        check_refused(http)


# ---- what the API server could really send ---------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(review=kube_reviews(), path=st.sampled_from(ENDPOINTS))
def test_every_well_formed_review_is_judged_and_its_patch_applies(client, review, path):
    http = post(client, path, review)
    response = check_review(http, review["request"]["uid"], obj=review["request"]["object"])
    # The failure mode is for the webhook's own faults: hostile values are the engine's to judge.
    assert FAILURE_WARNING not in response.get("warnings", []), review
    if path == "/mutate":
        assert response["allowed"] is True  # mutation never denies


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("uid missing", lambda r: r["request"].pop("uid"), "request.uid"),
        ("uid empty", lambda r: r["request"].update(uid=""), "request.uid"),
        ("uid a number", lambda r: r["request"].update(uid=5), "request.uid"),
        ("operation unknown", lambda r: r["request"].update(operation="PATCH"), "request.operation"),
        ("object a list", lambda r: r["request"].update(object=[]), "request.object"),
        ("object a string", lambda r: r["request"].update(object="pod"), "request.object"),
        ("kind a string", lambda r: r["request"].update(kind="Pod"), "request.kind"),
        ("request null", lambda r: r.update(request=None), "request"),
        ("apiVersion v1beta1", lambda r: r.update(apiVersion="admission.k8s.io/v1beta1"), "apiVersion"),
        ("kind not a review", lambda r: r.update(kind="Pod"), "kind"),
    ],
)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_wrong_types_are_400_saying_where(client, path, name, change, message):
    review = _pod_review()
    change(review)
    http = post(client, path, review)
    check_refused(http)
    assert message in http.json()["message"], name


@pytest.mark.parametrize("path", ENDPOINTS)
def test_an_unknown_kind_is_admitted_untouched(client, path):
    review = _pod_review()
    review["request"]["kind"] = {"group": "example.com", "version": "v1", "kind": "Frobnicator"}
    review["request"]["object"] = {"apiVersion": "example.com/v1", "kind": "Frobnicator",
                                   "metadata": {"name": "f", "namespace": "ml-nlp"}, "spec": {"x": [1, {}]}}
    response = check_review(post(client, path, review), "u-1")
    assert response["allowed"] is True
    assert "patch" not in response


# ---- size and depth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*ENDPOINTS, "/noop"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_body_is_413_whether_declared_or_streamed(client, path, declared):
    review = _pod_review()
    review["request"]["object"]["metadata"]["annotations"] = {"blob": "x" * MAX_BODY}
    body = json.dumps(review).encode()
    if declared:
        http = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        http = client.post(path, content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                           headers={"content-type": "application/json"})
    check_refused(http, statuses=(413,))
    assert str(MAX_BODY) in http.json()["message"]


@pytest.mark.parametrize("where", ["object.spec", "object.metadata.labels", "oldObject", "top"])
@pytest.mark.parametrize("depth", [50, 1_000, 5_000])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_deep_nesting_is_answered_not_crashed_on(client, path, where, depth):
    nested: object = "leaf"
    for i in range(depth):
        nested = [nested] if i % 2 else {"a": nested}
    review = _pod_review()
    if where == "object.spec":
        review["request"]["object"]["spec"]["containers"][0]["env"] = nested
    elif where == "object.metadata.labels":
        review["request"]["object"]["metadata"]["labels"]["team"] = nested
    elif where == "oldObject":
        review["request"]["operation"] = "UPDATE"
        review["request"]["oldObject"] = {"metadata": {"labels": nested}}
    else:
        review["extra"] = nested
    body = json.dumps(review).encode() if depth < 900 else _dumps_deep(review)
    http = post(client, path, body)
    if http.status_code == 200:
        check_review(http, "u-1")
    else:
        check_refused(http)


def _dumps_deep(value) -> bytes:
    """json.dumps without Python's recursion limit (iterative), for the 5,000-deep bodies."""
    out: list[str] = []
    stack: list = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and item.startswith("\0"):
            out.append(item[1:])
        elif isinstance(item, dict):
            parts: list = ["\0{"]
            for i, (key, inner) in enumerate(item.items()):
                parts += [("\0," if i else "\0") + json.dumps(key) + ":", inner]
            parts.append("\0}")
            stack.extend(reversed(parts))
        elif isinstance(item, list):
            parts = ["\0["]
            for i, inner in enumerate(item):
                parts += ["\0," if i else "\0", inner]
            parts.append("\0]")
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item))
    return "".join(out).encode()


def _pod_review() -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "ml-nlp",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ml-nlp", "labels": {"team": "nlp"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }


def test_the_largest_review_the_api_server_can_send_is_judged():
    """Two objects at etcd's 1.5 MiB limit, every byte a character JSON writes as a 6-byte escape:
    about 18 MiB. The default body limit must take it (a 413 would fail the API server's call)."""
    import resource

    blob = "\u0001" * (1536 * 1024)
    review = _pod_review()
    review["request"]["operation"] = "UPDATE"
    review["request"]["object"]["spec"]["containers"][0]["env"] = [{"name": "B", "value": blob}]
    review["request"]["oldObject"] = copy.deepcopy(review["request"]["object"])
    body = json.dumps(review).encode()
    assert len(body) > 18 * 1024 * 1024
    objects = [d.body for d in read_documents([REPO / "policies" / "default"]).documents]
    app = create_app(view=view_from_objects(objects), settings=WebhookSettings(), clock=lambda: NOW)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = check_review(post(TestClient(app), "/validate", body), "u-1")
    # Judged: what the old object already violated is carried as warnings (the UPDATE adds nothing).
    assert response["warnings"] and FAILURE_WARNING not in response["warnings"]
    # What one such request costs at its peak (the chart's limit is 512 MiB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("line one\n\n  line two  ", ["line one", "line two"]),
        ("label team=\x1b[31m not allowed", ["label team=\\x1b[31m not allowed"]),
        ("a\tb\rc\u2028d", ["a\\tb", "c", "d"]),
        ("ünïcödé stays", ["ünïcödé stays"]),
    ],
)
def test_warnings_are_single_printable_lines(text, expected):
    from controller.webhook.admission import header_safe as _header_safe

    assert _header_safe(text) == expected
