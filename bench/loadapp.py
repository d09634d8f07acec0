"""The apps the throughput benchmark serves: one app per way of reading the request's credentials.

Each app has one route, GET /r, and no documentation routes, so routing costs the same in all three:
`open_app` has no dependency, `header_app` a dependency that only reads the Authorization header, and
`protected_app` is set up the way the README protects a service: the tokenlife dependency over a Guard with
100k live revocations (key from TOKENLIFE_BENCH_JWK), the AnswerGate middleware and the error handler.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from bench import fixtures
from resource_service.check.guard import Guard
from resource_service.check.keys import StaticKeySource
from resource_service.check.state import RevocationState
from resource_service.check.verifier import Principal, TokenVerifier
from resource_service.web.answer_gate import AnswerGate
from resource_service.web.dependency import install_error_handler, require_principal


def _guard() -> Guard:
    jwk = json.loads(os.environ["TOKENLIFE_BENCH_JWK"])
    verifier = TokenVerifier(fixtures.ISSUER, fixtures.AUDIENCE, StaticKeySource.from_jwks({"keys": [jwk]}))
    state = RevocationState()
    state.load_snapshot(fixtures.live_snapshot(fixtures.LIVE))
    feed = fixtures.FeedLike()
    return Guard(verifier, state, feed.freshness, fresh_until=feed.tracker)


def _app() -> FastAPI:
    return FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


open_app = _app()


@open_app.get(fixtures.ROUTE)
async def open_route() -> dict[str, str]:
    """No dependency at all: what FastAPI and uvicorn cost."""
    return {"sub": "anyone"}


header_app = _app()


async def header_only(request: Request) -> str | None:
    """The baseline dependency: read the header, judge nothing."""
    return request.headers.get("authorization")


@header_app.get(fixtures.ROUTE)
async def header_route(header: Annotated[str | None, Depends(header_only)]) -> dict[str, str]:
    """The header-only baseline."""
    return {"sub": "anyone" if header is None else "someone"}


protected_app = _app()
protected_app.state.guard = _guard()
protected_app.add_middleware(AnswerGate)
install_error_handler(protected_app)


def _get_guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


@protected_app.get(fixtures.ROUTE)
async def protected_route(
    principal: Annotated[Principal, Depends(require_principal(_get_guard))],
) -> dict[str, str]:
    """Through the tokenlife dependency."""
    return {"sub": principal.sub}
