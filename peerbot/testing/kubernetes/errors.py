"""Kubernetes API errors, shaped exactly as the real API server sends them.

Every failure the stand-in reports is a ``Status`` object with the same ``code``, ``reason``, ``message``
and ``details`` as ``k8s.io/apimachinery/pkg/api/errors`` builds, so that the real clients (kubectl,
kopf, ``kubernetes``, ``kubernetes_asyncio``) raise the same exceptions they would against a cluster.
Field errors follow ``k8s.io/apimachinery/pkg/util/validation/field`` (``spec.team: Required value``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

# The field error types of k8s.io/apimachinery/pkg/util/validation/field: (cause reason, message word).
REQUIRED: Final = ("FieldValueRequired", "Required value")
INVALID: Final = ("FieldValueInvalid", "Invalid value")
NOT_SUPPORTED: Final = ("FieldValueNotSupported", "Unsupported value")
FORBIDDEN: Final = ("FieldValueForbidden", "Forbidden")
DUPLICATE: Final = ("FieldValueDuplicate", "Duplicate value")
TOO_LONG: Final = ("FieldValueTooLong", "Too long")
#: Error types whose message never shows the offending value (as in field.Error.ErrorBody()).
_VALUELESS: Final = frozenset({REQUIRED, FORBIDDEN, TOO_LONG})

_OMIT: Final = object()


class Raw(str):
    """A value shown verbatim in a field error (Go prints some values unquoted, like ``0x0``)."""


def go_repr(value: Any) -> str:
    """Render a value the way Go's ``%#v``-based field errors do for JSON-like data."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, as the API server reports it in ``details.causes``."""

    type: tuple[str, str]
    field: str
    value: Any = _OMIT
    detail: str = ""

    def body(self) -> str:
        """The message without the field path (``ErrorBody()`` in Go)."""
        text = self.type[1]
        if self.type not in _VALUELESS and self.value is not _OMIT:
            text = f"{text}: {go_repr(self.value)}"
        if self.detail:
            text = f"{text}: {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, Any]:
        """The ``StatusCause`` for this error."""
        return {"reason": self.type[0], "message": self.body(), "field": self.field}


def required(path: str, detail: str = "") -> FieldError:
    """``field.Required``: the field must be set."""
    return FieldError(REQUIRED, path, detail=detail)


def invalid(path: str, value: Any, detail: str) -> FieldError:
    """``field.Invalid``: the field has a value the server refuses."""
    return FieldError(INVALID, path, value, detail)


def not_supported(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    """``field.NotSupported``: the value is not one of the allowed ones."""
    listed = ", ".join(json.dumps(item) for item in supported)
    return FieldError(NOT_SUPPORTED, path, value, f"supported values: {listed}")


def forbidden(path: str, detail: str) -> FieldError:
    """``field.Forbidden``: the field may not be set or changed this way."""
    return FieldError(FORBIDDEN, path, detail=detail)


def too_long(path: str, limit: int) -> FieldError:
    """``field.TooLong``: the value is longer than the server allows."""
    return FieldError(TOO_LONG, path, detail=f"must have at most {limit} bytes")


def immutable(path: str, value: Any) -> FieldError:
    """The standard "field is immutable" error of update validation."""
    return invalid(path, value, "field is immutable")


@dataclass
class ApiError(Exception):
    """A failed API call: rendered as a ``Status`` body with the HTTP status ``code``."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code} {self.reason}: {self.message}")

    def status(self) -> dict[str, Any]:
        """The ``Status`` object, with Go's ``omitempty`` rules applied to ``details``."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = {key: value for key, value in self.details.items() if value}
        if not self.reason:
            del body["reason"]
        return body


def qualified(group: str, name: str) -> str:
    """``schema.GroupResource.String()`` / ``GroupKind.String()``: ``pods`` or ``jobs.batch``."""
    return f"{name}.{group}" if group else name


def _details(group: str, plural: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "group": group, "kind": plural, **extra}


def not_found(group: str, plural: str, name: str) -> ApiError:
    """``NewNotFound``: the named object does not exist."""
    message = f"{qualified(group, plural)} {json.dumps(name)} not found"
    return ApiError(404, "NotFound", message, _details(group, plural, name))


def no_such_path() -> ApiError:
    """The URL names no resource the server serves (unknown group, version, resource or subresource)."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(group: str, plural: str, name: str) -> ApiError:
    """``NewAlreadyExists``: create of a name that is taken (409)."""
    message = f"{qualified(group, plural)} {json.dumps(name)} already exists"
    return ApiError(409, "AlreadyExists", message, _details(group, plural, name))


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    """``NewConflict``: an update that lost an optimistic-concurrency race (409)."""
    message = f"Operation cannot be fulfilled on {qualified(group, plural)} {json.dumps(name)}: {why}"
    return ApiError(409, "Conflict", message, _details(group, plural, name))


#: The reason ``NewConflict`` gives for a stale ``metadata.resourceVersion``.
STALE_OBJECT: Final = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid_object(group: str, kind: str, name: str, errors: Sequence[FieldError]) -> ApiError:
    """``NewInvalid``: the object fails validation (422) with one cause per field error."""
    what = f"{qualified(group, kind)} {json.dumps(name)} is invalid"
    if len(errors) == 1:
        message = f"{what}: {errors[0]}"
    elif errors:
        message = f"{what}: [{', '.join(str(error) for error in errors)}]"
    else:
        message = what
    details = {"name": name, "group": group, "kind": kind, "causes": [error.cause() for error in errors]}
    return ApiError(422, "Invalid", message, details)


def unprocessable() -> ApiError:
    """A JSON patch that cannot be applied (a failed ``test``, a missing path): 422 with no details."""
    return ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {})


def bad_request(message: str) -> ApiError:
    """``NewBadRequest`` (400): the request itself is malformed."""
    return ApiError(400, "BadRequest", message, None)


def forbidden_request(group: str, plural: str, name: str, why: str) -> ApiError:
    """``NewForbidden`` (403), for example creating in a namespace that is being deleted."""
    what = qualified(group, plural)
    message = f"{what} {json.dumps(name)} is forbidden: {why}" if name else f"{what} is forbidden: {why}"
    return ApiError(403, "Forbidden", message, _details(group, plural, name))


def method_not_allowed(group: str, plural: str, action: str) -> ApiError:
    """``NewMethodNotSupported`` (405)."""
    message = f"{action} is not supported on resources of kind {json.dumps(qualified(group, plural))}"
    return ApiError(405, "MethodNotAllowed", message, {"group": group, "kind": plural})


def unsupported_media_type(content_type: str, accepted: Sequence[str]) -> ApiError:
    """415: a PATCH with a content type the resource does not accept."""
    listed = ", ".join(accepted)
    message = f"the body of the request was in an unknown format - accepted media types include: {listed}"
    return ApiError(415, "UnsupportedMediaType", message, {})


def expired(message: str) -> ApiError:
    """``NewResourceExpired`` (410): a resourceVersion older than the server remembers."""
    return ApiError(410, "Expired", message, None)


def unauthorized() -> ApiError:
    """401: no or wrong bearer token."""
    return ApiError(401, "Unauthorized", "Unauthorized", None)


def internal(message: str) -> ApiError:
    """``NewInternalError`` (500)."""
    return ApiError(
        500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]}
    )
