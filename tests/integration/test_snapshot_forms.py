"""The snapshot in both forms, on a real PostgreSQL: the columnar one holds what the objects hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.log.snapshots import columnar_snapshot_json, snapshot, snapshot_json
from auth_service.log.store import append
from resource_service.check.state import RevocationState

pytestmark = pytest.mark.integration


async def test_columnar_snapshot_loads_the_same_state_as_the_object_snapshot(engine: AsyncEngine) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    later = now + timedelta(minutes=5)
    session = uuid.uuid4()
    events: list[c.Event] = [
        c.TokenRevoked(jti=uuid.uuid4().hex, expires_at=later, reason="test"),
        c.TokenRevoked(jti="not-a-uuid", expires_at=later + timedelta(seconds=1), reason="test"),
        c.SessionRevoked(session_id=session, user_id="alice", expires_at=later, reason="logout"),
        c.UserRevoked(user_id="bob", not_before=now, expires_at=later, reason="logout_all"),
        c.KeyRevoked(kid="k1", expires_at=c.FOREVER, reason="compromised"),
        c.GlobalRevoked(not_before=now, expires_at=later, reason="incident"),
        c.TokenRevoked(jti=uuid.uuid4().hex, expires_at=now - timedelta(hours=1), reason="long dead"),
    ]
    async with engine.begin() as conn:
        await append(conn, events, lock_timeout_ms=5000)
    objects = await snapshot(engine)
    columns = c.decode_snapshot(await columnar_snapshot_json(engine))
    assert isinstance(columns, c.ColumnarSnapshot)
    assert columns.position == objects.position == len(events)
    by_objects, by_columns = RevocationState(), RevocationState()
    assert by_objects.load_snapshot(objects)
    assert by_columns.load_snapshot(columns)
    expected = sorted(objects.revocations, key=lambda r: (r.kind.value, r.subject))
    assert by_columns.revocations() == by_objects.revocations() == expected
    assert len(expected) == len(events) - 1  # the long-expired one is not in either form
    # The object form the route sends, written by PostgreSQL, holds what the models hold, in the same order.
    written = c.RevocationSnapshot.model_validate_json(await snapshot_json(engine))
    assert (written.position, written.revocations) == (objects.position, objects.revocations)
    assert isinstance(c.decode_snapshot(await snapshot_json(engine)), c.RevocationSnapshot)


async def test_columnar_snapshot_of_an_empty_log_has_no_columns(engine: AsyncEngine) -> None:
    columns = c.decode_snapshot(await columnar_snapshot_json(engine))
    assert isinstance(columns, c.ColumnarSnapshot)
    assert (columns.position, columns.columns) == (0, {})
    objects = c.RevocationSnapshot.model_validate_json(await snapshot_json(engine))
    assert (objects.position, objects.revocations) == (0, [])
