"""Stream-updated SETs (SSF 1.0 §8.1.5): what the transmitter changes about a stream without the receiver
asking is told to the receiver as an `ssf.stream_updated` event appended to the log, so that the SET reaches
the stream like every other one: in log order, at least once, by push or poll, and on that stream only.

Two changes are the transmitter's own:
- a retention drop (streams.drop_past_retention): the stream stays enabled and its status reason says what
  was dropped; the SET carries the same status and reason;
- an operator's `tokenlife ssf status STREAM STATUS`. §8.1.5 wants the SET sent *before* an enabled stream
  stops, so pausing or disabling an enabled stream appends the event, and the stream takes the new status
  when it has delivered that event (`stopping`, `apply`: push, once the receiver took the SET; poll, once
  the receiver acknowledged it, the SET being the last one of its poll), or, when the receiver has not taken
  it within `ssf_status_deadline` seconds (or at once with `--force`), the command applies it all the same:
  the transmitter sent (and keeps) the SET, but a receiver that fails cannot veto the operator. The SET of
  a paused stream is still delivered, in order, when the stream is enabled again. A later change replaces a
  pending one: its event supersedes the earlier one (`apply` does nothing for an event a later one follows).
  Any other change (enabling, or a stream that is not enabled) applies at once and appends the event in the
  same transaction, so an enabled stream sends it after what was held.
The command takes the log's append lock first, then the stream's row (FOR UPDATE), so two operators'
changes of one stream are one after the other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import create_engine
from auth_service.errors import AppendError, InvalidRequest, NotFound
from auth_service.log.store import append, appending
from auth_service.settings import AuthSettings as Settings
from auth_service.ssf import streams
from auth_service.ssf.config import Announce, Status
from auth_service.ssf.events import STREAM_UPDATED, SetBody

__all__ = ["Announce", "announcer", "apply", "operator_status", "status_cli", "stopping"]

MAX_REASON = 512
# The stream's latest change appended after its cursor (not yet delivered, or acknowledged): its status.
_PENDING = """
SELECT position, payload->>'status' FROM event_log
WHERE position > (SELECT cursor FROM ssf_streams WHERE stream_id = $1) AND type = 'ssf.stream_updated'
  AND payload->>'stream_id' = $1
ORDER BY position DESC LIMIT 1
"""
_SUPERSEDED = """EXISTS (SELECT 1 FROM event_log WHERE position > $4 AND type = 'ssf.stream_updated'
                        AND payload->>'stream_id' = $1)"""


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


async def apply(conn: Any, stream_id: str, position: int, status: Status, reason: str | None) -> bool:
    """Take the status the stream-updated SET at `position` announced, unless a later change of the stream
    was appended since (it replaced this one); whether the stream has that status now."""
    done = await conn.fetchval(
        f"""UPDATE ssf_streams SET status = $2, status_reason = $3, updated_at = now()
            WHERE stream_id = $1 AND NOT {_SUPERSEDED} RETURNING true""",
        stream_id,
        status,
        reason,
        position,
    )
    return bool(done)


async def operator_status(
    engine: AsyncEngine, lock_timeout_ms: int, stream_id: str, status: Status, reason: str
) -> tuple[str, int | None]:
    """An operator's status change of any receiver's stream, in one transaction: what happened, in a
    sentence, and the position of the SET the stream is to deliver before it stops (None: done)."""
    async with engine.begin() as sa, appending(sa, lock_timeout_ms=lock_timeout_ms) as appender:
        conn: Any = (await sa.get_raw_connection()).driver_connection  # this transaction, asyncpg API
        row = await conn.fetchrow(
            "SELECT client_id, status FROM ssf_streams WHERE stream_id = $1 FOR UPDATE", stream_id
        )
        if row is None:
            raise NotFound(f"no stream {stream_id}")
        pending = await conn.fetchrow(_PENDING, stream_id) if row["status"] == "enabled" else None
        to_be = pending[1] if pending is not None else row["status"]
        if to_be == status:  # a rerun of a pending change waits for it again (or forces it)
            again = pending[0] if pending is not None and status != "enabled" else None
            return f"stream {stream_id} is {status} already: nothing sent", again
        event = c.SsfStreamUpdated(stream_id=stream_id, status=status, reason=reason)
        if row["status"] == "enabled":
            [appended] = await appender.append([event])
            if status == "enabled":
                return f"stream {stream_id} stays enabled; its receiver gets a stream-updated SET", None
            return f"stream {stream_id} is to be {status}", appended.position
        await streams.set_status(conn, row["client_id"], stream_id, status, reason)
        await appender.append([event])
        return f"stream {stream_id} is {status}; its receiver gets a stream-updated SET", None


async def _taken(
    engine: AsyncEngine, stream_id: str, position: int, status: Status, reason: str, wait: float
) -> str:
    deadline = time.monotonic() + wait
    async with engine.connect() as sa:
        conn: Any = (await sa.get_raw_connection()).driver_connection
        while time.monotonic() < deadline:
            if (
                await conn.fetchval("SELECT status FROM ssf_streams WHERE stream_id = $1", stream_id)
                == status
            ):
                return f"stream {stream_id} is {status}: its receiver got the stream-updated SET"
            await asyncio.sleep(0.2)
        if not await apply(conn, stream_id, position, status, reason):
            return f"stream {stream_id}: a later change replaced this one"
    held = "when the stream is enabled again" if status == "paused" else "never (a disabled stream drops it)"
    return (
        f"stream {stream_id} is {status}; its receiver had not taken the stream-updated SET within"
        f" {wait:g} s: it gets it {held}"
    )


def status_cli(
    settings: Settings, stream_id: str, status: Status, reason: str, *, force: bool = False
) -> tuple[int, str]:
    """`tokenlife ssf status`: operator_status, then a wait for the receiver to take the SET (none with
    `force`), on an engine of its own; the exit code and what to say."""
    if len(reason) > MAX_REASON:
        return 1, f"--reason is {len(reason)} characters long: at most {MAX_REASON}"
    try:
        return 0, asyncio.run(_status(settings, stream_id, status, reason, force))
    except (NotFound, InvalidRequest, AppendError) as exc:
        return 1, str(exc)


async def _status(settings: Settings, stream_id: str, status: Status, reason: str, force: bool) -> str:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        said, position = await operator_status(engine, settings.lock_timeout_ms, stream_id, status, reason)
        if position is None:
            return said
        wait = 0.0 if force else settings.ssf_status_deadline
        return await _taken(engine, stream_id, position, status, reason, wait)
    finally:
        await engine.dispose()
