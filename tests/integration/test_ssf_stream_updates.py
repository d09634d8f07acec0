"""What the transmitter says about a stream itself (SSF 1.0 §8.1.1, §8.1.4.2, §8.1.5), against real
PostgreSQL: min_verification_interval advertised and enforced with 429 + Retry-After, and the stream-updated
SET a receiver gets, by poll and by push, when events older than the retention were dropped and when an
operator pauses or enables its stream (`tokenlife ssf status`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.log.store import APPEND_LOCK_KEY
from auth_service.settings import AuthSettings
from auth_service.ssf import streams
from auth_service.ssf.config import POLL, Checked
from auth_service.ssf.updates import announcer, status_cli
from tests.conftest import add_user, auth_env, free_port
from tests.integration.test_ssf_poll import EMAIL, ISSUER, create_stream, login, poll, serving
from tests.integration.test_ssf_push import push_stream
from tests.ssf_receiver import (
    RECEIVER_A,
    RECEIVER_B,
    STREAM_UPDATED,
    PushReceiver,
    bearer,
    clients_json,
    receiver_token,
    summary,
    verify_set,
    wait_until,
)

pytestmark = pytest.mark.integration

INTERVAL = 30
RETENTION = 1.0  # seconds: what a stream has not received after this is dropped


def _settings(monkeypatch: pytest.MonkeyPatch, database_url: str, **extra: str) -> AuthSettings:
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    env = auth_env(database_url, TOKENLIFE_CLIENTS=clients_json(), **extra)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AuthSettings()


async def _logout(client: httpx.AsyncClient) -> str:
    session = await login(client, EMAIL)
    response = await client.post("/v1/auth/logout", headers=bearer(session["access_token"]))
    assert response.status_code == 200, response.text
    return str(session["sid"])


async def test_verification_sooner_than_the_interval_is_429_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    settings = _settings(monkeypatch, database_url, TOKENLIFE_SSF_MIN_VERIFICATION_INTERVAL=str(INTERVAL))
    async with serving(settings) as (client, _app):
        token_a, token_b = await receiver_token(client, RECEIVER_A), await receiver_token(client, RECEIVER_B)
        config = await create_stream(client, token_a)
        assert config["min_verification_interval"] == INTERVAL  # transmitter-supplied (§8.1.1)
        a, other = config["stream_id"], (await create_stream(client, token_a))["stream_id"]
        b = (await create_stream(client, token_b))["stream_id"]

        first = await client.post("/ssf/verify", json={"stream_id": a, "state": "1"}, headers=bearer(token_a))
        assert first.status_code == 204, first.text
        again = await client.post("/ssf/verify", json={"stream_id": a, "state": "2"}, headers=bearer(token_a))
        assert again.status_code == 429, again.text
        assert 1 <= int(again.headers["Retry-After"]) <= INTERVAL
        assert again.json()["error"] == "temporarily_unavailable"
        assert "min_verification_interval" in again.json()["error_description"]
        # The interval is per stream; another receiver's stream is still unknown (404), never 429.
        assert (
            await client.post("/ssf/verify", json={"stream_id": other}, headers=bearer(token_a))
        ).status_code == 204
        assert (
            await client.post("/ssf/verify", json={"stream_id": b}, headers=bearer(token_a))
        ).status_code == 404
        # Only the first request of `a` became a SET.
        sets, _ = await poll(client, token_a, a)
        assert [c["events"] for _, c in sets] == [
            {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "1"}}
        ]


async def test_a_poll_stream_behind_the_retention_is_told_by_a_stream_updated_set(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    settings = _settings(monkeypatch, database_url, TOKENLIFE_SSF_RETENTION=str(RETENTION))
    async with serving(settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        await _logout(client)  # never polled in time: dropped
        await asyncio.sleep(RETENTION + 0.5)
        young = await _logout(client)
        sets, _ = await poll(client, token, stream_id)
        kinds = [summary(claims) for _, claims in sets]
        assert kinds[0] == ("session-revoked", kinds[0][1], young)
        assert kinds[1] == ("stream-updated", stream_id, None)
        assert len(kinds) == 2
        [(event_type, event)] = sets[1][1]["events"].items()
        assert event_type == STREAM_UPDATED
        assert event["status"] == "enabled"
        assert "were dropped" in event["reason"]
        status = await client.get("/ssf/status", params={"stream_id": stream_id}, headers=bearer(token))
        assert status.json()["reason"] == event["reason"]
        # Acknowledged, it is not sent again; nothing else is.
        assert (await poll(client, token, stream_id, ack=[j for j, _ in sets]))[0] == []


async def test_a_push_stream_behind_the_retention_is_told_by_a_stream_updated_set(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    receiver = PushReceiver(free_port())
    await receiver.start()
    try:
        quiet = {"TOKENLIFE_SSF_RETENTION": str(RETENTION), "TOKENLIFE_SSF_PUSH_MAX_BACKOFF": "0.2"}
        # No deliverer at first: the stream falls behind while nobody pushes.
        async with serving(_settings(monkeypatch, database_url, **quiet)) as (client, _app):
            _token, stream_id = await push_stream(client, RECEIVER_A, receiver.url)
            await _logout(client)
        await asyncio.sleep(RETENTION + 0.5)
        on = _settings(monkeypatch, database_url, TOKENLIFE_SSF_ENABLED="true", **quiet)
        async with serving(on) as (client, _app):
            await wait_until(lambda: receiver.distinct() >= 1, 20.0, "the stream-updated SET")
            jwks = (await client.get("/.well-known/jwks.json")).json()
            claims: list[dict[str, Any]] = [
                verify_set(v, jwks, ISSUER, RECEIVER_A[0]) for v in receiver.received
            ]
            assert {summary(c) for c in claims} == {("stream-updated", stream_id, None)}
            [(_type, event)] = claims[0]["events"].items()
            assert event["status"] == "enabled"
            assert "were dropped" in event["reason"]
    finally:
        await receiver.stop()


def _status_cli(
    settings: AuthSettings, stream_id: str, status: str, reason: str, force: bool = False
) -> tuple[int, str]:
    """`tokenlife ssf status`, as the command runs it (its own event loop, engine and connection)."""
    return status_cli(settings, stream_id, status, reason, force=force)  # type: ignore[arg-type]


@asynccontextmanager
async def _db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def _stream_status(client: httpx.AsyncClient, token: str, stream_id: str) -> dict[str, Any]:
    response = await client.get("/ssf/status", params={"stream_id": stream_id}, headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_operator_pause_reaches_a_poll_receiver_before_the_stream_stops(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    settings = _settings(monkeypatch, database_url)
    async with serving(settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        first = await _logout(client)
        # The command waits (up to ssf_status_deadline) for the receiver to take the SET.
        command = asyncio.create_task(
            asyncio.to_thread(_status_cli, settings, stream_id, "paused", "maintenance")
        )
        sets: list[tuple[str, dict[str, Any]]] = []
        while len(sets) < 2:
            assert not command.done(), command.result()
            sets, more = await poll(client, token, stream_id)
        assert (await _stream_status(client, token, stream_id))["status"] == "enabled"  # not yet told
        held = await _logout(client)

        sets, more = await poll(client, token, stream_id)
        assert [summary(claims) for _, claims in sets] == [
            ("session-revoked", summary(sets[0][1])[1], first),
            ("stream-updated", stream_id, None),  # the last SET before the stream stops
        ]
        assert not more
        assert sets[1][1]["events"] == {STREAM_UPDATED: {"status": "paused", "reason": "maintenance"}}
        assert (await poll(client, token, stream_id, ack=[j for j, _ in sets]))[0] == []
        code, said = await command
        assert code == 0
        assert "its receiver got the stream-updated SET" in said
        assert await _stream_status(client, token, stream_id) == {
            "stream_id": stream_id,
            "status": "paused",
            "reason": "maintenance",
        }

        code, said = await asyncio.to_thread(_status_cli, settings, stream_id, "enabled", "back")
        assert code == 0
        assert "is enabled" in said
        assert (await _stream_status(client, token, stream_id))["status"] == "enabled"
        sets, _ = await poll(client, token, stream_id)
        assert [summary(claims)[0::2] for _, claims in sets] == [
            ("session-revoked", held),  # what was held while paused, then the news
            ("stream-updated", None),
        ]
        assert sets[1][1]["events"] == {STREAM_UPDATED: {"status": "enabled", "reason": "back"}}
        assert await asyncio.to_thread(_status_cli, settings, "no-such-stream", "paused", "x") == (
            1,
            "no stream no-such-stream",
        )


async def test_an_operator_pause_reaches_a_push_receiver_before_the_stream_stops(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    receiver = PushReceiver(free_port())
    await receiver.start()
    settings = _settings(
        monkeypatch, database_url, TOKENLIFE_SSF_ENABLED="true", TOKENLIFE_SSF_PUSH_MAX_BACKOFF="0.2"
    )
    try:
        async with serving(settings) as (client, _app):
            token, stream_id = await push_stream(client, RECEIVER_A, receiver.url)
            first = await _logout(client)
            await wait_until(lambda: receiver.distinct() >= 1, 20.0, "the first SET")
            await asyncio.to_thread(_status_cli, settings, stream_id, "paused", "maintenance")

            async def paused() -> bool:
                return bool((await _stream_status(client, token, stream_id))["status"] == "paused")

            deadline = asyncio.get_running_loop().time() + 20
            while not await paused():
                assert asyncio.get_running_loop().time() < deadline, "the stream never took the pause"
                await asyncio.sleep(0.05)
            held = await _logout(client)
            await asyncio.to_thread(_status_cli, settings, stream_id, "enabled", "back")
            await wait_until(lambda: receiver.distinct() >= 4, 20.0, "the held SET and the news")

            jwks = (await client.get("/.well-known/jwks.json")).json()
            claims = [verify_set(v, jwks, ISSUER, RECEIVER_A[0]) for v in receiver.received]
            unique = list({c["jti"]: c for c in claims}.values())
            assert [summary(c)[0::2] for c in unique] == [
                ("session-revoked", first),
                ("stream-updated", None),
                ("session-revoked", held),
                ("stream-updated", None),
            ]
            assert [c["events"][STREAM_UPDATED]["status"] for c in unique[1::2]] == ["paused", "enabled"]
    finally:
        await receiver.stop()


async def test_a_receiver_that_never_takes_the_set_cannot_veto_an_operator_pause(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    # A receiver answering 500 forever (the likely reason to pause it): the stream is paused once the
    # deadline passed; enabled again, it gets the pause's SET and then the enabling's, and stays enabled
    # (the later change replaced the earlier one, which does not pause it again when delivered).
    await add_user(database_url, EMAIL)
    receiver = PushReceiver(free_port())
    await receiver.start()
    settings = _settings(
        monkeypatch,
        database_url,
        TOKENLIFE_SSF_ENABLED="true",
        TOKENLIFE_SSF_PUSH_MAX_BACKOFF="0.2",
        TOKENLIFE_SSF_STATUS_DEADLINE="1",
    )
    try:
        async with serving(settings) as (client, _app):
            token, stream_id = await push_stream(client, RECEIVER_A, receiver.url)
            receiver.status = 500
            code, said = await asyncio.to_thread(_status_cli, settings, stream_id, "paused", "failing")
            assert code == 0
            assert "had not taken the stream-updated SET within 1 s" in said
            assert (await _stream_status(client, token, stream_id))["status"] == "paused"
            attempts = receiver.attempts
            assert attempts >= 1  # it was sent
            receiver.status = 202
            code, said = await asyncio.to_thread(_status_cli, settings, stream_id, "enabled", "back")
            assert (code, said) == (
                0,
                f"stream {stream_id} is enabled; its receiver gets a stream-updated SET",
            )
            await wait_until(lambda: receiver.distinct() >= 2, 20.0, "the pause's SET and the enabling's")
            jwks = (await client.get("/.well-known/jwks.json")).json()
            claims = [verify_set(v, jwks, ISSUER, RECEIVER_A[0]) for v in receiver.received]
            unique = list({c["jti"]: c for c in claims}.values())
            assert [c["events"][STREAM_UPDATED]["status"] for c in unique] == ["paused", "enabled"]
            await asyncio.sleep(1.5)  # a deliverer refresh or so: the delivered pause changed nothing
            assert (await _stream_status(client, token, stream_id))["status"] == "enabled"
            # --force: at once.
            receiver.status = 500
            code, said = await asyncio.to_thread(_status_cli, settings, stream_id, "disabled", "x", True)
            assert code == 0
            assert "within 0 s" in said
            assert (await _stream_status(client, token, stream_id))["status"] == "disabled"
    finally:
        await receiver.stop()


async def test_an_operator_change_and_its_set_are_one_transaction(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    settings = _settings(monkeypatch, database_url, TOKENLIFE_LOCK_TIMEOUT_MS="200")
    async with serving(settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        body = {"stream_id": stream_id, "status": "paused"}
        assert (await client.post("/ssf/status", json=body, headers=bearer(token))).status_code == 200
        assert await asyncio.to_thread(_status_cli, settings, stream_id, "enabled", "x" * 513) == (
            1,
            "--reason is 513 characters long: at most 512",
        )
        async with _db(database_url) as holder, holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)  # the log is busy
            code, said = await asyncio.to_thread(_status_cli, settings, stream_id, "enabled", "back")
        assert code == 1
        assert "append lock" in said
        assert (await _stream_status(client, token, stream_id))["status"] == "paused"  # nothing changed
        code, said = await asyncio.to_thread(_status_cli, settings, stream_id, "enabled", "back")
        assert code == 0
        assert (await _stream_status(client, token, stream_id))["status"] == "enabled"
        sets, _ = await poll(client, token, stream_id)
        assert [s[1]["events"] for s in sets] == [{STREAM_UPDATED: {"status": "enabled", "reason": "back"}}]


async def test_a_failure_passing_the_pause_moves_neither_the_cursor_nor_the_status(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    # The stream's cursor past the stop SET and its new status are one transaction: a failure taking the
    # status (here a trigger refusing it) leaves the cursor before the SET, so the pause is not lost.
    await add_user(database_url, EMAIL)
    settings = _settings(monkeypatch, database_url)
    async with serving(settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        await _logout(client)
        engine = create_engine(database_url)
        try:
            await announcer(engine, 5000)(stream_id, "paused", "m")  # what `tokenlife ssf status` appends
        finally:
            await engine.dispose()
        sets, _ = await poll(client, token, stream_id)
        assert [summary(c)[0] for _, c in sets] == ["session-revoked", "stream-updated"]
        async with _db(database_url) as conn:
            before = await conn.fetchval("SELECT cursor FROM ssf_streams WHERE stream_id = $1", stream_id)
            await conn.execute(
                """CREATE FUNCTION refuse_pause() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN IF NEW.status = 'paused' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
                   CREATE TRIGGER refuse_pause BEFORE UPDATE ON ssf_streams
                   FOR EACH ROW EXECUTE FUNCTION refuse_pause()"""
            )
            with pytest.raises(asyncpg.RaiseError, match="refused"):  # not an outage: raised as it is
                await client.post(
                    f"/ssf/poll/{stream_id}",
                    json={"returnImmediately": True, "ack": [j for j, _ in sets]},
                    headers=bearer(token),
                )
            after = await conn.fetchrow(
                "SELECT cursor, status FROM ssf_streams WHERE stream_id = $1", stream_id
            )
            assert (after["cursor"], after["status"]) == (before, "enabled")
            await conn.execute("DROP TRIGGER refuse_pause ON ssf_streams")
        sets, _ = await poll(client, token, stream_id, ack=[j for j, _ in sets])
        assert sets == []
        assert (await _stream_status(client, token, stream_id))["status"] == "paused"


async def test_a_failed_verification_gives_back_only_its_own_mark(database_url: str) -> None:
    async with _db(database_url) as conn:
        row = await streams.create(conn, "receiver", Checked(POLL, None, None, ()), None)
        first = await streams.claim_verification(conn, "receiver", row["stream_id"], 0)
        second = await streams.claim_verification(conn, "receiver", row["stream_id"], 0)
        await streams.unclaim_verification(conn, row["stream_id"], first)  # the first one's append failed
        mark = await conn.fetchval(
            "SELECT verified_at FROM ssf_streams WHERE stream_id = $1", row["stream_id"]
        )
        assert mark == second[1]
        await streams.unclaim_verification(conn, row["stream_id"], second)
        mark = await conn.fetchval(
            "SELECT verified_at FROM ssf_streams WHERE stream_id = $1", row["stream_id"]
        )
        assert mark == first[1]


async def test_a_stop_set_acknowledged_early_still_ends_what_a_poll_hands_out(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await add_user(database_url, EMAIL)
    async with serving(_settings(monkeypatch, database_url)) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        first = await _logout(client)
        engine = create_engine(database_url)
        try:
            await announcer(engine, 5000)(stream_id, "paused", "m")
        finally:
            await engine.dispose()
        await _logout(client)  # after the pause: not for this stream until it is enabled again
        sets, _ = await poll(client, token, stream_id)
        assert [summary(c)[0::2] for _, c in sets] == [("session-revoked", first), ("stream-updated", None)]
        # The receiver acknowledges the stop SET before the one ahead of it.
        again, more = await poll(client, token, stream_id, ack=[sets[1][0]])
        assert [jti for jti, _ in again] == [sets[0][0]]
        assert not more
        assert (await _stream_status(client, token, stream_id))["status"] == "enabled"
        assert (await poll(client, token, stream_id, ack=[sets[0][0]]))[0] == []
        assert (await _stream_status(client, token, stream_id))["status"] == "paused"


async def test_a_receiver_flipping_its_stream_does_not_cancel_a_pending_operator_pause(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    # Disabled then enabled by its receiver, the stream's cursor jumps past the operator's pause SET: the
    # command still pauses it when its deadline passes.
    settings = _settings(monkeypatch, database_url, TOKENLIFE_SSF_STATUS_DEADLINE="2")
    async with serving(settings) as (client, _app):
        token = await receiver_token(client, RECEIVER_A)
        stream_id = (await create_stream(client, token))["stream_id"]
        command = asyncio.create_task(asyncio.to_thread(_status_cli, settings, stream_id, "paused", "ops"))
        sets: list[tuple[str, dict[str, Any]]] = []
        while not sets:
            assert not command.done(), command.result()
            sets, _ = await poll(client, token, stream_id)  # the pause's SET is in the log
        for status in ("disabled", "enabled"):
            body = {"stream_id": stream_id, "status": status}
            assert (await client.post("/ssf/status", json=body, headers=bearer(token))).status_code == 200
        code, said = await command
        assert code == 0
        assert "had not taken" in said
        assert (await _stream_status(client, token, stream_id)) == {
            "stream_id": stream_id,
            "status": "paused",
            "reason": "ops",
        }
