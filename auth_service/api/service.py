"""For resource services (HTTP Basic service clients): the log by position, and the revocation snapshot."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from auth_service.api.common import context, openapi_basic, service_client, transaction
from auth_service.errors import InvalidRequest
from auth_service.log import MAX_PAGE, columnar_snapshot_json, read_page, snapshot

router = APIRouter(tags=["service"], dependencies=[Depends(openapi_basic)])


@router.get("/v1/events", summary="The log after a position, in position order")
async def events(
    request: Request,
    after: int = Query(0, ge=0, le=2**63 - 1),
    limit: int = Query(MAX_PAGE, ge=1, le=MAX_PAGE),
) -> Response:
    """An EventPage: events with position > after (at most limit) and the head they were read at."""
    service_client(request)
    for name in ("after", "limit"):
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidRequest(f"parameter {name!r} is repeated")
    async with transaction(request) as conn:
        page = await read_page(conn, after, limit)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/v1/revocations", summary="Every live revocation and the position it is consistent with")
async def revocations(
    request: Request,
    form: Literal["objects", "columns"] = Query(
        "objects", description="objects: a RevocationSnapshot; columns: a ColumnarSnapshot (compact)"
    ),
) -> Response:
    """A RevocationSnapshot (or a ColumnarSnapshot): apply it, then the events after its position."""
    service_client(request)
    engine = context(request).engine
    if form == "columns":
        body = await columnar_snapshot_json(engine)
    else:
        body = (await snapshot(engine)).model_dump_json()
    return Response(body, media_type="application/json")
