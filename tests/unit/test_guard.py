"""Guard, RFC 6750 errors, the FastAPI dependency and the ASGI middleware."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI, Request
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket

from auth_service.contract import SessionRevoked, UserRevoked
from resource_service.check.guard import Guard
from resource_service.check.keys import StaticKeySource
from resource_service.check.state import RevocationState
from resource_service.check.verifier import Principal, TokenVerifier
from resource_service.errors import (
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    StateStale,
    TokenRevoked,
    www_authenticate,
)
from resource_service.web.dependency import RevocationMiddleware, require_principal

ISS = "https://auth.example"
AUD = "https://api.example"
SID = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-8091a2b3c4d5")
NOW = 1_900_000_000


class Freshness:
    def __init__(self) -> None:
        self.value: Literal["fresh", "stale", "unsynced"] = "fresh"

    def __call__(self) -> Literal["fresh", "stale", "unsynced"]:
        return self.value


class Introspection:
    """The auth service's RFC 7662 endpoint as the Guard sees it: a verdict per token, or an outage."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.down = False
        self.asked: list[str] = []

    async def __call__(self, token: str) -> bool:
        self.asked.append(token)
        if self.down:
            raise ConnectionError("auth service unreachable")
        return self.active


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def token(key: rsa.RSAPrivateKey) -> str:
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "exp": NOW + 300,
        "iat": NOW,
        "jti": "jti-1",
        "sid": str(SID),
        "scope": "read",
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})


@pytest.fixture
def verifier(key: rsa.RSAPrivateKey) -> TokenVerifier:
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    return TokenVerifier(ISS, AUD, StaticKeySource.from_jwks({"keys": [jwk]}), clock=lambda: NOW)


@pytest.fixture
def state() -> RevocationState:
    return RevocationState()


@pytest.fixture
def freshness() -> Freshness:
    return Freshness()


@pytest.fixture
def guard(verifier: TokenVerifier, state: RevocationState, freshness: Freshness) -> Guard:
    return Guard(verifier, state, freshness)


def revoke_session(state: RevocationState) -> None:
    at = datetime.fromtimestamp(NOW + 300, UTC)
    event = SessionRevoked(session_id=SID, user_id="alice", expires_at=at, reason="logout")
    state.apply(event.model_copy(update={"position": state.applied_position + 1}))


# --- Guard ---


async def test_valid_bearer_header_gives_the_principal(guard: Guard, token: str) -> None:
    assert (await guard.check(f"Bearer {token}")).sub == "alice"
    assert (await guard.check(f"bearer   {token}  ")).sub == "alice"


@pytest.mark.parametrize("header", [None, "", "   ", "Basic YWxpY2U6c2VjcmV0"])
async def test_request_without_bearer_credentials_is_missing_token(guard: Guard, header: str | None) -> None:
    with pytest.raises(MissingToken):
        await guard.check(header)
    assert guard.rejections["missing_token"] == 1


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer  ", "Bearer a b", "Bearer a, Bearer b", "Bearer é", "Bearer " + "a" * 8200]
)
async def test_malformed_authorization_header_is_an_invalid_request(guard: Guard, header: str) -> None:
    with pytest.raises(InvalidRequest):
        await guard.check(header)
    assert guard.rejections["invalid_request"] == 1


async def test_invalid_token_is_refused_and_counted(guard: Guard, token: str) -> None:
    with pytest.raises(InvalidToken):
        await guard.check(f"Bearer {token}x")
    assert guard.rejections == {"invalid_token": 1}


async def test_revocation_is_checked_on_every_call_even_for_a_cached_token(
    guard: Guard, verifier: TokenVerifier, state: RevocationState, token: str
) -> None:
    await guard.check(f"Bearer {token}")
    revoke_session(state)
    with pytest.raises(TokenRevoked) as caught:
        guard.check_cached(f"Bearer {token}")  # the warm map's hit
    assert caught.value.reason == "session_revoked"
    with pytest.raises(TokenRevoked):
        await guard.check(f"bearer  {token}")  # another spelling: the verifier's cached claims
    assert verifier.cache_hits == 1
    assert guard.rejections["session_revoked"] == 2


