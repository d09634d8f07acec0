"""Liveness, readiness and metrics: what an orchestrator and a scraper ask of the auth service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from auth_service.api.deps import app_state, context
from auth_service.api.schemas import Health, Readiness

router = APIRouter()


@router.get("/healthz", tags=["health"], responses={200: {"model": Health}})
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    tags=["health"],
    responses={
        200: {"model": Readiness},
        503: {"model": Readiness, "description": "Not ready: the reason says what is missing."},
    },
)
async def readyz(request: Request) -> Response:
    ctx = context(request)
    try:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, 503)
    if ctx.keys.current().active is None:
        return JSONResponse({"status": "unavailable", "reason": "no active signing key"}, 503)
    relay = app_state(request.app).relay
    if relay is not None and not relay.ready:
        return JSONResponse({"status": "unavailable", "reason": "the relay loop is not running"}, 503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["health"], include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request.app).registry), media_type=CONTENT_TYPE_LATEST)
