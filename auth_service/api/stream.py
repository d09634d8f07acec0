"""The caller's own events as they commit: server-sent events on GET /v1/me/events/stream.

The stream is authenticated once with the bearer token, then re-checked after every batch it sends: the batch
that revokes the caller's token is still delivered (it is the user's own news), and then the stream ends with
an `end` event saying why. It also ends when the token expires; the client reconnects with a fresh token and
`?after=` the last position it saw, so nothing is missed across reconnects.

The stream follows the same rules as an open connection to a resource service (resource_service/web/live.py),
with the same `end` reasons: `token_revoked` (sign in again), `token_expired` (refresh and reconnect) and
`state_stale` (retry shortly): the database cannot be read, so no revocation can be seen. A NOTIFY that
never comes (the listening connection lost) costs at most BACKSTOP: the head is read at least that often.

Scope: events carrying the caller's user id, plus key and global revocations (they end the caller's tokens
too and name no user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.api.deps import Context, CurrentPrincipal, app_state, bearer_token
from auth_service.api.openapi import errors
from auth_service.context import AuthContext
from auth_service.db.errors import translate
from auth_service.db.tables import event_log
from auth_service.errors import BearerError
from auth_service.log.listener import LogListener
from auth_service.log.projections import decode_row
from auth_service.log.store import read_head
from auth_service.use_cases.authn import Principal, authenticate

router = APIRouter(tags=["account"])

KEEPALIVE = 15.0
# Under the resource services' default bound (2 s): a missed NOTIFY must not keep a revoked stream open.
BACKSTOP = 1.0
MAX_BATCH = 500
_UNADDRESSED = (c.EventType.KEY_REVOKED.value, c.EventType.GLOBAL_REVOKED.value)


# The timeout is when to give up waiting and answer with the head, not a cancellation: hence a parameter.
async def wait_for_commit(
    engine: AsyncEngine,
    listener: LogListener,
    after: int,
    timeout: float,  # noqa: ASYNC109
) -> int:
    """Wait until the log's head passes `after` or `timeout` seconds pass; the head last seen.

    Woken by the process's one LISTEN connection (the long-poll's), so a waiting stream costs no query.
    """
    deadline = time.monotonic() + timeout
    while True:
        changed = listener.changed()  # taken before the read: a commit after it sets this event
        async with engine.connect() as conn:
            head = await read_head(conn)
        left = deadline - time.monotonic()
        if head > after or left <= 0:
            return head
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), left)


def _frame(event: str, data: dict[str, Any], position: int | None = None) -> bytes:
    lines = [f"id: {position}"] if position is not None else []
    lines += [f"event: {event}", f"data: {json.dumps(data, separators=(',', ':'))}"]
    return ("\n".join(lines) + "\n\n").encode()


async def _user_events(engine: AsyncEngine, user_id: str, after: int, upto: int) -> tuple[int, list[bytes]]:
    """The caller's events in (after, upto] as frames, and the position to go on from."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(event_log.c.position, event_log.c.payload)
                .where(event_log.c.position > after, event_log.c.position <= upto)
                .where(or_(event_log.c.user_id == user_id, event_log.c.type.in_(_UNADDRESSED)))
                .order_by(event_log.c.position)
                .limit(MAX_BATCH)
            )
        ).all()
    frames = []
    for row in rows:
        event = decode_row(row.position, row.payload).model_dump(mode="json")
        frames.append(_frame(str(event["type"]), event, int(row.position)))
    # A full batch may not reach `upto`: go on from its last event, not from `upto`.
    return (int(rows[-1].position) if len(rows) == MAX_BATCH else upto), frames


async def _still_valid(ctx: AuthContext, token: str) -> bool:
    try:
        await authenticate(ctx, token)
    except BearerError:
        return False
    return True


async def _stream(
    ctx: AuthContext, listener: LogListener, token: str, who: Principal, cursor: int
) -> AsyncIterator[bytes]:
    try:
        async for chunk in _follow(ctx, listener, token, who, cursor):
            yield chunk
    except Exception as exc:
        if translate(exc) is None:
            raise
        # The database cannot be read: a revocation could not be seen, so the stream cannot go on.
        yield _frame("end", {"reason": "state_stale"})


async def _follow(
    ctx: AuthContext, listener: LogListener, token: str, who: Principal, cursor: int
) -> AsyncIterator[bytes]:
    expires = float(who.claims["exp"])
    yield b": connected\n\n"  # sends the headers now, so the client knows the stream is open
    quiet_since = time.monotonic()
    while True:
        left = expires - time.time()
        if left <= 0:
            yield _frame("end", {"reason": "token_expired"})
            return
        head = await wait_for_commit(ctx.engine, listener, cursor, min(BACKSTOP, left))
        if head <= cursor:
            if time.monotonic() - quiet_since >= KEEPALIVE:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
            continue
        quiet_since = time.monotonic()
        cursor, frames = await _user_events(ctx.engine, who.user_id, cursor, head)
        for frame in frames:
            yield frame
        if frames and not await _still_valid(ctx, token):
            # What revoked the token committed before the check saw it, so it lies at or below the head
            # read now: deliver everything up to there, then close.
            async with ctx.engine.connect() as conn:
                head = await read_head(conn)
            while cursor < head:
                cursor, frames = await _user_events(ctx.engine, who.user_id, cursor, head)
                for frame in frames:
                    yield frame
            yield _frame("end", {"reason": "token_revoked"})
            return


@router.get(
    "/v1/me/events/stream",
    summary="The caller's own events as they commit (text/event-stream)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events until the token is revoked or expires.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(400, 401),
    },
)
async def my_events(
    request: Request,
    who: CurrentPrincipal,
    ctx: Context,
    after: Annotated[int | None, Query(ge=0, description="Start after this position; default: now.")] = None,
) -> StreamingResponse:
    """Server-sent events: `id` is the log position, `event` the type, `data` the event; `end` closes."""
    token = bearer_token(request)  # kept to re-check the token after every batch
    listener = app_state(request.app).log_listener
    assert listener is not None, "the lifespan starts the listener before any request"
    async with ctx.engine.connect() as conn:
        head = await read_head(conn)
    cursor = head if after is None else min(after, head)
    return StreamingResponse(
        _stream(ctx, listener, token, who, cursor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
