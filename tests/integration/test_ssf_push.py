"""Push delivery (RFC 8935) to real receivers on loopback: every SET in log order, verified with joserfc;
a receiver that is down, answers 500s, or times out loses nothing and gets everything in order once it
answers again, while the other receivers are served meanwhile."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt as pyjwt
import pytest

from auth_service.db.engine import asyncpg_dsn
from auth_service.settings import AuthSettings
from tests.conftest import add_user, auth_env, free_port
from tests.integration.test_ssf_poll import ISSUER, login, serving
from tests.ssf_receiver import (
    PUSH,
    RECEIVER_A,
    RECEIVER_B,
    SESSION_REVOKED,
    PushReceiver,
    bearer,
    clients_json,
    receiver_token,
    summary,
    verify_set,
    wait_until,
)

pytestmark = pytest.mark.integration

EMAIL = "push@example.com"
WITHIN = 20.0  # seconds: far above what delivery takes, so only a lost SET fails a wait


@pytest.fixture
def push_settings(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AuthSettings:
    """Dev settings with the receivers; short push timeouts and backoff, so faults pass quickly."""
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    env = auth_env(
        database_url,
        TOKENLIFE_CLIENTS=clients_json(),
        TOKENLIFE_SSF_PUSH_TIMEOUT="0.5",
        TOKENLIFE_SSF_PUSH_MAX_BACKOFF="0.2",
        TOKENLIFE_SSF_ENABLED="true",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AuthSettings()


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[PushReceiver, PushReceiver]]:
    pair = (PushReceiver(free_port()), PushReceiver(free_port()))
    for receiver in pair:
        await receiver.start()
    yield pair
    for receiver in pair:
        await receiver.stop()


async def push_stream(
    client: httpx.AsyncClient, who: tuple[str, str], url: str, **delivery: Any
) -> tuple[str, str]:
    token = await receiver_token(client, who)
    body = {
        "delivery": {"method": PUSH, "endpoint_url": url} | delivery,
        "events_requested": [SESSION_REVOKED],
    }
    response = await client.post("/ssf/streams", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    return token, str(response.json()["stream_id"])


async def logouts(client: httpx.AsyncClient, count: int) -> list[str]:
    """`count` sessions logged in and out, one after another; their session ids in log order."""
    sids = []
    for _ in range(count):
        session = await login(client, EMAIL)
        response = await client.post("/v1/auth/logout", headers=bearer(session["access_token"]))
        assert response.status_code == 200
        sids.append(session["sid"])
    return sids


async def sessions_of(client: httpx.AsyncClient, receiver: PushReceiver, audience: str) -> list[str]:
    """The sessions of the SETs a receiver took, in arrival order, each verified; repeats dropped by jti."""
    jwks = (await client.get("/.well-known/jwks.json")).json()
    seen, sessions = set(), []
    for value in receiver.received:
        claims = verify_set(value, jwks, ISSUER, audience)
        if claims["jti"] not in seen:
            seen.add(claims["jti"])
            sessions.append(str(summary(claims)[2]))
    return sessions


async def test_push_delivers_every_set_in_log_order(
    push_settings: AuthSettings, database_url: str, receivers: tuple[PushReceiver, PushReceiver]
) -> None:
    await add_user(database_url, EMAIL)
    a, _ = receivers
    async with serving(push_settings) as (client, _app):
        await push_stream(client, RECEIVER_A, a.url, authorization_header="Bearer from-the-receiver")
        sids = await logouts(client, 5)
        await wait_until(lambda: a.distinct() >= 5, WITHIN, "five SETs")
        assert await sessions_of(client, a, RECEIVER_A[0]) == sids
        assert set(a.authorization) == {"Bearer from-the-receiver"}
        header = pyjwt.get_unverified_header(a.received[0])
        assert header["typ"] == "secevent+jwt"


@pytest.mark.parametrize("fault", ["down", "500", "timeout"])
async def test_a_failing_receiver_loses_nothing_and_delays_no_other(
    push_settings: AuthSettings, database_url: str, receivers: tuple[PushReceiver, PushReceiver], fault: str
) -> None:
    await add_user(database_url, EMAIL)
    failing, healthy = receivers
    async with serving(push_settings) as (client, _app):
        await push_stream(client, RECEIVER_A, failing.url)
        await push_stream(client, RECEIVER_B, healthy.url)
        before = await logouts(client, 2)
        await wait_until(lambda: failing.distinct() >= 2, WITHIN, "the first SETs")
        if fault == "down":
            await failing.stop()
        elif fault == "500":
            failing.status = 500
        else:
            failing.delay = 1.0  # past the 0.5 s push timeout
        during = await logouts(client, 3)
        # The healthy receiver gets everything while the other fails.
        await wait_until(lambda: healthy.distinct() >= 5, WITHIN, "the healthy receiver's SETs")
        assert await sessions_of(client, healthy, RECEIVER_B[0]) == before + during
        if fault != "timeout":  # a timed-out push may still be taken, late: not a loss, and in order
            assert await sessions_of(client, failing, RECEIVER_A[0]) == before
        if fault == "down":
            await failing.start()
        else:
            failing.status, failing.delay = 202, 0.0
        after = await logouts(client, 1)
        await wait_until(lambda: failing.distinct() >= 6, WITHIN, "the failing receiver's SETs")
        # Nothing lost, nothing reordered (a retry after a timeout may repeat one: dropped by jti).
        assert await sessions_of(client, failing, RECEIVER_A[0]) == before + during + after
        assert failing.attempts > failing.distinct() or fault == "down"  # it did fail, and was retried


async def test_a_stream_whose_endpoint_cannot_be_used_stops_no_other(
    push_settings: AuthSettings, database_url: str, receivers: tuple[PushReceiver, PushReceiver]
) -> None:
    # An endpoint stored before config.check refused its kind (here: a port out of range, written past the
    # API) is logged and left alone; the leader keeps delivering every other stream.
    await add_user(database_url, EMAIL)
    _, healthy = receivers
    async with serving(push_settings) as (client, _app):
        _token, broken = await push_stream(client, RECEIVER_A, f"http://127.0.0.1:{free_port()}/x")
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await conn.execute(
                "UPDATE ssf_streams SET endpoint_url = 'https://h.example:99999/x', updated_at = now()"
                " WHERE stream_id = $1",
                broken,
            )
        finally:
            await conn.close()
        await push_stream(client, RECEIVER_B, healthy.url)
        sids = await logouts(client, 2)
        await wait_until(lambda: healthy.distinct() >= 2, WITHIN, "the other stream's SETs")
        assert await sessions_of(client, healthy, RECEIVER_B[0]) == sids
