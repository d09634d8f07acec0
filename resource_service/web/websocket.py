"""WebSockets authenticated by a bearer token, checked like a request and closed when the token ends.

Where the token comes from (never the URL: URLs end up in logs, histories and Referer headers):
- the `Authorization: Bearer` header, for clients that can set headers;
- the `Sec-WebSocket-Protocol` header, for browsers, which cannot: the client offers `tokenlife` and
  `tokenlife.bearer.<token>` (a JWT is made of characters a subprotocol may hold), and the server selects
  `tokenlife`, so the token is never echoed back;
- the first message, for browsers that would rather not put it in a header: the client offers
  `tokenlife.auth-message`, and sends `{"access_token": "<token>"}` first, within `auth_timeout` seconds.

A token in a header is checked before the upgrade: a refusal is the RFC 6750 HTTP answer (401, 400, 403
with WWW-Authenticate, or 503 with Retry-After), not an upgrade that closes at once. A token in the first
message can only be refused after the upgrade: the socket closes with a clear reason. An accepted connection
is watched (live.py): when its token is revoked it closes with 1008 "token revoked", when it expires with
1008 "token expired" (refresh and reconnect), when the instance goes stale with 1013 "revocation state
stale" (retry shortly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from resource_service.check.guard import Guard
from resource_service.check.verifier import Principal
from resource_service.check.watch import EndReason
from resource_service.errors import (
    InvalidRequest,
    ResourceError,
    StateStale,
    TokenRevoked,
    error_body,
    error_headers,
)
from resource_service.web.dependency import DEFAULT_REALM, authorization_header
from resource_service.web.live import LiveConnections

__all__ = [
    "AUTH_MESSAGE_PROTOCOL",
    "BEARER_PROTOCOL_PREFIX",
    "CLOSE_CODES",
    "PROTOCOL",
    "WebSocketHandler",
    "serve_websocket",
]

log = logging.getLogger("tokenlife.live")

PROTOCOL = "tokenlife"
BEARER_PROTOCOL_PREFIX = "tokenlife.bearer."
AUTH_MESSAGE_PROTOCOL = "tokenlife.auth-message"
AUTH_MESSAGE_TIMEOUT = 10.0

# 1008 policy violation: this token may not be used (sign in again, or refresh). 1013 try again later: the
# instance cannot vouch for any token now, the token itself may be fine.
CLOSE_CODES = {EndReason.REVOKED: 1008, EndReason.EXPIRED: 1008, EndReason.STALE: 1013}
_MAX_REASON_BYTES = 123  # RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code
_FIRST_MESSAGE = 'first message must be {"access_token": "<token>"}'

WebSocketHandler = Callable[[WebSocket, Principal], Coroutine[Any, Any, None]]


async def serve_websocket(
    websocket: WebSocket,
    live: LiveConnections,
    guard: Guard,
    handler: WebSocketHandler,
    *,
    scopes: Iterable[str] = (),
    realm: str = DEFAULT_REALM,
    auth_timeout: float = AUTH_MESSAGE_TIMEOUT,
) -> None:
    """Authenticate the socket, run `handler(websocket, principal)` while its token holds, then close it."""
    principal = await _authenticate(websocket, guard, tuple(scopes), realm, auth_timeout)
    if principal is None:
        return
    try:
        connection = live.open(principal)
    except TokenRevoked:
        await _close(websocket, CLOSE_CODES[EndReason.REVOKED], EndReason.REVOKED.value)
        return
    task = asyncio.create_task(handler(websocket, principal))
    try:
        await asyncio.wait((task, connection.ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        live.release(connection)
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    reason = connection.reason
    if reason is not None:
        await _close(websocket, CLOSE_CODES[reason], reason.value)
        return
    failure = None if task.cancelled() else task.exception()
    if failure is None:
        await _close(websocket, 1000, "")
    elif not isinstance(failure, WebSocketDisconnect):
        log.error("WebSocket handler failed", exc_info=failure)
        await _close(websocket, 1011, "internal error")


async def _authenticate(
    websocket: WebSocket, guard: Guard, scopes: tuple[str, ...], realm: str, auth_timeout: float
) -> Principal | None:
    offered = list(websocket.scope.get("subprotocols") or ())
    header = authorization_header(websocket.scope["headers"])
    in_protocol = [p for p in offered if p.startswith(BEARER_PROTOCOL_PREFIX)]
    try:
        if "access_token" in websocket.query_params:
            raise InvalidRequest(
                "a token in the URL is refused: send it in the Authorization header, "
                "the Sec-WebSocket-Protocol header or the first message"
            )
        if len(in_protocol) + (header is not None) > 1:
            raise InvalidRequest("more than one bearer token offered")
        selected = PROTOCOL if PROTOCOL in offered else None
        if in_protocol:
            if selected is None:
                raise InvalidRequest(f"offer the subprotocol {PROTOCOL!r} beside the bearer one")
            header = "Bearer " + in_protocol[0].removeprefix(BEARER_PROTOCOL_PREFIX)
        elif header is None and AUTH_MESSAGE_PROTOCOL in offered:
            await websocket.accept(subprotocol=AUTH_MESSAGE_PROTOCOL)
            return await _first_message(websocket, guard, scopes, auth_timeout)
        principal = await guard.check(header, scopes)
    except ResourceError as err:
        await _deny(websocket, err, realm)
        return None
    await websocket.accept(subprotocol=selected)
    return principal


async def _first_message(
    websocket: WebSocket, guard: Guard, scopes: tuple[str, ...], auth_timeout: float
) -> Principal | None:
    try:
        message = await asyncio.wait_for(websocket.receive(), auth_timeout)
    except TimeoutError:
        await _close(websocket, 1008, f"no access token within {auth_timeout:g} s")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    token = _token_of(message.get("text"))
    if token is None:
        await _close(websocket, 1008, _FIRST_MESSAGE)
        return None
    try:
        return await guard.check(f"Bearer {token}", scopes)
    except ResourceError as err:
        code = 1013 if isinstance(err, StateStale) else 1008
        await _close(websocket, code, f"{err.error or err.body_code}: {err.description}")
        return None


def _token_of(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"access_token"}:
        return None
    token = body["access_token"]
    return token if isinstance(token, str) and token else None


async def _deny(websocket: WebSocket, err: ResourceError, realm: str) -> None:
    """Refuse before the upgrade: the RFC 6750 HTTP answer, where the server can send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = JSONResponse(
            error_body(err), status_code=err.status_code, headers=error_headers(err, realm)
        )
        await websocket.send_denial_response(response)
        return
    # Without the extension, a close before the accept is answered 403 by the server.
    await websocket.close(1008, _fit(err.description))


def _fit(reason: str) -> str:
    data = reason.encode()
    if len(data) <= _MAX_REASON_BYTES:
        return reason
    return data[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close if still open; a client already gone is not an error."""
    if websocket.application_state is not WebSocketState.CONNECTED:
        return
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, _fit(reason))
