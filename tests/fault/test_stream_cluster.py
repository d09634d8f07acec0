"""A real three-node RabbitMQ cluster: the stream's leader node killed while revocations flow.

The test starts three private nodes (tests/rabbit_nodes.py: own names, ports, data directories and cookie;
the machine's broker is not touched), declares the stream on the first, replicated on all three, and runs a
relay and three resource instances reading it through the surviving nodes, under logins and logouts. Then
kill -9 of the node that leads the stream. The promise, checked as the fault suite checks it: no 200 for a
revoked token on a probe sent later than B after its logout's 2xx (an instance answers 401, or 503 while it
cannot confirm), no 500, every revocation held by every instance at the end (none lost), and each instance
reading the stream again, from a replica, after the kill.

Slow (a cluster's start is half a minute): it runs only with TOKENLIFE_FAULT_CLUSTER=1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import aio_pika
import httpx
import pytest

from amqpkit.streams import declare_stream, stream_name
from auth_service.broker import RelaySettings, StreamSpec
from auth_service.contract import Revocation
from auth_service.relay import Relay
from resource_service.app import Runtime
from tests import rabbit_nodes
from tests.conftest import add_user, running_auth_server
from tests.integration.test_feed import eventually, live_revocations, login, resource_app, resource_settings

pytestmark = [
    pytest.mark.fault,
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("TOKENLIFE_FAULT_CLUSTER") != "1",
        reason="starts a three-node RabbitMQ cluster (slow): set TOKENLIFE_FAULT_CLUSTER=1",
    ),
    pytest.mark.timeout(600),
]

STREAM = StreamSpec(max_age=3600, max_bytes=100_000_000)
USERS = 3
WARM = 3.0  # seconds of load before the kill
AFTER = 12.0  # seconds of load after it


@pytest.fixture
def cluster() -> Iterator[list[rabbit_nodes.RabbitNode]]:
    """Three private nodes in one cluster; stopped and their files deleted after the test."""
    reason = rabbit_nodes.available()
    if reason:
        pytest.skip(reason)
    home = Path(tempfile.mkdtemp(prefix="tokenlife-cluster-"))
    nodes = rabbit_nodes.start_cluster(home, f"tl-cluster-{uuid.uuid4().hex[:6]}", 3)
    try:
        yield nodes
    finally:
        rabbit_nodes.stop_all(nodes)
        shutil.rmtree(home, ignore_errors=True)


def _stream_members(node: rabbit_nodes.RabbitNode, name: str) -> tuple[str, list[str]]:
    """The node leading the stream and its members, as the cluster says."""
    done = node.ctl("list_queues", "name", "leader", "members", "--no-table-headers", "--quiet")
    for line in done.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == name:
            members = fields[2].strip("[]").replace("'", "").split(",")
            return fields[1], [m.strip() for m in members if m.strip()]
    raise AssertionError(f"no stream {name} in: {done.stdout[-500:]}")


class Ledger:
    """Logouts and probes, on this process's monotonic clock."""

    def __init__(self) -> None:
        self.revoked: dict[str, float] = {}  # token -> its logout's 2xx time
        self.violations: list[str] = []
        self.probes = 0
        self.refused_stale = 0

    def probed(self, instance: int, token: str, sent: float, status: int) -> None:
        """Judge one probe of a revoked token."""
        self.probes += 1
        if status == 503:
            self.refused_stale += 1
        if status >= 500 and status != 503:
            self.violations.append(f"instance {instance}: {status} for a probe")
        if status == 200 and sent - self.revoked[token] > BOUND:
            self.violations.append(
                f"instance {instance}: 200 {sent - self.revoked[token]:.2f} s after logout"
            )


BOUND = 1.5  # the max_staleness of the tests' resource settings (test_feed.resource_settings)


async def _load(auth_url: str, email: str, ledger: Ledger) -> None:
    async with httpx.AsyncClient(base_url=auth_url, timeout=10) as http:
        while True:
            token = await login(auth_url, email)
            response = await http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 200:
                ledger.revoked[token] = time.monotonic()
            await asyncio.sleep(0.05)


async def _probe(i: int, client: httpx.AsyncClient, ledger: Ledger) -> None:
    while True:
        for token in list(ledger.revoked)[-20:]:
            sent = time.monotonic()
            response = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            ledger.probed(i, token, sent, response.status_code)
        await asyncio.sleep(0.02)


