"""The relay under faults: cut and silent broker links, a deleted exchange, a leader killed with -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.test_relay import (
    FAST,
    Consumer,
    RelayFactory,
    append_events,
    consumer,
    eventually,
    failures,
    lock_holders,
    start_relay,
    stored_cursor,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
__all__ = ["consumer", "start_relay"]  # fixtures shared with test_relay.py

# Standbys retry the lock this often; the bound under test is one retry plus slack for a loaded machine.
TAKEOVER_BOUND = FAST["leader_retry_interval"]
TAKEOVER_SLACK = 5.0


@pytest.fixture
async def broker_proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test broker."""
    target = urlsplit(amqp_url)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5672) as proxy:
        yield proxy


def consumer_has_all(consumer: Consumer, head: int) -> Callable[[], bool]:
    return lambda: consumer.has_all(head)


def through(proxy: TcpProxy, amqp_url: str) -> str:
    """The AMQP URL with the proxy's address instead of the broker's."""
    parts = urlsplit(amqp_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{proxy.host}:{proxy.port}" if credentials else f"{proxy.host}:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_a_cut_broker_connection_reconnects_and_loses_nothing(
    engine: AsyncEngine,
    amqp_url: str,
    consumer: Consumer,
    start_relay: RelayFactory,
    broker_proxy: TcpProxy,
) -> None:
    relay = await start_relay(broker_url=through(broker_proxy, amqp_url))
    head = await append_events(engine, 3)
    await eventually(lambda: consumer.has_all(head), "events before the cut")

    for _ in range(3):
        assert broker_proxy.cut() >= 1
        head = await append_events(engine, 4)
        await eventually(consumer_has_all(consumer, head), "events committed across the cut")
    assert consumer.first_arrivals() == list(range(1, head + 1))
    assert relay.metrics.registry.get_sample_value("tokenlife_relay_broker_reconnects_total") == 3


async def test_a_silent_broker_times_out_and_the_relay_resumes_when_it_answers(
    engine: AsyncEngine,
    amqp_url: str,
    consumer: Consumer,
    start_relay: RelayFactory,
    broker_proxy: TcpProxy,
) -> None:
    relay = await start_relay(broker_url=through(broker_proxy, amqp_url))
    before = await append_events(engine, 2)
    await eventually(lambda: consumer.has_all(before), "events before the blackhole")

    broker_proxy.blackhole()
    head = await append_events(engine, 5)
    await eventually(lambda: failures(relay, "timeout") >= 2, "publish and connect timeouts counted")
    assert not relay.connected
    assert await stored_cursor(engine) == before
    # The lag metric shows the outage (the head is refreshed even though no heartbeat can go out).
    assert relay.metrics.registry.get_sample_value("tokenlife_relay_lag_events") == head - before

    broker_proxy.heal()
    await eventually(lambda: consumer.has_all(head), "every event after the broker answers again")
    assert consumer.first_arrivals() == list(range(1, head + 1))
    await eventually(lambda: relay.cursor == head, "the cursor at the head")


async def test_a_deleted_exchange_stalls_the_cursor_until_a_queue_is_bound_again(
    engine: AsyncEngine, consumer: Consumer, start_relay: RelayFactory
) -> None:
    relay = await start_relay()
    before = await append_events(engine, 2)
    await eventually(lambda: consumer.has_all(before), "events before the deletion")

    # Deleting the exchange also deletes the test queue's binding.
    await consumer.channel.exchange_delete(consumer.exchange_name)
    head = await append_events(engine, 3)
    # The relay's publishes fail (404 while the exchange is gone; after it redeclares the exchange on
    # reconnect, returned as unroutable since no queue is bound): the cursor must not move.
    await eventually(lambda: failures(relay, "returned") >= 2, "unroutable publishes counted as returned")
    assert await stored_cursor(engine) == before
    assert relay.cursor == before
    assert consumer.positions == list(range(1, before + 1))

    await consumer.bind()
    await eventually(lambda: consumer.has_all(head), "the stalled events once a queue is bound")
    assert consumer.first_arrivals() == list(range(1, head + 1))
    await eventually(lambda: relay.cursor == head, "the cursor at the head")


async def test_a_killed_leader_process_is_replaced_within_the_bound(
    engine: AsyncEngine,
    database_url: str,
    amqp_url: str,
    exchange_name: str,
    consumer: Consumer,
    start_relay: RelayFactory,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_DATABASE_URL": database_url,
        "TOKENLIFE_AMQP_URL": amqp_url,
        "TOKENLIFE_EXCHANGE": exchange_name,
    }
    # `tokenlife relay` as the console script runs it.
    script = "import sys, tokenlife.cli as cli; sys.exit(cli.main(sys.argv[1:]))"
    args = [
        "relay",
        "--heartbeat-interval",
        "0.2",
        "--leader-retry-interval",
        "0.2",
        "--publish-timeout",
        "1",
    ]
    with (tmp_path / "relay.log").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, *args, env=env, stdout=output, stderr=output
        )
    try:
        await eventually(lambda: len(consumer.heartbeats) > 0, "heartbeats from the relay process")
        standby = await start_relay()
        head = await append_events(engine, 10)
        await eventually(lambda: consumer.has_all(head), "events published by the relay process")
        assert not standby.is_leader
        assert len(await lock_holders(database_url)) == 1

        process.send_signal(signal.SIGKILL)
        await process.wait()
        await eventually(
            lambda: standby.is_leader, "the standby leading", within=TAKEOVER_BOUND + TAKEOVER_SLACK
        )
        head = await append_events(engine, 10)
        await eventually(lambda: consumer.has_all(head), "events published by the new leader")
        assert consumer.first_arrivals() == list(range(1, head + 1))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
