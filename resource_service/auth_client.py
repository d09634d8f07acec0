"""The resource service's HTTP client of the auth service: snapshot, events pages, JWKS, introspection.

Every failure (transport, status, body) comes out as `AuthServiceUnavailable`, so callers handle one error.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from auth_service.contract import EventPage

__all__ = ["AuthClient", "AuthServiceUnavailable", "LogUnreadable"]


class AuthServiceUnavailable(Exception):
    """The auth service could not be reached or gave an answer we cannot use; the text says which."""


class LogUnreadable(Exception):
    """The events API returned something that cannot be folded in (a producer bug): stay behind, go stale."""


class AuthClient:
    """Calls the auth service with this service's HTTP Basic credentials."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, *, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=httpx.BasicAuth(client_id, client_secret),
            timeout=timeout,
            # A resource service talks to one auth service: a small pool is plenty.
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AuthServiceUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise AuthServiceUnavailable(f"{method} {path}: HTTP {response.status_code}")
        return response

    async def snapshot_body(self) -> bytes:
        """The snapshot's JSON body (the compact form if served): snapshot_loading folds it in, in steps."""
        # An auth service older than the columnar form ignores the parameter and sends objects.
        response = await self._request("GET", "/v1/revocations", params={"form": "columns"})
        return response.content

    async def events(self, after: int, limit: int, *, wait: float = 0.0) -> EventPage:
        """Events after a position (raw JSON objects: decode each) and the head of the log.

        With `wait`, the auth service holds the request up to that many seconds while nothing is new.
        """
        params: dict[str, int | float] = {"after": after, "limit": limit}
        kwargs: dict[str, Any] = {}
        if wait > 0:
            params["wait"] = wait
            # The hold is not a timeout: allow it on top of the usual read timeout.
            kwargs["timeout"] = httpx.Timeout(self._timeout + wait, connect=self._timeout)
        response = await self._request("GET", "/v1/events", params=params, **kwargs)
        try:
            return EventPage.model_validate_json(response.content)
        except ValidationError as exc:
            raise AuthServiceUnavailable(f"unreadable events page: {exc.error_count()} errors") from None

    async def jwks(self) -> dict[str, Any]:
        """The auth service's JWKS document."""
        response = await self._request("GET", "/.well-known/jwks.json")
        try:
            body = response.json()
        except ValueError:
            raise AuthServiceUnavailable("unreadable JWKS document") from None
        if not isinstance(body, dict):
            raise AuthServiceUnavailable("JWKS document is not a JSON object")
        return body

    async def introspect(self, token: str) -> bool:
        """Whether the auth service says the access token is active now (RFC 7662)."""
        response = await self._request(
            "POST", "/oauth/introspect", data={"token": token, "token_type_hint": "access_token"}
        )
        try:
            body = response.json()
        except ValueError:
            raise AuthServiceUnavailable("unreadable introspection answer") from None
        return isinstance(body, dict) and body.get("active") is True