async def _declare(node: rabbit_nodes.RabbitNode, exchange: str) -> None:
    connection = await aio_pika.connect(node.amqp_url)
    try:
        await declare_stream(
            await connection.channel(), exchange, max_age=STREAM.max_age, max_bytes=STREAM.max_bytes
        )
    finally:
        await connection.close()


@pytest.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Background tasks of the test, cancelled after it."""
    started: list[asyncio.Task[None]] = []
    yield started
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


async def test_killing_the_stream_leaders_node_loses_nothing_and_consumers_resume_from_replicas(
    cluster: list[rabbit_nodes.RabbitNode], database_url: str, tasks: list[asyncio.Task[None]]
) -> None:
    exchange = f"tokenlife.cluster.{uuid.uuid4().hex[:12]}"
    await _declare(cluster[0], exchange)
    leader_name, members = await asyncio.to_thread(_stream_members, cluster[0], stream_name(exchange))
    assert sorted(members) == sorted(n.node for n in cluster)  # replicated on all three
    leader = next(n for n in cluster if n.node == leader_name)
    entry = next(n for n in cluster if n is not leader)  # the relay and the instances enter by a survivor
    emails = [f"user{i}@cluster.test" for i in range(USERS)]
    for email in emails:
        await add_user(database_url, email)
    relay = Relay(
        database_url,
        entry.amqp_url,
        exchange,
        settings=RelaySettings(heartbeat_interval=0.2, leader_retry_interval=0.05, lease_timeout=0.5),
        stream=STREAM,
    )
    await relay.start()
    ledger = Ledger()
    try:
        with running_auth_server(database_url) as auth_url:
            settings = resource_settings(
                auth_url, entry.amqp_url, exchange, transport="stream", stream_port=entry.stream_port
            )
            async with AsyncExitStack() as apps:
                instances: list[tuple[httpx.AsyncClient, Runtime]] = [
                    await apps.enter_async_context(resource_app(settings)) for _ in range(3)
                ]
                for _, rt in instances:
                    await eventually(partial(_live, rt), "reading the stream")
                tasks += [asyncio.create_task(_load(auth_url, e, ledger)) for e in emails]
                tasks += [asyncio.create_task(_probe(i, c, ledger)) for i, (c, _) in enumerate(instances)]
                await asyncio.sleep(WARM)
                before = [rt.feed.counters["reconnects"] for _, rt in instances]
                await asyncio.to_thread(leader.kill)
                await asyncio.sleep(AFTER)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # Every instance reads the stream again, through a surviving replica, with heartbeats.
                for _, rt in instances:
                    await eventually(partial(_live, rt), "reading the stream again", deadline=30)
                    beats = rt.feed.counters["heartbeats"]
                    await eventually(partial(_beats, rt, beats), "heartbeats from a replica")
                new_leader, _ = await asyncio.to_thread(_stream_members, entry, stream_name(exchange))
                assert new_leader != leader.node
                # None lost: every instance holds exactly the auth service's live revocations.
                expected = await live_revocations(auth_url)
                for _, rt in instances:
                    await eventually(partial(_holds, rt, expected), "every revocation held", deadline=30)
                reconnected = [
                    rt.feed.counters["reconnects"] - b for (_, rt), b in zip(instances, before, strict=True)
                ]
    finally:
        await relay.stop()
    assert ledger.violations == []
    assert ledger.revoked
    assert ledger.probes > 0
    assert any(n > 0 for n in reconnected), "no consumer noticed the leader's node going"
    print(  # noqa: T201
        f"\ncluster: leader {leader.node} killed; {len(ledger.revoked)} logouts, {ledger.probes} probes,"
        f" {ledger.refused_stale} answered 503, reconnects by instance {reconnected}, new leader {new_leader}"
    )


async def _live(rt: Runtime) -> bool:
    return rt.feed.live and rt.feed.caught_up


async def _beats(rt: Runtime, before: int) -> bool:
    return rt.feed.counters["heartbeats"] > before + 3 and rt.feed.live


async def _holds(rt: Runtime, expected: list[Revocation]) -> bool:
    return rt.feed.state.revocations() == expected
