"""Both services export the event loop's lag on /metrics while their lifespan runs."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.integration.test_feed import (
    Exchange,
    exchange,  # noqa: F401 - a fixture: it deletes what the feed declares
    resource_app,
    resource_settings,
)

pytestmark = pytest.mark.integration


async def _ticks(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    assert "# TYPE tokenlife_event_loop_lag_last_seconds gauge" in text
    found = re.search(r"^tokenlife_event_loop_lag_seconds_count ([0-9.e+]+)$", text, re.M)
    assert found, text
    return float(found.group(1))


async def _ticking(client: httpx.AsyncClient) -> None:
    first = await _ticks(client)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if await _ticks(client) > first:
            return
    pytest.fail("the loop-lag tick did not run")


async def test_the_auth_service_exports_its_loop_lag(auth_client: httpx.AsyncClient) -> None:
    await _ticking(auth_client)


async def test_a_resource_service_exports_its_loop_lag(
    amqp_url: str,
    exchange: Exchange,  # noqa: F811 - the fixture
) -> None:
    # No auth service at this address: the feed retries meanwhile, and the loop still ticks.
    settings = resource_settings("http://127.0.0.1:9", amqp_url, exchange.name)
    async with resource_app(settings) as (client, _rt):
        await _ticking(client)
