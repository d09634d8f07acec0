"""A PostgreSQL restart under a running auth service: 503 + Retry-After with a JSON body, never a 500.

On a private embedded PostgreSQL started by this test (never the machine's shared server), stopped and
started again while a real `tokenlife auth serve` process keeps answering.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from auth_service.db.migrate import upgrade
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, start_auth_server
from tokenlife import embedded_db

pytestmark = pytest.mark.integration

DEADLINE = 30.0


@dataclass
class PrivatePostgres:
    """An embedded PostgreSQL of this test alone, migrated; stop() and start() it at will."""

    data_dir: Path
    server: embedded_db.EmbeddedPostgres

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> str:
        self.server = embedded_db.start(self.data_dir, durable=False)
        return self.server.url()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """Started and migrated here (sync: migrations run their own event loop), stopped at the end."""
    data_dir = Path(tempfile.mkdtemp(prefix="tokenlife-outage-pg-"))
    try:
        pg = PrivatePostgres(data_dir, embedded_db.start(data_dir, durable=False))
        try:
            upgrade(pg.server.url())
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def calls(http: httpx.AsyncClient, refresh: str, access: str) -> list[httpx.Response]:
    """One request to each kind of endpoint that needs the database."""
    bearer = {"Authorization": f"Bearer {access}"}
    return [
        await http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": "oz@example.com", "password": PASSWORD},
        ),
        await http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}),
        await http.get("/v1/sessions", headers=bearer),
        await http.get("/v1/events", params={"after": 0}, auth=SERVICE_CLIENT),
        await http.get("/v1/revocations", auth=SERVICE_CLIENT),
        await http.post("/oauth/introspect", data={"token": access}, auth=SERVICE_CLIENT),
        await http.post("/v1/auth/logout", headers=bearer),
    ]


async def test_a_database_restart_answers_503_with_retry_after_and_recovers_by_itself(
    private_postgres: PrivatePostgres,
) -> None:
    database_url = private_postgres.server.url()
    await add_user(database_url, "oz@example.com")
    proc, base = start_auth_server(database_url)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            form = {"grant_type": "password", "username": "oz@example.com", "password": PASSWORD}
            tokens = (await http.post("/oauth/token", data=form)).json()

            private_postgres.stop()
            answers = await calls(http, tokens["refresh_token"], tokens["access_token"])
            # Every endpoint that needs the database: 503, Retry-After, the JSON error body.
            for answer in answers:
                assert answer.status_code == 503, (answer.request.url.path, answer.text)
                assert int(answer.headers["retry-after"]) >= 1
                assert answer.json()["error"] == "temporarily_unavailable"
                # What is wrong, not a guess: a logout's append that cannot reach the database is an outage
                # too, not "the event log is busy" (which says the log's lock was held too long).
                assert answer.json()["error_description"] == "the database is unavailable; retry", (
                    answer.request.url.path,
                    answer.text,
                )

            assert private_postgres.start() == database_url
            loop = asyncio.get_running_loop()
            end = loop.time() + DEADLINE
            while (login := await http.post("/oauth/token", data=form)).status_code != 200:
                assert login.status_code == 503, login.text
                assert loop.time() < end, "no login after the database came back"
                await asyncio.sleep(0.2)
            fresh = login.json()
            again = await calls(http, fresh["refresh_token"], fresh["access_token"])
            assert all(a.status_code == 200 for a in again), [
                (a.request.url.path, a.status_code) for a in again
            ]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


async def test_an_open_event_stream_ends_with_state_stale_when_the_database_goes(
    private_postgres: PrivatePostgres,
) -> None:
    database_url = private_postgres.server.url()
    await add_user(database_url, "ed@example.com")
    proc, base = start_auth_server(database_url)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=DEADLINE) as http:
            form = {"grant_type": "password", "username": "ed@example.com", "password": PASSWORD}
            token = (await http.post("/oauth/token", data=form)).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.stream("GET", "/v1/me/events/stream", headers=headers) as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == ": connected"
                private_postgres.stop()
                # No revocation can be seen now: the stream ends, saying so, rather than breaking off.
                rest = [line async for line in lines]
        assert rest[-3:] == ["event: end", 'data: {"reason":"state_stale"}', ""]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
