"""For resource services (HTTP Basic service clients): the log by position, and the revocation snapshot."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from auth_service.api.deps import Context, ServiceClient, app_state, transaction
from auth_service.api.openapi import errors
from auth_service.context import AuthContext
from auth_service.contract import ColumnarSnapshot, EventPage, RevocationSnapshot, utcnow
from auth_service.errors import InvalidRequest
from auth_service.log.listener import LogListener
from auth_service.log.snapshots import columnar_snapshot_json, snapshot_json
from auth_service.log.store import MAX_PAGE, read_page
from tracekit.page import HEADER as PAGE_HEADER

router = APIRouter(tags=["service"])

MAX_WAIT = 30.0


@router.get(
    "/v1/events",
    summary="The log after a position, in position order; long-polls with wait",
    responses={200: {"model": EventPage}, **errors(400, 401, 503)},
)
async def events(
    request: Request,
    ctx: Context,
    _client: ServiceClient,
    after: int = Query(0, ge=0, le=2**63 - 1),
    limit: int = Query(MAX_PAGE, ge=1, le=MAX_PAGE),
    wait: float = Query(
        0.0, ge=0, le=MAX_WAIT, description="Seconds to hold the request while nothing is new."
    ),
) -> Response:
    """An EventPage: events with position > after (at most limit), the head, server time and time held.

    With wait, an answer with nothing new is held until an event commits or wait seconds pass.
    """
    for name in ("after", "limit", "wait"):
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidRequest(f"parameter {name!r} is repeated")
    if wait > 0:
        listener = app_state(request.app).log_listener
        assert listener is not None, "the lifespan starts the listener before any request"
        with listener.slot(retry_after=1):
            page, held = await _hold(request, ctx, listener, after, limit, wait)
    else:
        page, held = await _read(ctx, after, limit), 0.0
    answer = page.model_copy(update={"server_time": utcnow(), "held": round(held, 6)})
    headers = None
    if ctx.traces is not None and answer.events:
        # The trace contexts of the events this process committed traced (tracekit.page), beside the body.
        contexts = ctx.traces.page_header(answer.events)
        headers = {PAGE_HEADER: contexts} if contexts else None
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


async def _read(ctx: AuthContext, after: int, limit: int) -> EventPage:
    async with transaction(ctx) as conn:
        return await read_page(conn, after, limit)


async def _hold(
    request: Request, ctx: AuthContext, listener: LogListener, after: int, limit: int, wait: float
) -> tuple[EventPage, float]:
    """Read until something is new, wait runs out or the client leaves; the page and the time held.

    `held` is measured before the last read starts, so the read happened at least `held` seconds after the
    request arrived: the reader's freshness rule depends on that (resource_service/check/freshness.py).
    """
    started = time.monotonic()
    gone = asyncio.create_task(_disconnected(request))
    try:
        while True:
            changed = listener.changed()  # before the read: a commit after it sets this event
            held = time.monotonic() - started
            page = await _read(ctx, after, limit)
            remaining = wait - (time.monotonic() - started)
            if page.events or remaining <= 0 or gone.done():
                return page, held
            if page.head > after:
                # A commit landed between the page's two reads (events, then head): read again at once.
                continue
            woken = asyncio.create_task(changed.wait())
            try:
                await asyncio.wait({woken, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if gone.done():
                return page, held  # nobody reads this answer; the slot and the task end now
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/v1/revocations",
    summary="Every live revocation and the position it is consistent with",
    responses={200: {"model": RevocationSnapshot | ColumnarSnapshot}, **errors(400, 401)},
)
async def revocations(
    request: Request,
    ctx: Context,
    _client: ServiceClient,
    form: Literal["objects", "columns"] = Query(
        "objects", description="objects: a RevocationSnapshot; columns: a ColumnarSnapshot (compact)"
    ),
) -> Response:
    """A RevocationSnapshot (or a ColumnarSnapshot): apply it, then the events after its position."""
    app_state(request.app).snapshots_served.inc()
    # Both forms are written by PostgreSQL: the handler passes the text through, whatever the size.
    body = await columnar_snapshot_json(ctx.engine) if form == "columns" else await snapshot_json(ctx.engine)
    return Response(body, media_type="application/json")