async def test_stale_state_fails_closed_by_default(guard: Guard, freshness: Freshness, token: str) -> None:
    freshness.value = "stale"
    with pytest.raises(StateStale) as caught:
        await guard.check(f"Bearer {token}")
    assert caught.value.retry_after == 5
    assert guard.rejections["state_stale"] == 1


async def test_stale_state_with_fail_open_accepts_and_counts_but_still_refuses_known_revocations(
    verifier: TokenVerifier, state: RevocationState, freshness: Freshness, token: str
) -> None:
    guard = Guard(verifier, state, freshness, policy="fail_open")
    freshness.value = "stale"
    assert (await guard.check(f"Bearer {token}")).sub == "alice"
    assert guard.stale_accepted == 1
    revoke_session(state)
    with pytest.raises(TokenRevoked):
        await guard.check(f"Bearer {token}")


@pytest.mark.parametrize(("active", "accepted"), [(True, True), (False, False)])
async def test_stale_state_with_introspect_asks_the_auth_service(
    verifier: TokenVerifier,
    state: RevocationState,
    freshness: Freshness,
    token: str,
    active: bool,
    accepted: bool,
) -> None:
    introspect = Introspection(active)
    guard = Guard(verifier, state, freshness, policy="introspect", introspect=introspect)
    await guard.check(f"Bearer {token}")
    assert introspect.asked == []  # fresh: no round trip
    freshness.value = "stale"
    if accepted:
        assert (await guard.check(f"Bearer {token}")).sub == "alice"
    else:
        with pytest.raises(TokenRevoked):
            await guard.check(f"Bearer {token}")
    assert introspect.asked == [token]


async def test_stale_state_with_introspect_fails_closed_when_introspection_fails(
    verifier: TokenVerifier, state: RevocationState, freshness: Freshness, token: str
) -> None:
    introspect = Introspection(True)
    introspect.down = True
    guard = Guard(verifier, state, freshness, policy="introspect", introspect=introspect)
    freshness.value = "stale"
    with pytest.raises(StateStale):
        await guard.check(f"Bearer {token}")


def test_introspect_policy_without_a_callable_is_refused(
    verifier: TokenVerifier, state: RevocationState
) -> None:
    with pytest.raises(ValueError, match="introspect"):
        Guard(verifier, state, Freshness(), policy="introspect")


async def test_missing_scope_is_insufficient_scope_naming_the_needed_scopes(guard: Guard, token: str) -> None:
    assert (await guard.check(f"Bearer {token}", ["read"])).sub == "alice"
    with pytest.raises(InsufficientScope) as caught:
        await guard.check(f"Bearer {token}", ["read", "admin"])
    assert caught.value.scope == "read admin"


# --- RFC 6750 challenges ---


def test_challenge_without_credentials_carries_no_error_code() -> None:
    assert www_authenticate(MissingToken(), "api") == 'Bearer realm="api"'


def test_challenge_for_an_invalid_token_names_the_error() -> None:
    header = www_authenticate(InvalidToken("token has expired"), "api")
    assert header == 'Bearer realm="api", error="invalid_token", error_description="token has expired"'


def test_challenge_values_cannot_break_out_of_their_quotes_or_the_header() -> None:
    header = www_authenticate(InvalidToken('bad "kid"\r\nSet-Cookie: x=1 \\ é'), 'a"b')
    assert header.startswith('Bearer realm="a\\"b", error="invalid_token", error_description="')
    description = header.split('error_description="', 1)[1]
    assert description.count('"') == 1
    assert description.endswith('"')
    assert "\\" not in description
    assert all(0x20 <= ord(c) < 0x7F for c in header)


def test_challenge_for_insufficient_scope_lists_the_scope() -> None:
    assert www_authenticate(InsufficientScope("read admin"), "api").endswith(', scope="read admin"')


