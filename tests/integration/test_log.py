"""The append protocol and the read side, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn
from auth_service.errors import AppendError
from auth_service.log.snapshots import snapshot
from auth_service.log.store import (
    NOTIFY_CHANNEL,
    append,
    appending,
    read_after,
    read_head,
    read_page,
)

pytestmark = pytest.mark.integration

APPENDERS = 8
LOCK_TIMEOUT_MS = 5000
APPENDS_EACH = 25


def revoked(reason: str = "test", *, ttl: timedelta = timedelta(minutes=5)) -> c.TokenRevoked:
    return c.TokenRevoked(jti=uuid.uuid4().hex, expires_at=datetime.now(UTC) + ttl, reason=reason)


async def append_committed(engine: AsyncEngine, *events: c.Event) -> list[c.Event]:
    async with engine.begin() as conn:
        async with appending(conn, lock_timeout_ms=LOCK_TIMEOUT_MS) as log_:
            return await log_.append(events)


async def waiting_on_locks(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return int((await conn.execute(query)).scalar_one())


async def test_positions_are_dense_and_visible_in_commit_order_under_concurrent_appenders(
    engine: AsyncEngine,
) -> None:
    committed: set[uuid.UUID] = set()
    seen: list[tuple[int, uuid.UUID]] = []
    writers_done = asyncio.Event()
    holder_has_lock = asyncio.Event()
    release_holder = asyncio.Event()
    rng = random.Random(1)

    async def holder() -> None:
        # Takes the lock and keeps its transaction open while every other appender tries to commit.
        async with engine.begin() as conn:
            [event] = await append(conn, [revoked("holder")], lock_timeout_ms=LOCK_TIMEOUT_MS)
            holder_has_lock.set()
            await release_holder.wait()
        committed.add(event.event_id)

    async def appender(n: int) -> None:
        await holder_has_lock.wait()
        for i in range(APPENDS_EACH):
            batch = [revoked(f"w{n}.{i}") for _ in range(rng.randint(1, 3))]
            roll_back = rng.random() < 0.2
            async with engine.connect() as conn:
                tx = await conn.begin()
                await append(conn, batch, lock_timeout_ms=LOCK_TIMEOUT_MS)
                if roll_back:
                    await tx.rollback()
                else:
                    await tx.commit()
                    committed.update(e.event_id for e in batch)

    async def reader() -> None:
        last = 0
        while True:
            finished = writers_done.is_set()
            async with engine.connect() as conn:
                events = await read_after(conn, last, limit=50)
            for event in events:
                assert event.position == last + 1, f"saw {event.position} right after {last}"
                seen.append((event.position, event.event_id))
                last = event.position
            if finished and not events:
                return
            await asyncio.sleep(0)

    async def release_when_others_wait() -> None:
        await holder_has_lock.wait()
        while await waiting_on_locks(engine) < APPENDERS // 2:  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(0.01)
        # While the holder is open, nothing past it is visible and nothing was committed behind it.
        async with engine.connect() as conn:
            assert await read_head(conn) == 0
        release_holder.set()

    tail = asyncio.create_task(reader())
    await asyncio.gather(holder(), release_when_others_wait(), *(appender(n) for n in range(APPENDERS)))
    writers_done.set()
    await tail

    positions = [p for p, _ in seen]
    assert positions == list(range(1, len(seen) + 1))
    assert [e for _, e in seen] == list(dict.fromkeys(e for _, e in seen)), "an event was seen twice"
    assert {e for _, e in seen} == committed


async def test_a_rolled_back_append_leaves_no_hole(engine: AsyncEngine) -> None:
    await append_committed(engine, revoked())
    async with engine.connect() as conn:
        tx = await conn.begin()
        [lost] = await append(conn, [revoked()], lock_timeout_ms=LOCK_TIMEOUT_MS)
        assert lost.position == 2
        await tx.rollback()
    [next_event] = await append_committed(engine, revoked())
    assert next_event.position == 2
    async with engine.connect() as conn:
        assert [e.event_id for e in await read_after(conn, 1)] == [next_event.event_id]


async def test_append_sets_prev_position_and_reads_come_back_in_order_with_a_limit(
    engine: AsyncEngine,
) -> None:
    written = await append_committed(engine, *(revoked() for _ in range(5)))
    assert [(e.position, e.prev_position) for e in written] == [(i, i - 1) for i in range(1, 6)]
    async with engine.connect() as conn:
        page = await read_after(conn, 1, limit=3)
        assert [e.position for e in page] == [2, 3, 4]
        assert page == written[1:4]
        assert await read_after(conn, 5) == []
        assert (await read_page(conn, 3)).head == 5


async def test_update_delete_and_truncate_on_the_log_are_refused_by_the_database(engine: AsyncEngine) -> None:
    await append_committed(engine, revoked())
    for statement in (
        "UPDATE event_log SET type = 'x'",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
    ):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text(statement))
    async with engine.connect() as conn:
        assert await read_head(conn) == 1


async def test_notify_is_sent_on_commit_and_never_for_a_rollback(
    engine: AsyncEngine, database_url: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    try:
        async with engine.connect() as conn:
            tx = await conn.begin()
            await append(conn, [revoked()], lock_timeout_ms=LOCK_TIMEOUT_MS)
            await tx.rollback()
        await append_committed(engine, revoked(), revoked())
        assert await asyncio.wait_for(heard.get(), timeout=10) == "2"
        assert heard.empty()
    finally:
        await listener.close()


async def test_append_gives_up_after_lock_timeout(engine: AsyncEngine) -> None:
    async with engine.begin() as holder:
        await append(holder, [revoked()], lock_timeout_ms=LOCK_TIMEOUT_MS)
        async with engine.connect() as conn:
            await conn.begin()
            with pytest.raises(AppendError, match="lock"):
                async with appending(conn, lock_timeout_ms=50) as log_:
                    await log_.append([revoked()])


async def test_an_appender_refuses_once_its_block_has_ended(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        async with appending(conn, lock_timeout_ms=LOCK_TIMEOUT_MS) as log_:
            [inside] = await log_.append([revoked()])
        with pytest.raises(AppendError, match="outside"):
            await log_.append([revoked()])
    assert inside.position == 1
    async with engine.connect() as conn:
        assert await read_head(conn) == 1


async def test_append_refuses_repeatable_read(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            with pytest.raises(AppendError, match="READ COMMITTED"):
                await append(conn, [revoked()], lock_timeout_ms=LOCK_TIMEOUT_MS)


async def test_snapshot_holds_live_revocations_at_the_exact_head(engine: AsyncEngine) -> None:
    sid = uuid.uuid4()
    now = datetime.now(UTC)
    await append_committed(
        engine,
        revoked(),
        revoked(ttl=-timedelta(hours=1)),  # long dead: not in a snapshot
        c.SessionRevoked(
            session_id=sid, user_id="u1", expires_at=now + timedelta(minutes=5), reason="logout"
        ),
        c.UserRevoked(
            user_id="u1", not_before=now, expires_at=now + timedelta(minutes=5), reason="logout_all"
        ),
    )
    snap = await snapshot(engine)
    assert snap.position == 4
    assert [(r.kind, r.position) for r in snap.revocations] == [
        (c.RevocationKind.JTI, 1),
        (c.RevocationKind.SESSION, 3),
        (c.RevocationKind.USER, 4),
    ]


async def test_snapshot_is_consistent_while_appends_go_on(engine: AsyncEngine) -> None:
    stop = asyncio.Event()

    async def keep_appending() -> None:
        while not stop.is_set():
            await append_committed(engine, revoked(), revoked())

    writer = asyncio.create_task(keep_appending())
    try:
        for _ in range(20):
            snap = await snapshot(engine)
            # Every event up to the snapshot's position is in it, and nothing after it.
            assert sorted(r.position for r in snap.revocations) == list(range(1, snap.position + 1))
    finally:
        stop.set()
        await writer
