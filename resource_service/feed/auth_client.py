"""The resource service's HTTP client of the auth service: snapshot, events pages, JWKS, introspection.

Every failure (transport, status, body) comes out as `AuthServiceUnavailable`, so callers handle one error.

Fail-over: given several auth instances' base URLs (TOKENLIFE_AUTH_URLS), each call goes to the current one
and, when it fails, to the next ones in turn; the first that answers becomes current. Every auth instance
reads the same log, so a snapshot, a page of events, a long-poll or the JWKS from any of them is as good.

A hung instance (paused, or its host gone silent) refuses nothing: its connections open and then say nothing
until the HTTP timeout, which is far longer than the staleness bound allows. So a call that has not answered
`hedge_after` seconds after it could have (after the hold, for a long-poll) is also sent to the next URL,
without a hold, and the first good answer wins; the others are cancelled. A healthy but slow instance costs a
duplicate read; a hung one costs `hedge_after`, not the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import httpx
from pydantic import ValidationError

from auth_service.contract import EventPage
from tracekit.page import HEADER as TRACE_HEADER
from tracekit.page import parse_contexts

__all__ = ["AuthClient", "AuthServiceUnavailable", "Carrier", "Delivery", "EventsRead", "LogUnreadable"]

# What an event came with that may carry its trace context: message headers, a stream message's application
# properties, or the entry the events API's answer named for it.
Carrier = Mapping[Any, Any]
# How an event reached the feed, whatever the transport: its carrier, when (monotonic), and over what.
Delivery = tuple[Carrier | None, float, str]


class AuthServiceUnavailable(Exception):
    """The auth service could not be reached or gave an answer we cannot use; the text says which."""


class LogUnreadable(Exception):
    """The events API returned something that cannot be folded in (a producer bug): stay behind, go stale."""


class EventsRead(NamedTuple):
    """A page of events, and how long after the call began the request that brought it was sent.

    A fail-over or a hedge sends it later than the call began; freshness counts from the later time.
    """

    page: EventPage
    sent_after: float


class AuthClient:
    """Calls the auth service with this service's HTTP Basic credentials, failing over between instances."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 5.0,
        hedge_after: float | None = None,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("at least one auth service URL is needed")
        self._timeout = timeout
        self._hedge_after = timeout if hedge_after is None else hedge_after
        self._current = 0
        self.failovers = 0
        self._clients = [
            httpx.AsyncClient(
                base_url=url,
                auth=httpx.BasicAuth(client_id, client_secret),
                timeout=timeout,
                # A resource service talks to one auth instance at a time: a small pool is plenty.
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
                follow_redirects=False,
            )
            for url in urls
        ]

    @property
    def current_url(self) -> str:
        """The base URL of the auth instance calls go to first."""
        return str(self._clients[self._current].base_url).rstrip("/")

    async def aclose(self) -> None:
        """Close every connection pool."""
        for client in self._clients:
            await client.aclose()

    async def _attempt(
        self, index: int, method: str, path: str, hold: float, params: dict[str, Any] | None, data: Any
    ) -> httpx.Response:
        if hold > 0:
            # The hold is not a timeout: allow it on top of the usual read timeout.
            timeout = httpx.Timeout(self._timeout + hold, connect=self._timeout)
            return await self._clients[index].request(
                method, path, params={**(params or {}), "wait": hold}, data=data, timeout=timeout
            )
        return await self._clients[index].request(method, path, params=params, data=data)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: Any = None,
        hold: float = 0.0,
    ) -> tuple[httpx.Response, float]:
        """The first 200 answer from the current URL or the next ones, and when its request left (seconds
        after the call began)."""
        began = time.monotonic()
        count = len(self._clients)
        start = self._current
        failures: list[str] = []
        attempts: dict[asyncio.Task[httpx.Response], tuple[int, float]] = {}
        launched = 0

        def launch() -> None:
            nonlocal launched
            index = (start + launched) % count
            # Only the current URL is asked to hold: one asked because another failed or hung answers at once.
            task = asyncio.ensure_future(
                self._attempt(index, method, path, hold if launched == 0 else 0.0, params, data)
            )
            attempts[task] = (index, time.monotonic() - began)
            launched += 1

        launch()
        try:
            while attempts:
                # hedge_after past when the latest attempt was due (its hold, if any): ask the next URL too.
                due = (hold if launched == 1 else 0.0) + self._hedge_after
                done, _ = await asyncio.wait(
                    attempts, timeout=due if launched < count else None, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    launch()
                    continue
                for task in done:
                    index, sent_after = attempts.pop(task)
                    exc = task.exception()
                    if exc is not None:
                        if not isinstance(exc, httpx.HTTPError):
                            raise exc
                        failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    response = task.result()
                    if response.status_code != 200:
                        failures.append(f"HTTP {response.status_code}")
                        continue
                    if index != self._current:
                        # Another call may have moved on already; the latest success wins.
                        self._current = index
                        self.failovers += 1
                    return response, sent_after
                if launched < count:  # one failed: the next URL at once, as without hedging
                    launch()
        finally:
            for task in attempts:
                task.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
        raise AuthServiceUnavailable(f"{method} {path}: " + "; ".join(failures))

    async def snapshot_body(self) -> bytes:
        """The snapshot's JSON body (the compact form if served): snapshot_loading folds it in, in steps."""
        # An auth service older than the columnar form ignores the parameter and sends objects.
        response, _ = await self._request("GET", "/v1/revocations", params={"form": "columns"})
        return response.content

    async def events(self, after: int, limit: int, *, wait: float = 0.0) -> EventsRead:
        """Events after a position (raw JSON objects: decode each) and the head of the log.

        With `wait`, the auth service holds the request up to that many seconds while nothing is new.
        """
        return (await self.page(after, limit, wait=wait))[0]

    async def page(
        self, after: int, limit: int, *, wait: float = 0.0
    ) -> tuple[EventsRead, dict[int, Carrier]]:
        """`events()`, and the trace contexts the answer named for some of them, by position (tracekit.page;
        none unless the auth service traces)."""
        params: dict[str, int | float] = {"after": after, "limit": limit}
        response, sent_after = await self._request("GET", "/v1/events", params=params, hold=wait)
        try:
            page = EventPage.model_validate_json(response.content)
        except ValidationError as exc:
            raise AuthServiceUnavailable(f"unreadable events page: {exc.error_count()} errors") from None
        traced = parse_contexts(response.headers.get(TRACE_HEADER))
        carriers: dict[int, Carrier] = {
            position: {"traceparent": parent} for position, parent in traced.items()
        }
        return EventsRead(page, sent_after), carriers

    async def jwks(self) -> dict[str, Any]:
        """The auth service's JWKS document."""
        response, _ = await self._request("GET", "/.well-known/jwks.json")
        try:
            body = response.json()
        except ValueError:
            raise AuthServiceUnavailable("unreadable JWKS document") from None
        if not isinstance(body, dict):
            raise AuthServiceUnavailable("JWKS document is not a JSON object")
        return body

    async def introspect(self, token: str) -> bool:
        """Whether the auth service says the access token is active now (RFC 7662)."""
        response, _ = await self._request(
            "POST", "/oauth/introspect", data={"token": token, "token_type_hint": "access_token"}
        )
        try:
            body = response.json()
        except ValueError:
            raise AuthServiceUnavailable("unreadable introspection answer") from None
        return isinstance(body, dict) and body.get("active") is True
