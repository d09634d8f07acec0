"""Stream-updated SETs (SSF 1.0 §8.1.5): what the transmitter changes about a stream without the receiver
asking is told to the receiver as an `ssf.stream_updated` event appended to the log, so that the SET reaches
the stream like every other one: in log order, at least once, by push or poll, and on that stream only.

Two changes are the transmitter's own:
- a retention drop (streams.drop_past_retention): the stream stays enabled and its status reason says what
  was dropped; the SET carries the same status and reason;
- an operator's `tokenlife ssf status STREAM STATUS`. §8.1.5 wants the SET sent *before* an enabled stream
  stops, so pausing or disabling an enabled stream only appends the event, and the stream takes the new
  status when it passes that event (`stopping`): push, once the receiver took the SET; poll, once the
  receiver acknowledged it (the SET is the last one of its poll); another change waits until then. Any
  other change (enabling, or a stream that is not enabled) applies at once and then appends the event, so
  an enabled stream sends it after what was held.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.errors import InvalidRequest, NotFound
from auth_service.log.store import append
from auth_service.settings import AuthSettings as Settings
from auth_service.ssf import streams
from auth_service.ssf.config import Announce, Status
from auth_service.ssf.events import STREAM_UPDATED, SetBody

__all__ = ["Announce", "announcer", "apply", "operator_status", "status_cli", "stopping"]

# A pause or disable of the stream appended after its cursor: announced, not yet delivered (or acknowledged).
_PENDING = """
SELECT payload->>'status' FROM event_log
WHERE position > (SELECT cursor FROM ssf_streams WHERE stream_id = $1) AND type = 'ssf.stream_updated'
  AND payload->>'stream_id' = $1 AND payload->>'status' <> 'enabled'
ORDER BY position DESC LIMIT 1
"""


def announcer(engine: AsyncEngine, lock_timeout_ms: int) -> Announce:
    """A function that appends one stream's ssf.stream_updated (stream id, its status, the reason)."""

    async def announce(stream_id: str, status: Status, reason: str) -> None:
        event = c.SsfStreamUpdated(stream_id=stream_id, status=status, reason=reason)
        async with engine.begin() as conn:
            await append(conn, [event], lock_timeout_ms=lock_timeout_ms)

    return announce


def stopping(body: SetBody) -> tuple[Status, str | None] | None:
    """The status a stream takes once it delivered this SET: a pause or a disable; None for any other."""
    if body.event_type == STREAM_UPDATED and body.event["status"] != "enabled":
        return body.event["status"], body.event.get("reason")
    return None


async def apply(conn: Any, stream_id: str, status: Status, reason: str | None) -> None:
    """Take the status a delivered stream-updated SET announced (the stream's task stops after it)."""
    await conn.execute(
        "UPDATE ssf_streams SET status = $2, status_reason = $3, updated_at = now() WHERE stream_id = $1",
        stream_id,
        status,
        reason,
    )


async def operator_status(conn: Any, announce: Announce, stream_id: str, status: Status, reason: str) -> str:
    """An operator's status change of any receiver's stream; what happened, in a sentence."""
    row = await conn.fetchrow("SELECT client_id, status FROM ssf_streams WHERE stream_id = $1", stream_id)
    if row is None:
        raise NotFound(f"no stream {stream_id}")
    pending = await conn.fetchval(_PENDING, stream_id)
    if pending is not None:
        raise InvalidRequest(
            f"stream {stream_id} is still to be told it is {pending} (its receiver has not got that SET yet);"
            " change it again once it has"
        )
    if row["status"] == status:
        return f"stream {stream_id} is {status} already: nothing sent"
    if row["status"] == "enabled":
        await announce(stream_id, status, reason)
        return f"stream {stream_id} will be {status} once its receiver got the stream-updated SET"
    await streams.set_status(conn, row["client_id"], stream_id, status, reason)
    await announce(stream_id, status, reason)
    return f"stream {stream_id} is {status}; its receiver gets a stream-updated SET"


def status_cli(settings: Settings, stream_id: str, status: Status, reason: str) -> tuple[int, str]:
    """`tokenlife ssf status`: operator_status on a connection and an engine of its own; the exit code and
    what to say."""
    try:
        return 0, asyncio.run(_status(settings, stream_id, status, reason))
    except (NotFound, InvalidRequest) as exc:
        return 1, str(exc)


async def _status(settings: Settings, stream_id: str, status: Status, reason: str) -> str:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
        try:
            announce = announcer(engine, settings.lock_timeout_ms)
            return await operator_status(conn, announce, stream_id, status, reason)
        finally:
            await conn.close()
    finally:
        await engine.dispose()
