"""No callback holds the event loop for 40 ms on the services' busy paths, under asyncio's debug mode.

In debug mode asyncio logs "Executing <Handle ...> took X seconds" for every callback that runs longer than
`slow_callback_duration`; a handler on the "asyncio" logger collects those lines and the test fails naming
each one. asyncio times by the wall clock, and on a loaded machine a callback the kernel preempted looks
slow although it did nothing wrong, so each callback's own thread CPU time is measured around it too, and a
warning counts when the callback spent 40 ms of CPU on the loop (its garbage collection included). Why 40:
the stalls this test exists for took 44 to 190 ms (key decryption, the RSA key check, a snapshot parsed and
folded at once); run alone, every step here stays under 20 ms, but inside the whole suite's process a step
measured 26 ms and 31 ms once each (a larger heap, colder caches), and a test that fails on that is noise, not
a finding. A slow step is named by where its task awaited next. Blocking calls on the loop (sleep, sync I/O)
are ruff's ASYNC rules' job, statically.

The auth service runs in-process (its handlers, key reloads and relay on this test's loop); the resource
service runs in-process against a real auth process, so its catch-up and live feed are on the loop. The two
snapshot paths run with 50,000 live revocations: the auth side passes PostgreSQL's JSON through, the resource
side parses and folds it in steps (resource_service/feed/snapshot_loading.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.app import create_app
from auth_service.db.engine import asyncpg_dsn
from auth_service.settings import AuthSettings
from auth_service.tokens import keys
from resource_service.app import Runtime
from resource_service.app import create_app as create_resource_app
from resource_service.feed.loop import Feed
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, running_auth_server, serve_auth
from tests.integration.test_feed import (
    Exchange,
    eventually,
    exchange,  # noqa: F401 - a fixture: it deletes what the feed declares
    login,
    resource_settings,
    whoami,
)

pytestmark = pytest.mark.integration

SLOW = 0.04  # seconds: a callback this long delays every request, heartbeat and publish behind it
LIVE_REVOCATIONS = 50_000
EMAIL = "busy@example.com"


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's slow-callback warnings for callbacks that spent SLOW seconds of CPU on the loop."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[str] = []
        self._cpu = 0.0  # of the callback that just ran
        self._gc = 0.0
        self._what = ""
        self._gc_started = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and self._cpu >= SLOW:
            self.found.append(
                f"{message}: {self._cpu:.3f} s of CPU ({self._gc:.3f} s collecting garbage){self._what}"
            )

    def _collecting(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self._gc += time.thread_time() - self._gc_started

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Measure the CPU time of each callback the loop runs, as asyncio's debug mode times it."""
        run = asyncio.events.Handle._run

        def measured(handle: asyncio.Handle) -> None:
            self._gc = 0.0
            started = time.thread_time()
            try:
                run(handle)
            finally:
                self._cpu = time.thread_time() - started
                # A socket read names only the transport: say whose protocol did the work. A task's step
                # names only its outermost coroutine: say where it awaited next (the slow code ran before it).
                owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
                protocol = getattr(owner, "_protocol", None)
                self._what = (
                    f" in {type(protocol).__module__}.{type(protocol).__qualname__}" if protocol else ""
                )
                if isinstance(owner, asyncio.Task) and not owner.done():
                    self._what = " next awaiting at " + _innermost(owner.get_coro())

        asyncio.events.Handle._run = measured  # type: ignore[method-assign,assignment]
        gc.callbacks.append(self._collecting)
        try:
            yield
        finally:
            gc.callbacks.remove(self._collecting)
            asyncio.events.Handle._run = run  # type: ignore[method-assign]


def _innermost(coro: Any) -> str:
    """Where a suspended coroutine chain waits: the innermost coroutine's file, line and function."""
    where = "?"
    for _ in range(50):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        where = f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is None:
            break
    return where


