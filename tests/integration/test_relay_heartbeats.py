"""The relay's heartbeats beside a backlog: they say where the head is while its events are on their way.

A consumer learns the head from the heartbeats and reads the log up to it when it holds less (a gap fill), so
a heartbeat that waited for a whole backlog to be published would leave it silent for that long, and falling
back to long-polls of a loaded auth service. What a consumer's own queue holds ahead of a heartbeat is
another matter (docs/design/write-path.md, heartbeats under saturation).
"""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.test_relay import (
    Consumer,
    RelayFactory,
    append_events,
    consumer,
    eventually,
    start_relay,
)

pytestmark = pytest.mark.integration
__all__ = ["consumer", "start_relay"]  # fixtures shared with test_relay.py


async def test_a_heartbeat_does_not_wait_behind_a_backlog(
    engine: AsyncEngine, consumer: Consumer, start_relay: RelayFactory
) -> None:
    # Twenty windows' worth, committed while no relay runs: the relay starts with a backlog to publish.
    head = await append_events(engine, 200)
    await start_relay(batch_size=10)
    await eventually(lambda: consumer.has_all(head), "the backlog")
    early = [
        beat
        for beat, before in zip(consumer.heartbeats, consumer.events_before, strict=True)
        if before < head and beat.head_position == head
    ]
    assert early, "no heartbeat with the backlog's head came before its last event"
