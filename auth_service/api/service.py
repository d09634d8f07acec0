"""For resource services (HTTP Basic service clients): the log by position, and the revocation snapshot."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from auth_service.api.deps import Context, ServiceClient, transaction
from auth_service.api.openapi import errors
from auth_service.contract import EventPage, RevocationSnapshot
from auth_service.errors import InvalidRequest
from auth_service.log import MAX_PAGE, read_page, snapshot

router = APIRouter(tags=["service"])


@router.get(
    "/v1/events",
    summary="The log after a position, in position order",
    responses={200: {"model": EventPage}, **errors(400, 401)},
)
async def events(
    request: Request,
    ctx: Context,
    _client: ServiceClient,
    after: int = Query(0, ge=0, le=2**63 - 1),
    limit: int = Query(MAX_PAGE, ge=1, le=MAX_PAGE),
) -> Response:
    """An EventPage: events with position > after (at most limit) and the head they were read at."""
    for name in ("after", "limit"):
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidRequest(f"parameter {name!r} is repeated")
    async with transaction(ctx) as conn:
        page = await read_page(conn, after, limit)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get(
    "/v1/revocations",
    summary="Every live revocation and the position it is consistent with",
    responses={200: {"model": RevocationSnapshot}, **errors(401)},
)
async def revocations(ctx: Context, _client: ServiceClient) -> Response:
    """A RevocationSnapshot: apply it, then the events after its position."""
    snap = await snapshot(ctx.engine)
    return Response(snap.model_dump_json(), media_type="application/json")
