"""Stream-updated SETs (SSF 1.0 §8.1.5): what the transmitter changes about a stream without the receiver
asking is told to the receiver as an `ssf.stream_updated` event appended to the log, so that the SET reaches
the stream like every other one: in log order, at least once, by push or poll, and on that stream only.

Today the one such change is a retention drop (streams.drop_past_retention): the stream stays enabled and
its status reason says what was dropped; the SET carries the same status and reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.log.store import append
from auth_service.ssf.config import Status

Announce = Callable[[str, Status, str], Awaitable[None]]


def announcer(engine: AsyncEngine, lock_timeout_ms: int) -> Announce:
    """A function that appends one stream's ssf.stream_updated (stream id, its status, the reason)."""

    async def announce(stream_id: str, status: Status, reason: str) -> None:
        event = c.SsfStreamUpdated(stream_id=stream_id, status=status, reason=reason)
        async with engine.begin() as conn:
            await append(conn, [event], lock_timeout_ms=lock_timeout_ms)

    return announce
