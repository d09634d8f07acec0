"""Poll delivery (RFC 8936): the receiver acknowledges SETs by jti and gets the next ones.

The stream's cursor is the last position whose every SET the receiver acknowledged. Acknowledgements ahead
of the cursor (out of order) wait in ssf_acks until the cursor reaches them. A SET given out and not
acknowledged is given again by the next poll, with the same jti (events.set_jti): at least once. A poll with
returnImmediately false is held until an event commits, or `max_wait` seconds; it holds no database
connection meanwhile (woken by the process's one LISTEN connection, log/listener.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from auth_service.ssf import streams
from auth_service.ssf.events import for_stream, parse_jti, set_jti
from auth_service.ssf.sets import set_claims, sign_set
from auth_service.ssf.source import read_entries
from auth_service.ssf.updates import Announce, apply, stopping
from auth_service.tokens.keyring import SigningKey

log = logging.getLogger("tokenlife.ssf")

DEFAULT_MAX_EVENTS = 100
SCAN_LIMIT = 5000  # positions one poll looks through (most positions carry no SET): the rest next time
_CHUNK = 500


class SetError(BaseModel):
    """A SET the receiver could not accept (RFC 8936 §2.4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    err: str = Field(max_length=64)
    description: str | None = Field(default=None, max_length=512)


class PollRequest(BaseModel):
    """A poll (RFC 8936 §2.4): acknowledgements, errors, and how many SETs to get and whether to wait."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    max_events: int = Field(default=DEFAULT_MAX_EVENTS, ge=0, le=1000, alias="maxEvents")
    return_immediately: bool = Field(default=False, alias="returnImmediately")
    ack: list[str] = Field(default_factory=list, max_length=1000)
    set_errs: dict[str, SetError] = Field(default_factory=dict, alias="setErrs", max_length=1000)


async def _record_acks(conn: Any, stream_id: str, cursor: int, request: PollRequest) -> None:
    for jti, error in request.set_errs.items():
        # Received, and refused by the receiver: delivered all the same (RFC 8936 §2.4); say so, once.
        log.warning("ssf: stream %s: receiver refused SET %s: %s", stream_id, jti[:200], error.err)
    marks = set()
    for jti in [*request.ack, *request.set_errs]:
        parsed = parse_jti(jti)
        if parsed is not None and parsed[0] == stream_id and parsed[1] > cursor:
            marks.add((parsed[1], parsed[2]))
    if marks:
        await conn.executemany(
            "INSERT INTO ssf_acks (stream_id, position, idx) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [(stream_id, p, i) for p, i in sorted(marks)],
        )


async def _acked(conn: Any, stream_id: str) -> set[tuple[int, int]]:
    rows = await conn.fetch("SELECT position, idx FROM ssf_acks WHERE stream_id = $1", stream_id)
    return {(int(r[0]), int(r[1])) for r in rows}


async def _advance(
    conn: Any, issuer: str, row: dict[str, Any], acked: set[tuple[int, int]]
) -> tuple[int, bool]:
    """Move the cursor over every position whose SETs for this stream were all acknowledged; and whether
    it passed a stream-updated SET that pauses or disables the stream (which then takes that status)."""
    cursor = int(row["cursor"])
    if not acked:
        return cursor, False
    view = await streams.view(conn, row)
    last = max(p for p, _ in acked)
    moved, stop = cursor, None
    while moved < last and stop is None:
        entries = await read_entries(conn, issuer, moved, _CHUNK)
        if not entries:
            break
        for entry in entries:
            if entry.position > last:
                break
            chosen = for_stream(entry.bodies, view)
            if any((entry.position, i) not in acked for i, _ in chosen):
                last = -1  # stop: this position still has a SET to acknowledge
                break
            moved = entry.position
            stop = next((s for _, body in chosen if (s := stopping(body))), None)
            if stop is not None:
                break
    stopped = False
    async with conn.transaction():  # the cursor past a stop SET and the stream's new status: both or neither
        if moved > cursor:
            await streams.advance(conn, row["stream_id"], moved)
            await conn.execute(
                "DELETE FROM ssf_acks WHERE stream_id = $1 AND position <= $2", row["stream_id"], moved
            )
        if stop is not None:
            stopped = await apply(conn, row["stream_id"], moved, *stop)
    return moved, stopped


async def _gather(
    conn: Any,
    issuer: str,
    key: SigningKey,
    row: dict[str, Any],
    cursor: int,
    max_events: int,
    retention: float,
    announce: Announce,
) -> tuple[dict[str, str], bool]:
    """Up to max_events SETs after the cursor that were not acknowledged, signed; and whether more wait."""
    view = await streams.view(conn, row)
    acked = await _acked(conn, row["stream_id"])
    sets: dict[str, str] = {}
    scanned, after = 0, cursor
    floor = datetime.now(UTC) - timedelta(seconds=retention)
    # The leading positions with nothing for this stream, as it is configured now, need no acknowledgement:
    # the cursor passes them (so a subject taken out and put back does not bring back what it missed).
    quiet = cursor
    try:
        while scanned < SCAN_LIMIT:
            entries = await read_entries(conn, issuer, after, _CHUNK)
            if not entries:
                return sets, False
            if after == cursor and entries[0].recorded_at < floor:
                after = cursor = quiet = await streams.drop_past_retention(
                    conn, row["stream_id"], cursor, retention, announce
                )
                continue
            for entry in entries:
                for index, body in for_stream(entry.bodies, view):
                    if (entry.position, index) in acked:
                        if stopping(body):  # acknowledged early: still nothing after it (SSF 1.0 §8.1.5)
                            return sets, False
                        continue
                    if len(sets) >= max_events:
                        return sets, True
                    jti = set_jti(row["stream_id"], entry.position, index)
                    sets[jti] = sign_set(key, set_claims(issuer, row["client_id"], jti, body))
                    if stopping(body):  # the last SET before the stream stops (SSF 1.0 §8.1.5)
                        return sets, False
                after = entry.position
                if not sets and quiet == entry.position - 1:
                    quiet = entry.position
            scanned += len(entries)
        return sets, True
    finally:
        if quiet > cursor:
            await streams.advance(conn, row["stream_id"], quiet)


async def poll(
    pool: Any,
    issuer: str,
    key: Callable[[], SigningKey],
    row: dict[str, Any],
    request: PollRequest,
    changed: Callable[[], asyncio.Event],
    *,
    max_wait: float,
    retention: float,
    announce: Announce,
) -> dict[str, Any]:
    """Acknowledge, then answer the next SETs (RFC 8936 §2.5); held up to max_wait when there are none."""
    deadline = time.monotonic() + max_wait
    async with pool.acquire() as conn:
        await _record_acks(conn, row["stream_id"], int(row["cursor"]), request)
        cursor, stopped = await _advance(conn, issuer, row, await _acked(conn, row["stream_id"]))
    while True:
        woken = changed()  # taken before the read: a commit after it sets this event
        if request.max_events == 0 or row["status"] != "enabled" or stopped:
            return {"sets": {}, "moreAvailable": False}
        async with pool.acquire() as conn:
            sets, more = await _gather(
                conn, issuer, key(), row, cursor, request.max_events, retention, announce
            )
        left = deadline - time.monotonic()
        if sets or more or request.return_immediately or left <= 0:
            return {"sets": sets, "moreAvailable": more}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), left)
