"""The gates (store.py's lock order): several writers, as several auth processes would run, share users
without deadlock or a double rotation, and the append lock covers only what carries a position."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.errors import AppendError
from auth_service.log.intents import ChangePassword, Decision, EndSessions, RevokeUser, Verdict
from auth_service.log.store import APPEND_LOCK_KEY, SESSION_GATE_CLASS, USER_GATE_CLASS, appending
from auth_service.log.writer import LogWriter
from tests.conftest import add_user
from tests.integration.test_grant_batches import GRACE, TTL, Script
from tests.integration.test_log_writer import projections

pytestmark = pytest.mark.integration


def _writer(url: str, lock_timeout_ms: int = 10_000) -> Any:
    return LogWriter.running(
        asyncpg_dsn(url), lock_timeout_ms=lock_timeout_ms, access_token_ttl=TTL, refresh_grace=GRACE
    )


async def _two_writers_on_the_same_users(url: str) -> None:
    users = [await add_user(url, f"g{i}@example.com") for i in range(3)]
    script = Script(users)  # six sessions over three users: every batch shares gates with the other writer's
    engine = create_engine(url, pool_size=2)
    try:
        async with _writer(url) as one, _writer(url) as two:
            await asyncio.gather(
                *(random.choice((one, two)).decide([script.login(s)]) for s in script.sessions)
            )
            # Every refresh token presented to both writers at once, beside a logout. The append lock is
            # held meanwhile, so each writer's batch is in flight with the other's, whatever the scheduling:
            # without the gates both would pass their checks and rotate each token twice.
            rotations = [(s, w, script.rotate(s, 0)) for s in script.sessions for w in (one, two)]
            random.shuffle(rotations)
            ended = script.sessions[4]
            blocker = await asyncpg.connect(asyncpg_dsn(url))
            try:
                await blocker.execute(f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
                both = asyncio.gather(
                    *(w.decide([rotate]) for _, w, rotate in rotations),
                    two.decide([EndSessions(script.owner[ended], (ended,), "logout")]),
                )
                await _until_waiting(blocker, 2)
                await blocker.execute("COMMIT")
                outcomes: list[Any] = await both
            finally:
                await blocker.close()

            async def rebuild() -> None:
                async with engine.begin() as conn, appending(conn, lock_timeout_ms=10_000) as log_:
                    await log_.rebuild_projections()

            # Then what takes a user's gate alone, and the whole log's, beside each other and a refresh.
            await asyncio.gather(
                one.decide([ChangePassword(users[2], "new-hash", script.sessions[5], datetime.now(UTC))]),
                two.decide([RevokeUser(users[2], "logout_all")]),
                one.decide([script.rotate(script.sessions[0], 1)]),
                rebuild(),
            )
        by_session: dict[Any, list[tuple[Decision, Any]]] = {}
        for (sid, _, rotate), decision in zip(rotations, outcomes, strict=False):
            by_session.setdefault(sid, []).append((decision, rotate))
        for sid, pair in by_session.items():
            verdicts = sorted(d.verdict.value for d, _ in pair)
            if script.owner[sid] == users[2]:  # its sessions may end first: never rotated twice
                assert verdicts.count(Verdict.ROTATED.value) <= 1, verdicts
                continue
            assert verdicts == [Verdict.CONCURRENT.value, Verdict.ROTATED.value], verdicts
            repeat = next(d for d, _ in pair if d.verdict is Verdict.CONCURRENT)
            rotation = next(r for d, r in pair if d.verdict is Verdict.ROTATED)
            # The repeat gets the one rotation's answer: from its own batch, or as the other writer sealed it.
            assert repeat.answer in (b"sealed:" + script.token[sid][0], rotation.successor)
        async with engine.connect() as conn:
            positions = (
                (await conn.execute(text("SELECT position FROM event_log ORDER BY 1"))).scalars().all()
            )
            rotated_count = (
                await conn.execute(text("SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NOT NULL"))
            ).scalar_one()
        assert positions == list(range(1, len(positions) + 1))
        assert rotated_count == 1 + sum(  # and the one rotation after
            1 for pair in by_session.values() if any(d.verdict is Verdict.ROTATED for d, _ in pair)
        )
        incremental = await projections(engine)
        async with engine.begin() as conn, appending(conn, lock_timeout_ms=10_000) as log_:
            await log_.rebuild_projections()
        assert await projections(engine) == incremental
    finally:
        await engine.dispose()


async def _until_waiting(conn: Any, count: int) -> None:
    """Until `count` backends of this database wait for a lock (each writer's batch, here).

    `conn` is inside a transaction, where pg_stat_activity is a snapshot taken at its first read: each poll
    drops it first, or a writer that connected since would never be seen."""
    for _ in range(1000):
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await conn.fetchval(
            """SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE NOT l.granted AND a.datname = current_database()"""
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    locks = await conn.fetch(
        """SELECT l.pid, l.locktype, l.classid, l.objid, l.mode, l.granted, a.state, left(a.query, 60)
           FROM pg_locks l JOIN pg_stat_activity a USING (pid)
           WHERE a.datname = current_database() AND l.locktype IN ('advisory', 'transactionid')"""
    )
    raise AssertionError(f"fewer than {count} backends ever waited for a lock: {[tuple(r) for r in locks]}")


async def _outcome(decision: Awaitable[Decision]) -> Decision | BaseException:
    """The decision, or the error it raised."""
    try:
        return await decision
    except Exception as exc:  # noqa: BLE001 - the test asserts which
        return exc


def test_two_writers_sharing_users_never_deadlock_rotate_once_and_project_what_a_rebuild_gives(
    database_factory: Callable[[], str],
) -> None:
    for _ in range(5):  # each on a fresh database: the interleavings differ from run to run
        asyncio.run(_two_writers_on_the_same_users(database_factory()))


async def test_a_batch_writes_its_users_rows_before_it_asks_for_the_append_lock(
    engine: AsyncEngine, database_url: str
) -> None:
    script = Script([await add_user(database_url, "h@example.com")])
    async with _writer(database_url, lock_timeout_ms=3000) as writer:
        await writer.decide([script.login(script.sessions[0])])
        blocker = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await blocker.execute(f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
            refresh = asyncio.create_task(writer.decide([script.rotate(script.sessions[0], 0)]))
            held: dict[str, Any] = {}
            for _ in range(200):  # until the writer's backend waits for the append lock
                await blocker.execute("SELECT pg_stat_clear_snapshot()")  # see _until_waiting
                rows = await blocker.fetch(
                    """SELECT l.locktype, l.classid, l.objid, l.objsubid, l.granted, c.relname, l.mode
                       FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                       LEFT JOIN pg_class c ON c.oid = l.relation
                       WHERE l.pid <> pg_backend_pid() AND a.datname = current_database()"""
                )
                waiting = [r for r in rows if not r["granted"]]
                if waiting:
                    held = {"rows": rows, "waiting": waiting}
                    break
                await asyncio.sleep(0.01)
            await blocker.execute("COMMIT")
            decision = await refresh
        finally:
            await blocker.close()
    assert held, "the refresh never waited for the append lock"
    (wait,) = held["waiting"]
    assert (wait["locktype"], (wait["classid"] << 32) | wait["objid"]) == ("advisory", APPEND_LOCK_KEY)
    granted = held["rows"]
    # Its user's gate is held, and the refresh token's row is already rotated (the table written).
    assert any(
        r["locktype"] == "advisory" and r["classid"] == USER_GATE_CLASS and r["granted"] for r in granted
    )
    assert any(r["relname"] == "refresh_tokens" and r["mode"] == "RowExclusiveLock" for r in granted)
    assert decision.verdict is Verdict.ROTATED


async def test_a_users_gate_held_elsewhere_holds_back_that_user_alone(
    engine: AsyncEngine, database_url: str
) -> None:
    users = [await add_user(database_url, f"k{i}@example.com") for i in range(2)]
    script = Script(users)
    async with _writer(database_url, lock_timeout_ms=300) as one, _writer(database_url, 300) as two:
        await asyncio.gather(*(one.decide([script.login(s)]) for s in script.sessions))
        held = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await held.execute("BEGIN")
            await held.execute(f"SELECT pg_advisory_xact_lock({USER_GATE_CLASS}, hashtext($1))", users[0])
            outcomes: list[Decision | BaseException] = await asyncio.gather(
                one.decide([script.rotate(script.sessions[0], 0)]),
                two.decide([script.rotate(script.sessions[2], 0)]),
                return_exceptions=True,
            )
        finally:
            await held.close()
    stuck, free = outcomes
    assert isinstance(stuck, AppendError), stuck
    assert isinstance(free, Decision)
    assert free.verdict is Verdict.ROTATED
    async with engine.connect() as conn:
        rotated = (
            await conn.execute(text("SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NOT NULL"))
        ).scalar_one()
    assert rotated == 1


async def test_a_sessions_gate_holds_back_that_session_and_a_users_shared_gate_only_revoking_the_user(
    engine: AsyncEngine, database_url: str
) -> None:
    script = Script([await add_user(database_url, "m@example.com")])
    first, second = script.sessions[:2]  # one user's two sessions
    user = script.users[0]
    async with _writer(database_url, lock_timeout_ms=300) as one, _writer(database_url, 300) as two:
        await asyncio.gather(*(one.decide([script.login(s)]) for s in (first, second)))
        other = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            # A batch on the first session (another process's refresh, say) holds its gate.
            await other.execute("BEGIN")
            await other.execute(
                f"SELECT pg_advisory_xact_lock({SESSION_GATE_CLASS}, hashtext($1))", str(first)
            )
            outcomes: list[Decision | BaseException] = await asyncio.gather(
                one.decide([script.rotate(first, 0)]),
                two.decide([script.rotate(second, 0)]),
                return_exceptions=True,
            )
            same, sibling = outcomes
            await other.execute("ROLLBACK")
            # A refresh of the user's holds the user's gate shared: another refresh goes on, revoking waits.
            # One after the other: PostgreSQL queues a shared request behind a waiting exclusive one, so a
            # refresh asked while a revocation waits waits too (and revoking is never starved).
            await other.execute("BEGIN")
            await other.execute(f"SELECT pg_advisory_xact_lock_shared({USER_GATE_CLASS}, hashtext($1))", user)
            outcomes = [
                await _outcome(one.decide([script.rotate(first, 0)])),
                await _outcome(two.decide([RevokeUser(user, "logout_all")])),
            ]
            refreshed, revoked = outcomes
        finally:
            await other.close()
    assert isinstance(same, AppendError), same
    assert isinstance(sibling, Decision)
    assert sibling.verdict is Verdict.ROTATED
    assert isinstance(refreshed, Decision)
    assert refreshed.verdict is Verdict.ROTATED
    assert isinstance(revoked, AppendError), revoked
    async with engine.connect() as conn:
        watermarks = (
            await conn.execute(text("SELECT count(*) FROM revocations WHERE kind = 'user'"))
        ).scalar_one()
    assert watermarks == 0
