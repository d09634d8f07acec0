"""The Shared Signals transmitter, polled (RFC 8936): every revocation path produces exactly the SETs of the
map (docs/ssf.md), in log order; acknowledgements, long-polls, verification, subjects and status.

Each SET is verified by a second JOSE library (joserfc) against the published JWKS (tests/ssf_receiver.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from fastapi import FastAPI

from auth_service.app import create_app
from auth_service.context import AuthContext
from auth_service.settings import AuthSettings
from auth_service.use_cases.revoke import revoke_user
from tests.conftest import PASSWORD, add_user, auth_env
from tests.ssf_receiver import (
    CREDENTIAL_CHANGE,
    POLL,
    READ_ONLY,
    RECEIVER_A,
    RECEIVER_B,
    SESSION_REVOKED,
    bearer,
    clients_json,
    receiver_token,
    summary,
    verify_set,
)

pytestmark = pytest.mark.integration

EMAIL, OTHER = "ssf@example.com", "other@example.com"
NEW_PASSWORD = "a brand new password, long enough"
ISSUER = "http://127.0.0.1:8000"


@pytest.fixture
def ssf_settings(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AuthSettings:
    """Dev settings with three receivers registered; a reused refresh token is reuse at once (no grace)."""
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    env = auth_env(
        database_url,
        TOKENLIFE_CLIENTS=clients_json(),
        TOKENLIFE_REFRESH_GRACE_SECONDS="0",
        TOKENLIFE_SSF_POLL_MAX_WAIT="5",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AuthSettings()


@asynccontextmanager
async def serving(settings: AuthSettings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            yield client, app


def context_of(app: FastAPI) -> AuthContext:
    ctx = app.state.tokenlife.context
    assert isinstance(ctx, AuthContext)
    return ctx


async def login(client: httpx.AsyncClient, email: str = EMAIL, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post(
        "/oauth/token", data={"grant_type": "password", "username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body["sid"] = pyjwt.decode(body["access_token"], options={"verify_signature": False})["sid"]
    return body


async def create_stream(client: httpx.AsyncClient, token: str, **extra: Any) -> dict[str, Any]:
    body = {"delivery": {"method": POLL}, "events_requested": [SESSION_REVOKED, CREDENTIAL_CHANGE]} | extra
    response = await client.post("/ssf/streams", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    config: dict[str, Any] = response.json()
    return config


async def poll(
    client: httpx.AsyncClient, token: str, stream_id: str, **body: Any
) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """(jti, verified claims) of what one poll returns, in its order, and moreAvailable."""
    response = await client.post(
        f"/ssf/poll/{stream_id}", json={"returnImmediately": True} | body, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    jwks = (await client.get("/.well-known/jwks.json")).json()
    answer = response.json()
    sets = [
        (jti, verify_set(value, jwks, ISSUER, answer_aud(token))) for jti, value in answer["sets"].items()
    ]
    for jti, claims in sets:
        assert claims["jti"] == jti
    return sets, bool(answer["moreAvailable"])


def answer_aud(token: str) -> str:
    return str(pyjwt.decode(token, options={"verify_signature": False})["client_id"])


def in_groups(
    actual: list[tuple[str, str, str | None]], groups: list[set[tuple[str, str, str | None]]]
) -> None:
    """`actual` is the groups one after the other, each group in any order inside (one log event's SETs, or
    the sessions one request ended, which it appends in an order of its own)."""
    at = 0
    for group in groups:
        assert set(actual[at : at + len(group)]) == group, (actual[at:], group)
        at += len(group)
    assert at == len(actual), actual[at:]


async def test_every_revocation_path_produces_exactly_the_mapped_sets_in_log_order(
    ssf_settings: AuthSettings, database_url: str
) -> None:
    user = await add_user(database_url, EMAIL)
    other = await add_user(database_url, OTHER)
    async with serving(ssf_settings) as (client, app):
        token = await receiver_token(client, RECEIVER_A)
        stream = await create_stream(client, token)
        s = {name: await login(client) for name in "abcdefghij"}
        groups: list[set[tuple[str, str, str | None]]] = []

        def ended(*names: str, who: str = user) -> None:
            groups.append({("session-revoked", who, s[n]["sid"]) for n in names})

        # Logout of this session.
        r = await client.post("/v1/auth/logout", headers=bearer(s["a"]["access_token"]))
        assert r.status_code == 200, r.text
        ended("a")
        # RFC 7009 on an access token: the token ends, its session goes on: no SET.
        r = await client.post("/oauth/revoke", data={"token": s["b"]["access_token"]})
        assert r.status_code == 200
        s["b"] = s["b"] | {"access_token": (await refresh(client, s["b"]))["access_token"]}
        # RFC 7009 on a refresh token: its session ends.
        r = await client.post("/oauth/revoke", data={"token": s["c"]["refresh_token"]})
        assert r.status_code == 200
        ended("c")
        # Session deletion from another session.
        r = await client.delete(f"/v1/sessions/{s['d']['sid']}", headers=bearer(s["b"]["access_token"]))
        assert r.status_code in (200, 204), r.text
        ended("d")
        # Refresh-token reuse.
        first = s["e"]["refresh_token"]
        await refresh(client, s["e"])
        r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first})
        assert r.status_code == 400, r.text
        ended("e")
        # Logout of the other sessions (from g: b, f, h, i, j are open besides).
        r = await client.post(
            "/v1/auth/logout", data={"scope": "others"}, headers=bearer(s["g"]["access_token"])
        )
        assert r.status_code == 200, r.text
        ended("b", "f", "h", "i", "j")
        # A password change: the credential, then the other sessions (k and l; g is the caller's).
        s |= {name: await login(client) for name in "kl"}
        r = await client.post(
            "/v1/auth/password",
            data={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=bearer(s["g"]["access_token"]),
        )
        assert r.status_code == 200, r.text
        groups.append({("credential-change", user, None)})
        ended("k", "l")
        # Logout everywhere: one user.revoked watermark, a SET for each session it ended (g, m, n).
        s |= {name: await login(client, password=NEW_PASSWORD) for name in "mn"}
        r = await client.post(
            "/v1/auth/logout", data={"scope": "all"}, headers=bearer(s["m"]["access_token"])
        )
        assert r.status_code == 200, r.text
        ended("g", "m", "n")
        # A watermark with no open session left: no SET.
        await revoke_user(context_of(app), user, "operator")
        # `tokenlife user revoke`: the operator's watermark over the sessions open then.
        s["o"] = await login(client, password=NEW_PASSWORD)
        await revoke_user(context_of(app), user, "operator")
        ended("o")
        # Another user's logout.
        s["p"] = await login(client, OTHER)
        r = await client.post("/v1/auth/logout", headers=bearer(s["p"]["access_token"]))
        assert r.status_code == 200, r.text
        ended("p", who=other)

        sets, more = await poll(client, token, stream["stream_id"], maxEvents=100)
        assert not more
        in_groups([summary(claims) for _, claims in sets], groups)
        positions = [int(jti.rsplit("-", 2)[1]) for jti, _ in sets]
        assert positions == sorted(positions)
        reasons = {summary(c)[2]: c["events"] for _, c in sets}
        assert reasons[s["e"]["sid"]][SESSION_REVOKED]["initiating_entity"] == "policy"
        assert reasons[s["o"]["sid"]][SESSION_REVOKED]["initiating_entity"] == "admin"


async def refresh(client: httpx.AsyncClient, session: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_acknowledged_sets_are_not_sent_again_and_unacknowledged_ones_are(
    ssf_settings: AuthSettings, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    async with serving(ssf_settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        sessions = [await login(client) for _ in range(4)]
        for session in sessions:
            r = await client.post("/v1/auth/logout", headers=bearer(session["access_token"]))
            assert r.status_code == 200
        first, more = await poll(client, token, stream_id, maxEvents=3)
        assert len(first) == 3
        assert more
        again, _ = await poll(client, token, stream_id, maxEvents=3)
        assert [j for j, _ in again] == [
            j for j, _ in first
        ]  # nothing acknowledged: the same SETs, same jtis
        # Acknowledge the second only: the first and third come again, then the fourth.
        rest, more = await poll(client, token, stream_id, ack=[first[1][0]], maxEvents=10)
        assert [j for j, _ in rest] == [first[0][0], first[2][0], *[j for j, _ in rest[2:]]]
        assert len(rest) == 3
        assert not more
        done, _ = await poll(client, token, stream_id, ack=[j for j, _ in rest])
        assert done == []


async def test_a_long_poll_answers_when_a_logout_commits(
    ssf_settings: AuthSettings, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    async with serving(ssf_settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        session = await login(client)
        waiting = asyncio.create_task(
            client.post(f"/ssf/poll/{stream_id}", json={"returnImmediately": False}, headers=bearer(token))
        )
        await asyncio.sleep(0.5)
        assert not waiting.done()  # held: nothing to send yet
        await client.post("/v1/auth/logout", headers=bearer(session["access_token"]))
        response = await asyncio.wait_for(waiting, 5)
        assert response.status_code == 200
        assert len(response.json()["sets"]) == 1


async def test_verification_reaches_only_the_stream_that_asked(ssf_settings: AuthSettings) -> None:
    async with serving(ssf_settings) as (client, _app):
        token_a, token_b = await receiver_token(client, RECEIVER_A), await receiver_token(client, RECEIVER_B)
        a = (await create_stream(client, token_a))["stream_id"]
        b = (await create_stream(client, token_b))["stream_id"]
        r = await client.post("/ssf/verify", json={"stream_id": a, "state": "xyz"}, headers=bearer(token_a))
        assert r.status_code == 204, r.text
        sets, _ = await poll(client, token_a, a)
        assert [(summary(c), c["events"]) for _, c in sets] == [
            (
                ("verification", a, None),
                {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "xyz"}},
            )
        ]
        assert (await poll(client, token_b, b))[0] == []


async def test_a_removed_subject_gets_no_sets_until_added_back(
    ssf_settings: AuthSettings, database_url: str
) -> None:
    user = await add_user(database_url, EMAIL)
    await add_user(database_url, OTHER)
    async with serving(ssf_settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        subject = {"format": "iss_sub", "iss": ISSUER, "sub": user}
        r = await client.post(
            "/ssf/subjects/remove", json={"stream_id": stream_id, "subject": subject}, headers=bearer(token)
        )
        assert r.status_code == 204, r.text
        for email in (EMAIL, OTHER):
            await client.post("/v1/auth/logout", headers=bearer((await login(client, email))["access_token"]))
        sets, _ = await poll(client, token, stream_id)
        assert [summary(c)[1] for _, c in sets] != []
        assert user not in [summary(c)[1] for _, c in sets]
        r = await client.post(
            "/ssf/subjects/add",
            json={"stream_id": stream_id, "subject": {"format": "email", "email": EMAIL}},
            headers=bearer(token),
        )
        assert r.status_code == 200, r.text
        await client.post("/v1/auth/logout", headers=bearer((await login(client))["access_token"]))
        sets, _ = await poll(client, token, stream_id, ack=[j for j, _ in sets])
        assert [summary(c)[1] for _, c in sets] == [user]


async def test_paused_holds_events_and_disabled_drops_them(
    ssf_settings: AuthSettings, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    async with serving(ssf_settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]

        async def status(value: str) -> None:
            r = await client.post(
                "/ssf/status", json={"stream_id": stream_id, "status": value}, headers=bearer(token)
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == value

        async def logout() -> None:
            await client.post("/v1/auth/logout", headers=bearer((await login(client))["access_token"]))

        await status("paused")
        await logout()
        assert (await poll(client, token, stream_id))[0] == []
        await status("enabled")
        held, _ = await poll(client, token, stream_id)
        assert len(held) == 1  # held, then sent
        await poll(client, token, stream_id, ack=[held[0][0]])
        await status("disabled")
        await logout()
        assert (await poll(client, token, stream_id))[0] == []
        await status("enabled")
        assert (await poll(client, token, stream_id))[0] == []  # the one while disabled is gone
        await logout()
        assert len((await poll(client, token, stream_id))[0]) == 1


async def test_stream_management_round_trip(ssf_settings: AuthSettings) -> None:
    async with serving(ssf_settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        meta = (await client.get("/.well-known/ssf-configuration")).json()
        assert meta["issuer"] == ISSUER
        assert meta["spec_version"] == "1_0"
        assert meta["authorization_schemes"] == [{"spec_urn": "urn:ietf:rfc:6749"}]
        assert set(meta["delivery_methods_supported"]) == {POLL, "urn:ietf:rfc:8935"}
        config = await create_stream(client, token, events_requested=[SESSION_REVOKED], description="mine")
        sid = config["stream_id"]
        assert config["aud"] == RECEIVER_A[0]
        assert config["iss"] == ISSUER
        assert config["events_delivered"] == [SESSION_REVOKED]
        assert config["delivery"]["endpoint_url"] == f"{ISSUER}/ssf/poll/{sid}"
        assert (
            await client.get("/ssf/streams", params={"stream_id": sid}, headers=bearer(token))
        ).json() == config
        r = await client.patch(
            "/ssf/streams",
            json={"stream_id": sid, "events_requested": [CREDENTIAL_CHANGE]},
            headers=bearer(token),
        )
        assert r.status_code == 200
        assert r.json()["events_delivered"] == [CREDENTIAL_CHANGE]
        assert r.json()["description"] == "mine"
        r = await client.put(
            "/ssf/streams", json={"stream_id": sid, "delivery": {"method": POLL}}, headers=bearer(token)
        )
        assert r.status_code == 200
        assert r.json()["events_delivered"] == []
        assert "description" not in r.json()
        listed = (await client.get("/ssf/streams", headers=bearer(token))).json()
        assert [c["stream_id"] for c in listed] == [sid]
        read_only = await receiver_token(client, READ_ONLY)
        assert (await client.get("/ssf/streams", headers=bearer(read_only))).json() == []
        assert (
            await client.delete("/ssf/streams", params={"stream_id": sid}, headers=bearer(token))
        ).status_code == 204
        assert (
            await client.get("/ssf/streams", params={"stream_id": sid}, headers=bearer(token))
        ).status_code == 404
