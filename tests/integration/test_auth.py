"""The auth service over HTTP, on a real PostgreSQL: grants, rotation, logout scopes, revoke, introspect."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn
from auth_service.db.tables import login_failures, refresh_successors, sessions
from auth_service.log.store import read_after, read_head
from auth_service.log.writer import LogWriter
from auth_service.settings import AuthSettings
from auth_service.tokens import keys as keystore
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, serve_auth

pytestmark = pytest.mark.integration

EMAIL = "ada@example.com"


async def login(client: httpx.AsyncClient, email: str = EMAIL, password: str = PASSWORD, **extra: str) -> Any:
    response = await client.post(
        "/oauth/token", data={"grant_type": "password", "username": email, "password": password, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token})


def bearer(tokens: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def event_types(engine: AsyncEngine, after: int = 0) -> list[str]:
    async with engine.connect() as conn:
        return [str(e.type) for e in await read_after(conn, after)]


async def head(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await read_head(conn)


@pytest.fixture
async def user(database_url: str) -> str:
    return await add_user(database_url, EMAIL, scopes="read write")


async def test_login_issues_tokens_and_logs_session_started_then_token_issued(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    response = await auth_client.post(
        "/oauth/token", data={"grant_type": "password", "username": "Ada@Example.com ", "password": PASSWORD}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "read write"
    assert len(body["refresh_token"]) >= 43  # 256 bits, base64url
    assert await event_types(engine) == ["session.started", "token.issued"]


async def test_requested_scope_is_narrowed_to_what_the_user_holds(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    body = await login(auth_client, scope="read admin")
    assert body["scope"] == "read"


@pytest.mark.parametrize(
    ("email", "password"),
    [(EMAIL, "wrong password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong", "unknown"],
)
async def test_wrong_password_and_unknown_user_get_the_same_answer(
    auth_client: httpx.AsyncClient, user: str, email: str, password: str
) -> None:
    response = await auth_client.post(
        "/oauth/token", data={"grant_type": "password", "username": email, "password": password}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_grant", "error_description": "invalid username or password"}


async def test_repeated_failures_are_throttled_with_retry_after(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    statuses = []
    for _ in range(8):
        response = await auth_client.post(
            "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": "nope-nope"}
        )
        statuses.append(response.status_code)
    assert statuses[:5] == [400] * 5
    assert 429 in statuses
    throttled = await auth_client.post(
        "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": PASSWORD}
    )
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["error"] == "temporarily_unavailable"  # a registered code; not "wrong password"


async def test_a_correct_password_forgets_the_accounts_failures(
    auth_client: httpx.AsyncClient, user: str, engine: AsyncEngine
) -> None:
    wrong = {"grant_type": "password", "username": EMAIL, "password": "nope-nope"}
    right = {"grant_type": "password", "username": EMAIL, "password": PASSWORD}
    for _ in range(4):  # one under the account's limit
        assert (await auth_client.post("/oauth/token", data=wrong)).status_code == 400
    assert (await auth_client.post("/oauth/token", data=right)).status_code == 200
    async with engine.connect() as conn:
        kept = (await conn.execute(select(login_failures.c.key))).scalars().all()
    assert f"account:{EMAIL}" not in kept  # the address's count stays: other accounts share it
    for _ in range(4):  # counted from zero again: four more failures are still not throttled
        assert (await auth_client.post("/oauth/token", data=wrong)).status_code == 400
    assert (await auth_client.post("/oauth/token", data=right)).status_code == 200


async def test_an_address_gets_a_looser_limit_than_an_account(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    # Six failures from one address, each on another account: past the account limit, under the address one.
    for n in range(6):
        response = await auth_client.post(
            "/oauth/token",
            data={"grant_type": "password", "username": f"u{n}@example.com", "password": "x" * 9},
        )
        assert response.status_code == 400
    assert (
        await auth_client.post(
            "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": PASSWORD}
        )
    ).status_code == 200


async def test_the_backoff_is_shared_by_every_auth_instance(auth_settings: AuthSettings, user: str) -> None:
    async with serve_auth(auth_settings) as one, serve_auth(auth_settings) as two:
        for instance in (one, two, one, two, one):  # five failures, spread over two instances
            response = await instance.post(
                "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": "nope-nope"}
            )
            assert response.status_code == 400
        throttled = await two.post(
            "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": PASSWORD}
        )
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": EMAIL}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "not-a-token"}, "invalid_grant"),
    ],
)
async def test_token_endpoint_errors_follow_rfc_6749(
    auth_client: httpx.AsyncClient, user: str, data: dict[str, str], error: str
) -> None:
    response = await auth_client.post("/oauth/token", data=data)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]


async def test_refresh_rotates_along_a_chain_and_each_token_works_once(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    tokens = await login(auth_client)
    chain = [tokens["refresh_token"]]
    for _ in range(3):
        response = await refresh(auth_client, chain[-1])
        assert response.status_code == 200
        chain.append(response.json()["refresh_token"])
        assert (await auth_client.get("/v1/sessions", headers=bearer(response.json()))).status_code == 200
    assert len(set(chain)) == 4
    assert await event_types(engine) == ["session.started"] + ["token.issued"] * 4
    async with engine.connect() as conn:  # the batches wrote credentials, and touched no signing key
        active = (
            await conn.execute(text("SELECT count(*) FROM signing_keys WHERE retired_at IS NULL"))
        ).scalar()
    assert active == 1


async def test_concurrent_refreshes_within_the_grace_window_get_one_and_the_same_successor(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    tokens = await login(auth_client)
    answers = await asyncio.gather(*(refresh(auth_client, tokens["refresh_token"]) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    # One refresh token never becomes many: every caller gets the rotation's one successor pair.
    assert len({a.json()["refresh_token"] for a in answers}) == 1
    assert len({a.json()["access_token"] for a in answers}) == 1
    assert await event_types(engine) == ["session.started", "token.issued", "token.issued"]
    # The successor works on; the pair is kept encrypted, and only for the grace window.
    assert (await refresh(auth_client, answers[0].json()["refresh_token"])).status_code == 200
    async with engine.connect() as conn:
        kept = (await conn.execute(select(refresh_successors))).all()
    assert kept
    assert all(answers[0].json()["refresh_token"].encode() not in row.sealed for row in kept)
    assert all(row.expires_at <= datetime.now(UTC) + timedelta(seconds=6) for row in kept)


async def test_reused_refresh_token_after_the_grace_window_revokes_the_session(
    auth_settings: AuthSettings, engine: AsyncEngine, user: str
) -> None:
    async with serve_auth(auth_settings.model_copy(update={"refresh_grace_seconds": 0.0})) as client:
        tokens = await login(client)
        rotated = await refresh(client, tokens["refresh_token"])
        assert rotated.status_code == 200
        position = await head(engine)
        reused = await refresh(client, tokens["refresh_token"])
        assert reused.status_code == 400
        assert reused.json()["error"] == "invalid_grant"
        assert await event_types(engine, position) == ["session.revoked"]
        async with engine.connect() as conn:
            reason = (await conn.execute(select(sessions.c.revoked_reason))).scalar_one()
        assert reason == "refresh_token_reuse"
        # The thief's successor and the legitimate access token are both dead now.
        assert (await refresh(client, rotated.json()["refresh_token"])).status_code == 400
        assert (await client.get("/v1/sessions", headers=bearer(rotated.json()))).status_code == 401


async def test_logout_session_ends_only_this_session(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    here, there = await login(auth_client), await login(auth_client)
    position = await head(engine)
    response = await auth_client.post("/v1/auth/logout", headers=bearer(here))
    assert response.status_code == 200
    assert await event_types(engine, position) == ["session.revoked"]
    assert (await auth_client.get("/v1/sessions", headers=bearer(here))).status_code == 401
    assert (await refresh(auth_client, here["refresh_token"])).status_code == 400
    assert (await auth_client.get("/v1/sessions", headers=bearer(there))).status_code == 200


async def test_logout_others_ends_every_other_session(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    here, a, b = await login(auth_client), await login(auth_client), await login(auth_client)
    position = await head(engine)
    response = await auth_client.post("/v1/auth/logout", data={"scope": "others"}, headers=bearer(here))
    assert response.json()["revoked"] == 2
    assert await event_types(engine, position) == ["session.revoked", "session.revoked"]
    listed = (await auth_client.get("/v1/sessions", headers=bearer(here))).json()["sessions"]
    assert [s["current"] for s in listed] == [True]
    for other in (a, b):
        assert (await refresh(auth_client, other["refresh_token"])).status_code == 400


@pytest.mark.parametrize("scope", ["session", "others", "all"])
async def test_a_revoked_token_cannot_log_out_in_any_scope_and_appends_nothing(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str, scope: str
) -> None:
    # Logout's route verifies the token and leaves the revocation check to the log writer, under the lock.
    here, _other = await login(auth_client), await login(auth_client)
    assert (await auth_client.post("/oauth/revoke", data={"token": here["access_token"]})).status_code == 200
    position = await head(engine)
    response = await auth_client.post("/v1/auth/logout", data={"scope": scope}, headers=bearer(here))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert await event_types(engine, position) == []
    # The session and the other one are untouched: their refresh tokens still work.
    assert (await refresh(auth_client, here["refresh_token"])).status_code == 200


async def test_logout_all_is_one_user_watermark_that_covers_every_session(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    here, other = await login(auth_client), await login(auth_client)
    position = await head(engine)
    response = await auth_client.post("/v1/auth/logout", data={"scope": "all"}, headers=bearer(here))
    assert response.status_code == 200
    assert await event_types(engine, position) == ["user.revoked"]
    for tokens in (here, other):
        assert (await auth_client.get("/v1/sessions", headers=bearer(tokens))).status_code == 401
        assert (await refresh(auth_client, tokens["refresh_token"])).status_code == 400
    # A login right after, even within the same second, is not caught by the watermark.
    fresh = await login(auth_client)
    assert (await auth_client.get("/v1/sessions", headers=bearer(fresh))).status_code == 200


async def test_revoke_endpoint_rfc_7009(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    assert (await auth_client.post("/oauth/revoke", data={"token": "unknown"})).status_code == 200
    assert await event_types(engine) == []
    tokens = await login(auth_client)
    position = await head(engine)
    assert (
        await auth_client.post("/oauth/revoke", data={"token": tokens["access_token"]})
    ).status_code == 200
    assert await event_types(engine, position) == ["token.revoked"]
    assert (await auth_client.get("/v1/sessions", headers=bearer(tokens))).status_code == 401
    response = await auth_client.post(
        "/oauth/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
    )
    assert response.status_code == 200
    assert await event_types(engine, position + 1) == ["session.revoked"]
    assert (await refresh(auth_client, tokens["refresh_token"])).status_code == 400


async def test_introspection_tells_active_from_inactive(auth_client: httpx.AsyncClient, user: str) -> None:
    tokens = await login(auth_client)

    async def introspect(token: str) -> Any:
        response = await auth_client.post("/oauth/introspect", data={"token": token}, auth=SERVICE_CLIENT)
        assert response.status_code == 200
        return response.json()

    active = await introspect(tokens["access_token"])
    assert active["active"] is True
    assert active["token_type"] == "access_token"
    listed = (await auth_client.get("/v1/sessions", headers=bearer(tokens))).json()["sessions"]
    assert active["sid"] == listed[0]["session_id"]
    assert active["sub"] == user
    assert (await introspect(tokens["refresh_token"]))["token_type"] == "refresh_token"
    assert await introspect("garbage") == {"active": False}
    await auth_client.post("/v1/auth/logout", headers=bearer(tokens))
    assert await introspect(tokens["access_token"]) == {"active": False}
    assert await introspect(tokens["refresh_token"]) == {"active": False}
    unauthenticated = await auth_client.post("/oauth/introspect", data={"token": tokens["access_token"]})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"] == "invalid_client"


async def test_sessions_listing_ending_one_and_its_timeline(
    auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str, database_url: str
) -> None:
    here, other = await login(auth_client), await login(auth_client)
    listed = (await auth_client.get("/v1/sessions", headers=bearer(here))).json()["sessions"]
    assert len(listed) == 2
    assert {s["client_address"] for s in listed} == {"203.0.113.7"}  # the auth_client fixture's address
    other_sid = next(s["session_id"] for s in listed if not s["current"])
    stranger = await add_user(database_url, "eve@example.com")
    assert stranger
    eve = await login(auth_client, "eve@example.com")
    assert (await auth_client.delete(f"/v1/sessions/{other_sid}", headers=bearer(eve))).status_code == 404
    assert (await auth_client.get(f"/v1/sessions/{other_sid}/events", headers=bearer(eve))).status_code == 404
    assert (await auth_client.delete(f"/v1/sessions/{other_sid}", headers=bearer(here))).status_code == 204
    assert (await refresh(auth_client, other["refresh_token"])).status_code == 400
    timeline = (await auth_client.get(f"/v1/sessions/{other_sid}/events", headers=bearer(here))).json()
    assert [e["type"] for e in timeline["events"]] == ["session.started", "token.issued", "session.revoked"]


async def test_password_change_ends_the_other_sessions(auth_client: httpx.AsyncClient, user: str) -> None:
    here, other = await login(auth_client), await login(auth_client)
    new = "a much better passphrase"
    response = await auth_client.post(
        "/v1/auth/password", data={"current_password": PASSWORD, "new_password": new}, headers=bearer(here)
    )
    assert response.json() == {"sessions_ended": 1}
    assert (await auth_client.get("/v1/sessions", headers=bearer(other))).status_code == 401
    assert (await auth_client.get("/v1/sessions", headers=bearer(here))).status_code == 200
    await login(auth_client, password=new)
    wrong = await auth_client.post(
        "/v1/auth/password", data={"current_password": "nope", "new_password": new}, headers=bearer(here)
    )
    assert wrong.status_code == 400


async def test_fastapi_oauth2_password_bearer_logs_in_against_the_token_endpoint(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    # What the docs' Authorize button sends: the OAuth2PasswordRequestForm fields, scope and client_id empty.
    response = await auth_client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": EMAIL,
            "password": PASSWORD,
            "scope": "",
            "client_id": "",
        },
    )
    assert response.status_code == 200
    scheme = OAuth2PasswordBearer(tokenUrl="/oauth/token")
    api = FastAPI()

    @api.get("/me")
    async def me(token: str = Depends(scheme)) -> dict[str, str]:
        return {"token": token}

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        token = response.json()["access_token"]
        assert (await client.get("/me", headers={"Authorization": f"Bearer {token}"})).json() == {
            "token": token
        }
        flows = (await client.get("/openapi.json")).json()["components"]["securitySchemes"]
        assert flows["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/oauth/token"


async def test_service_endpoints_give_the_log_and_the_snapshot(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    tokens = await login(auth_client)
    await auth_client.post("/v1/auth/logout", headers=bearer(tokens))
    page = (await auth_client.get("/v1/events", params={"after": 1, "limit": 10}, auth=SERVICE_CLIENT)).json()
    assert page["head"] == 3
    assert [(e["position"], e["type"]) for e in page["events"]] == [
        (2, "token.issued"),
        (3, "session.revoked"),
    ]
    snap = (await auth_client.get("/v1/revocations", auth=SERVICE_CLIENT)).json()
    assert snap["position"] == 3
    assert [r["kind"] for r in snap["revocations"]] == ["session"]
    assert (await auth_client.get("/v1/events")).status_code == 401
    assert (await auth_client.get("/v1/revocations", auth=(SERVICE_CLIENT[0], "wrong"))).status_code == 401


async def test_health_and_readiness(auth_client: httpx.AsyncClient) -> None:
    assert (await auth_client.get("/healthz")).json() == {"status": "ok"}
    assert (await auth_client.get("/readyz")).json() == {"status": "ready"}


async def test_a_second_logout_all_covers_a_token_issued_after_the_first(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    # Within one second, the login between the two gets an iat lifted to the first watermark; the second
    # watermark must still cover it. Repeated so that most runs land all three calls in one second.
    for _ in range(3):
        first = await login(auth_client)
        assert (
            await auth_client.post("/v1/auth/logout", data={"scope": "all"}, headers=bearer(first))
        ).status_code == 200
        between = await login(auth_client)
        assert (await auth_client.get("/v1/sessions", headers=bearer(between))).status_code == 200
        second = await auth_client.post("/v1/auth/logout", data={"scope": "all"}, headers=bearer(between))
        assert second.status_code == 200
        assert (await auth_client.get("/v1/sessions", headers=bearer(between))).status_code == 401


async def test_an_instance_that_has_not_seen_a_rotation_still_revokes_and_logs_out(
    auth_settings: AuthSettings, engine: AsyncEngine, user: str
) -> None:
    async with serve_auth(auth_settings) as stale:
        async with engine.begin() as conn:
            await keystore.rotate(conn, auth_settings.key_encryption_key.get_secret_value())
        async with serve_auth(auth_settings) as fresh:
            tokens, other = await login(fresh), await login(fresh)
            position = await head(engine)
            assert (
                await stale.post("/oauth/revoke", data={"token": tokens["access_token"]})
            ).status_code == 200
            assert await event_types(engine, position) == ["token.revoked"]
            assert (await fresh.get("/v1/sessions", headers=bearer(tokens))).status_code == 401
            assert (await stale.post("/v1/auth/logout", headers=bearer(other))).status_code == 200


async def test_revoking_the_active_key_rotates_first_and_is_never_pruned(
    auth_settings: AuthSettings, auth_client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    kek = auth_settings.key_encryption_key.get_secret_value()
    async with (
        LogWriter.running(
            asyncpg_dsn(auth_settings.database_url), lock_timeout_ms=5000, access_token_ttl=300
        ) as writer,
        engine.connect() as conn,
    ):
        active = (await keystore.load(conn, kek, 300)).active
        assert active is not None
        event = await keystore.revoke(writer, conn, active.kid, kek, "test")
        again = await keystore.revoke(writer, conn, active.kid, kek, "test")
        await conn.rollback()  # a new snapshot, to see the writer's commit
        ring = await keystore.load(conn, kek, 300)
    assert again is None  # revoked already: nothing more to append
    assert isinstance(event, c.KeyRevoked)
    assert event.expires_at == c.FOREVER  # a leaked key can sign tokens with any exp
    assert ring.active is not None
    assert ring.active.kid != active.kid
    assert active.kid not in ring.public_keys


async def test_the_docs_authorize_button_logs_in_through_the_password_grant(
    auth_client: httpx.AsyncClient,
) -> None:
    spec = (await auth_client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    password_flows = [s["flows"]["password"] for s in schemes.values() if s.get("type") == "oauth2"]
    assert password_flows == [{"scopes": {}, "tokenUrl": "/oauth/token"}]
    assert spec["paths"]["/v1/sessions"]["get"]["security"]
    form = spec["paths"]["/oauth/token"]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]
    password, refresh, client = form["schema"]["oneOf"]
    assert password["required"] == ["grant_type", "username", "password"]
    assert password["properties"]["grant_type"]["enum"] == ["password"]
    assert refresh["required"] == ["grant_type", "refresh_token"]
    assert client["properties"]["grant_type"]["enum"] == ["client_credentials"]
    assert {"scope", "client_id"} <= set(password["properties"]) & set(refresh["properties"])


async def _batches(client: httpx.AsyncClient) -> float:
    """The log writer's committed batches, as /metrics serves them."""
    text = (await client.get("/metrics")).text
    return float(
        next(line.split()[1] for line in text.splitlines() if line.startswith("tokenlife_log_batches"))
    )


async def test_bad_refresh_tokens_are_refused_before_the_log_writer_and_cost_no_batch(
    auth_settings: AuthSettings, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    grants = {"type": "public", "grant_types": ["password", "refresh_token"]}
    clients = {auth_settings.default_client_id: grants, "other": grants}
    monkeypatch.setenv("TOKENLIFE_CLIENTS", json.dumps(clients))
    async with serve_auth(AuthSettings()) as client:
        tokens = await login(client)
        before = await _batches(client)
        answers = [
            await refresh(client, "not a token of ours"),
            await refresh(client, "x" * 600),  # longer than any refresh token: malformed
            await client.post(
                "/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": "other",
                },
            ),
        ]
        assert [(a.status_code, a.json()["error"]) for a in answers] == [
            (400, "invalid_grant"),
            (400, "invalid_request"),
            (400, "invalid_grant"),
        ]
        assert await _batches(client) == before  # no batch: the append lock was never asked for
        # The same token from its own client still rotates (one batch more).
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200
        assert await _batches(client) == before + 1
