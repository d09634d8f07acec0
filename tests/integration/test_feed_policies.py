"""The staleness policies end to end, and a catch-up buffer that overflows.

Stale on purpose: no heartbeats at all and an HTTP poll far slower than max_staleness, so the instance
turns stale a moment after its first catch-up while the auth service stays reachable.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from auth_service import contract as c
from tests.conftest import add_user, start_auth_server
from tests.integration.test_feed import (
    Exchange,
    _ready,
    eventually,
    exchange,  # noqa: F401 - a fixture
    login,
    logout,
    resource_app,
    resource_settings,
    whoami,
)

pytestmark = pytest.mark.integration

# Heartbeats expected every 60 s and an HTTP poll every 60 s: after its catch-up, the instance hears nothing.
STALE_SOON = {"heartbeat_interval": 60.0, "poll_interval": 60.0, "max_staleness": 0.5}


async def test_introspect_policy_asks_the_auth_service_while_stale(
    auth_server: str,
    database_url: str,
    amqp_url: str,
    exchange: Exchange,  # noqa: F811 - the fixture
) -> None:
    await add_user(database_url, "jon@example.com")
    kept, ended = await login(auth_server, "jon@example.com"), await login(auth_server, "jon@example.com")
    settings = resource_settings(
        auth_server, amqp_url, exchange.name, stale_policy="introspect", **STALE_SOON
    )
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _caught_up(rt.feed), "caught up")
        await eventually(lambda: _is(rt.feed.freshness(), "stale"), "stale")
        applied = rt.feed.state.applied_position
        await logout(auth_server, ended)  # the instance hears nothing of it: only introspection can tell
        assert (await whoami(client, kept)).status_code == 200
        response = await whoami(client, ended)
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert rt.guard.introspections >= 2
        assert rt.feed.state.applied_position == applied  # the refusal came from introspection, not the state
        assert (await client.get("/readyz")).status_code == 200  # introspect keeps serving while stale


async def test_fail_open_policy_accepts_while_stale_and_counts_it(
    auth_server: str,
    database_url: str,
    amqp_url: str,
    exchange: Exchange,  # noqa: F811 - the fixture
) -> None:
    await add_user(database_url, "kim@example.com")
    token = await login(auth_server, "kim@example.com")
    settings = resource_settings(auth_server, amqp_url, exchange.name, stale_policy="fail_open", **STALE_SOON)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _caught_up(rt.feed), "caught up")
        await eventually(lambda: _is(rt.feed.freshness(), "stale"), "stale")
        assert (await whoami(client, token)).status_code == 200
        assert rt.guard.stale_accepted >= 1
        metrics = (await client.get("/metrics")).text
        assert "tokenlife_fresh 0.0" in metrics


async def test_a_buffer_overflow_during_catch_up_starts_catch_up_again(
    database_url: str,
    amqp_url: str,
    exchange: Exchange,  # noqa: F811 - the fixture
) -> None:
    auth_proc, auth_url = start_auth_server(database_url)
    try:
        settings = resource_settings(auth_url, amqp_url, exchange.name, buffer_limit=2, http_timeout=10.0)
        auth_proc.send_signal(signal.SIGSTOP)  # the snapshot request hangs: messages pile up meanwhile
        try:
            async with resource_app(settings) as (client, rt):
                # Paced over a second: the feed, subscribed within milliseconds, buffers far past its limit.
                for _ in range(20):
                    await exchange.publish(c.encode(c.Heartbeat(head_position=0)), c.HEARTBEAT_TYPE)
                    await asyncio.sleep(0.05)
                auth_proc.send_signal(signal.SIGCONT)
                await eventually(lambda: _is(rt.feed.counters["overflows"] >= 1, True), "the overflow seen")
                await eventually(
                    lambda: _is(rt.feed.live and rt.feed.counters["snapshots"] >= 2, True),
                    "live again after a second catch-up",
                )
                assert await _ready(client)
                assert not rt.feed.crashes
        finally:
            auth_proc.send_signal(signal.SIGCONT)
    finally:
        auth_proc.kill()
        auth_proc.wait(timeout=10)
        if auth_proc.stderr:
            auth_proc.stderr.close()


async def _caught_up(feed: object) -> bool:
    return bool(getattr(feed, "caught_up", False))


async def _is(value: object, expected: object) -> bool:
    return value == expected
