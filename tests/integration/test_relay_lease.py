"""The relay leader's lease: a paused leader (SIGSTOP) keeps its lock, so a standby ends its session."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db.engine import asyncpg_dsn
from tests.integration.test_relay import (
    Consumer,
    RelayFactory,
    append_events,
    consumer,
    eventually,
    lock_holders,
    start_relay,
)

pytestmark = pytest.mark.integration
__all__ = ["consumer", "start_relay"]  # fixtures shared with test_relay.py

LEASE_TIMEOUT = 1.5  # the default: below the 2 s bound
SLACK = 10.0  # a loaded machine; the deadline is on the outcome, not a timed assertion


async def lease(database_url: str) -> tuple[int | None, bool]:
    """The lease's pid, and whether its renewal is older than the timeout (on the database's clock)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow(
            "SELECT leader_pid, lease_renewed_at < clock_timestamp() - make_interval(secs => $1) AS lapsed"
            " FROM relay_cursor WHERE id = 1",
            LEASE_TIMEOUT,
        )
        assert row is not None
        return row["leader_pid"], bool(row["lapsed"])
    finally:
        await conn.close()


async def test_a_paused_leader_is_ended_by_a_standby_and_stands_down_when_it_resumes(
    engine: AsyncEngine,
    database_url: str,
    amqp_url: str,
    exchange_name: str,
    consumer: Consumer,
    start_relay: RelayFactory,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_DATABASE_URL": database_url,
        "TOKENLIFE_AMQP_URL": amqp_url,
        "TOKENLIFE_EXCHANGE": exchange_name,
    }
    script = "import sys, tokenlife.cli as cli; sys.exit(cli.main(sys.argv[1:]))"
    args = ["relay", "--heartbeat-interval", "0.2", "--publish-timeout", "1"]
    with (tmp_path / "relay.log").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, *args, env=env, stdout=output, stderr=output
        )
    try:
        await eventually(lambda: len(consumer.heartbeats) > 0, "heartbeats from the relay process")
        [paused_pid] = await lock_holders(database_url)
        assert (await lease(database_url)) == (paused_pid, False)
        standby = await start_relay(leader_retry_interval=0.2, lease_timeout=LEASE_TIMEOUT)

        process.send_signal(signal.SIGSTOP)
        # A dead process would free the lock at once; a paused one holds it: only the lease frees it.
        await eventually(lambda: standby.is_leader, "the standby leading", within=LEASE_TIMEOUT + SLACK)
        holders = await lock_holders(database_url)
        assert paused_pid not in holders
        assert len(holders) == 1
        assert (await lease(database_url))[0] == holders[0]
        head = await append_events(engine, 5)
        await eventually(lambda: consumer.has_all(head), "events published by the new leader")

        process.send_signal(signal.SIGCONT)
        # The resumed process finds its session ended and stands down: the new leader keeps the lock.
        await asyncio.sleep(1.0)
        assert process.returncode is None
        assert await lock_holders(database_url) == holders
        assert standby.is_leader
        head = await append_events(engine, 5)
        await eventually(lambda: consumer.has_all(head), "events after the old leader resumed")
        assert consumer.first_arrivals() == list(range(1, head + 1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            await process.wait()
