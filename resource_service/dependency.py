"""FastAPI and plain ASGI integration: a checked Principal per request, errors answered per RFC 6750."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from resource_service.answer_gate import GUARD_KEY, gated_send
from resource_service.errors import ResourceError, error_body, error_headers
from resource_service.guard import Guard
from resource_service.verifier import Principal

__all__ = ["DEFAULT_REALM", "RevocationMiddleware", "http_exception", "require_principal"]

DEFAULT_REALM = "tokenlife"

# Only there so the OpenAPI schema declares bearer auth (the docs' "Authorize" button); the header is read
# and judged by the Guard, never by this.
_openapi_bearer = HTTPBearer(auto_error=False)


def _joined(values: list[str]) -> str | None:
    # Two Authorization headers are two credentials: joined, the Guard refuses them as invalid_request.
    return ", ".join(values) if values else None


def http_exception(err: ResourceError, realm: str = DEFAULT_REALM) -> HTTPException:
    """The HTTPException for an error, with WWW-Authenticate or Retry-After."""
    return HTTPException(
        status_code=err.status_code, detail=err.description, headers=error_headers(err, realm)
    )


def require_principal(
    guard_getter: Callable[[Request], Guard],
    scopes: Iterable[str] = (),
    *,
    realm: str = DEFAULT_REALM,
) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency giving the request's Principal, or answering 401, 400, 403 or 503.

    Add `AnswerGate` to the app as well: it refuses a success whose state went stale before it was written.
    """
    required = tuple(scopes)

    async def principal(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_openapi_bearer)],
    ) -> Principal:
        header = _joined(request.headers.getlist("authorization"))
        guard = guard_getter(request)
        try:
            found = await guard.check(header, required)
        except ResourceError as err:
            raise http_exception(err, realm) from None
        # The AnswerGate middleware judges freshness again when the answer is written.
        request.scope.setdefault("state", {})[GUARD_KEY] = guard
        return found

    return principal


class RevocationMiddleware:
    """ASGI middleware: every request outside `exclude_paths` needs a valid, unrevoked bearer token.

    The Principal goes to scope["state"]["principal"] (Starlette's request.state.principal). An entry of
    `exclude_paths` matches its exact path, or every path under it when it ends with "/".
    """

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
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
        values = [value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"]
        try:
            principal = await self.guard.check(_joined(values), self._required)
        except ResourceError as err:
            await self._refuse(err, scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        # Judged again when the answer is written: the handler (or a paused loop) may outlast freshness.
        await self.app(scope, receive, gated_send(send, scope, self._realm, self.guard))

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