# --- FastAPI dependency ---
# httpx's ASGITransport rather than TestClient: Starlette 1.10's TestClient warns (an error here) without
# the httpx2 package, which is not a dependency of this project.


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def get_guard(request: Request) -> Guard:
    return request.app.state.guard  # type: ignore[no-any-return]


# FastAPI resolves these annotations by name, so they live at module level, not inside fastapi_app.
AnyPrincipal = Annotated[Principal, Depends(require_principal(get_guard))]
AdminPrincipal = Annotated[Principal, Depends(require_principal(get_guard, ["admin"], realm="api"))]


def fastapi_app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.state.guard = guard

    @app.get("/me")
    async def me(principal: AnyPrincipal) -> dict[str, str]:
        return {"sub": principal.sub}

    @app.get("/admin")
    async def admin(principal: AdminPrincipal) -> dict[str, str]:
        return {"sub": principal.sub}

    return app


async def test_dependency_passes_a_valid_token_through(guard: Guard, token: str) -> None:
    async with client(fastapi_app(guard)) as http:
        response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"sub": "alice"}


async def test_dependency_answers_rfc6750_errors(
    guard: Guard, state: RevocationState, freshness: Freshness, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with client(fastapi_app(guard)) as http:
        missing = await http.get("/me")
        assert (missing.status_code, missing.headers["www-authenticate"]) == (401, 'Bearer realm="tokenlife"')

        scope = await http.get("/admin", headers=auth)
        assert scope.status_code == 403
        assert 'error="insufficient_scope"' in scope.headers["www-authenticate"]
        assert 'realm="api"' in scope.headers["www-authenticate"]

        twice = await http.get("/me", headers=[("Authorization", f"Bearer {token}")] * 2)
        assert twice.status_code == 400
        assert 'error="invalid_request"' in twice.headers["www-authenticate"]

        freshness.value = "stale"
        stale = await http.get("/me", headers=auth)
        assert (stale.status_code, stale.headers["retry-after"]) == (503, "5")

        revoke_session(state)
        revoked = await http.get("/me", headers=auth)
        assert revoked.status_code == 401
        assert 'error_description="token has been revoked"' in revoked.headers["www-authenticate"]


def test_dependency_declares_bearer_auth_in_openapi(guard: Guard) -> None:
    schema: dict[str, Any] = fastapi_app(guard).openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- ASGI middleware ---


def starlette_app(guard: Guard) -> RevocationMiddleware:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.principal.sub})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    routes = [
        Route("/me", me),
        Route("/health", health),
        Route("/public/x", health),
        WebSocketRoute("/ws", ws),
    ]
    return RevocationMiddleware(Starlette(routes=routes), guard, exclude_paths=["/health", "/public/"])


async def test_middleware_puts_the_principal_on_request_state(guard: Guard, token: str) -> None:
    async with client(starlette_app(guard)) as http:
        response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.json() == {"sub": "alice"}


async def test_middleware_lets_excluded_paths_through_without_a_token(guard: Guard) -> None:
    async with client(starlette_app(guard)) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/public/x")).status_code == 200
        assert (await http.get("/healthz")).status_code == 401


async def test_middleware_answers_errors_as_json_with_the_same_headers(
    guard: Guard, freshness: Freshness, token: str
) -> None:
    async with client(starlette_app(guard)) as http:
        bad = await http.get("/me", headers={"Authorization": f"Bearer {token}x"})
        assert bad.status_code == 401
        assert bad.json() == {"error": "invalid_token", "error_description": "malformed token"}
        assert bad.headers["www-authenticate"].startswith('Bearer realm="tokenlife", error="invalid_token"')

        freshness.value = "stale"
        stale = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert (stale.status_code, stale.headers["retry-after"]) == (503, "5")
        assert stale.json()["error"] == "temporarily_unavailable"


async def test_middleware_closes_a_websocket_without_a_token(guard: Guard) -> None:
    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b"", "subprotocols": []}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await starlette_app(guard)(scope, receive, send)
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]


