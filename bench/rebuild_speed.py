"""The rebuild's speed: `tokenlife log rebuild` over REBUILD_EVENTS generated events (INSERT ... SELECT into a
throwaway database), against the event-by-event path (`projections.project`) over the first BASELINE_EVENTS.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text

from bench.stack import _asyncpg_url, _database

REBUILD_EVENTS = 1_000_000
BASELINE_EVENTS = 20_000

# One generated history: per group of 20 positions, 5 logins (session.started + token.issued each),
# 4 refreshes, 3 token revocations, 2 session revocations and 1 logout-all watermark; 5 sessions a group.
# It starts at $3, one event a millisecond, and every revocation expires a day after its event: started
# shortly before the run, every revocation is live, so the prune after the rebuild deletes none of them
# (from a fixed date in the past, the timed rebuild would also have deleted every row it wrote).
_GENERATE = """
INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, jti, expires_at,
                       schema_version, payload)
SELECT g, id, type, at, usr, sid, jti, exp, 1,
       jsonb_strip_nulls(jsonb_build_object(
           'schema_version', 1, 'type', type, 'event_id', id, 'occurred_at', at, 'position', g,
           'prev_position', g - 1, 'user_id', usr, 'session_id', sid, 'jti', jti, 'expires_at', exp,
           'client_id', CASE WHEN type = 'session.started' THEN 'web' END,
           'kid', CASE WHEN type = 'token.issued' THEN 'k1' END,
           'issued_at', CASE WHEN type = 'token.issued' THEN at END,
           'cause', CASE WHEN k BETWEEN 5 AND 9 THEN 'login' WHEN k BETWEEN 10 AND 13 THEN 'refresh' END,
           'not_before',
               CASE WHEN type = 'user.revoked' THEN date_trunc('second', at) + interval '1 second' END,
           'reason', CASE WHEN type LIKE '%.revoked' THEN 'bench' END))
FROM (SELECT g, k, gen_random_uuid() AS id,
             CASE WHEN k < 5 THEN 'session.started' WHEN k < 14 THEN 'token.issued'
                  WHEN k < 17 THEN 'token.revoked' WHEN k < 19 THEN 'session.revoked' ELSE 'user.revoked' END
                 AS type,
             $3::timestamptz + g * interval '1 millisecond' AS at,
             'u' || ((g / 20 * 5 + g % 5) % 50000) AS usr,
             md5('s' || (g / 20 * 5 + g % 5))::uuid AS sid,
             CASE WHEN k >= 5 AND k < 17 THEN md5('j' || g) END AS jti,
             $3::timestamptz + g * interval '1 millisecond' + interval '1 day' AS exp
      FROM (SELECT g, g % 20 AS k FROM generate_series($1::bigint, $2::bigint) AS g) AS n) AS e
"""


async def measure(server_url: str) -> tuple[float, float]:
    """(rebuild events/s over REBUILD_EVENTS, event-by-event events/s over BASELINE_EVENTS)."""
    from auth_service.db.engine import create_engine
    from auth_service.log import projections
    from auth_service.log.store import read_after
    from auth_service.maintenance import rebuild_projections
    from auth_service.settings import AuthSettings

    async with AsyncExitStack() as stack:
        url = await _database(stack, server_url, f"tokenlife_bench_rebuild_{uuid.uuid4().hex[:8]}", None)
        conn = await asyncpg.connect(_asyncpg_url(server_url, url.rsplit("/", 1)[1]))
        try:
            step = 100_000
            start = datetime.now(UTC) - REBUILD_EVENTS * timedelta(milliseconds=1)
            for first in range(1, REBUILD_EVENTS + 1, step):
                await conn.execute(_GENERATE, first, min(first + step - 1, REBUILD_EVENTS), start)
            await conn.execute("ANALYZE event_log")
        finally:
            await conn.close()
        settings = AuthSettings(database_url=url, env="dev")
        began = time.perf_counter()
        replayed, _pruned = await rebuild_projections(settings)
        rebuild_rate = replayed / (time.perf_counter() - began)

        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as sa:
                await sa.execute(text("TRUNCATE sessions, revocations"))
                events: list[Any] = []
                while len(events) < BASELINE_EVENTS:
                    events += await read_after(sa, len(events), 1000)
                began = time.perf_counter()
                for event in events:
                    await projections.project(sa, event)
                baseline = len(events) / (time.perf_counter() - began)
                await sa.rollback()
        finally:
            await engine.dispose()
    return rebuild_rate, baseline
