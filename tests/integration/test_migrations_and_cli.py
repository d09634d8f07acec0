"""`tokenlife migrate` and `tokenlife log rebuild`, run as a newcomer would run them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import create_engine
from auth_service.db.tables import revocations, sessions
from auth_service.log.store import append

pytestmark = pytest.mark.integration


def tokenlife(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
    environ |= {"TOKENLIFE_ENV": "dev", "TOKENLIFE_DATABASE_URL": database_url, **env}
    return subprocess.run(
        [sys.executable, "-m", "tokenlife", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _schema(url: str) -> tuple[list[str], str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sorted(inspect(sync).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            return tables, str(version)
    finally:
        await engine.dispose()


def test_migrate_twice_in_a_row_is_a_no_op(database_url: str) -> None:
    before = asyncio.run(_schema(database_url))
    for _ in range(2):
        result = tokenlife("migrate", database_url=database_url)
        assert result.returncode == 0, result.stderr
    assert asyncio.run(_schema(database_url)) == before
    assert before[0] == [
        "alembic_version",
        "event_log",
        "login_failures",
        "refresh_successors",
        "refresh_tokens",
        "relay_cursor",
        "revocations",
        "sessions",
        "signing_keys",
        "ssf_acks",
        "ssf_leader",
        "ssf_streams",
        "ssf_subjects",
        "users",
    ]


def test_cli_refuses_unsafe_settings_with_a_clear_message(database_url: str) -> None:
    result = tokenlife("migrate", database_url=database_url, TOKENLIFE_ENV="prod")
    assert result.returncode == 2
    assert "TOKENLIFE_AMQP_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


async def test_log_rebuild_command_restores_damaged_projections(
    engine: AsyncEngine, database_url: str
) -> None:
    sid = uuid.uuid4()
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await append(
            conn,
            [
                c.SessionStarted(
                    user_id="u", session_id=sid, client_id="web", expires_at=now + timedelta(days=1)
                ),
                c.SessionRevoked(
                    session_id=sid, user_id="u", expires_at=now + timedelta(minutes=5), reason="logout"
                ),
            ],
            lock_timeout_ms=5000,
        )
    async with engine.begin() as conn:
        await conn.execute(revocations.delete())
        await conn.execute(sessions.update().values(revoked_at=None))
    result = await asyncio.to_thread(tokenlife, "log", "rebuild", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert "from 2 events" in result.stdout
    async with engine.connect() as conn:
        assert (await conn.execute(select(sessions.c.revoked_reason))).scalar_one() == "logout"
        assert (await conn.execute(select(revocations.c.subject))).scalar_one() == str(sid)
