"""Snapshots of the live revocations, each with the exact log position it is consistent with: what a
resource service loads at start-up (GET /v1/revocations), in the object form or the columnar one.

Each is read in one REPEATABLE READ transaction: the head and the projection rows come from the same
snapshot, and the projections were written in the appending transactions, so they reflect exactly the
events up to that head.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.tables import revocations
from auth_service.log.lifetimes import REVOCATION_RETENTION
from auth_service.log.store import read_head


async def snapshot(engine: AsyncEngine, *, leeway: timedelta = REVOCATION_RETENTION) -> c.RevocationSnapshot:
    """Every live revocation and the exact position it is consistent with, from one consistent snapshot.

    Entries stay in the snapshot for `leeway` after they expire, because a verifier accepts a token a few
    seconds past its exp (clock skew leeway) and must still see its revocation then.
    """
    head, taken_at, rows = await _live_revocations(engine, leeway)
    return c.RevocationSnapshot(
        position=head,
        taken_at=taken_at,
        revocations=[
            c.Revocation(
                kind=c.RevocationKind(r.kind),
                subject=r.subject,
                not_before=r.not_before,
                expires_at=r.expires_at,
                position=r.position,
            )
            for r in rows
        ],
    )


async def snapshot_json(engine: AsyncEngine, *, leeway: timedelta = REVOCATION_RETENTION) -> bytes:
    """The same snapshot as `snapshot()` as RevocationSnapshot JSON, built by PostgreSQL: the route sends it.

    PostgreSQL writes the revocations' JSON in the same consistent read as the head, in rows of
    SNAPSHOT_CHUNK, and it comes back as bytes that pass through untouched: no model per row, nothing that
    holds the event loop.
    """
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            head = await read_head(conn)
            taken_at = (await conn.execute(select(func.now()))).scalar_one()
            chunks: list[bytes] = list((await conn.execute(_OBJECTS, {"since": taken_at - leeway})).scalars())
    return b"".join(
        (
            f'{{"schema_version":{c.SCHEMA_VERSION},"position":{head},'
            f'"taken_at":"{taken_at.isoformat()}","revocations":['.encode(),
            b",".join(chunks),
            b"]}",
        )
    )


async def columnar_snapshot_json(engine: AsyncEngine, *, leeway: timedelta = REVOCATION_RETENTION) -> str:
    """The same snapshot as `snapshot()` as ColumnarSnapshot JSON text: what a cold start reads.

    PostgreSQL builds each column (json_agg) in the same consistent read as the head, so 100k revocations
    cost one short query instead of a Python object and a model per row.
    """
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            head = await read_head(conn)
            taken_at = (await conn.execute(select(func.now()))).scalar_one()
            rows = await conn.execute(_COLUMNS, {"since": taken_at - leeway})
            columns = []
            for kind, subjects, expires_at, positions, not_before in rows:
                name = c.RevocationKind(kind).value  # only the contract's kinds reach the wire
                watermark = f',"not_before":{not_before}' if not_before is not None else ""
                columns.append(
                    f'"{name}":{{"subjects":{subjects},"expires_at":{expires_at},'
                    f'"positions":{positions}{watermark}}}'
                )
    return (
        f'{{"schema_version":{c.SCHEMA_VERSION},"form":"columns","position":{head},'
        f'"taken_at":"{taken_at.isoformat()}","columns":{{{",".join(columns)}}}}}'
    )


# Seconds since the epoch as JSON numbers; not_before only for the kinds that are watermarks. No ORDER BY in
# the aggregates: the order of revocations does not matter, only that item i of every column is one row, and
# the aggregates of a group are all fed by the one aggregate node, row by row in the same order (json_agg has
# no combine function, so no parallel partial aggregation reorders them). Three sorts would double the query.
_COLUMNS = text(
    """
    SELECT kind,
           json_agg(subject)::text,
           json_agg(extract(epoch FROM expires_at))::text,
           json_agg(position)::text,
           CASE WHEN kind IN ('user', 'global') THEN json_agg(extract(epoch FROM not_before))::text END
    FROM revocations
    WHERE expires_at > :since
    GROUP BY kind
    """
)


# The object form, as RevocationSnapshot's model would write it: UTC timestamps with a Z, not_before null for
# the kinds that are no watermarks, in position order. As bytea, so the driver hands the bytes over as is.
# In rows of SNAPSHOT_CHUNK revocations, not one row: a single multi-megabyte row is received by the driver in
# one long callback (45 ms of CPU for 50k measured), holding the event loop.
SNAPSHOT_CHUNK = 2000
_OBJECTS = text(
    f"""
    SELECT convert_to(string_agg(object, ',' ORDER BY position), 'UTF8')
    FROM (SELECT position, (row_number() OVER (ORDER BY position) - 1) / {SNAPSHOT_CHUNK} AS chunk,
                 json_build_object(
                     'kind', kind,
                     'subject', subject,
                     'not_before', to_char(not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                     'expires_at', to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                     'position', position)::text AS object
          FROM revocations
          WHERE expires_at > :since) AS r
    GROUP BY chunk
    ORDER BY chunk
    """
)


async def _live_revocations(engine: AsyncEngine, leeway: timedelta) -> tuple[int, Any, Sequence[Any]]:
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            # Both reads see the same snapshot; the projections were written in the appending transactions,
            # so they reflect exactly the events up to this head.
            head = await read_head(conn)
            taken_at = (await conn.execute(select(func.now()))).scalar_one()
            rows = await conn.execute(
                select(revocations)
                .where(revocations.c.expires_at > taken_at - leeway)
                .order_by(revocations.c.position)
            )
            return head, taken_at, rows.all()