@contextmanager
def no_slow_callbacks() -> Iterator[None]:
    """Debug mode with a 20 ms threshold for the block; fails listing every callback that held the loop."""
    loop = asyncio.get_running_loop()
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    loop.slow_callback_duration = SLOW
    # What earlier tests left in this process is not the services' heap: set it aside, so that a collection
    # inside the block walks only what the services make (and their own collections still count).
    gc.collect()
    gc.freeze()
    loop.set_debug(True)
    try:
        with handler.measuring():
            yield
    finally:
        loop.set_debug(False)
        gc.unfreeze()
        logger.removeHandler(handler)
    assert not handler.found, f"{len(handler.found)} slow callbacks:\n" + "\n".join(handler.found)


async def seed_live_revocations(database_url: str, count: int) -> int:
    """`count` token.revoked events in the log, with their projection rows and the relay already past them."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO event_log (position, event_id, type, occurred_at, jti, expires_at, schema_version,
                                       payload)
                SELECT e.g, e.id, 'token.revoked', now(), 'seed-' || e.g, e.exp, 1,
                       jsonb_build_object(
                           'schema_version', 1, 'event_id', e.id,
                           'occurred_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                           'position', e.g, 'prev_position', e.g - 1, 'type', 'token.revoked',
                           'jti', 'seed-' || e.g, 'user_id', NULL, 'session_id', NULL,
                           'expires_at', to_char(e.exp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                           'reason', 'seed')
                FROM (
                    SELECT g, gen_random_uuid() AS id, now() + interval '300 seconds' AS exp
                    FROM generate_series(1, $1::bigint) AS g
                ) AS e
                """,
                count,
            )
            await conn.execute(
                "INSERT INTO revocations (kind, subject, expires_at, position) "
                "SELECT 'jti', jti, expires_at, position FROM event_log WHERE type = 'token.revoked'"
            )
            await conn.execute("UPDATE relay_cursor SET position = $1", count)
        head: int = await conn.fetchval("SELECT coalesce(max(position), 0) FROM event_log")
        return head
    finally:
        await conn.close()


async def _published(database_url: str, position: int) -> bool:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        cursor: int = await conn.fetchval("SELECT position FROM relay_cursor")
        return cursor >= position
    finally:
        await conn.close()


async def _token(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    return await client.post("/oauth/token", data=form)


def _with_relay(settings: AuthSettings, amqp_url: str, exchange_name: str) -> AuthSettings:
    return settings.model_copy(
        update={
            "relay_enabled": True,
            "amqp_url": SecretStr(amqp_url),
            "exchange": exchange_name,
            "heartbeat_interval": 0.2,
            "key_refresh_seconds": 0.05,  # reloads run all through the block
        }
    )


async def test_login_refresh_logout_key_reload_rotation_and_relay_never_hold_the_loop(
    auth_settings: AuthSettings,
    database_url: str,
    engine: AsyncEngine,
    amqp_url: str,
    exchange_name: str,
) -> None:
    settings = _with_relay(auth_settings, amqp_url, exchange_name)
    await add_user(database_url, EMAIL)
    await seed_live_revocations(database_url, LIVE_REVOCATIONS)  # a log and projections of realistic size
    broker = await aio_pika.connect(amqp_url)
    try:
        channel = await broker.channel()
        topic = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topic, routing_key="#")  # the relay publishes mandatory: someone must be bound
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        # The test's HTTP clients are made before the block: one costs tens of ms of CPU (its TLS context).
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            with no_slow_callbacks():
                async with app.router.lifespan_context(app):  # start-up and shutdown are in the block too
                    await _busy_auth_paths(client, engine, database_url, settings)
        await channel.exchange_delete(exchange_name)
    finally:
        await broker.close()


