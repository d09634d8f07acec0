"""The answer gate: a request accepted while fresh is refused if the state went stale before its answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI, Request
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from resource_service.check.guard import Guard, Policy
from resource_service.check.keys import StaticKeySource
from resource_service.check.state import RevocationState
from resource_service.check.verifier import Principal, TokenVerifier
from resource_service.web.answer_gate import AnswerGate
from resource_service.web.dependency import RevocationMiddleware, require_principal

ISS = "https://auth.example"
AUD = "https://api.example"
NOW = 1_900_000_000

State = Literal["fresh", "stale", "unsynced"]


class Freshness:
    """The feed's verdict as the Guard reads it; a handler flips it to stand for time passing."""

    def __init__(self) -> None:
        self.value: State = "fresh"

    def __call__(self) -> State:
        return self.value


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def auth(key: rsa.RSAPrivateKey) -> dict[str, str]:
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "exp": NOW + 300,
        "iat": NOW,
        "jti": "jti-1",
        "sid": str(uuid.uuid4()),
        "scope": "read",
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})
    return {"Authorization": f"Bearer {token}"}


def make_guard(key: rsa.RSAPrivateKey, freshness: Freshness, policy: Policy = "fail_closed") -> Guard:
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    verifier = TokenVerifier(ISS, AUD, StaticKeySource.from_jwks({"keys": [jwk]}), clock=lambda: NOW)
    return Guard(verifier, RevocationState(), freshness, policy=policy, retry_after=2)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def get_guard(request: Request) -> Guard:
    return request.app.state.guard  # type: ignore[no-any-return]


AnyPrincipal = Annotated[Principal, Depends(require_principal(get_guard))]


def gated_app(guard: Guard, freshness: Freshness) -> FastAPI:
    app = FastAPI()
    app.state.guard = guard
    app.add_middleware(AnswerGate)

    @app.get("/slow")
    async def slow(principal: AnyPrincipal) -> dict[str, str]:
        # Accepted while fresh; by the time the answer is written the state is stale (a long await, or a
        # loop paused with this request queued).
        freshness.value = "stale"
        return {"sub": principal.sub}

    @app.get("/quick")
    async def quick(principal: AnyPrincipal) -> dict[str, str]:
        return {"sub": principal.sub}

    @app.get("/open")
    async def open_route() -> dict[str, str]:
        freshness.value = "stale"
        return {"ok": "yes"}

    return app


async def test_an_answer_written_after_the_state_went_stale_is_a_503(
    key: rsa.RSAPrivateKey, auth: dict[str, str]
) -> None:
    freshness = Freshness()
    guard = make_guard(key, freshness)
    async with client(gated_app(guard, freshness)) as http:
        response = await http.get("/slow", headers=auth)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"] == "temporarily_unavailable"
    assert "alice" not in response.text
    assert guard.rejections["state_stale_at_answer"] == 1


async def test_an_answer_written_while_fresh_passes(key: rsa.RSAPrivateKey, auth: dict[str, str]) -> None:
    freshness = Freshness()
    async with client(gated_app(make_guard(key, freshness), freshness)) as http:
        response = await http.get("/quick", headers=auth)
    assert (response.status_code, response.json()) == (200, {"sub": "alice"})


async def test_routes_without_a_principal_are_not_gated(key: rsa.RSAPrivateKey) -> None:
    freshness = Freshness()
    async with client(gated_app(make_guard(key, freshness), freshness)) as http:
        response = await http.get("/open")
    assert response.status_code == 200


async def test_fail_open_accepts_a_stale_answer_as_it_accepts_a_stale_request(
    key: rsa.RSAPrivateKey, auth: dict[str, str]
) -> None:
    freshness = Freshness()
    async with client(gated_app(make_guard(key, freshness, "fail_open"), freshness)) as http:
        response = await http.get("/slow", headers=auth)
    assert response.status_code == 200


async def test_the_middleware_gates_its_own_answers(key: rsa.RSAPrivateKey, auth: dict[str, str]) -> None:
    freshness = Freshness()
    guard = make_guard(key, freshness)

    async def slow(request: Request) -> JSONResponse:
        freshness.value = "stale"
        return JSONResponse({"sub": request.state.principal.sub})

    app = RevocationMiddleware(Starlette(routes=[Route("/slow", slow)]), guard)
    async with client(app) as http:
        response = await http.get("/slow", headers=auth)
    assert response.status_code == 503
    assert guard.rejections["state_stale_at_answer"] == 1
