"""The AdmissionReview envelope: a well-formed review is taken as parsed (`review.well_formed`), and
that shortcut must accept only what pydantic accepts as it is, giving the same request."""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.webhook.review import _REVIEW, MalformedReview, parse_review, well_formed

REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "ml",
        "name": "p",
        "object": {"kind": "Pod", "metadata": {"name": "p"}},
        "oldObject": None,
        "dryRun": False,
        "userInfo": {"username": "someone"},
    },
}

FIELDS = [
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "kind"),
    ("request", "kind", "kind"),
    ("request", "kind", "group"),
    ("request", "resource"),
    ("request", "resource", "resource"),
    ("request", "resource", "version"),
    ("request", "subResource"),
    ("request", "operation"),
    ("request", "namespace"),
    ("request", "name"),
    ("request", "object"),
    ("request", "oldObject"),
    ("request", "dryRun"),
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2),
    st.sampled_from(["", "true", "CREATE", "DELETE", "Pod", "admission.k8s.io/v1", "AdmissionReview"]),
    st.just({}),
    st.just([]),
    st.just({"kind": "Pod"}),
    st.just({"resource": "pods"}),
)
CHANGES = st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(st.just("delete"), VALUES)), max_size=3)


def _changed(changes):
    review = copy.deepcopy(REVIEW)
    for path, value in changes:
        node = review
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value == "delete":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)
    return review


@settings(max_examples=400, deadline=None)
@given(CHANGES)
def test_a_review_taken_as_parsed_is_one_pydantic_takes_as_it_is(changes):
    review = _changed(changes)
    if not well_formed(review):
        return
    validated = _REVIEW.validate_python(copy.deepcopy(review))
    for key, value in validated["request"].items():
        assert review["request"][key] == value


@settings(max_examples=400, deadline=None)
@given(CHANGES)
def test_parse_review_gives_what_pydantic_alone_gives(changes):
    review = _changed(changes)
    try:
        expected = _REVIEW.validate_python(copy.deepcopy(review))
    except ValidationError:
        with pytest.raises(MalformedReview):
            parse_review(orjson.dumps(review))
        return
    request = parse_review(orjson.dumps(review))
    wanted = expected["request"]
    assert (request.uid, request.operation) == (wanted["uid"], wanted["operation"])
    assert request.kind == wanted["kind"]["kind"]
    assert request.namespace == wanted.get("namespace", "") and request.name == wanted.get("name", "")
    assert request.object == wanted.get("object") and request.old_object == wanted.get("oldObject")
    assert request.dry_run == wanted.get("dryRun", False)
    assert request.sub_resource == wanted.get("subResource", "")


def test_the_api_servers_reviews_are_taken_as_parsed_and_lax_ones_still_coerced():
    assert well_formed(REVIEW)
    lax = copy.deepcopy(REVIEW)
    lax["request"]["dryRun"] = "true"
    assert not well_formed(lax)
    assert parse_review(orjson.dumps(lax)).dry_run is True