async def _busy_auth_paths(
    client: httpx.AsyncClient, engine: AsyncEngine, database_url: str, settings: AuthSettings
) -> None:
    password = {"grant_type": "password", "username": EMAIL, "password": PASSWORD}
    tokens = (await _token(client, **password)).json()
    assert (await _token(client, **(password | {"password": "wrong password"}))).status_code == 400
    assert (await _token(client, **(password | {"username": "nobody@example.com"}))).status_code == 400
    refreshed = await _token(client, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert (await client.get("/v1/sessions", headers=bearer)).status_code == 200

    async with engine.begin() as conn:  # a rotation: the new key is generated while all else runs
        new_kid = await keys.rotate(conn, settings.key_encryption_key.get_secret_value())
    for _ in range(200):  # the periodic reload picks the new key up, decrypting it once
        jwks = (await client.get("/.well-known/jwks.json")).json()
        if new_kid in {key["kid"] for key in jwks["keys"]}:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the reload never published the rotated key")
    signed = (await _token(client, **password)).json()["access_token"]
    assert (await client.get("/v1/sessions", headers={"Authorization": f"Bearer {signed}"})).is_success

    logged_out = await client.post("/v1/auth/logout", headers=bearer)
    assert logged_out.status_code == 200
    position = logged_out.json()["position"]
    await eventually(lambda: _published(database_url, position), "the relay published every event")


async def test_the_snapshot_of_50k_live_revocations_never_holds_the_loop(
    auth_settings: AuthSettings, database_url: str
) -> None:
    await seed_live_revocations(database_url, LIVE_REVOCATIONS)
    async with serve_auth(auth_settings) as client:
        with no_slow_callbacks():
            snapshot = await client.get("/v1/revocations", auth=httpx.BasicAuth(*SERVICE_CLIENT))
        assert snapshot.status_code == 200
    body = snapshot.json()
    assert len(body["revocations"]) == LIVE_REVOCATIONS


def resource_runtime(app: FastAPI) -> Runtime:
    """The resource app's runtime (its lifespan has started)."""
    found: Runtime = app.state.runtime
    return found


async def _live(feed: Feed) -> bool:
    return feed.live and feed.caught_up


async def _refused(client: httpx.AsyncClient, token: str) -> bool:
    return (await whoami(client, token)).status_code == 401


@asynccontextmanager
async def _watched_resource_service(
    auth_url: str, amqp_url: str, exchange_name: str, **overrides: float
) -> AsyncIterator[httpx.AsyncClient]:
    """A resource service in-process, watched from start-up on, once caught up and live; a client of it."""
    app = create_resource_app(resource_settings(auth_url, amqp_url, exchange_name, **overrides))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://resource.test") as client:
        with no_slow_callbacks():
            async with app.router.lifespan_context(app):
                feed = resource_runtime(app).feed
                await eventually(lambda: _live(feed), "caught up and live", 60.0)
                yield client


@pytest.mark.parametrize("live_revocations", [0, LIVE_REVOCATIONS])
async def test_a_resource_services_catch_up_and_live_feed_never_hold_the_loop(
    live_revocations: int,
    database_url: str,
    amqp_url: str,
    exchange: Exchange,  # noqa: F811 - the fixture
) -> None:
    await add_user(database_url, EMAIL)
    await seed_live_revocations(database_url, live_revocations)
    with running_auth_server(database_url, amqp_url, TOKENLIFE_EXCHANGE=exchange.name) as auth_url:
        kept, ended = await login(auth_url, EMAIL), await login(auth_url, EMAIL)
        async with (
            httpx.AsyncClient(base_url=auth_url) as auth,
            _watched_resource_service(auth_url, amqp_url, exchange.name, http_timeout=30.0) as client,
        ):
            assert (await client.get("/readyz")).json()["applied_position"] >= live_revocations
            assert (await whoami(client, kept)).status_code == 200
            # Published by the auth process's relay, applied here.
            response = await auth.post("/v1/auth/logout", headers={"Authorization": f"Bearer {ended}"})
            assert response.status_code == 200
            await eventually(lambda: _refused(client, ended), "the logged-out token is refused")
            assert (await whoami(client, kept)).status_code == 200
