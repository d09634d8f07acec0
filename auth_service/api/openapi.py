"""The OpenAPI document: every status each operation can answer, one error body, and no 422.

Routes declare their error statuses with `errors(...)`; `install(app)` builds the document once and removes
what FastAPI adds on its own but this server never sends (422 and its HTTPValidationError schema: validation
errors are answered 400 by app.py's handler).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from auth_service.api.schemas import OAuthErrorBody

DESCRIPTION = """\
Logs users in (OAuth 2.0 password and refresh_token grants), revokes tokens, and serves the append-only
revocation log to resource services.

**Errors.** Every error status is answered with one JSON body, `OAuthErrorBody`:
`{"error": <code>, "error_description": <text>}` (RFC 6749 §5.2, RFC 6750 §3).

**The one rule for validation errors:** a request the server cannot accept as sent is answered **400** with
`error: "invalid_request"`, whatever is wrong with it: a body that is not a UTF-8
`application/x-www-form-urlencoded` form, a parameter that is missing, empty, repeated, over its length or
holds a control character, a query or path parameter out of range. This server never answers 422. A body
over 64 KiB is answered 413.

**Authentication.** Bearer routes answer 401 with `WWW-Authenticate: Bearer realm="tokenlife"` and, when a
token was sent, `error="invalid_token"`; with no token at all the challenge carries no error code (RFC 6750
§3.1) and the body's code is `missing_token`. A malformed `Authorization` header is 400 `invalid_request`.
Service routes (HTTP Basic, registered confidential clients) answer 401 `invalid_client`.

**Throttling.** Wrong passwords, at login and at the password change alike, are counted per account and per
client address; past the limit the answer is 429 with `Retry-After` and `error: "temporarily_unavailable"`.
"""

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The request cannot be accepted as sent (invalid_request), or the operation's OAuth error.", {}),
    401: (
        "Authentication failed: missing or bad credentials.",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    ),
    403: (
        "The token lacks the scope this operation needs (insufficient_scope).",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    ),
    404: ("No such resource of the caller's.", {}),
    413: ("The request body is over 64 KiB.", {}),
    429: (
        "Too many wrong passwords for this account or address; wait Retry-After seconds.",
        {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    ),
    503: (
        "Temporarily unable to answer (the log is busy, or no signing key); retry.",
        {"Retry-After": {"required": False, "schema": {"type": "integer", "minimum": 1}}},
    ),
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for the error statuses an operation can answer, all with the one error body."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        answers[status] = {"model": OAuthErrorBody, "description": description}
        if headers:
            answers[status]["headers"] = headers
    return answers


def build(app: FastAPI) -> dict[str, Any]:
    """The document, without FastAPI's 422 answers and their schemas."""
    document = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def install(app: FastAPI) -> None:
    """Serve `build(app)` at /openapi.json, computed once."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(build(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
