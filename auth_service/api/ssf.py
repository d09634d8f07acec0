"""The Shared Signals transmitter's HTTP API (SSF 1.0): its metadata, stream management, status, subjects,
verification, and poll delivery (RFC 8936). Receivers authenticate with a client_credentials token
(ssf/receivers.py); reads need `ssf.read` or `ssf.manage`, changes and polls `ssf.manage`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer

from auth_service import contract as c
from auth_service.api.deps import Context, app_state, bearer_token, context, transaction
from auth_service.api.openapi import errors
from auth_service.context import AuthContext
from auth_service.errors import InvalidRequest, NoSigningKey
from auth_service.log.store import append
from auth_service.ssf import streams
from auth_service.ssf.config import (
    POLL,
    STREAM_ID,
    StatusRequest,
    StreamRequest,
    SubjectRequest,
    VerificationRequest,
    check,
    configuration,
    json_body,
    metadata,
    parse,
)
from auth_service.ssf.poll import PollRequest, poll
from auth_service.ssf.receivers import MANAGE, READ, Receiver, authenticate_receiver
from auth_service.ssf.updates import announcer
from auth_service.tokens.keyring import SigningKey

router = APIRouter(tags=["shared signals"])
JSON_TYPES = ("application/json",)
NO_STORE = {"Cache-Control": "no-store"}


class _ReceiverBearer(HTTPBearer):
    """A receiver's bearer token (client_credentials), enforced: the scheme the document declares."""

    async def __call__(self, request: Request) -> Receiver:  # type: ignore[override]
        ctx = context(request)
        s = ctx.settings
        return authenticate_receiver(bearer_token(request), ctx.keys.current(), s.client_registry, s.issuer)


receiver_scheme = _ReceiverBearer(scheme_name="SSFReceiver", auto_error=False)
CurrentReceiver = Annotated[Receiver, Depends(receiver_scheme)]


def _reader(receiver: CurrentReceiver) -> Receiver:
    receiver.require(READ, MANAGE)
    return receiver


def _manager(receiver: CurrentReceiver) -> Receiver:
    receiver.require(MANAGE)
    return receiver


Reader = Annotated[Receiver, Depends(_reader)]
Manager = Annotated[Receiver, Depends(_manager)]


