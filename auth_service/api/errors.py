"""The one error mapping of the auth service: each of our errors (auth_service/errors.py), a database outage
and the framework's own refusals as an HTTP answer with a JSON body, RFC 6749 §5.2 and RFC 6750 headers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from auth_service.db import errors as db_errors
from auth_service.errors import (
    AppendError,
    AuthServiceError,
    BearerError,
    DatabaseUnavailable,
    InsufficientScope,
    InvalidClient,
    OAuthError,
    TooManyAttempts,
    TooManyWaiters,
)

log = logging.getLogger("tokenlife.auth")
REALM = "tokenlife"


def _quote(value: str) -> str:
    cleaned = "".join(ch for ch in value if 0x20 <= ord(ch) < 0x7F)
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')


def error_response(err: AuthServiceError) -> JSONResponse:
    """The HTTP answer for one of our errors (RFC 6749 §5.2 body; RFC 6750 header for bearer errors)."""
    error = getattr(err, "error", None)
    description = getattr(err, "public_description", err.description)
    body = {"error": getattr(err, "body_error", error), "error_description": description}
    headers = {"Cache-Control": "no-store"}
    if isinstance(err, OAuthError):
        headers["Pragma"] = "no-cache"
    if isinstance(err, BearerError):
        params = [f'realm="{REALM}"']
        if err.error:
            params += [f'error="{err.error}"', f'error_description="{_quote(err.description)}"']
        if isinstance(err, InsufficientScope):
            params.append(f'scope="{_quote(err.scope)}"')
        headers["WWW-Authenticate"] = "Bearer " + ", ".join(params)
    elif isinstance(err, InvalidClient):
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    elif isinstance(err, TooManyAttempts):
        headers["Retry-After"] = str(err.retry_after)
    elif isinstance(err, AppendError):
        headers["Retry-After"] = "1"
    elif isinstance(err, (TooManyWaiters, DatabaseUnavailable)):
        headers["Retry-After"] = str(err.retry_after)
    return JSONResponse(body, status_code=err.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map our errors, the database's outages and the framework's refusals to their HTTP answers."""

    @app.exception_handler(AuthServiceError)
    async def ours(request: Request, exc: AuthServiceError) -> Response:
        if isinstance(exc, AppendError):
            # An append that failed because the database is down says so, not "the log is busy".
            outage = db_errors.translate(exc.__cause__) if exc.__cause__ is not None else None
            log.warning("append failed%s: %s", " (database unavailable)" if outage else "", exc)
            if outage is not None:
                return error_response(outage)
        return error_response(exc)

    async def database_down(request: Request, exc: Exception) -> Response:
        err = db_errors.translate(exc)
        if err is None:
            raise exc  # not an outage: a bug, and it shows as one
        log.warning("database unavailable on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return error_response(err)

    for kind in db_errors.THIRD_PARTY:
        app.add_exception_handler(kind, database_down)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid_request", "error_description": problems[:500]}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(
            {
                "error": "not_found" if exc.status_code == 404 else "invalid_request",
                "error_description": str(exc.detail),
            },
            exc.status_code,
            headers=exc.headers,
        )
