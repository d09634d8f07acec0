"""The signed-in user's own endpoints: logout, sessions and their timelines, password change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from auth_service import contract as c
from auth_service.accounts.passwords import MAX_LENGTH, MIN_LENGTH
from auth_service.api.deps import (
    BEARER_SECURITY,
    Context,
    CurrentPrincipal,
    context,
    signed_principal,
    transaction,
)
from auth_service.api.forms import form, form_body, form_schema, required, text
from auth_service.api.openapi import errors
from auth_service.api.schemas import LogoutResponse, PasswordChanged, SessionList, SessionTimeline
from auth_service.errors import InvalidRequest, NotFound
from auth_service.log import queries
from auth_service.use_cases.revoke import change_password, end_session, logout

router = APIRouter(tags=["account"])
SCOPES = ("session", "others", "all")
_SCOPE = text(enum=["", *SCOPES], description="Empty or absent: session.")


@router.post(
    "/v1/auth/logout",
    summary="Log out: this session, the others, or all",
    openapi_extra={
        **form_body(form_schema(scope=_SCOPE), required=False),
        # The scope may come as a query parameter instead; the body's wins.
        "parameters": [{"name": "scope", "in": "query", "required": False, "schema": _SCOPE}],
        "security": BEARER_SECURITY,  # enforced by signed_principal, in the body
    },
    responses={200: {"model": LogoutResponse}, **errors(400, 401, 413, 503)},
)
async def logout_route(request: Request) -> Response:
    """scope=session (default) ends this session; others ends every other; all revokes every token."""
    ctx = context(request)  # neither is a dependency: the hot route (deps.signed_principal)
    who = await signed_principal(request)
    fields = await form(request) if request.headers.get("content-type") else {}
    scope = fields.get("scope") or request.query_params.get("scope") or "session"
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}")
    events = await logout(ctx, who, scope)  # type: ignore[arg-type]
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


@router.get(
    "/v1/sessions",
    summary="The caller's live sessions",
    responses={200: {"model": SessionList}, **errors(400, 401)},
)
async def list_sessions(ctx: Context, who: CurrentPrincipal) -> Response:
    """Live sessions of the caller, oldest first."""
    async with transaction(ctx) as conn:
        rows = await queries.live_sessions(conn, who.user_id, datetime.now(UTC))
    return JSONResponse({"sessions": [_session_view(r, who.session_id) for r in rows]})


def _session_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such session") from None


@router.delete(
    "/v1/sessions/{sid}",
    status_code=204,
    summary="End one of the caller's sessions",
    responses=errors(400, 401, 404, 503),
)
async def delete_session(sid: str, ctx: Context, who: CurrentPrincipal) -> Response:
    """End a session of the caller's; 404 for a session that is not theirs."""
    await end_session(ctx, who, _session_id(sid))
    return Response(status_code=204)


@router.get(
    "/v1/sessions/{sid}/events",
    summary="A session's timeline, from the log",
    responses={200: {"model": SessionTimeline}, **errors(400, 401, 404)},
)
async def session_events(sid: str, ctx: Context, who: CurrentPrincipal) -> Response:
    """Every logged event of one of the caller's sessions, in position order."""
    session_id = _session_id(sid)
    async with transaction(ctx) as conn:
        row = await queries.session(conn, session_id)
        if row is None or row.user_id != who.user_id:
            raise NotFound("no such session")
        events = [e.model_dump(mode="json") for e in await queries.session_timeline(conn, session_id)]
    return JSONResponse({"session_id": str(session_id), "events": events})


@router.post(
    "/v1/auth/password",
    summary="Change the password; ends the caller's other sessions",
    openapi_extra=form_body(
        form_schema(
            ("current_password", "new_password"),
            current_password=text(1),
            new_password=text(MIN_LENGTH, MAX_LENGTH),
        )
    ),
    responses={200: {"model": PasswordChanged}, **errors(400, 401, 413, 429, 503)},
)
async def password(request: Request, ctx: Context, who: CurrentPrincipal) -> Response:
    """Form fields current_password and new_password."""
    fields = await form(request)
    current, new = required(fields, "current_password"), required(fields, "new_password")
    async with transaction(ctx) as conn:
        address = request.client.host if request.client else None
        events = await change_password(conn, ctx, who, current, new, address)
    ended = sum(
        1 for e in events if isinstance(e, c.SessionRevoked)
    )  # not the credential.changed before them
    return JSONResponse({"sessions_ended": ended})
