"""The admission.k8s.io/v1 AdmissionReview wire format: parsing the envelope the API server sends
and building the review we answer with.

Only the envelope is validated with pydantic; `object` stays a plain dict because the engine reads
it as one, and re-validating a whole Pod spec on every request would cost more than judging it.
The JSON itself is parsed and written by orjson: parsing is most of what an admission costs
before the engine runs, and orjson does it in half the time of pydantic's own parser.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

import orjson
from pydantic import InstanceOf, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class MalformedReview(ValueError):
    """The request is not an AdmissionReview we can answer: the caller gets HTTP 400 with this text."""


# The wire format, as far as the webhook reads it (other fields are ignored). TypedDicts, not
# models: pydantic validates them in half the time, and nothing here needs a model's methods.


class _GroupVersionKind(TypedDict):
    group: NotRequired[str]
    version: NotRequired[str]
    kind: str


class _GroupVersionResource(TypedDict):
    group: NotRequired[str]
    version: NotRequired[str]
    resource: str


class _Request(TypedDict):
    uid: Annotated[str, StringConstraints(min_length=1)]
    kind: _GroupVersionKind
    resource: NotRequired[_GroupVersionResource]
    subResource: NotRequired[str]
    operation: Operation
    namespace: NotRequired[str]
    name: NotRequired[str]
    # InstanceOf: checked to be a map, not copied into a new one.
    object: NotRequired[InstanceOf[dict] | None]
    oldObject: NotRequired[InstanceOf[dict] | None]
    dryRun: NotRequired[bool]


class _Review(TypedDict):
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: _Request


_REVIEW = TypeAdapter(_Review)


@dataclass(slots=True)
class AdmissionRequest:
    """What the webhook uses of an AdmissionReview's `request`."""

    uid: str
    kind: str
    """The object's kind (`request.kind.kind`)."""
    operation: Operation
    namespace: str = ""
    name: str = ""
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool = False
    resource: tuple[str, str, str] = ("", "", "")
    """`(group, version, plural)` of the resource requested (`request.resource`)."""
    sub_resource: str = ""
    """`scale`, `status`, ... when a subresource was requested."""
    username: str = ""
    """`userInfo.username`: who asked (the API server authenticated them)."""


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse the JSON with orjson, then validate the envelope: a well-formed one (`well_formed`) is
    taken as parsed, anything else is validated (and coerced, or refused) by pydantic.

    orjson refuses what the API server never sends but JSON allows (integers beyond 64 bits):
    such a body goes through pydantic's own parser instead, which also says where JSON is broken.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        review = _validated(_REVIEW.validate_json, body)
    else:
        review = data if well_formed(data) else _validated(_REVIEW.validate_python, data)
    request = review["request"]
    resource = request.get("resource")
    return AdmissionRequest(
        uid=request["uid"],
        kind=request["kind"]["kind"],
        operation=request["operation"],
        namespace=request.get("namespace", ""),
        name=request.get("name", ""),
        object=request.get("object"),
        old_object=request.get("oldObject"),
        dry_run=request.get("dryRun", False),
        resource=(resource.get("group", ""), resource.get("version", ""), resource["resource"])
        if resource
        else ("", "", ""),
        sub_resource=request.get("subResource", ""),
        username=_username(request.get("userInfo")),
    )


def _username(user: Any) -> str:
    name = user.get("username") if type(user) is dict else None
    return name if type(name) is str else ""


_OPERATIONS = frozenset(("CREATE", "UPDATE", "DELETE", "CONNECT"))
_OPTIONAL_STRINGS = ("subResource", "namespace", "name")


def well_formed(data: Any) -> bool:
    """Whether `data` is a review pydantic would take exactly as it is: every field of `_Review`
    present where required and of its very type, so there is nothing to coerce and nothing to
    report. The API server only ever sends such reviews, and checking one here costs a fifth of
    pydantic's validation, which builds a copy of the envelope; anything else (a missing field, a
    `"true"` lax mode turns into `True`) goes through pydantic as before."""
    if type(data) is not dict or data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
        return False
    request = data.get("request")
    if type(request) is not dict:
        return False
    uid = request.get("uid")
    operation = request.get("operation")
    if type(uid) is not str or not uid or type(operation) is not str or operation not in _OPERATIONS:
        return False
    if not _group_version(request.get("kind"), "kind"):
        return False
    if "resource" in request and not _group_version(request["resource"], "resource"):
        return False
    for name in _OPTIONAL_STRINGS:
        if name in request and type(request[name]) is not str:
            return False
    for name in ("object", "oldObject"):
        if name in request and request[name] is not None and type(request[name]) is not dict:
            return False
    return "dryRun" not in request or type(request["dryRun"]) is bool


_DECLARED = {name: frozenset(("group", "version", name)) for name in ("kind", "resource")}


def _group_version(value: Any, name: str) -> bool:
    """A `_GroupVersionKind` (`name` "kind") or `_GroupVersionResource` ("resource") as it is."""
    if type(value) is not dict or type(value.get(name)) is not str:
        return False
    # A key the TypedDict does not declare would be dropped by pydantic: not taken as it is. A
    # loop, not all() over a generator: this runs twice for every review.
    if not value.keys() <= _DECLARED[name]:
        return False
    for item in value.values():
        if type(item) is not str:
            return False
    return True


def _validated(validate: Any, data: Any) -> _Review:
    try:
        return validate(data)
    except ValidationError as error:
        raise MalformedReview(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """`request.uid: Field required; kind: ...` — where, then what, like a kubectl validation error."""
    parts = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        if item["type"] == "json_invalid":
            parts.append(f"body is not valid JSON: {item['msg']}")
        else:
            parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "malformed AdmissionReview: " + "; ".join(parts)


def response_body(
    uid: str,
    *,
    allowed: bool,
    message: str | None = None,
    code: int = 403,
    warnings: list[str] | None = None,
    patch: list[dict[str, Any]] | None = None,
) -> bytes:
    """Serialize the AdmissionReview we answer with, as bytes ready to send."""
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        # kubectl prints `Error from server (Forbidden): ... admission webhook "<name>" denied the
        # request: <message>`, taking the parenthesised word from `reason`.
        response["status"] = {"code": code, "reason": "Forbidden", "message": message or "denied"}
    if warnings:
        response["warnings"] = warnings
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    # Both parsers refuse lone surrogates, the one string orjson cannot write back.
    return orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "response": response})
