"""Grants through the log writer: a batch mixing logins, refreshes, logouts and a password change decides
exactly what the same requests decide one at a time, and what it projects equals a rebuild from the log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.db.tables import refresh_tokens, revocations, sessions, users
from auth_service.errors import AppendError
from auth_service.log.intents import (
    ChangePassword,
    Decision,
    EndSessions,
    Intent,
    Login,
    NewRefreshToken,
    Prepared,
    RevokeUser,
    Rotate,
    Verdict,
)
from auth_service.log.store import appending, read_head
from auth_service.log.writer import LogWriter
from tests.conftest import add_user

pytestmark = pytest.mark.integration

TTL = 300
GRACE = 1.0  # a repeat in the same phase is within it; one a phase later (after a pause past it) is not


class Script:
    """Requests made from fixed identifiers, so two databases can be given the very same ones."""

    def __init__(self, users: Sequence[str]) -> None:
        self.users = list(users)
        self.sessions = [uuid.UUID(int=i + 1) for i in range(2 * len(users))]
        self.owner = {sid: self.users[i // 2] for i, sid in enumerate(self.sessions)}
        self.token = {
            sid: {0: bytes([i + 1]) * 32} for i, sid in enumerate(self.sessions)
        }  # generation -> hash

    def login(self, sid: uuid.UUID) -> Login:
        now = datetime.now(UTC)
        user = self.owner[sid]
        started = c.SessionStarted(
            user_id=user, session_id=sid, client_id="web", expires_at=now + timedelta(days=1), occurred_at=now
        )
        issued = self._issued(sid, "login", now)
        return Login(started, issued, NewRefreshToken(self.token[sid][0], sid, 1, now, started.expires_at))

    def rotate(self, sid: uuid.UUID, generation: int, *, reused: bool = False) -> Rotate:
        parent = self.token[sid][generation]
        if reused:
            return Rotate(parent, sid, self.owner[sid], None)
        now = datetime.now(UTC)
        child = self.token[sid].setdefault(generation + 1, uuid.uuid5(sid, str(generation + 1)).bytes * 2)
        refresh = NewRefreshToken(child, sid, generation + 2, now, now + timedelta(days=1))
        issued = self._issued(sid, "refresh", now)
        return Rotate(
            parent, sid, self.owner[sid], Prepared(issued, refresh, b"sealed:" + parent, issued.jti)
        )

    def _issued(self, sid: uuid.UUID, cause: str, now: datetime) -> c.TokenIssued:
        iat = now.replace(microsecond=0) + timedelta(seconds=2)  # above any watermark of this test's seconds
        return c.TokenIssued(
            user_id=self.owner[sid],
            session_id=sid,
            jti=uuid.uuid4().hex,
            kid="k1",
            issued_at=iat,
            expires_at=iat + timedelta(seconds=TTL),
            cause="login" if cause == "login" else "refresh",
            occurred_at=now,
        )

    def phases(self) -> list[Callable[[], Sequence[Intent]]]:
        s, u = self.sessions, self.users
        return [
            lambda: [self.login(sid) for sid in s],
            # Fresh rotations, two of them presented twice in the same phase (a repeat within the window).
            lambda: [self.rotate(sid, 0) for sid in s] + [self.rotate(s[0], 0), self.rotate(s[1], 0)],
            lambda: [
                self.rotate(s[2], 0, reused=True),  # rotated a phase ago, past the window: the session ends
                self.rotate(s[2], 1),  # its newest token, after that: the session has ended
                EndSessions(self.owner[s[3]], (s[3],), "logout_session"),
                self.rotate(s[3], 1),  # refreshed after its logout
                self.rotate(s[4], 1),  # an ordinary rotation
                ChangePassword(u[2], "new-hash", s[4], datetime.now(UTC)),  # ends s[5], keeps s[4]
                RevokeUser(u[3], "logout_all"),  # ends s[6] and s[7]
                self.rotate(s[6], 1),  # after the watermark ended its session
            ],
        ]


async def _state(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        ended = (
            await conn.execute(
                select(sessions.c.session_id, sessions.c.revoked_reason).order_by("session_id")
            )
        ).all()
        revoked = (await conn.execute(select(revocations.c.kind, revocations.c.subject))).all()
        tokens = (await conn.execute(select(refresh_tokens.c.token_hash, refresh_tokens.c.rotated_at))).all()
        hashes = (await conn.execute(select(users.c.password_hash).order_by(users.c.email))).all()
    return {
        "sessions": [tuple(r) for r in ended],
        "revocations": sorted((r.kind, r.subject) for r in revoked if r.kind != "user"),
        "users revoked": sorted(r.subject for r in revoked if r.kind == "user"),  # by id: see _anonymous
        "tokens": sorted((r.token_hash, r.rotated_at is not None) for r in tokens),
        "password hashes": [r.password_hash == "new-hash" for r in hashes],
    }


def _anonymous(state: dict[str, Any], users: Sequence[str]) -> dict[str, Any]:
    """The state with each user's id (random per database) replaced by its place in the script."""
    return state | {"users revoked": [users.index(u) for u in state["users revoked"]]}