async def test_watermark_revocation_reaches_the_middleware(
    guard: Guard, state: RevocationState, token: str
) -> None:
    at = datetime.fromtimestamp(NOW + 1, UTC)
    state.apply(UserRevoked(user_id="alice", not_before=at, expires_at=at, reason="password", position=1))
    async with client(starlette_app(guard)) as http:
        response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert guard.rejections["user_revoked"] == 1


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "introspect"])
async def test_a_state_that_never_caught_up_refuses_under_every_policy(
    verifier: TokenVerifier, state: RevocationState, token: str, policy: Any
) -> None:
    freshness = Freshness()
    freshness.value = "unsynced"
    introspect = Introspection(active=True)
    guard = Guard(verifier, state, freshness, policy=policy, introspect=introspect)
    with pytest.raises(StateStale):
        await guard.check(f"Bearer {token}")
    assert introspect.asked == []


# --- the warm path ---


class Deadline:
    def __init__(self, fresh_until: float) -> None:
        self.fresh_until = fresh_until


async def test_warm_path_decides_only_a_cached_token_and_still_checks_revocation(
    guard: Guard, state: RevocationState, token: str
) -> None:
    header = f"Bearer {token}"
    assert guard.check_cached(header) is None  # never verified: the full path decides
    await guard.check(header)
    assert guard.check_cached(header) is not None
    assert guard.check_cached(f"Bearer  {token}") is None  # another spelling: left to the full parser
    revoke_session(state)
    with pytest.raises(TokenRevoked):
        guard.check_cached(header)
    assert guard.rejections["session_revoked"] == 1


async def test_warm_path_never_serves_an_expired_token(
    key: rsa.RSAPrivateKey, state: RevocationState, freshness: Freshness, token: str
) -> None:
    now = [float(NOW)]
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    verifier = TokenVerifier(ISS, AUD, StaticKeySource.from_jwks({"keys": [jwk]}), clock=lambda: now[0])
    guard = Guard(verifier, state, freshness)
    header = f"Bearer {token}"
    await guard.check(header)
    now[0] = NOW + 300 + 4  # exp 300 s after iat, within the verifier's 5 s leeway
    assert guard.check_cached(header) is not None
    now[0] = NOW + 300 + 5
    assert guard.check_cached(header) is None
    with pytest.raises(InvalidToken):
        await guard.check(header)


async def test_warm_map_keeps_at_most_the_verifiers_cache_size(
    key: rsa.RSAPrivateKey, state: RevocationState, freshness: Freshness
) -> None:
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    verifier = TokenVerifier(
        ISS, AUD, StaticKeySource.from_jwks({"keys": [jwk]}), cache_size=2, clock=lambda: NOW
    )
    guard = Guard(verifier, state, freshness)
    claims = {"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 300, "iat": NOW, "sid": str(SID)}
    headers = [
        "Bearer "
        + jwt.encode({**claims, "jti": j}, key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})
        for j in "abc"
    ]
    for header in headers:
        await guard.check(header)
    # First in, first out: the oldest header left the warm map; the full path still accepts it.
    assert [guard.check_cached(h) is not None for h in headers] == [False, True, True]
    assert (await guard.check(headers[0])).jti == "a"


async def test_warm_path_past_the_freshness_deadline_asks_for_a_judgement(
    verifier: TokenVerifier, state: RevocationState, freshness: Freshness, token: str
) -> None:
    deadline = Deadline(fresh_until=100.0)
    clock = [50.0]
    guard = Guard(verifier, state, freshness, fresh_until=deadline, clock=lambda: clock[0])
    header = f"Bearer {token}"
    await guard.check(header)
    freshness.value = "stale"  # the tracker would say so too once its deadline passed
    assert guard.check_cached(header) is not None  # within the deadline: one clock read decides
    clock[0] = 101.0
    assert guard.check_cached(header) is None
    with pytest.raises(StateStale):
        await guard.check(header)
