"""The admission.k8s.io/v1 AdmissionReview wire format: parsing the envelope the API server sends
and building the review we answer with.

Only the envelope is validated with pydantic; `object` stays a plain dict because the engine reads
it as one, and re-validating a whole Pod spec on every request would cost more than judging it.
The JSON itself is parsed and written by orjson: parsing is most of what an admission costs
before the engine runs, and orjson does it in half the time of pydantic's own parser.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class MalformedReview(ValueError):
    """The request is not an AdmissionReview we can answer: the caller gets HTTP 400 with this text."""


class GroupVersionKind(BaseModel):
    model_config = ConfigDict(extra="ignore")

    group: str = ""
    version: str = ""
    kind: str


class AdmissionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    operation: Operation
    namespace: str = ""
    name: str = ""
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    dry_run: bool = Field(default=False, alias="dryRun")


class AdmissionReview(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def parse_review(body: bytes) -> AdmissionReview:
    """Parse the JSON with orjson, then validate the envelope.

    orjson refuses what the API server never sends but JSON allows (integers beyond 64 bits):
    such a body goes through pydantic's own parser instead, which also says where JSON is broken.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _validated(AdmissionReview.model_validate_json, body)
    return _validated(AdmissionReview.model_validate, data)


def _validated(validate: Any, data: Any) -> AdmissionReview:
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
