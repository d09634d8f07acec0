"""FastAPI and plain ASGI integration: a checked Principal per request, errors answered per RFC 6750."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from resource_service.check.guard import Guard
from resource_service.check.verifier import Principal
from resource_service.errors import ResourceError, error_body, error_headers
from resource_service.web.answer_gate import GUARD_KEY, gated_send

__all__ = [
    "DEFAULT_REALM",
    "BearerRefusal",
    "PrincipalDependency",
    "RevocationMiddleware",
    "authorization_header",
    "error_responses",
    "http_exception",
    "install_error_handler",
    "require_principal",
]

DEFAULT_REALM = "tokenlife"


def _joined(values: list[str]) -> str | None:
    # Two Authorization headers are two credentials: joined, the Guard refuses them as invalid_request.
    return ", ".join(values) if values else None


def authorization_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The Authorization header of ASGI headers; several are joined (and then refused as malformed)."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) == 1:
        return values[0].decode("latin-1")
    return _joined([value.decode("latin-1") for value in values])


class BearerRefusal(HTTPException):
    """The dependency's refusal: an HTTPException (FastAPI answers it as `{"detail": ...}` by default) that
    carries the RFC 6750 body, which `install_error_handler` answers instead."""

    def __init__(self, err: ResourceError, realm: str) -> None:
        super().__init__(
            status_code=err.status_code, detail=err.description, headers=error_headers(err, realm)
        )
        self.body = error_body(err)


def http_exception(err: ResourceError, realm: str = DEFAULT_REALM) -> HTTPException:
    """The HTTPException for an error, with WWW-Authenticate or Retry-After."""
    return BearerRefusal(err, realm)


def install_error_handler(app: FastAPI) -> None:
    """Answer the dependency's refusals with the RFC 6750 body `{"error", "error_description"}`, as the
    ASGI middleware does (without it FastAPI answers `{"detail": description}`, same status and headers)."""

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BearerRefusal)
        return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(BearerRefusal, refused)


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "error_description"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
_DESCRIPTIONS = {
    400: ("The Authorization header is malformed (invalid_request).", "WWW-Authenticate"),
    401: ("No bearer token, or a bad, expired or revoked one.", "WWW-Authenticate"),
    403: ("The token lacks a scope this route needs (insufficient_scope).", "WWW-Authenticate"),
    503: (
        "This instance cannot confirm its revocation state is fresh: it refuses (fail closed).",
        "Retry-After",
    ),
}


def error_responses(*, scoped: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for a route behind the dependency: every refusal it can answer, with its body
    (the one `install_error_handler` gives) and header."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status, (description, header) in _DESCRIPTIONS.items():
        if status == 403 and not scoped:
            continue
        answers[status] = {
            "description": description,
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
            "headers": {header: {"required": True, "schema": {"type": "string"}}},
        }
    return answers


class PrincipalDependency(SecurityBase):
    """A FastAPI dependency giving the request's Principal, or answering 401, 400, 403 or 503.

    It is its own security scheme (a SecurityBase), so OpenAPI declares bearer auth (the docs' "Authorize"
    button) without a nested dependency: FastAPI solves one dependency per request, with the request alone.
    """

    def __init__(self, guard_getter: Callable[[Request], Guard], scopes: Iterable[str], realm: str) -> None:
        self.model = HTTPBearerModel()
        self.scheme_name = "HTTPBearer"
        self._guard_getter = guard_getter
        self._required = tuple(scopes)
        self._realm = realm

    async def __call__(self, request: Request) -> Principal:
        """The checked Principal of this request."""
        guard = self._guard_getter(request)
        header = authorization_header(request.scope["headers"])
        try:
            principal = guard.check_cached(header, self._required)
            if principal is None:
                principal = await guard.check(header, self._required)
        except ResourceError as err:
            raise http_exception(err, self._realm) from None
        # The AnswerGate middleware judges freshness again when the answer is written.
        request.scope.setdefault("state", {})[GUARD_KEY] = guard
        return principal


def require_principal(
    guard_getter: Callable[[Request], Guard],
    scopes: Iterable[str] = (),
    *,
    realm: str = DEFAULT_REALM,
) -> PrincipalDependency:
    """A FastAPI dependency giving the request's Principal, or answering 401, 400, 403 or 503.

    Add `AnswerGate` to the app as well: it refuses a success whose state went stale before it was written.
    """
    return PrincipalDependency(guard_getter, scopes, realm)


class RevocationMiddleware:
    """ASGI middleware: every request outside `exclude_paths` needs a valid, unrevoked bearer token.

    The Principal goes to scope["state"]["principal"] (Starlette's request.state.principal). An entry of
    `exclude_paths` matches its exact path, or every path under it when it ends with "/". `guard` may be a
    callable giving the Guard, for one that exists only once the app's lifespan has started.
    """

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard | Callable[[], Guard],
        *,
        exclude_paths: Iterable[str] = (),
        required_scopes: Iterable[str] = (),
        realm: str = DEFAULT_REALM,
    ) -> None:
        self.app = app
        self.guard = guard
        excluded = tuple(exclude_paths)
        self._exact = frozenset(p for p in excluded if not p.endswith("/"))
        self._prefixes = tuple(p for p in excluded if p.endswith("/"))
        self._required = tuple(required_scopes)
        self._realm = realm

    def _excluded(self, path: str) -> bool:
        return path in self._exact or path.startswith(self._prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then pass it on or answer the error."""
        if scope["type"] not in ("http", "websocket") or self._excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        guard = self.guard if isinstance(self.guard, Guard) else self.guard()
        header = authorization_header(scope["headers"])
        try:
            principal = guard.check_cached(header, self._required)
            if principal is None:
                principal = await guard.check(header, self._required)
        except ResourceError as err:
            await self._refuse(err, scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        # Judged again when the answer is written: the handler (or a paused loop) may outlast freshness.
        await self.app(scope, receive, gated_send(send, scope, self._realm, guard))

    async def _refuse(self, err: ResourceError, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # A close before accept is answered with an HTTP 403 by the server; 1008 is "policy violation".
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": err.description})
            return
        response = JSONResponse(
            error_body(err), status_code=err.status_code, headers=error_headers(err, self._realm)
        )
        await response(scope, receive, send)
