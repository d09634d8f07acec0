"""The signed-in user's own endpoints: logout, sessions and their timelines, password change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from auth_service.api.common import context, form, form_body, openapi_bearer, principal, required, transaction
from auth_service.errors import InvalidRequest, NotFound
from auth_service.log import decode_row
from auth_service.revoke import change_password, end_session, logout
from auth_service.tables import event_log, sessions

router = APIRouter(tags=["account"], dependencies=[Depends(openapi_bearer)])
SCOPES = ("session", "others", "all")
MAX_TIMELINE = 1000


@router.post(
    "/v1/auth/logout",
    summary="Log out: this session, the others, or all",
    openapi_extra=form_body(("scope", False)),
)
async def logout_route(request: Request) -> Response:
    """scope=session (default) ends this session; others ends every other; all revokes every token."""
    fields = await form(request) if request.headers.get("content-type") else {}
    scope = fields.get("scope") or request.query_params.get("scope") or "session"
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}")
    async with transaction(request) as conn:
        who = await principal(request, conn)
        events = await logout(conn, context(request), who, scope)  # type: ignore[arg-type]
    return JSONResponse(
        {
            "scope": scope,
            "revoked": len(events),
            "position": max((e.position or 0 for e in events), default=None),
        }
    )


def _session_view(row: Any, current: uuid.UUID) -> dict[str, Any]:
    return {
        "session_id": str(row.session_id),
        "client_id": row.client_id,
        "created_at": row.created_at.isoformat(),
        "last_refreshed_at": row.last_refreshed_at.isoformat() if row.last_refreshed_at else None,
        "user_agent": row.user_agent,
        "client_address": row.client_address,
        "expires_at": row.expires_at.isoformat(),
        "current": row.session_id == current,
    }


@router.get("/v1/sessions", summary="The caller's live sessions")
async def list_sessions(request: Request) -> Response:
    """Live sessions of the caller, oldest first."""
    async with transaction(request) as conn:
        who = await principal(request, conn)
        rows = await conn.execute(
            select(sessions)
            .where(sessions.c.user_id == who.user_id, sessions.c.revoked_at.is_(None))
            .where(sessions.c.expires_at > datetime.now(UTC))
            .order_by(sessions.c.created_at)
        )
        return JSONResponse({"sessions": [_session_view(r, who.session_id) for r in rows]})


def _session_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such session") from None


@router.delete("/v1/sessions/{sid}", status_code=204, summary="End one of the caller's sessions")
async def delete_session(sid: str, request: Request) -> Response:
    """End a session of the caller's; 404 for a session that is not theirs."""
    async with transaction(request) as conn:
        who = await principal(request, conn)
        await end_session(conn, context(request), who, _session_id(sid))
    return Response(status_code=204)


@router.get("/v1/sessions/{sid}/events", summary="A session's timeline, from the log")
async def session_events(sid: str, request: Request) -> Response:
    """Every logged event of one of the caller's sessions, in position order."""
    async with transaction(request) as conn:
        who = await principal(request, conn)
        session_id = _session_id(sid)
        owner = (
            await conn.execute(select(sessions.c.user_id).where(sessions.c.session_id == session_id))
        ).scalar_one_or_none()
        if owner != who.user_id:
            raise NotFound("no such session")
        rows = await conn.execute(
            select(event_log.c.position, event_log.c.payload)
            .where(event_log.c.session_id == session_id)
            .order_by(event_log.c.position)
            .limit(MAX_TIMELINE)
        )
        events = [decode_row(r.position, r.payload).model_dump(mode="json") for r in rows]
    return JSONResponse({"session_id": str(session_id), "events": events})


@router.post(
    "/v1/auth/password",
    summary="Change the password; ends the caller's other sessions",
    openapi_extra=form_body(("current_password", True), ("new_password", True)),
)
async def password(request: Request) -> Response:
    """Form fields current_password and new_password."""
    fields = await form(request)
    async with transaction(request) as conn:
        who = await principal(request, conn)
        events = await change_password(
            conn,
            context(request),
            who,
            required(fields, "current_password"),
            required(fields, "new_password"),
        )
    return JSONResponse({"sessions_ended": len(events)})
