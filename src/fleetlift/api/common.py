"""Schema pieces shared by every slice: pages, problems, identifiers."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

T = TypeVar("T")

# Device IDs follow Azure IoT Hub's rules so that devices synced from a hub keep their IDs.
DeviceId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9\-.:_%#*?!(),=@$']+$"),
]
ResourceId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-/]+$")]
Labels = Annotated[dict[LabelKey, Annotated[str, StringConstraints(max_length=256)]], Field(max_length=64)]


class StrictModel(BaseModel):
    """Input models reject unknown fields so typos are reported instead of silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None = Field(
        description="Cursor of the next page; null on the last page.", examples=[None]
    )


class FieldProblem(BaseModel):
    location: str = Field(examples=["body.release_id"])
    message: str = Field(examples=["Field required"])


class Problem(BaseModel):
    """An error answer as RFC 9457 ``application/problem+json``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:fleetlift:problem:not-found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no deployment 'dep_01J...' in this tenant"])
    instance: str | None = Field(default=None, examples=["/api/v1/deployments/dep_01J..."])
    request_id: str | None = Field(default=None, examples=["req_01JD3Q6..."])
    errors: list[FieldProblem] | None = None


PROBLEM_MEDIA_TYPE = "application/problem+json"

_PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "The input is malformed or invalid; `errors` names each field.",
    401: "The bearer token is missing, expired or invalid.",
    403: "The token is valid but its roles do not allow this operation.",
    404: "No such resource in your tenant.",
    409: "The request conflicts with the resource's current state.",
    412: "`If-Match` does not match the resource's current ETag.",
    413: "The request body is larger than the server accepts.",
    415: "The request body is not `application/json`.",
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error codes, all as problem documents."""
    return {
        code: {
            "model": Problem,
            "description": _PROBLEM_DESCRIPTIONS[code],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for code in codes
    }
