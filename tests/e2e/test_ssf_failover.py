"""The push deliverer across a kill -9: two `tokenlife auth serve` processes on one database, the first
delivering the push streams; it is killed mid-delivery, and the other resumes from the stream's cursor.
Duplicates are allowed (the same jti again), losses and reordering are not."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
import httpx
import jwt as pyjwt
import pytest

from auth_service.db.engine import asyncpg_dsn
from tests.conftest import PASSWORD, add_user, free_port, start_auth_server
from tests.ssf_receiver import (
    PUSH,
    RECEIVER_A,
    SESSION_REVOKED,
    PushReceiver,
    bearer,
    clients_json,
    verify_set,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def leader_pid(database_url: str) -> int:
    """The database backend of the deliverer's leader lock, from its lease (ssf_leader)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT leader_pid FROM ssf_leader WHERE id = 1"))
    finally:
        await conn.close()


ISSUER = "http://tokenlife.test"
EMAIL = "failover@example.com"
SETS = 20


async def test_a_killed_deliverer_is_replaced_and_its_stream_resumes_from_the_cursor(
    database_url: str,
) -> None:
    await add_user(database_url, EMAIL)
    receiver = PushReceiver(free_port())
    receiver.delay = 0.15  # slow enough that the kill lands mid-delivery
    await receiver.start()
    env = {
        "TOKENLIFE_ISSUER": ISSUER,
        "TOKENLIFE_CLIENTS": clients_json(),
        "TOKENLIFE_SSF_PUSH_MAX_BACKOFF": "0.2",
        "TOKENLIFE_SSF_ENABLED": "true",
    }
    first, first_url = start_auth_server(database_url, **env)  # leads the deliverer: it started first
    second, second_url = start_auth_server(database_url, **env)
    try:
        async with httpx.AsyncClient(base_url=second_url) as client:
            token = (
                await client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=RECEIVER_A)
            ).json()["access_token"]
            body = {
                "delivery": {"method": PUSH, "endpoint_url": receiver.url},
                "events_requested": [SESSION_REVOKED],
            }
            assert (await client.post("/ssf/streams", json=body, headers=bearer(token))).status_code == 201
            sids = []
            for _ in range(SETS):
                tokens = (
                    await client.post(
                        "/oauth/token",
                        data={"grant_type": "password", "username": EMAIL, "password": PASSWORD},
                    )
                ).json()
                await client.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))
                sids.append(pyjwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"])
            await wait_until(lambda: receiver.distinct() >= 3, 20, "the first SETs")
            leader = await leader_pid(database_url)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            assert receiver.distinct() < SETS, "the kill did not land mid-delivery"
            await wait_until(lambda: receiver.distinct() >= SETS, 30, "every SET, after the takeover")
            assert await leader_pid(database_url) != leader  # the killed process was the one delivering
            jwks = (await client.get("/.well-known/jwks.json")).json()
        order: list[str] = []
        for value in receiver.received:
            claims: dict[str, Any] = verify_set(value, jwks, ISSUER, RECEIVER_A[0])
            sid = claims["sub_id"]["session"]["id"]
            if sid not in order:
                order.append(sid)
        assert order == sids  # nothing lost, first arrivals in log order
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()
        await receiver.stop()
        await asyncio.sleep(0)
