"""Fixtures for real PostgreSQL and RabbitMQ.

Where PostgreSQL comes from: TOKENLIFE_TEST_DATABASE_URL when set, otherwise one embedded PostgreSQL started
for the whole run in a temporary directory (tokenlife/embedded_db.py), so the suite needs nothing installed.
RabbitMQ: TOKENLIFE_TEST_AMQP_URL when set, otherwise testcontainers when a Docker engine answers, otherwise
the tests that need it are skipped with the reason, except under CI, where a missing broker is an error.

Every test that asks for `database_url` gets a database of its own, cloned from a migrated template that this
run creates, and dropped after the test. Exchanges are named per test and removed after it, with the
dead-letter exchange and queue a resource service declares beside them; at the end of the run, a passive
declare of every name handed out must fail (404), or the run fails. Nothing is shared through fixed names.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiormq
import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.db.migrate import upgrade
from auth_service.settings import AuthSettings

RUN_ID = uuid.uuid4().hex[:8]


def _print_pending_tasks(after: float) -> None:
    tasks = [t for t in list(getattr(asyncio.tasks, "_all_tasks", ())) if not t.done()]
    print(f"\n--- {len(tasks)} pending asyncio tasks after {after:.0f} s ---", file=sys.stderr)  # noqa: T201
    for task in tasks:
        task.print_stack(limit=12, file=sys.stderr)


@pytest.fixture(autouse=True)
def _say_what_a_stuck_test_awaits(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before pytest-timeout fails a hung test (pyproject: timeout), print what each of its tasks awaits: the
    thread stacks pytest-timeout prints show only an event loop waiting."""
    marker = request.node.get_closest_marker("timeout")
    configured = request.config.getini("timeout") or 0
    timeout = float(marker.args[0]) if marker and marker.args else float(configured)
    if timeout <= 0:
        yield
        return
    timer = threading.Timer(timeout * 0.9, _print_pending_tasks, (timeout * 0.9,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(autouse=True)
async def _no_task_left() -> AsyncIterator[None]:
    """After each test and its other fixtures: cancel and await every task still on the loop, round after
    round, until none is left.

    The loop's own teardown (asyncio.Runner) cancels the tasks it finds once, but a task's done callback can
    start another then: aiormq's reader, cancelled on a connection a test closed, starts the connection's
    closing tasks. Those were left pending on the closed loop, destroyed when garbage was next collected, and
    the warning that came with it (an error here, filterwarnings) failed whichever test was running then.
    """
    yield
    current = asyncio.current_task()
    for _ in range(10):
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=1.0)


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
    from tokenlife import embedded_db

    # Not under pytest's basetemp: a later pytest run (of anyone on the machine) prunes old basetemps, and
    # would delete a running server's data directory and socket. Throwaway data: no fsync.
    data_dir = Path(tempfile.mkdtemp(prefix="tokenlife-test-pg-"))
    try:
        server = embedded_db.start(data_dir, durable=False)
        try:
            yield server.url()
        finally:
            server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# Every exchange name this run handed out on the broker (exchange_name, the fault suite's stack).
EXCHANGES: list[str] = []


async def delete_broker_objects(amqp_url: str, exchange: str) -> None:
    """Delete an exchange and what a resource service declares beside it (<exchange>.dlx, <exchange>.dead).

    RabbitMQ deletes idempotently: a name never declared costs nothing."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{exchange}.dead")
        await channel.exchange_delete(f"{exchange}.dlx")
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def left_on_broker(amqp_url: str, exchanges: list[str]) -> list[str]:
    """Which of these exchanges, their .dlx exchanges and .dead queues still exist (no management API: a
    passive declare of each, which fails with 404 when it does not)."""
    left: list[str] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        for exchange in exchanges:
            for name, is_queue in ((exchange, False), (f"{exchange}.dlx", False), (f"{exchange}.dead", True)):
                channel = await connection.channel()  # a failed passive declare closes its channel
                try:
                    if is_queue:
                        await channel.get_queue(name, ensure=True)
                    else:
                        await channel.get_exchange(name, ensure=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    continue
                left.append(f"queue {name}" if is_queue else f"exchange {name}")
                await channel.close()
    finally:
        await connection.close()
    return left


def _nothing_left(amqp_url: str) -> None:
    left = asyncio.run(left_on_broker(amqp_url, EXCHANGES))
    if left:
        pytest.fail(f"the run left {len(left)} objects on the broker: {', '.join(left)}", pytrace=False)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """An AMQP URL of a RabbitMQ broker; at the end of the run, nothing of the run's may be left on it."""
    url = os.environ.get("TOKENLIFE_TEST_AMQP_URL")
    if url:
        yield url
        _nothing_left(url)
        return
    if not _docker_answers():
        _missing("RabbitMQ", "TOKENLIFE_TEST_AMQP_URL")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-alpine") as container:
        params = container.get_connection_params()
        url = f"amqp://guest:guest@{params.host}:{params.port}/"
        yield url
        _nothing_left(url)


@pytest.fixture(scope="session")
def stream_port(amqp_url: str) -> int:
    """The port of the broker's stream protocol (the rabbitmq_stream plugin; `bash .ci/run` enables it)."""
    host = urlsplit(amqp_url).hostname or "127.0.0.1"
    port = int(os.environ.get("TOKENLIFE_TEST_STREAM_PORT", "5552"))
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        reason = f"no RabbitMQ stream protocol on {host}:{port}: rabbitmq-plugins enable rabbitmq_stream"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(reason)
    return port


async def _delete_queue(amqp_url: str, name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


@pytest.fixture
def stream(amqp_url: str, stream_port: int, exchange_name: str) -> Iterator[str]:
    """The name of this test exchange's stream, deleted after the test (a stream keeps its disk)."""
    from amqpkit.streams import stream_name

    yield stream_name(exchange_name)
    asyncio.run(_delete_queue(amqp_url, stream_name(exchange_name)))


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
def exchange_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """An exchange name no other test or run uses; the test's broker objects of that name go after it."""
    name = f"tokenlife.test.{RUN_ID}.{uuid.uuid4().hex[:12]}"
    EXCHANGES.append(name)
    yield name
    # After the test's other fixtures (they asked for this one first, so end first): its processes are gone.
    # A test that never asked for the broker (a long-poll variant) declared nothing.
    if "amqp_url" in request.fixturenames:
        asyncio.run(delete_broker_objects(request.getfixturevalue("amqp_url"), name))


# --- the auth service -------------------------------------------------------------------------------------

SERVICE_CLIENT = ("test-service", "test-service-secret-0123456789")
PASSWORD = "correct horse battery staple"


def auth_env(database_url: str, amqp_url: str = "", **extra: str) -> dict[str, str]:
    """TOKENLIFE_* variables for an auth service on this test's database, in dev mode."""
    env = {
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_DATABASE_URL": database_url,
        "TOKENLIFE_SERVICE_CLIENTS": json.dumps({SERVICE_CLIENT[0]: SERVICE_CLIENT[1]}),
        "TOKENLIFE_RELAY_ENABLED": "false",
        # The Shared Signals push deliverer (its own leader lock and connections) only where a test wants it.
        "TOKENLIFE_SSF_ENABLED": "false",
    }
    if amqp_url:
        # Heartbeats as often as the tests' resource services expect them (their heartbeat_interval).
        env |= {
            "TOKENLIFE_AMQP_URL": amqp_url,
            "TOKENLIFE_RELAY_ENABLED": "true",
            "TOKENLIFE_HEARTBEAT_INTERVAL": "0.2",
        }
    return env | extra


@pytest.fixture
def auth_settings(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AuthSettings:
    """Dev-mode settings of an in-process auth service on this test's database, relay off."""
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    for name, value in auth_env(database_url).items():
        monkeypatch.setenv(name, value)
    return AuthSettings()


@asynccontextmanager
async def serve_auth(settings: AuthSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process auth service with its lifespan running, and an HTTP client talking to it."""
    from auth_service.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            yield client


@pytest.fixture
async def auth_client(auth_settings: AuthSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to an in-process auth service (lifespan started) on this test's database."""
    async with serve_auth(auth_settings) as client:
        yield client


async def add_user(database_url: str, email: str, password: str = PASSWORD, scopes: str = "") -> str:
    """Create a user directly in the database; returns the user id."""
    from auth_service.accounts.passwords import hash_password
    from auth_service.db.tables import users

    engine = create_engine(database_url, pool_size=1)
    try:
        user_id = uuid.uuid4()
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().values(
                    user_id=user_id, email=email, password_hash=hash_password(password), scopes=scopes
                )
            )
        return str(user_id)
    finally:
        await engine.dispose()


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_auth_server(
    database_url: str, amqp_url: str = "", **extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `tokenlife auth serve` on a free loopback port; returns the process and base URL once ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
    env |= auth_env(database_url, amqp_url, **({"TOKENLIFE_ISSUER": base} | extra))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenlife",
            "auth",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"auth service exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("auth service did not become ready within 30 s")


@contextmanager
def running_auth_server(database_url: str, amqp_url: str = "", **extra: str) -> Iterator[str]:
    """`start_auth_server` for the block: its base URL; the process is killed at the end."""
    proc, base = start_auth_server(database_url, amqp_url, **extra)
    try:
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def auth_server(database_url: str) -> Iterator[str]:
    """A real `tokenlife auth serve` process on loopback (relay off); its base URL. Killed after the test."""
    with running_auth_server(database_url) as base:
        yield base
