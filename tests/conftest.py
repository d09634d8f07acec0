"""Fixtures for real PostgreSQL and RabbitMQ.

Where the servers come from, in order: TOKENLIFE_TEST_DATABASE_URL / TOKENLIFE_TEST_AMQP_URL when set;
otherwise testcontainers when a Docker engine answers; otherwise the tests that need them are skipped with one
reason, except under CI, where a missing server is an error.

Every test that asks for `database_url` gets a database of its own, cloned from a migrated template that this
run creates, and dropped after the test. Exchanges are named per test. Nothing is shared through fixed names.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db import asyncpg_dsn, create_engine
from auth_service.migrate import upgrade

RUN_ID = uuid.uuid4().hex[:8]


def _missing(what: str, variable: str) -> None:
    reason = f"no {what}: set {variable} or start a Docker engine for testcontainers"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _docker_answers() -> bool:
    """Whether a Docker engine answers its ping (asked directly, so no client library leaks a socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it and report its own error
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in sock.recv(4096)
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL server where this run may create and drop databases."""
    url = os.environ.get("TOKENLIFE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if not _docker_answers():
        _missing("PostgreSQL", "TOKENLIFE_TEST_DATABASE_URL")
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """An AMQP URL of a RabbitMQ broker."""
    url = os.environ.get("TOKENLIFE_TEST_AMQP_URL")
    if url:
        yield url
        return
    if not _docker_answers():
        _missing("RabbitMQ", "TOKENLIFE_TEST_AMQP_URL")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-alpine") as container:
        params = container.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}/"


def _with_database(server_url: str, name: str) -> str:
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def migrated_template(postgres_server_url: str) -> Iterator[str]:
    """The name of a database this run migrated once, to clone per test."""
    name = f"tokenlife_test_{RUN_ID}_template"
    asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    try:
        upgrade(_with_database(postgres_server_url, name))
        yield name
    finally:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_factory(postgres_server_url: str, migrated_template: str) -> Iterator[Callable[[], str]]:
    """Makes fresh migrated databases on demand; each is dropped at the end of the test."""
    made: list[str] = []

    def make() -> str:
        name = f"tokenlife_test_{RUN_ID}_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"'))
        made.append(name)
        return _with_database(postgres_server_url, name)

    yield make
    for name in made:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(database_factory: Callable[[], str]) -> str:
    """A fresh, migrated database of this test's own."""
    return database_factory()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on this test's own database."""
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def exchange_name() -> str:
    """An exchange name no other test or run uses."""
    return f"tokenlife.test.{RUN_ID}.{uuid.uuid4().hex[:12]}"
