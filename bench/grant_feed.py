"""A resource instance on the grants benchmark's stack (bench/grant_speed.py): does it stay on the broker
while the auth service is saturated, or does it fall back to reading the log over HTTP?

A saturated auth service must not also get a storm of fallback long-polls: the instance's feed long-polls
only when the relay's heartbeats go silent (two intervals without one sent recently), and reads the log once
(a gap fill) when a heartbeat names a head it has not applied. Its own counters say how often each happened
(`tokenlife_feed_events{event="polls"}`, `{event="gap_fills"}`, `{event="heartbeats"}` on its /metrics): the
long-polls counted are the requests it made, whatever the auth service answered.

The instance starts after the relay has published the setup's events, and the rounds wait until it is on the
broker (`on_broker`): the setup writes its events straight into the log, ten times faster than any round, and
an instance subscribed while they are published holds them in its queue, its heartbeats behind them, and
rightly long-polls until it has drained them (docs/design/write-path.md, heartbeats under saturation).
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx

from bench.stack import _cleanup, _delete_broker_objects, _serve, ready

# The feed's counters a round reports: long-polls, gap fills, heartbeats received, events by long-poll.
COUNTED = ("polls", "gap_fills", "heartbeats", "long_poll_events")
HEARTBEAT_INTERVAL = 0.5  # the relay's and the resource service's default
_FEED = re.compile(r'^tokenlife_feed_events_total\{event="([a-z_]+)"\} ([0-9.e+-]+)$', re.MULTILINE)
_ON_BROKER_TIMEOUT = 120.0


async def start(stack: AsyncExitStack, auth_url: str, amqp_url: str, exchange: str) -> str:
    """Start `tokenlife resource serve` on the exchange, reading the log from `auth_url` (dev service client);
    its base URL once /readyz answers (stopped when `stack` closes)."""
    env = {
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_AUTH_URL": auth_url,
        "TOKENLIFE_AMQP_URL": amqp_url,
        "TOKENLIFE_EXCHANGE": exchange,
    }
    # The instance declares the exchange's dead-letter exchange and queue; they go when the run ends.
    stack.push_async_callback(
        _cleanup, "delete dead letters", lambda: _delete_broker_objects(amqp_url, exchange)
    )
    url, proc, log = _serve(stack, "resource", env)
    await ready(url, proc, log, "resource service")
    return url


async def counters(url: str) -> dict[str, float]:
    """The feed's counters, as the instance's /metrics has them now."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics")).text
    found = {name: float(value) for name, value in _FEED.findall(text)}
    return {name: found.get(name, 0.0) for name in COUNTED}


def during(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """What a round of `seconds` added to the counters, and how many heartbeats were due in it."""
    return {
        "long_polls": after["polls"] - before["polls"],
        "gap_fills": after["gap_fills"] - before["gap_fills"],
        "long_poll_events": after["long_poll_events"] - before["long_poll_events"],
        "heartbeats": after["heartbeats"] - before["heartbeats"],
        "heartbeats_due": seconds / HEARTBEAT_INTERVAL,
    }


async def on_broker(url: str) -> float:
    """Wait until the instance takes the relay's heartbeats as they come: over two seconds, no long-poll and
    no more heartbeats than were sent (more means it is still draining older ones from its queue); the
    seconds it took."""
    started = time.monotonic()
    previous = await counters(url)
    while True:
        await asyncio.sleep(2.0)
        now = await counters(url)
        heartbeats = now["heartbeats"] - previous["heartbeats"]
        if now["polls"] == previous["polls"] and 0 < heartbeats <= 2.0 / HEARTBEAT_INTERVAL + 1:
            return time.monotonic() - started
        if time.monotonic() - started > _ON_BROKER_TIMEOUT:
            raise RuntimeError(
                f"the resource instance was not on the broker within {_ON_BROKER_TIMEOUT:.0f} s"
            )
        previous = now


def total(rows: list[dict[str, Any]], key: str) -> float:
    """The sum of `key` over the rounds that counted it (0 when none did)."""
    return sum(float(r[key]) for r in rows if key in r)
