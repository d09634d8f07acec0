"""The stream transport on a real RabbitMQ (the rabbitmq_stream plugin) with a real relay and auth service:
the long-poll taking over when the stream goes quiet, the protocol unreachable, and the replay at restart.

The transport's shared promises (readiness, freshness, failing closed, gaps, duplicates, malformed messages)
run for every transport in test_feed_transports.py and test_feed.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from auth_service.broker import RelaySettings, StreamSpec
from auth_service.relay import Relay
from tests.conftest import SERVICE_CLIENT, add_user, free_port, running_auth_server
from tests.integration.test_feed import (
    _ready,
    eventually,
    live_revocations,
    login,
    logout,
    resource_app,
    resource_settings,
    whoami,
)

pytestmark = pytest.mark.integration

STREAM = StreamSpec(max_age=3600, max_bytes=100_000_000)
# A replay window of 10 s (the shortest token lifetime the settings allow, no leeway, no margin), so a test
# can wait until the stream reaches back that far.
SHORT_WINDOW = {"access_token_ttl": 10, "leeway": 0, "stream_margin": 0.0}


@pytest.fixture
async def relay(database_url: str, amqp_url: str, exchange_name: str, stream: str) -> AsyncIterator[Relay]:
    """A relay in this process, declaring the test's stream, heartbeats every 0.2 s; stopped after."""
    started = Relay(
        database_url,
        amqp_url,
        exchange_name,
        settings=RelaySettings(heartbeat_interval=0.2, leader_retry_interval=0.05, lease_timeout=0.5),
        stream=STREAM,
    )
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def test_when_the_stream_goes_quiet_the_long_poll_takes_over(
    database_url: str, amqp_url: str, exchange_name: str, relay: Relay
) -> None:
    await add_user(database_url, "gus@example.com")
    with running_auth_server(database_url) as auth_url:
        token = await login(auth_url, "gus@example.com")
        settings = resource_settings(auth_url, amqp_url, exchange_name, transport="stream")
        async with resource_app(settings) as (client, rt):
            feed = rt.feed
            await eventually(lambda: _ready(client), "ready")
            await eventually(lambda: _true(feed.live and feed.counters["heartbeats"] > 3), "heartbeats")
            polls = feed.counters["polls"]
            await relay.stop()  # nothing reaches the stream any more: no event, no heartbeat
            await eventually(lambda: _true(feed.counters["polls"] > polls + 2), "the long-poll reads the log")
            await logout(auth_url, token)
            await eventually(lambda: _status(client, token, 401), "the logout refused, over long-poll")
            for _ in range(10):  # the long-poll's answers keep it fresh without the stream
                assert feed.freshness() == "fresh"
                await asyncio.sleep(settings.max_staleness / 5)


def test_an_unreachable_stream_protocol_is_one_clear_error_in_production() -> None:
    closed = free_port()  # nothing listens: as if the rabbitmq_stream plugin were off
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")} | {
        "TOKENLIFE_ENV": "prod",
        "TOKENLIFE_AUTH_URL": "http://127.0.0.1:9",
        "TOKENLIFE_AMQP_URL": "amqp://tokenlife:not-guest-0123456789@127.0.0.1:5672/",
        "TOKENLIFE_TRANSPORT": "stream",
        "TOKENLIFE_STREAM_PORT": str(closed),
        "TOKENLIFE_SERVICE_CLIENT_ID": SERVICE_CLIENT[0],
        "TOKENLIFE_SERVICE_CLIENT_SECRET": SERVICE_CLIENT[1],
    }
    done = subprocess.run(
        [sys.executable, "-m", "tokenlife", "resource", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{closed}" in lines[0]
    assert "rabbitmq-plugins enable rabbitmq_stream" in lines[0]


async def test_in_dev_an_unreachable_stream_protocol_leaves_the_long_poll_carrying(
    database_url: str, amqp_url: str, exchange_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    await add_user(database_url, "hal@example.com")
    with running_auth_server(database_url) as auth_url:
        token = await login(auth_url, "hal@example.com")
        settings = resource_settings(
            auth_url, amqp_url, exchange_name, transport="stream", stream_port=free_port()
        )
        async with resource_app(settings) as (client, rt):
            await eventually(lambda: _ready(client), "ready over long-poll")
            assert rt.feed.transport == "long_poll"
            assert (await client.get("/readyz")).json()["transport"] == "long_poll"
            assert any(
                "long-poll alone" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
            )
            await logout(auth_url, token)
            await eventually(lambda: _status(client, token, 401), "the logout refused")


async def test_a_restarted_instance_replays_the_stream_instead_of_asking_for_a_snapshot(
    database_url: str, amqp_url: str, exchange_name: str, relay: Relay
) -> None:
    await add_user(database_url, "ida@example.com")
    # The auth service issues tokens for 60 s; the instance is told 10 s: a misconfiguration whose danger the
    # Guard answers (a token older than the replayed window is refused as stale, not judged).
    with running_auth_server(database_url, TOKENLIFE_ACCESS_TOKEN_TTL="60") as auth_url:
        settings = resource_settings(auth_url, amqp_url, exchange_name, transport="stream", **SHORT_WINDOW)
        # First start: the stream is younger than the window it would need, so it cannot prove anything.
        async with resource_app(settings) as (client, rt):
            await eventually(lambda: _ready(client), "ready")
            assert rt.feed.counters["replay_refused"] == 1
            assert rt.feed.counters["snapshots"] == 1
            assert rt.feed.counters["replays"] == 0
        served = await snapshots_served(auth_url)
        assert served == 1  # the first start's, as the auth service counts them
        old = await login(auth_url, "ida@example.com")
        await logout(auth_url, old)
        await asyncio.sleep(settings.replay_window + 1)  # the stream now reaches back a whole window
        revoked, alive = await login(auth_url, "ida@example.com"), await login(auth_url, "ida@example.com")
        await logout(auth_url, revoked)
        async with resource_app(settings) as (client, rt):
            await eventually(lambda: _ready(client), "ready after the replay")
            assert rt.feed.counters["replays"] == 1
            assert rt.feed.counters["snapshots"] == 0
            assert await snapshots_served(auth_url) == served  # the auth service was not asked for one
            assert (await whoami(client, revoked)).status_code == 401
            assert (await whoami(client, alive)).status_code == 200
            # Logged out before the window: its revocation is not in the replayed state, so the token is
            # refused as stale rather than accepted.
            response = await whoami(client, old)
            assert response.status_code == 503, response.text
            held = {r.subject for r in rt.feed.state.revocations()}
            assert _sid(revoked) in held
            assert _sid(old) not in held  # before the window: not replayed
            assert _sid(old) in {r.subject for r in await live_revocations(auth_url)}


async def snapshots_served(auth_url: str) -> float:
    """The auth service's own count of the snapshots it served (tokenlife_snapshots_served_total)."""
    async with httpx.AsyncClient(base_url=auth_url) as http:
        text = (await http.get("/metrics")).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(SERVED + " ")))


SERVED = "tokenlife_snapshots_served_total"


def _sid(token: str) -> str:
    sid: str = jwt.decode(token, options={"verify_signature": False})["sid"]
    return sid


async def _true(value: bool) -> bool:
    return value


async def _status(client: httpx.AsyncClient, token: str, status: int) -> bool:
    return (await whoami(client, token)).status_code == status
