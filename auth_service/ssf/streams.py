"""The streams in PostgreSQL: a receiver's configurations, statuses, subjects and cursors.

Every read and write of a stream names its receiver (`client_id`), so a receiver sees and changes only its
own: another receiver's stream id is answered as an unknown one (NotFound), so ids cannot be probed.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from auth_service.errors import InvalidRequest, NotFound, TooManyAttempts
from auth_service.ssf.config import PUSH, Announce, Checked, Status, events_delivered
from auth_service.ssf.events import StreamView

MAX_STREAMS_PER_RECEIVER = 16
_COLUMNS = (
    "stream_id, client_id, delivery_method, endpoint_url, authorization_header, events_requested,"
    " description, status, status_reason, cursor, verified_at"
)
_HEAD = "SELECT coalesce(max(position), 0) FROM event_log"


def _decoded(row: Any) -> dict[str, Any]:
    record = dict(row)
    if isinstance(record["events_requested"], str):
        record["events_requested"] = json.loads(record["events_requested"])
    return record


async def create(conn: Any, client_id: str, checked: Checked, description: str | None) -> dict[str, Any]:
    """A new stream of the receiver's, starting at the log's head: it gets what commits from now on."""
    count = await conn.fetchval("SELECT count(*) FROM ssf_streams WHERE client_id = $1", client_id)
    if count >= MAX_STREAMS_PER_RECEIVER:
        raise InvalidRequest(f"a receiver may have at most {MAX_STREAMS_PER_RECEIVER} streams")
    row = await conn.fetchrow(
        f"""INSERT INTO ssf_streams (stream_id, client_id, delivery_method, endpoint_url,
                                     authorization_header, events_requested, description, cursor)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, ({_HEAD}))
            RETURNING {_COLUMNS}""",
        uuid.uuid4().hex,
        client_id,
        checked.method,
        checked.endpoint_url,
        checked.authorization_header,
        json.dumps(list(checked.events_requested)),
        description,
    )
    return _decoded(row)


async def get(conn: Any, client_id: str, stream_id: str) -> dict[str, Any]:
    """One of the receiver's streams, or NotFound."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM ssf_streams WHERE stream_id = $1 AND client_id = $2", stream_id, client_id
    )
    if row is None:
        raise NotFound("no such stream")
    return _decoded(row)


async def list_streams(conn: Any, client_id: str) -> list[dict[str, Any]]:
    """Every stream of the receiver's, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM ssf_streams WHERE client_id = $1 ORDER BY created_at, stream_id", client_id
    )
    return [_decoded(r) for r in rows]


async def update(
    conn: Any, client_id: str, stream_id: str, checked: Checked, description: str | None
) -> dict[str, Any]:
    """Set a stream's receiver-supplied fields (the cursor stays where it is)."""
    row = await conn.fetchrow(
        f"""UPDATE ssf_streams SET delivery_method = $3, endpoint_url = $4, authorization_header = $5,
                   events_requested = $6::jsonb, description = $7, updated_at = now()
            WHERE stream_id = $1 AND client_id = $2 RETURNING {_COLUMNS}""",
        stream_id,
        client_id,
        checked.method,
        checked.endpoint_url,
        checked.authorization_header,
        json.dumps(list(checked.events_requested)),
        description,
    )
    if row is None:
        raise NotFound("no such stream")
    return _decoded(row)


async def delete(conn: Any, client_id: str, stream_id: str) -> None:
    """Delete one of the receiver's streams (its subjects and acknowledgements go with it)."""
    status = await conn.execute(
        "DELETE FROM ssf_streams WHERE stream_id = $1 AND client_id = $2", stream_id, client_id
    )
    if status != "DELETE 1":
        raise NotFound("no such stream")


async def set_status(
    conn: Any, client_id: str, stream_id: str, status: Status, reason: str | None
) -> dict[str, Any]:
    """Enable, pause or disable a stream. Paused holds events (the cursor waits); disabled drops them, so a
    stream enabled again after being disabled starts at the head."""
    row = await conn.fetchrow(
        f"""UPDATE ssf_streams SET status = $3, status_reason = $4, updated_at = now(),
                   cursor = CASE WHEN status = 'disabled' AND $3 <> 'disabled'
                                 THEN greatest(cursor, ({_HEAD})) ELSE cursor END
            WHERE stream_id = $1 AND client_id = $2 RETURNING {_COLUMNS}""",
        stream_id,
        client_id,
        status,
        reason,
    )
    if row is None:
        raise NotFound("no such stream")
    return _decoded(row)


def status_body(row: dict[str, Any]) -> dict[str, Any]:
    """The stream's status as SSF 1.0 §8.1.2.1 shows it."""
    body = {"stream_id": row["stream_id"], "status": row["status"]}
    if row["status_reason"]:
        body["reason"] = row["status_reason"]
    return body


