"""The group committer: many requests per transaction, positions dense and in commit order, all or nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn
from auth_service.db.tables import revocations, sessions
from auth_service.errors import AppendError, InvalidToken
from auth_service.log.batch_sql import REVOKED
from auth_service.log.intents import Caller, EndSessions, RevokeToken, RevokeUser, revocation_reason
from auth_service.log.store import append, appending, read_after, read_head
from auth_service.log.writer import LogWriter

pytestmark = pytest.mark.integration

TTL = 300
# What the log writer reads and writes: the log, its projections, the credentials and keys it changes.
WRITER_TABLES = "event_log, sessions, revocations, refresh_tokens, refresh_successors, users, signing_keys"
LOGOUTS = 200


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[LogWriter]:
    async with LogWriter.running(asyncpg_dsn(database_url), lock_timeout_ms=5000, access_token_ttl=TTL) as w:
        yield w


async def start_sessions(engine: AsyncEngine, count: int, user: str = "u") -> list[uuid.UUID]:
    now = datetime.now(UTC)
    sids = [uuid.uuid4() for _ in range(count)]
    started = [
        c.SessionStarted(
            user_id=user,
            session_id=sid,
            client_id="web",
            expires_at=now + timedelta(days=1),
            occurred_at=now - timedelta(seconds=5),
        )
        for sid in sids
    ]
    async with engine.begin() as conn:
        await append(conn, started, lock_timeout_ms=5000)
    return sids


async def projections(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    async with engine.connect() as conn:
        s = (await conn.execute(select(sessions).order_by(sessions.c.session_id))).all()
        r = (
            await conn.execute(select(revocations).order_by(revocations.c.kind, revocations.c.subject))
        ).all()
    return [tuple(row) for row in s], [tuple(row) for row in r]


async def test_concurrent_logouts_are_grouped_with_dense_commit_ordered_positions_one_event_each(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    sids = await start_sessions(engine, LOGOUTS)
    # Every session is ended twice, concurrently: exactly one of the two requests appends its event.
    requests = [EndSessions("u", (sid,), "logout_session") for sid in sids] * 2
    results = await asyncio.gather(*(writer.submit([r]) for r in requests))

    events = [e for result in results for e in result]
    assert sorted(len(r) for r in results) == [0] * LOGOUTS + [1] * LOGOUTS
    assert sorted(e.position or 0 for e in events) == list(range(LOGOUTS + 1, 2 * LOGOUTS + 1))
    assert {e.session_id for e in events if isinstance(e, c.SessionRevoked)} == set(sids)
    assert writer.batches < LOGOUTS  # grouped: far fewer transactions than requests

    async with engine.connect() as conn:
        logged = await read_after(conn, LOGOUTS, 1000)
        assert await read_head(conn) == 2 * LOGOUTS
    # What each request was told is what the log holds, position for position.
    assert [(e.position, e.event_id) for e in logged] == sorted((e.position, e.event_id) for e in events)
    s, r = await projections(engine)
    assert [row[-1] for row in s] == ["logout_session"] * LOGOUTS  # revoked_reason, the last column
    assert {subject for kind, subject, *_ in r if kind == "session"} == {str(sid) for sid in sids}


async def test_a_failed_batch_fails_every_request_in_it_and_commits_nothing(
    engine: AsyncEngine, database_url: str
) -> None:
    sids = await start_sessions(engine, 20)
    head_before = 20
    projections_before = await projections(engine)
    dsn = asyncpg_dsn(database_url)
    async with LogWriter.running(dsn, lock_timeout_ms=200, access_token_ttl=TTL) as writer:
        async with engine.begin() as conn, appending(conn, lock_timeout_ms=5000):
            # Another appender holds the lock past the writer's lock_timeout: the whole batch must fail.
            outcomes = await asyncio.gather(
                *(writer.submit([EndSessions("u", (sid,), "logout_session")]) for sid in sids),
                writer.submit([RevokeUser("u", "logout_all")]),
                return_exceptions=True,
            )
        assert all(isinstance(o, AppendError) for o in outcomes), outcomes
        async with engine.connect() as conn:
            assert await read_head(conn) == head_before
        assert await projections(engine) == projections_before

        # The writer recovers: the next request commits.
        [event] = await writer.submit([EndSessions("u", (sids[0],), "logout_session")])
        assert event.position == head_before + 1


async def test_watermarks_in_one_batch_follow_each_other_and_end_sessions_for_later_requests(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    [sid] = await start_sessions(engine, 1, user="w")
    first, second, ended = await asyncio.gather(
        writer.submit([RevokeUser("w", "logout_all")]),
        writer.submit([RevokeUser("w", "logout_all")]),
        writer.submit([EndSessions("w", (sid,), "ended_by_user")]),
    )
    assert isinstance(first[0], c.UserRevoked)
    assert isinstance(second[0], c.UserRevoked)
    # One second past max(this second, the earlier watermark), the earlier one set in this very batch.
    assert second[0].not_before == first[0].not_before + timedelta(seconds=1)
    assert ended == []  # the first watermark already ended the session: nothing to append


async def test_what_the_writer_projects_equals_a_rebuild_from_the_log(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    sids = await start_sessions(engine, 6, user="a") + await start_sessions(engine, 3, user="b")
    now = datetime.now(UTC)
    token = c.TokenRevoked(
        jti="j1", user_id="a", session_id=sids[0], expires_at=now + timedelta(minutes=5), reason="revoked"
    )
    await asyncio.gather(
        writer.submit([EndSessions("a", (sids[0], sids[1]), "logout_others")]),
        writer.submit([RevokeToken(token)]),
        writer.submit([RevokeUser("b", "logout_all")]),
        writer.submit([EndSessions("a", (sids[1], sids[2]), "ended_by_user")]),
    )
    # Interleaved with an ordinary appender (login, refresh), which takes the same lock.
    async with engine.begin() as conn:
        await append(
            conn,
            [c.TokenRevoked(jti="j2", expires_at=now + timedelta(minutes=1), reason="revoked")],
            lock_timeout_ms=5000,
        )
    await writer.submit([RevokeUser("a", "operator")])
    incremental = await projections(engine)
    async with engine.begin() as conn, appending(conn, lock_timeout_ms=5000) as log_:
        await log_.rebuild_projections()
    assert await projections(engine) == incremental
    async with engine.connect() as conn:
        positions = (
            (await conn.execute(text("SELECT position FROM event_log ORDER BY position"))).scalars().all()
        )
    assert positions == list(range(1, len(positions) + 1))


async def test_each_commit_is_handed_to_the_hooks_before_its_requests_are_answered(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    sids = await start_sessions(engine, 30)
    handed: list[tuple[list[c.Event], datetime]] = []

    def broken(events: list[c.Event], recorded: datetime) -> None:
        raise RuntimeError("a hook that fails")

    writer.on_commit += [broken, lambda events, recorded: handed.append((list(events), recorded))]

    async def logout(sid: uuid.UUID) -> list[c.Event]:
        events = await writer.submit([EndSessions("u", (sid,), "logout_session")])
        # Answered only after the hooks saw the batch that holds these events.
        assert {e.event_id for e in events} <= {e.event_id for batch, _ in handed for e in batch}
        return events

    results = await asyncio.gather(*(logout(sid) for sid in sids), logout(sids[0]))  # one ends nothing
    answered = [e for events in results for e in events]
    assert len(answered) == len(sids)  # the failing hook failed no request
    assert all(batch for batch, _ in handed)  # a batch that appended nothing is not handed on
    assert [e for batch, _ in handed for e in batch] == sorted(answered, key=lambda e: e.position or 0)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT position, recorded_at FROM event_log WHERE position > :p"), {"p": 30}
            )
        ).all()
    # Handed with the recorded_at the log holds for them.
    assert dict(rows) == {e.position: recorded for batch, recorded in handed for e in batch}


async def test_a_session_ended_between_the_check_and_the_batch_is_decided_again_under_the_lock(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    sids = await start_sessions(engine, 3)
    now = datetime.now(UTC)
    # Another appender ends one of them after the requests checked it and before the writer's batch.
    async with engine.begin() as conn:
        await append(
            conn,
            [
                c.SessionRevoked(
                    session_id=sids[1], user_id="u", expires_at=now + timedelta(minutes=5), reason="elsewhere"
                )
            ],
            lock_timeout_ms=5000,
        )
    results = await asyncio.gather(
        *(writer.submit([EndSessions("u", (sid,), "logout_session")]) for sid in sids)
    )
    assert [len(r) for r in results] == [1, 0, 1]  # the one already ended appends nothing
    assert writer.guesses_missed >= 1  # the one-round-trip path wrote nothing and gave way
    async with engine.connect() as conn:
        logged = await read_after(conn, 0, 1000)
    assert [e.position for e in logged] == list(range(1, 7))
    assert [type(e).__name__ for e in logged[3:]] == ["SessionRevoked"] * 3
    ended = [e.session_id for e in logged[4:] if isinstance(e, c.SessionRevoked)]
    assert sorted(ended) == sorted([sids[0], sids[2]])


async def test_the_writer_and_ordinary_appenders_interleave_with_dense_positions_each_event_once(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    sids = await start_sessions(engine, 120)
    now = datetime.now(UTC)

    async def ordinary(i: int) -> list[c.Event]:
        async with engine.begin() as conn:
            return await append(
                conn,
                [c.TokenRevoked(jti=f"j{i}", expires_at=now + timedelta(minutes=1), reason="revoked")],
                lock_timeout_ms=5000,
            )

    results = await asyncio.gather(
        *(writer.submit([EndSessions("u", (sid,), "logout_session")]) for sid in sids),
        *(ordinary(i) for i in range(40)),
    )
    told = sorted((e.position, e.event_id) for events in results for e in events)
    assert [p for p, _ in told] == list(range(121, 121 + 160))  # dense, each once
    async with engine.connect() as conn:
        logged = await read_after(conn, 120, 1000)
    assert [(e.position, e.event_id) for e in logged] == told
    # What each append was told matches what the log's payload holds, position included.
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT (payload->>'position')::bigint, position FROM event_log WHERE position > 120")
            )
        ).all()
    assert all(a == b for a, b in stored)


async def test_without_the_temp_privilege_every_batch_takes_the_locked_path(
    engine: AsyncEngine, database_url: str
) -> None:
    sids = await start_sessions(engine, 4)
    async with engine.begin() as conn:
        await conn.execute(text("DROP ROLE IF EXISTS tokenlife_no_temp"))
        await conn.execute(text("CREATE ROLE tokenlife_no_temp LOGIN"))
        await conn.execute(text(f"GRANT ALL ON {WRITER_TABLES} TO tokenlife_no_temp"))
        database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
        await conn.execute(text(f'REVOKE TEMP ON DATABASE "{database}" FROM PUBLIC'))
    try:
        dsn = asyncpg_dsn(database_url).replace("://postgres@", "://tokenlife_no_temp@")
        dsn = dsn.replace("://root@", "://tokenlife_no_temp@")
        async with LogWriter.running(dsn, lock_timeout_ms=5000, access_token_ttl=TTL) as writer:
            results = await asyncio.gather(
                *(writer.submit([EndSessions("u", (sid,), "logout_session")]) for sid in sids)
            )
            assert not writer.one_trip
        assert sorted(e.position or 0 for r in results for e in r) == [5, 6, 7, 8]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'GRANT TEMP ON DATABASE "{database}" TO PUBLIC'))
            await conn.execute(text(f"REVOKE ALL ON {WRITER_TABLES} FROM tokenlife_no_temp"))
            await conn.execute(text("DROP ROLE tokenlife_no_temp"))


def caller_of(sid: uuid.UUID, user: str = "u", jti: str | None = None, iat: int | None = None) -> Caller:
    return Caller(jti or f"jti-{sid}", str(sid), user, "kid-1", iat or int(datetime.now(UTC).timestamp()) - 2)


async def test_a_request_whose_token_is_revoked_under_the_lock_is_refused_alone(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    sids = await start_sessions(engine, 4)
    now = datetime.now(UTC)
    revoked_jti = "jti-revoked-meanwhile"
    # Revoked by RFC 7009 after the request verified its token, before the writer's batch.
    async with engine.begin() as conn:
        await append(
            conn,
            [c.TokenRevoked(jti=revoked_jti, expires_at=now + timedelta(minutes=5), reason="revoked")],
            lock_timeout_ms=5000,
        )
    outcomes = await asyncio.gather(
        *(
            writer.submit([EndSessions("u", (sid,), "logout_session")], caller_of(sid, jti=jti))
            for sid, jti in zip(sids, [None, revoked_jti, None, None], strict=True)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], InvalidToken)
    assert [len(o) for o in outcomes if isinstance(o, list)] == [1, 1, 1]
    async with engine.connect() as conn:
        ended = {e.session_id for e in await read_after(conn, 5, 100) if isinstance(e, c.SessionRevoked)}
    assert ended == {sids[0], sids[2], sids[3]}  # nothing of the refused request


async def test_a_caller_with_nothing_to_append_is_still_checked_in_the_same_round_trip(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    [sid] = await start_sessions(engine, 1)
    caller = caller_of(sid)
    assert await writer.submit([], caller) == []
    await writer.submit([EndSessions("u", (sid,), "logout_session")])
    with pytest.raises(InvalidToken):
        await writer.submit([], caller)  # its session's revocation names it now


# (kind of the revocation row, its not_before relative to the token's iat or None, names this token)
RULE_CASES = [
    ("jti", None, True),
    ("session", None, True),
    ("key", None, True),
    ("jti", None, False),
    ("user", 1, True),  # a watermark after the token's iat revokes it
    ("user", 0, False),  # at its iat: issued after (iat rounds down, the watermark is a whole second)
    ("user", -5, False),
    ("global", 1, True),
    ("global", -1, False),
    ("user", None, True),  # a user row without a watermark revokes nothing
]


@pytest.mark.parametrize(("kind", "offset", "names"), RULE_CASES)
async def test_the_writers_revocation_rule_in_sql_is_authns_rule(
    engine: AsyncEngine, kind: str, offset: int | None, names: bool
) -> None:
    iat = int(datetime.now(UTC).timestamp())
    caller = Caller("j1", str(uuid.uuid4()), "u1", "k1", iat)
    subjects = {
        "jti": "j1",
        "session": caller.session_id,
        "user": "u1",
        "key": "k1",
        "global": c.GLOBAL_SUBJECT,
    }
    subject = subjects[kind] if names else "someone-else"
    not_before = None if offset is None else datetime.fromtimestamp(iat + offset, UTC)
    row = (kind, subject, not_before)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO revocations (kind, subject, not_before, expires_at, position) "
                "VALUES (:kind, :subject, :nb, now() + interval '5 minutes', 1)"
            ),
            {"kind": kind, "subject": subject, "nb": not_before},
        )
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        in_sql = bool(await raw.fetch(REVOKED, ["j1"], [caller.session_id], ["u1"], ["k1"], [iat]))
        await conn.rollback()
    rows = [row] if subject in subjects.values() else []
    assert in_sql == (revocation_reason(rows, iat) is not None)


async def test_recorded_at_is_taken_after_the_lock_wait_so_its_order_is_position_order(
    engine: AsyncEngine, writer: LogWriter
) -> None:
    """recorded_at is when an event was appended, under the lock: not when its transaction (or the append
    function's call) began, before waiting for the lock. So the relay's publish latency counts from the
    append, and recorded_at never runs backwards along the positions."""
    sids = await start_sessions(engine, 2)
    async with engine.begin() as holder:
        async with appending(holder, lock_timeout_ms=5000):
            began = asyncio.Event()
            appender = asyncio.create_task(_append_after_begin(engine, sids[1], began))
            logout = asyncio.create_task(writer.submit([EndSessions("u", (sids[0],), "logout_session")]))
            await began.wait()
            await asyncio.sleep(0.3)  # both wait for the lock
            released = (await holder.execute(text("SELECT clock_timestamp()"))).scalar_one()
    await asyncio.gather(logout, appender)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT position, recorded_at FROM event_log ORDER BY position"))
        ).all()
    appended = [at for _, at in rows[-2:]]
    assert all(at >= released for at in appended), (appended, released)
    recorded = [at for _, at in rows]
    assert recorded == sorted(recorded)


async def _append_after_begin(engine: AsyncEngine, sid: uuid.UUID, began: asyncio.Event) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 1"))  # the transaction has begun (its now() is fixed) before the wait
        began.set()
        async with appending(conn, lock_timeout_ms=5000) as log_:
            await log_.append(
                [c.SessionRevoked(session_id=sid, user_id="u", expires_at=datetime.now(UTC), reason="admin")]
            )