def _told(decisions: list[Decision]) -> list[tuple[Verdict, list[str]]]:
    return [(d.verdict, [e.type.value for e in d.events]) for d in decisions]


async def _run(
    url: str, *, together: bool, one_trip: bool = True
) -> tuple[list[list[tuple[Verdict, list[str]]]], dict[str, Any], int]:
    user_ids = [await add_user(url, f"u{i}@example.com") for i in range(4)]
    script = Script(user_ids)
    engine = create_engine(url, pool_size=1)
    told: list[list[tuple[Verdict, list[str]]]] = []
    try:
        async with LogWriter.running(
            asyncpg_dsn(url), lock_timeout_ms=5000, access_token_ttl=TTL, refresh_grace=GRACE
        ) as writer:
            # The statement-by-statement path, as where the append function cannot be made (no TEMP).
            writer._committer.one_trip = one_trip
            for phase in script.phases():
                requests = phase()
                if together:  # queued at once: the writer takes them in as few batches as it can
                    decisions = await asyncio.gather(*(writer.decide([r]) for r in requests))
                else:
                    decisions = [await writer.decide([r]) for r in requests]
                told.append(_told(list(decisions)))
                await asyncio.sleep(GRACE + 0.2)  # what the next phase presents again is past the window
            batches = writer.batches
        return told, _anonymous(await _state(engine), user_ids), batches
    finally:
        await engine.dispose()


def test_a_mixed_batch_decides_what_the_same_requests_decide_one_at_a_time(
    database_factory: Callable[[], str],
) -> None:
    together, state_together, batches = asyncio.run(_run(database_factory(), together=True))
    alone, state_alone, requests = asyncio.run(_run(database_factory(), together=False))
    assert batches < requests  # the first run really was batched
    assert together == alone
    assert state_together == state_alone
    assert together[1][-2:] == [(Verdict.CONCURRENT, []), (Verdict.CONCURRENT, [])]
    assert [verdict for verdict, _ in together[2]] == [
        Verdict.REUSED,
        Verdict.SESSION_ENDED,
        Verdict.DONE,
        Verdict.SESSION_ENDED,
        Verdict.ROTATED,
        Verdict.DONE,
        Verdict.DONE,
        Verdict.SESSION_ENDED,
    ]
    reasons = dict(state_together["sessions"])
    s = Script(["x"] * 4).sessions
    assert [reasons[sid] for sid in s] == [
        None,
        None,
        "refresh_token_reuse",
        "logout_session",
        None,
        "password_change",
        "logout_all",
        "logout_all",
    ]
    assert state_together["users revoked"] == [3]
    assert state_together["password hashes"] == [False, False, True, False]  # u2's, by email
    # Without the append function every batch runs its statements one by one, in the same order.
    by_statements, state_by_statements, _ = asyncio.run(
        _run(database_factory(), together=True, one_trip=False)
    )
    assert (by_statements, state_by_statements) == (together, state_together)


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[LogWriter]:
    async with LogWriter.running(
        asyncpg_dsn(database_url), lock_timeout_ms=300, access_token_ttl=TTL, refresh_grace=GRACE
    ) as w:
        yield w


async def test_a_failed_batch_of_grants_fails_each_request_and_commits_nothing(
    engine: AsyncEngine, writer: LogWriter, database_url: str
) -> None:
    script = Script([await add_user(database_url, f"v{i}@example.com") for i in range(2)])
    await asyncio.gather(*(writer.decide([script.login(sid)]) for sid in script.sessions))
    before = await _state(engine)
    async with engine.connect() as conn:
        head = await read_head(conn)
    async with engine.begin() as conn, appending(conn, lock_timeout_ms=5000):
        # Another appender holds the lock past the writer's lock_timeout: the whole batch must fail.
        outcomes = await asyncio.gather(
            *(writer.decide([script.rotate(sid, 0)]) for sid in script.sessions),
            writer.decide([ChangePassword(script.users[0], "new-hash", None, datetime.now(UTC))]),
            return_exceptions=True,
        )
    assert all(isinstance(o, AppendError) for o in outcomes), outcomes
    assert await _state(engine) == before
    async with engine.connect() as conn:
        assert await read_head(conn) == head
        assert (await conn.execute(text("SELECT count(*) FROM refresh_successors"))).scalar_one() == 0
    # The same rotations go through once the lock is free: nothing of the failed batch was kept.
    decided = await asyncio.gather(*(writer.decide([script.rotate(sid, 0)]) for sid in script.sessions))
    assert {d.verdict for d in decided} == {Verdict.ROTATED}
