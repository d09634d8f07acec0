"""The feed's promises, checked for each transport: the broker's per-instance queues and its stream (each with
a real relay), and long-poll alone.

Readiness, the freshness bound and failing closed must not depend on how revocations travel. Each test runs
three times: `broker` starts the auth service with its relay publishing to RabbitMQ and heartbeats every
0.2 s; `stream` does the same with TOKENLIFE_TRANSPORT=stream (the relay declares the exchange's stream, read
over the stream protocol); `long_poll` starts it with no broker at all and gives the resource service no
TOKENLIFE_AMQP_URL.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from resource_service.settings import ResourceSettings
from tests.conftest import add_user, start_auth_server
from tests.integration.test_feed import (
    _ready,
    eventually,
    login,
    logout,
    resource_app,
    resource_settings,
    whoami,
)

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """A real auth service process and how a resource service should reach the revocations."""

    transport: str
    proc: subprocess.Popen[bytes]
    auth_url: str
    amqp_url: str
    exchange: str


TRANSPORT = {"broker": "queues", "stream": "stream", "long_poll": "long_poll"}


@pytest.fixture(params=list(TRANSPORT))
def stack(request: pytest.FixtureRequest, database_url: str, exchange_name: str) -> Iterator[Stack]:
    """The auth service for one transport; killed after the test."""
    amqp_url = request.getfixturevalue("amqp_url") if request.param != "long_poll" else ""
    extra = {"TOKENLIFE_EXCHANGE": exchange_name}
    if request.param == "stream":
        request.getfixturevalue("stream")  # the plugin must answer; the stream is deleted after the test
        extra["TOKENLIFE_TRANSPORT"] = "stream"
    proc, auth_url = start_auth_server(database_url, amqp_url, **extra)
    try:
        yield Stack(request.param, proc, auth_url, amqp_url, exchange_name)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


async def test_a_logout_is_refused_over_the_transport(stack: Stack, database_url: str) -> None:
    await add_user(database_url, "amy@example.com")
    token = await login(stack.auth_url, "amy@example.com")
    settings = _settings(stack)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        assert rt.feed.transport == TRANSPORT[stack.transport]
        assert (await client.get("/readyz")).json()["transport"] == TRANSPORT[stack.transport]
        if stack.transport != "long_poll":
            await eventually(lambda: _is(rt.feed.live and rt.feed.counters["heartbeats"] >= 2, True), "live")
        by_poll = rt.feed.counters["long_poll_events"]
        assert (await whoami(client, token)).status_code == 200
        await logout(stack.auth_url, token)
        await eventually(lambda: _status(client, token), "the logged-out token is refused")
        if stack.transport != "long_poll":
            # The broker carried the revocation, not a long-poll. (A long-poll may still run when a heartbeat
            # comes late on a loaded machine; it found nothing the broker had not brought.)
            assert rt.feed.counters["long_poll_events"] == by_poll


async def test_not_ready_until_rebuilt_from_the_log(stack: Stack, database_url: str) -> None:
    await add_user(database_url, "ben@example.com")
    revoked = await login(stack.auth_url, "ben@example.com")
    await logout(stack.auth_url, revoked)
    settings = _settings(stack)
    stack.proc.send_signal(signal.SIGSTOP)  # nothing can be read from the log yet
    try:
        async with resource_app(settings) as (client, rt):
            await asyncio.sleep(0.5)
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["caught_up"] is False
            assert response.headers["retry-after"]
            assert rt.feed.freshness() == "unsynced"
            stack.proc.send_signal(signal.SIGCONT)
            await eventually(lambda: _ready(client), "ready once rebuilt")
            assert (await whoami(client, revoked)).status_code == 401
    finally:
        stack.proc.send_signal(signal.SIGCONT)


async def test_an_idle_instance_stays_fresh_past_the_staleness_bound(stack: Stack) -> None:
    settings = _settings(stack, max_staleness=1.5)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        # Nothing is written to the log: only heartbeats, or idle long-poll answers, confirm freshness.
        end = time.monotonic() + settings.max_staleness * 3
        while time.monotonic() < end:
            assert rt.feed.staleness() <= settings.max_staleness
            assert (await client.get("/readyz")).status_code == 200
            await asyncio.sleep(0.1)


async def test_with_the_auth_service_gone_the_instance_goes_stale_and_fails_closed(
    stack: Stack, database_url: str
) -> None:
    await add_user(database_url, "cal@example.com")
    token = await login(stack.auth_url, "cal@example.com")
    settings = _settings(stack, max_staleness=1.0)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        assert (await whoami(client, token)).status_code == 200  # the signing key is known from here on
        stack.proc.kill()  # the log and, with it, the relay's heartbeats
        stack.proc.wait(timeout=10)
        await eventually(lambda: _is(rt.feed.freshness(), "stale"), "stale")
        assert rt.feed.staleness() > settings.max_staleness
        response = await whoami(client, token)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert (await client.get("/readyz")).status_code == 503
        assert rt.guard.rejections["state_stale"] >= 1


def _settings(stack: Stack, **overrides: Any) -> ResourceSettings:
    if stack.transport == "stream":
        overrides["transport"] = "stream"
    return resource_settings(stack.auth_url, stack.amqp_url, stack.exchange, **overrides)


async def _status(client: httpx.AsyncClient, token: str) -> bool:
    return (await whoami(client, token)).status_code == 401


async def _is(value: object, expected: object) -> bool:
    return value == expected