async def claim_verification(conn: Any, client_id: str, stream_id: str, interval: int) -> tuple[Any, Any]:
    """Count a verification request against the stream's min_verification_interval (SSF 1.0 §8.1.1): the
    check and the new mark are one UPDATE, so two requests at once cannot both pass. The previous mark and
    the new one (for unclaim_verification); NotFound for a stream not the receiver's; TooManyAttempts (429)
    when too soon."""
    row = await conn.fetchrow(
        """UPDATE ssf_streams s SET verified_at = now() FROM ssf_streams old
           WHERE s.stream_id = $1 AND s.client_id = $2 AND old.stream_id = s.stream_id
             AND (s.verified_at IS NULL OR s.verified_at <= now() - make_interval(secs => $3))
           RETURNING old.verified_at, s.verified_at""",
        stream_id,
        client_id,
        float(interval),
    )
    if row is not None:
        return row[0], row[1]
    await get(conn, client_id, stream_id)  # NotFound when it is not the receiver's
    wait = await conn.fetchval(
        "SELECT extract(epoch FROM verified_at + make_interval(secs => $2) - now()) FROM ssf_streams"
        " WHERE stream_id = $1",
        stream_id,
        float(interval),
    )
    seconds = max(1, math.ceil(float(wait or 1)))
    raise TooManyAttempts(
        f"at most one verification request every {interval} s on a stream (min_verification_interval);"
        f" retry in {seconds} s",
        seconds,
    )


async def unclaim_verification(conn: Any, stream_id: str, claim: tuple[Any, Any]) -> None:
    """Put the previous mark back (the verification was not appended), unless a later request's claim
    replaced this one's meanwhile."""
    before, mark = claim
    await conn.execute(
        "UPDATE ssf_streams SET verified_at = $2 WHERE stream_id = $1 AND verified_at = $3",
        stream_id,
        before,
        mark,
    )


async def set_subject(conn: Any, stream_id: str, user_id: str, included: bool) -> None:
    """Put a user back into the stream, or take them out (every user is in by default)."""
    # updated_at tells the push deliverer to read the stream's subjects again.
    await conn.execute("UPDATE ssf_streams SET updated_at = now() WHERE stream_id = $1", stream_id)
    await conn.execute(
        """INSERT INTO ssf_subjects (stream_id, user_id, included) VALUES ($1, $2, $3)
           ON CONFLICT (stream_id, user_id) DO UPDATE SET included = excluded.included""",
        stream_id,
        user_id,
        included,
    )


async def view(conn: Any, row: dict[str, Any]) -> StreamView:
    """What decides which SETs the stream gets, read now."""
    excluded = await conn.fetch(
        "SELECT user_id FROM ssf_subjects WHERE stream_id = $1 AND NOT included", row["stream_id"]
    )
    return StreamView(
        row["stream_id"],
        frozenset(events_delivered(row["events_requested"])),
        frozenset(r[0] for r in excluded),
    )


async def advance(conn: Any, stream_id: str, position: int) -> None:
    """Move the stream's cursor forward (never back: a deposed deliverer's late update changes nothing)."""
    await conn.execute(
        "UPDATE ssf_streams SET cursor = $2 WHERE stream_id = $1 AND cursor < $2", stream_id, position
    )


_PAST_RETENTION = """
SELECT max(position), count(*) FROM event_log
WHERE position > $1 AND recorded_at < clock_timestamp() - make_interval(secs => $2)
"""


async def drop_past_retention(
    conn: Any, stream_id: str, cursor: int, retention: float, announce: Announce
) -> int:
    """Skip a stream that fell behind past the retention over what is too old to send, saying so in its
    status (SSF: the reason) and in a stream-updated SET (updates.py); the cursor it goes on from. Called
    when the next event to send is that old."""
    last, count = await conn.fetchrow(_PAST_RETENTION, cursor, retention)
    if last is None:
        return cursor
    reason = (
        f"{count} events older than the retention ({retention:.0f} s) were dropped, up to position {last}"
    )
    # Told first: a failure before the cursor moves drops (and tells) again, so the receiver hears of it.
    await announce(stream_id, "enabled", reason)
    await conn.execute(
        "UPDATE ssf_streams SET cursor = $2, status_reason = $3 WHERE stream_id = $1 AND cursor < $2",
        stream_id,
        int(last),
        reason,
    )
    return int(last)


@dataclass(frozen=True)
class PushStream:
    """An enabled push stream, as the deliverer runs it."""

    stream_id: str
    client_id: str
    endpoint_url: str
    authorization_header: str | None
    version: str  # changes when anything the deliverer uses changes


async def push_streams(conn: Any) -> list[PushStream]:
    """Every enabled push stream."""
    rows = await conn.fetch(
        """SELECT stream_id, client_id, endpoint_url, authorization_header, updated_at FROM ssf_streams
           WHERE delivery_method = $1 AND status = 'enabled' ORDER BY stream_id""",
        PUSH,
    )
    return [PushStream(r[0], r[1], r[2], r[3], r[4].isoformat()) for r in rows]


async def subject_user(conn: Any, issuer: str, subject: dict[str, Any]) -> str:
    """The user a subject names: iss_sub of this issuer, email, or a complex subject's user."""
    if subject.get("format") == "complex" and isinstance(subject.get("user"), dict):
        subject = subject["user"]
    fmt = subject.get("format")
    if fmt == "iss_sub":
        if subject.get("iss") != issuer or not isinstance(subject.get("sub"), str):
            raise InvalidRequest("an iss_sub subject needs this transmitter's iss and a string sub")
        column, value = "user_id::text", subject["sub"]
    elif fmt == "email":
        if not isinstance(subject.get("email"), str):
            raise InvalidRequest("an email subject needs a string email")
        column, value = "email", subject["email"].strip().lower()
    else:
        raise InvalidRequest("subject format must be iss_sub, email, or complex with a user of either")
    user = await conn.fetchval(f"SELECT user_id::text FROM users WHERE {column} = $1", value[:320])
    if user is None:
        raise NotFound("no such subject")
    return str(user)