async def _body(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise InvalidRequest("the body must be application/json")
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON") from None


def _issuer(ctx: AuthContext) -> str:
    return ctx.settings.issuer.rstrip("/")


def _configuration(ctx: AuthContext, row: Any) -> dict[str, Any]:
    return configuration(row, _issuer(ctx), ctx.settings.ssf_min_verification_interval)


@router.get("/.well-known/ssf-configuration", summary="SSF transmitter metadata")
async def ssf_configuration(ctx: Context) -> Response:
    """Built from the configured issuer (never from the request's Host)."""
    return JSONResponse(metadata(_issuer(ctx)))


@router.post(
    "/ssf/streams",
    status_code=201,
    summary="Create a stream",
    openapi_extra=json_body(StreamRequest),
    responses={**errors(400, 401, 403, 413)},
)
async def create_stream(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.1.1: 201 with the new stream's configuration."""
    wanted = parse(StreamRequest, await _body(request))
    checked = check(wanted.delivery, wanted.events_requested, allow_http=ctx.settings.env == "dev")
    async with ctx.pg.acquire() as conn:
        row = await streams.create(conn, receiver.client_id, checked, wanted.description)
    return JSONResponse(_configuration(ctx, row), status_code=201, headers=NO_STORE)


@router.get("/ssf/streams", summary="Read one stream, or list them", responses={**errors(400, 401, 403, 404)})
async def read_stream(
    ctx: Context, receiver: Reader, stream_id: str | None = Query(None, pattern=STREAM_ID)
) -> Response:
    """SSF 1.0 §8.1.1.2: one configuration, or a list of every stream of the receiver's."""
    async with ctx.pg.acquire() as conn:
        if stream_id is None:
            rows = await streams.list_streams(conn, receiver.client_id)
            return JSONResponse([_configuration(ctx, r) for r in rows], headers=NO_STORE)
        row = await streams.get(conn, receiver.client_id, stream_id)
    return JSONResponse(_configuration(ctx, row), headers=NO_STORE)


async def _change(request: Request, ctx: AuthContext, receiver: Receiver, *, replace: bool) -> Response:
    wanted = parse(StreamRequest, await _body(request))
    if not wanted.stream_id:
        raise InvalidRequest("stream_id is required")
    async with ctx.pg.acquire() as conn:
        row = await streams.get(conn, receiver.client_id, wanted.stream_id)
        if replace:
            delivery, events, description = wanted.delivery, wanted.events_requested, wanted.description
        else:  # an update keeps what it does not name
            current = _configuration(ctx, row)["delivery"] | {
                "authorization_header": row["authorization_header"]
            }
            delivery = wanted.delivery or parse(StreamRequest, {"delivery": current}).delivery
            events = row["events_requested"] if wanted.events_requested is None else wanted.events_requested
            description = row["description"] if wanted.description is None else wanted.description
        checked = check(delivery, events, allow_http=ctx.settings.env == "dev")
        row = await streams.update(conn, receiver.client_id, wanted.stream_id, checked, description)
    return JSONResponse(_configuration(ctx, row), headers=NO_STORE)


@router.patch(
    "/ssf/streams",
    summary="Update a stream",
    openapi_extra=json_body(StreamRequest),
    responses={**errors(400, 401, 403, 404, 413)},
)
async def update_stream(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.1.3: the fields sent change, the others stay."""
    return await _change(request, ctx, receiver, replace=False)


@router.put(
    "/ssf/streams",
    summary="Replace a stream",
    openapi_extra=json_body(StreamRequest),
    responses={**errors(400, 401, 403, 404, 413)},
)
async def replace_stream(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.1.4: every receiver-supplied field is replaced."""
    return await _change(request, ctx, receiver, replace=True)


@router.delete(
    "/ssf/streams", status_code=204, summary="Delete a stream", responses={**errors(400, 401, 403, 404)}
)
async def delete_stream(
    ctx: Context, receiver: Manager, stream_id: str = Query(pattern=STREAM_ID)
) -> Response:
    """SSF 1.0 §8.1.1.5: 204; its events stop at once."""
    async with ctx.pg.acquire() as conn:
        await streams.delete(conn, receiver.client_id, stream_id)
    return Response(status_code=204)


@router.get("/ssf/status", summary="A stream's status", responses={**errors(400, 401, 403, 404)})
async def read_status(ctx: Context, receiver: Reader, stream_id: str = Query(pattern=STREAM_ID)) -> Response:
    """SSF 1.0 §8.1.2.1: enabled, paused or disabled, and why (events dropped past the retention, say)."""
    async with ctx.pg.acquire() as conn:
        row = await streams.get(conn, receiver.client_id, stream_id)
    return JSONResponse(streams.status_body(row), headers=NO_STORE)


@router.post(
    "/ssf/status",
    summary="Change a stream's status",
    openapi_extra=json_body(StatusRequest),
    responses={**errors(400, 401, 403, 404, 413)},
)
async def update_status(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.2.2: paused holds the events for later, disabled drops them."""
    wanted = parse(StatusRequest, await _body(request))
    async with ctx.pg.acquire() as conn:
        row = await streams.set_status(
            conn, receiver.client_id, wanted.stream_id, wanted.status, wanted.reason
        )
    return JSONResponse(streams.status_body(row), headers=NO_STORE)


async def _subject(request: Request, ctx: AuthContext, receiver: Receiver, included: bool) -> None:
    wanted = parse(SubjectRequest, await _body(request))
    async with ctx.pg.acquire() as conn:
        await streams.get(conn, receiver.client_id, wanted.stream_id)
        user = await streams.subject_user(conn, _issuer(ctx), wanted.subject)
        await streams.set_subject(conn, wanted.stream_id, user, included)


@router.post(
    "/ssf/subjects/add",
    summary="Add a subject",
    openapi_extra=json_body(SubjectRequest),
    responses={**errors(400, 401, 403, 404, 413)},
)
async def add_subject(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.3.2: every user is in a stream by default; this puts back one that was removed."""
    await _subject(request, ctx, receiver, True)
    return Response(status_code=200)


@router.post(
    "/ssf/subjects/remove",
    status_code=204,
    summary="Remove a subject",
    openapi_extra=json_body(SubjectRequest),
    responses={**errors(400, 401, 403, 404, 413)},
)
async def remove_subject(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.3.3: the stream gets no more events about this user."""
    await _subject(request, ctx, receiver, False)
    return Response(status_code=204)


@router.post(
    "/ssf/verify",
    status_code=204,
    summary="Ask for a verification event",
    openapi_extra=json_body(VerificationRequest),
    responses={**errors(400, 401, 403, 404, 413, 429, 503)},
)
async def verify(request: Request, ctx: Context, receiver: Manager) -> Response:
    """SSF 1.0 §8.1.4.2: a verification SET follows on the stream, after every event committed before;
    sooner than `min_verification_interval` after the last request, 429 with Retry-After."""
    wanted = parse(VerificationRequest, await _body(request))
    interval = ctx.settings.ssf_min_verification_interval
    async with ctx.pg.acquire() as conn:
        claim = await streams.claim_verification(conn, receiver.client_id, wanted.stream_id, interval)
    try:
        async with transaction(ctx) as tx:
            event = c.SsfVerification(stream_id=wanted.stream_id, state=wanted.state)
            await append(tx, [event], lock_timeout_ms=ctx.settings.lock_timeout_ms)
    except BaseException:
        async with ctx.pg.acquire() as conn:  # not sent: this request does not count against the interval
            await streams.unclaim_verification(conn, wanted.stream_id, claim)
        raise
    return Response(status_code=204)


def _signing_key(ctx: AuthContext) -> SigningKey:
    key = ctx.keys.current().active
    if key is None:
        raise NoSigningKey("no active signing key: an operator must run `tokenlife keys rotate`")
    return key


@router.post(
    "/ssf/poll/{stream_id}",
    summary="Poll for SETs (RFC 8936)",
    openapi_extra=json_body(PollRequest),
    responses={**errors(400, 401, 403, 404, 413, 503)},
)
async def poll_stream(
    request: Request, ctx: Context, receiver: Manager, stream_id: str = Path(pattern=STREAM_ID)
) -> Response:
    """Acknowledge SETs by jti and get the next ones; held while there are none unless returnImmediately."""
    wanted = parse(PollRequest, await _body(request))
    async with ctx.pg.acquire() as conn:
        row = await streams.get(conn, receiver.client_id, stream_id)
    if row["delivery_method"] != POLL:
        raise InvalidRequest("this stream is delivered by push, not poll")
    listener = app_state(request.app).log_listener
    assert listener is not None, "the lifespan starts the listener"
    s = ctx.settings
    with listener.slot(retry_after=1):
        body = await poll(
            ctx.pg,
            _issuer(ctx),
            lambda: _signing_key(ctx),
            row,
            wanted,
            listener.changed,
            max_wait=s.ssf_poll_max_wait,
            retention=s.ssf_retention,
            announce=announcer(ctx.engine, s.lock_timeout_ms),
        )
    return JSONResponse(body, headers=NO_STORE)
