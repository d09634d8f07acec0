"""The app the throughput benchmark serves: one route per way of reading the request's credentials.

/open has no dependency, /header a dependency that only reads the Authorization header, /protected the
tokenlife dependency over a Guard with 100k live revocations (key from TOKENLIFE_BENCH_JWK).
"""

from __future__ import annotations

import json
import os
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from bench import fixtures
from resource_service.dependency import require_principal
from resource_service.guard import Guard
from resource_service.keys import StaticKeySource
from resource_service.state import RevocationState
from resource_service.verifier import Principal, TokenVerifier


def _guard() -> Guard:
    jwk = json.loads(os.environ["TOKENLIFE_BENCH_JWK"])
    verifier = TokenVerifier(fixtures.ISSUER, fixtures.AUDIENCE, StaticKeySource.from_jwks({"keys": [jwk]}))
    state = RevocationState()
    state.load_snapshot(fixtures.live_snapshot(fixtures.LIVE))
    feed = fixtures.FeedLike()
    return Guard(verifier, state, feed.freshness, fresh_until=feed.tracker)


app = FastAPI()
app.state.guard = _guard()


def _get_guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


async def header_only(request: Request) -> str | None:
    """The baseline dependency: read the header, judge nothing."""
    return request.headers.get("authorization")


Protected = Annotated[Principal, Depends(require_principal(_get_guard))]
HeaderOnly = Annotated[str | None, Depends(header_only)]


@app.get("/open")
async def open_route() -> dict[str, str]:
    """No dependency at all: what FastAPI and uvicorn cost."""
    return {"sub": "anyone"}


@app.get("/header")
async def header_route(header: HeaderOnly) -> dict[str, str]:
    """The header-only baseline."""
    return {"sub": "anyone" if header is None else "someone"}


@app.get("/protected")
async def protected_route(principal: Protected) -> dict[str, str]:
    """Through the tokenlife dependency."""
    return {"sub": principal.sub}
