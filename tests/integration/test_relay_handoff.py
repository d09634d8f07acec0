"""The log writer's hand-off to its process's relay: sent at once, in order, once, and only by a leader."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn
from auth_service.log.intents import EndSessions
from auth_service.log.store import append, read_after
from auth_service.log.writer import LogWriter
from auth_service.relay import Relay
from auth_service.relay.publisher import BrokerLink
from auth_service.relay.window import Window
from tests.integration.test_relay import (
    Consumer,
    RelayFactory,
    append_events,
    consumer,
    eventually,
    revoked,
    start_relay,
    stored_cursor,
)

pytestmark = pytest.mark.integration
__all__ = ["consumer", "start_relay"]  # fixtures shared with test_relay.py

LOGOUTS = 60


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[LogWriter]:
    async with LogWriter.running(asyncpg_dsn(database_url), lock_timeout_ms=5000, access_token_ttl=300) as w:
        yield w


async def start_sessions(engine: AsyncEngine, count: int) -> list[uuid.UUID]:
    now = datetime.now(UTC)
    sids = [uuid.uuid4() for _ in range(count)]
    started = [
        c.SessionStarted(
            user_id="u", session_id=sid, client_id="web", expires_at=now + timedelta(days=1), occurred_at=now
        )
        for sid in sids
    ]
    async with engine.begin() as conn:
        await append(conn, started, lock_timeout_ms=5000)
    return sids


def handed_off(relay: Relay) -> float:
    return relay.metrics.registry.get_sample_value("tokenlife_relay_handed_off_events_total") or 0.0


async def test_writer_commits_are_handed_off_and_arrive_once_in_order_among_other_appends(
    engine: AsyncEngine, writer: LogWriter, consumer: Consumer, start_relay: RelayFactory
) -> None:
    sids = await start_sessions(engine, LOGOUTS)
    relay = await start_relay()
    writer.on_commit.append(relay.committed)
    await eventually(lambda: relay.connected and consumer.has_all(LOGOUTS), "the relay live, sessions sent")

    async def logout(sid: uuid.UUID) -> None:
        await writer.submit([EndSessions("u", (sid,), "logout_session")])

    # One at a time (each its own commit and hand-off), then all at once with other appenders between.
    for sid in sids[:20]:
        await logout(sid)
    await asyncio.gather(
        *(logout(sid) for sid in sids[20:]), append_events(engine, 5), append_events(engine, 1)
    )
    head = 2 * LOGOUTS + 6

    await eventually(lambda: consumer.has_all(head), f"events 1..{head} at the consumer")
    assert consumer.positions == list(range(1, head + 1))  # each once, in position order
    assert handed_off(relay) > 0
    # What was handed off is what the log holds, event for event.
    async with engine.connect() as conn:
        logged = await read_after(conn, 0, 1000)
    assert [c.decode(m.body) for m in consumer.messages] == logged
    assert [m.headers for m in consumer.messages] == [
        {"position": p, "prev_position": p - 1} for p in range(1, head + 1)
    ]
    await eventually(lambda: relay.cursor == head, "the cursor at the head")
    assert await stored_cursor(engine) == head
    assert relay.metrics.registry.get_sample_value("tokenlife_relay_publish_latency_seconds_count") == head


async def test_a_standby_relay_ignores_its_writers_hand_off(
    engine: AsyncEngine, writer: LogWriter, consumer: Consumer, start_relay: RelayFactory
) -> None:
    sids = await start_sessions(engine, 10)
    leader = await start_relay()
    await eventually(lambda: leader.connected, "a leader")
    standby = await start_relay()
    writer.on_commit.append(standby.committed)  # the writer of an auth instance whose relay stands by
    for sid in sids:
        await writer.submit([EndSessions("u", (sid,), "logout_session")])
    await eventually(lambda: consumer.has_all(20), "every event, through the leader's reads")
    await asyncio.sleep(0.2)  # room for a wrong publish by the standby to arrive
    assert consumer.positions == list(range(1, 21))
    assert not standby.is_leader
    assert handed_off(standby) == 0


async def test_the_window_takes_a_hand_off_only_right_after_the_last_position_sent(
    amqp_url: str, exchange_name: str, consumer: Consumer
) -> None:
    link = await BrokerLink.open(amqp_url, exchange_name, publish_timeout=5.0)
    try:
        woken: list[None] = []
        window = Window(link, sent=0, size=4, wake=lambda: woken.append(None))
        events = [revoked().model_copy(update={"position": p, "prev_position": p - 1}) for p in range(1, 6)]

        assert not window.hand_off(events[1:3], None)  # 2, 3 after 0: a gap
        assert window.hand_off(events[0:2], None)  # 1, 2
        assert not window.hand_off(events[0:1], None)  # 1 again: behind
        assert not window.hand_off(events[2:5], None)  # 3, 4, 5: more than the room of 2
        assert (window.sent, window.room, len(woken)) == (2, 2, 1)
        # A read that left before the hand-off brings 1..4 back: only 3 and 4 are new.
        await window.send_read([(e.position or 0, json.loads(c.encode(e)), None) for e in events[:4]])
        await asyncio.gather(*window.confirmations())
    finally:
        await link.close()

    await eventually(lambda: consumer.has_all(4), "events 1..4")
    assert consumer.positions == [1, 2, 3, 4]
    assert [c.decode(m.body) for m in consumer.messages] == events[:4]


async def test_the_window_holds_a_writer_back_while_its_sends_trail_the_commits_by_more_than_a_window(
    amqp_url: str, exchange_name: str, consumer: Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = await BrokerLink.open(amqp_url, exchange_name, publish_timeout=5.0)
    try:
        window = Window(link, sent=0, size=2, wake=lambda: None)
        events = [revoked().model_copy(update={"position": p, "prev_position": p - 1}) for p in range(1, 6)]
        rows = [(e.position or 0, json.loads(c.encode(e)), None) for e in events]

        assert not await window.keep_up()  # nothing committed: no wait
        assert not window.hand_off(events, None)  # 5 events, room for 2: left to the read path
        assert window.backlog == 5
        waiting = asyncio.create_task(window.keep_up())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # 5 behind, more than the window of 2
        await window.send_read(rows[:2])
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # 3 behind: still more than 2
        await window.send_read(rows[2:3])
        assert await asyncio.wait_for(waiting, 1.0)  # 2 behind: it waited, and goes on
        assert not await window.keep_up()

        # A relay that does not move holds the writer back KEEP_UP_WAIT at most.
        monkeypatch.setattr("auth_service.relay.window.KEEP_UP_WAIT", 0.05)
        window.committed = 10
        assert await asyncio.wait_for(window.keep_up(), 1.0)
        await window.send_read(rows[3:])
        await asyncio.gather(*window.confirmations())
    finally:
        await link.close()
    # A closed link holds nobody back: the writes go on, the consumers fill in from the log.
    assert not await window.keep_up()


async def test_a_window_the_relay_is_done_with_releases_its_waiting_writer(
    amqp_url: str, exchange_name: str
) -> None:
    link = await BrokerLink.open(amqp_url, exchange_name, publish_timeout=5.0)
    try:
        window = Window(link, sent=0, size=2, wake=lambda: None)
        window.committed = 10
        waiting = asyncio.create_task(window.keep_up())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        window.close()  # the relay's pump ended (a failed link, leadership lost): the window is finished
        assert await asyncio.wait_for(waiting, 0.1)  # at once, not after KEEP_UP_WAIT
        assert not await window.keep_up()
    finally:
        await link.close()


async def test_a_writer_paced_by_its_relay_commits_everything_and_waits_when_the_relay_trails(
    engine: AsyncEngine, writer: LogWriter, consumer: Consumer, start_relay: RelayFactory
) -> None:
    sids = await start_sessions(engine, LOGOUTS)
    relay = await start_relay(batch_size=2)  # a window of 2: any wave of logouts outruns it
    writer.on_commit.append(relay.committed)
    writer.before_batch = relay.keep_up
    await eventually(lambda: relay.connected and consumer.has_all(LOGOUTS), "the relay live, sessions sent")

    for wave in range(0, LOGOUTS, 15):
        await asyncio.gather(
            *(writer.submit([EndSessions("u", (sid,), "logout_session")]) for sid in sids[wave : wave + 15])
        )
    await eventually(lambda: consumer.has_all(2 * LOGOUTS), "every logout at the consumer")
    assert consumer.positions == list(range(1, 2 * LOGOUTS + 1))
    assert (relay.metrics.registry.get_sample_value("tokenlife_relay_writer_waits_total") or 0) >= 1
