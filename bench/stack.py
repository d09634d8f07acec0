"""A real tokenlife stack for benchmarks: a fresh database, an auth service and resource services on loopback.

`running_stack()` creates and migrates a database of its own on TOKENLIFE_BENCH_DATABASE_URL's server, adds
one user, starts `tokenlife auth serve` (relay on, a per-run exchange on TOKENLIFE_BENCH_AMQP_URL) and
`tokenlife resource serve` as subprocesses, and waits until every /readyz answers 200. On exit it kills the
processes, drops the database and deletes the exchanges and queue the run declared. When a server is
unreachable or a process does not start, it raises StackUnavailable with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import IO

import asyncpg
import httpx
from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Nothing listens on port 1: a resource service pointed here never reaches a broker, so it polls over HTTP.
CLOSED_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
SERVICE_CLIENT = ("bench", "bench-secret-0123456789")
EMAIL = "bench@example.com"
PASSWORD = "a long enough bench password"
READY_TIMEOUT = 30.0


class StackUnavailable(Exception):
    """The stack could not be started; the message says why (a server down, a process that died)."""


@dataclass(frozen=True)
class Stack:
    """Where the running stack answers, and the credentials to use it."""

    auth_url: str
    resource_url: str
    poll_only_url: str | None
    exchange: str
    resource_env: dict[str, str]
    database_url: str = ""  # asyncpg form (postgresql://...), for observers of the run's database
    resource_pid: int = 0  # the first resource service's process, for observers of its memory
    email: str = EMAIL
    password: str = PASSWORD
    service_client: tuple[str, str] = SERVICE_CLIENT


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _asyncpg_url(url: str, database: str) -> str:
    return make_url(url).set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def _sqlalchemy_url(url: str, database: str) -> str:
    return (
        make_url(url)
        .set(drivername="postgresql+asyncpg", database=database)
        .render_as_string(hide_password=False)
    )


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_url(server_url, "postgres"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _add_user(database_url: str) -> None:
    from auth_service.accounts.passwords import hash_password
    from auth_service.db.engine import create_engine
    from auth_service.db.tables import users

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().values(
                    user_id=uuid.uuid4(),
                    email=EMAIL,
                    password_hash=hash_password(PASSWORD),
                    scopes="read write",
                )
            )
    finally:
        await engine.dispose()


async def _database(
    stack: AsyncExitStack, server_url: str, name: str, prepare: Callable[[str], Awaitable[None]] | None
) -> str:
    """Create, migrate and fill the run's database; dropped when `stack` closes."""
    from auth_service.db.migrate import upgrade

    quoted = '"' + name.replace('"', '""') + '"'
    try:
        await _admin(server_url, f"CREATE DATABASE {quoted}")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StackUnavailable(f"PostgreSQL: {exc}") from exc
    stack.push_async_callback(
        _cleanup,
        "drop database",
        lambda: _admin(server_url, f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
    )
    url = _sqlalchemy_url(server_url, name)
    await asyncio.to_thread(upgrade, url)  # Alembic's env runs its own event loop
    await _add_user(url)
    if prepare is not None:
        await prepare(_asyncpg_url(server_url, name))
    return url


async def _cleanup(what: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run one cleanup step; a failure is reported on stderr and does not hide the others."""
    try:
        await step()
    except Exception as exc:  # cleanup must go on; the benchmark's numbers are already taken
        print(f"bench stack: {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)  # noqa: T201


async def _check_broker(amqp_url: str) -> None:
    import aio_pika

    try:
        connection = await asyncio.wait_for(aio_pika.connect(amqp_url, timeout=5), 10)
    except Exception as exc:  # aio_pika raises many kinds for an unreachable broker
        raise StackUnavailable(f"RabbitMQ: {type(exc).__name__}: {exc}") from exc
    await connection.close()


async def _delete_broker_objects(amqp_url: str, exchange: str) -> None:
    import aio_pika

    connection = await asyncio.wait_for(aio_pika.connect(amqp_url, timeout=5), 10)
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{exchange}.dead")
        await channel.exchange_delete(f"{exchange}.dlx")
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


def spawn(
    stack: AsyncExitStack, args: list[str], env: dict[str, str], *, module: str = "tokenlife"
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start `python -m MODULE ARGS`; killed (and its log closed) when `stack` closes."""
    log = tempfile.TemporaryFile()  # not a pipe: a chatty process must never block on a full pipe
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=base | env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )

    def stop() -> None:
        proc.kill()
        proc.wait(timeout=10)
        log.close()

    stack.callback(stop)
    return proc, log


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


async def ready(
    url: str, proc: subprocess.Popen[bytes], log: IO[bytes], what: str, *, interval: float = 0.1
) -> None:
    """Wait until `url`/readyz answers 200; StackUnavailable when the process dies or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackUnavailable(f"{what} exited ({proc.returncode}): {_tail(log)}")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(interval)
    raise StackUnavailable(f"{what} not ready within {READY_TIMEOUT:.0f} s: {_tail(log)}")


def _serve(
    stack: AsyncExitStack, kind: str, env: dict[str, str], *, module: str = "tokenlife"
) -> tuple[str, subprocess.Popen[bytes], IO[bytes]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if kind == "auth":
        env = env | {"TOKENLIFE_ISSUER": url}
    proc, log = spawn(stack, [kind, "serve", "--host", "127.0.0.1", "--port", str(port)], env, module=module)
    return url, proc, log


@asynccontextmanager
async def running_stack(
    *,
    poll_only: bool = False,
    prepare: Callable[[str], Awaitable[None]] | None = None,
    resource_module: str = "tokenlife",
    resource_env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """A ready stack; with poll_only, also a resource service whose broker is unreachable (HTTP poll only).

    `prepare`, given the database's asyncpg URL, runs after the migrations and before any service starts.
    `resource_module` is what `python -m` runs as `resource serve` (a benchmark's instrumented variant), with
    `resource_env` added to the resource services' environment.
    """
    server_url = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    amqp_url = os.environ.get("TOKENLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL)
    run_id = uuid.uuid4().hex[:12]
    exchange = f"tokenlife.bench.{run_id}"
    async with AsyncExitStack() as stack:
        await _check_broker(amqp_url)
        database_url = await _database(stack, server_url, f"tokenlife_bench_{run_id}", prepare)
        stack.push_async_callback(
            _cleanup, "delete exchanges", lambda: _delete_broker_objects(amqp_url, exchange)
        )
        auth_url, auth_proc, auth_log = _serve(
            stack,
            "auth",
            {
                "TOKENLIFE_ENV": "dev",
                "TOKENLIFE_DATABASE_URL": database_url,
                "TOKENLIFE_AMQP_URL": amqp_url,
                "TOKENLIFE_EXCHANGE": exchange,
                "TOKENLIFE_SERVICE_CLIENTS": json.dumps({SERVICE_CLIENT[0]: SERVICE_CLIENT[1]}),
                "TOKENLIFE_RELAY_ENABLED": "true",
            },
        )
        await ready(auth_url, auth_proc, auth_log, "auth service")
        resource_env = (resource_env or {}) | {
            "TOKENLIFE_ENV": "dev",
            "TOKENLIFE_AUTH_URL": auth_url,
            "TOKENLIFE_AMQP_URL": amqp_url,
            "TOKENLIFE_EXCHANGE": exchange,
            "TOKENLIFE_SERVICE_CLIENT_ID": SERVICE_CLIENT[0],
            "TOKENLIFE_SERVICE_CLIENT_SECRET": SERVICE_CLIENT[1],
        }
        started = [(*_serve(stack, "resource", resource_env, module=resource_module), "resource service")]
        if poll_only:
            env = resource_env | {"TOKENLIFE_AMQP_URL": CLOSED_AMQP_URL}
            started.append((*_serve(stack, "resource", env), "poll-only resource service"))
        await asyncio.gather(*(ready(url, proc, log, what) for url, proc, log, what in started))
        yield Stack(
            auth_url=auth_url,
            resource_url=started[0][0],
            poll_only_url=started[1][0] if poll_only else None,
            exchange=exchange,
            resource_env=resource_env,
            database_url=_asyncpg_url(server_url, f"tokenlife_bench_{run_id}"),
            resource_pid=started[0][1].pid,
        )


async def login(auth: httpx.AsyncClient, stack: Stack) -> tuple[str, int]:
    """Log the bench user in (password grant); the access token and its expires_in (seconds)."""
    response = await auth.post(
        f"{stack.auth_url}/oauth/token",
        data={"grant_type": "password", "username": stack.email, "password": stack.password},
    )
    if response.status_code != 200:
        raise RuntimeError(f"login answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    return str(body["access_token"]), int(body["expires_in"])
