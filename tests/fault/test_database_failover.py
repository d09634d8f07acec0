"""The database fails over: the primary killed, its synchronous standby promoted, nothing committed lost.

A private primary and streaming standby (tests/fault/replication.py), 2 auth and 3 resource processes on the
two-host URL (`target_session_attrs=read-write`), logins, refreshes and logouts flowing, long-polls held on
every auth process. Then the primary is stopped in immediate mode and, a moment later (the time a failover
manager takes to decide), the standby is promoted. No process is restarted. The checks:
- every logout that got a 2xx (before, during or after) is in the new primary's log and refused by every
  resource instance at the end; no revoked token got a 200 past B, nothing answered a 500;
- the auth processes answer 2xx again, the relay publishes from its cursor on the new primary (the cursor
  passes the head written after the promotion), every long-poll in flight got an answer (no hang);
- the time from the primary's death to the first 2xx logout, and to every resource instance fresh again at
  a position written on the new primary, is printed (measured, not asserted: timings belong in benchmarks).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from auth_service.db.engine import asyncpg_dsn
from auth_service.db.migrate import upgrade
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, auth_env, free_port
from tests.fault import replication
from tests.fault.ledger import NOTES, SUMMARIES, Ledger, Load, Prober
from tests.fault.stack import Process, Stack

T = TypeVar("T")

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

WARM = 2.0  # load before the fault
DECIDE = 1.0  # between the primary's death and the promotion, as a failover manager would take
WAIT = 8.0  # each long-poll's wait
DEADLINE = 60.0  # the most any recovery step may take before the test gives up


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# A revocation that covers the token: its jti, its session, or its user from before it was issued.
_COVERED = """
SELECT EXISTS (
  SELECT 1 FROM event_log
  WHERE (type = 'token.revoked' AND jti = $1)
     OR (type = 'session.revoked' AND session_id = $2::uuid)
     OR (type = 'user.revoked' AND user_id = $3 AND occurred_at >= to_timestamp($4))
)
"""


def _need_pair() -> None:
    if (why := replication.available()) is not None:
        if os.environ.get("CI"):  # as tests/conftest.py does for a missing broker
            pytest.fail(f"{why} (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(why)


class LongPolls:
    """Long-polls one after another on an auth process, as a resource instance holds them; answers kept."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, float, float, int]] = []  # process, sent, answered, status (-1: none)
        self._http = httpx.AsyncClient(auth=httpx.BasicAuth(*SERVICE_CLIENT), timeout=WAIT + 5.0)

    async def run(self, process: Process) -> None:
        after = 0
        while True:
            sent = time.monotonic()
            try:
                response = await self._http.get(
                    f"{process.base}/v1/events", params={"after": after, "wait": WAIT, "limit": 1000}
                )
                status = response.status_code
                if status == 200:
                    after = int(response.json()["head"])
            except httpx.HTTPError:
                status = -1
            self.answers.append((process.name, sent, time.monotonic(), status))
            if status != 200:
                await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self._http.aclose()


async def _until(what: str, check: Callable[[], Awaitable[T | None]]) -> T:
    end = time.monotonic() + DEADLINE
    while (found := await check()) is None:
        assert time.monotonic() < end, f"not within {DEADLINE} s: {what}"
        await asyncio.sleep(0.05)
    return found


async def test_primary_killed_and_synchronous_standby_promoted_loses_no_revocation(amqp_url: str) -> None:
    _need_pair()
    # The servers run as the postgres user, in a directory below this one: it must be able to enter it.
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tokenlife-failover-"))
    await asyncio.to_thread(os.chmod, workdir, 0o755)
    pair = replication.Pair(workdir / "pg", synchronous=True)
    stack = Stack(workdir, amqp_url, f"tokenlife.fault.{uuid.uuid4().hex[:12]}")
    ledger = Ledger()
    load = prober = None
    polls = LongPolls()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(pair.start)
        stack.database_url = pair.url()
        await asyncio.to_thread(upgrade, stack.database_url)
        users = [f"user{i}@failover.test" for i in range(3)]
        for email in [*users, "timer@failover.test"]:
            await add_user(stack.database_url, email)
        await stack.start()
        load, prober = Load(stack, ledger, users), Prober(stack, ledger)
        tasks = [asyncio.create_task(load.run(email)) for email in users]
        tasks += [asyncio.create_task(prober.run_instance(p)) for p in stack.resource]
        tasks += [asyncio.create_task(polls.run(p)) for p in stack.auth for _ in range(2)]
        await _fail_over(pair, stack, ledger, prober, polls, "primary killed, sync standby promoted")
        # The lost primary rebuilt as the new primary's synchronous standby; then the same fault again.
        await asyncio.to_thread(pair.rebuild_standby)
        await _fail_over(pair, stack, ledger, prober, polls, "failover back to the rebuilt server")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for closable in (load, prober, polls):
            if closable is not None:
                await closable.aclose()
        await stack.stop()
        await asyncio.to_thread(pair.stop)
        shutil.rmtree(workdir, ignore_errors=True)


async def _fail_over(
    pair: replication.Pair, stack: Stack, ledger: Ledger, prober: Prober, polls: LongPolls, name: str
) -> None:
    """Kill the primary under load, promote its standby, and check the promise; the figures go to NOTES."""
    await _until("the standby streaming synchronously", lambda: _synchronous(pair))
    since = time.monotonic()
    await _until("a logout before the fault", lambda: _first_after(ledger.logouts, since))
    await asyncio.sleep(WARM)
    before = len(ledger.logouts)
    assert before > 0
    # A session of the test's own, logged out the moment the service can: the load's cycles take seconds.
    timer = await _login(stack.auth[0], "timer@failover.test")

    died = time.monotonic()
    await asyncio.to_thread(pair.kill_primary)
    await asyncio.sleep(DECIDE)
    await asyncio.to_thread(pair.promote)
    promoted = time.monotonic()

    first = await _until("a logout answered 2xx", lambda: _logout(stack.auth, timer, ledger))
    new_primary = await asyncpg.connect(asyncpg_dsn(pair.node_url(pair.primary)))
    try:
        head = int(await new_primary.fetchval("SELECT coalesce(max(position), 0) FROM event_log"))
        times = await asyncio.gather(*(_fresh_at(p, head) for p in stack.resource))
        fresh = {p.name: t - died for p, t in zip(stack.resource, times, strict=True)}
        await _until("the relay's cursor at the new head", lambda: _cursor(new_primary, head))
        await asyncio.sleep(1.0)  # load goes on after the fault too
        missing = await prober.every_revocation_refused(DEADLINE)
        summary = ledger.summarize(name, since)
        summary.violations += missing
        summary.lost = len(missing)
        SUMMARIES.append(summary)
        not_in_log = [
            token
            for token in list(ledger.revoked)  # the load goes on meanwhile
            if not await new_primary.fetchval(
                _COVERED,
                (c := _claims(token))["jti"],
                c["sid"],
                c["sub"],
                float(c["iat"]),
            )
        ]
    finally:
        await new_primary.close()

    # Long-polls sent well after the promotion must have answered 200: wait for some to have been sent.
    async def late_answers() -> list[int] | None:
        late = [a[3] for a in list(polls.answers) if a[1] > promoted + 5.0]
        return late or None

    late = await _until("a long-poll sent 5 s after the promotion answered", late_answers)
    in_flight = [a for a in polls.answers if a[1] < died < a[2]]
    hung = [a for a in polls.answers if a[3] == -1]
    NOTES.append(
        f"{name}: standby promoted {promoted - died:.2f} s after the primary died;"
        f" first 2xx logout {first - died:.2f} s after the death;"
        f" every resource instance fresh at the new primary's head {max(fresh.values()):.2f} s after"
        f" ({', '.join(f'{n} {t:.2f} s' for n, t in fresh.items())});"
        f" {len(ledger.logouts) - before} logouts since; {len(in_flight)} long-polls in flight"
    )
    assert summary.violations == []
    assert len(ledger.logouts) > before
    assert not_in_log == [], f"{len(not_in_log)} logouts answered 2xx are not in the new primary's log"
    assert hung == [], f"long-polls left without an answer: {hung}"
    assert set(late) == {200}


async def _synchronous(pair: replication.Pair) -> bool | None:
    conn = await asyncpg.connect(asyncpg_dsn(pair.node_url(pair.primary)))
    try:
        state = await conn.fetchval("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'")
    finally:
        await conn.close()
    return True if state == "sync" else None


async def _login(process: Process, email: str) -> str:
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    # Generous: a login hashes a password, on a machine the whole stack under load shares.
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.post(f"{process.base}/oauth/token", data=form)
    response.raise_for_status()
    return str(response.json()["access_token"])


async def _logout(auth: list[Process], token: str, ledger: Ledger) -> float | None:
    """One logout attempt on each auth process; when one answers 2xx, the time (and the ledger knows)."""
    async with httpx.AsyncClient(timeout=1.0) as http:
        for process in auth:
            try:
                response = await http.post(
                    f"{process.base}/v1/auth/logout",
                    data={"scope": "session"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                at = time.monotonic()
                ledger.revoke([token], at)
                return at
            assert response.status_code == 503, f"{process.name} logout: {response.status_code}"
    return None


async def _first_after(times: list[float], after: float) -> float | None:
    return next((t for t in times if t > after), None)


async def _cursor(conn: Any, head: int) -> bool | None:
    position = int(await conn.fetchval("SELECT position FROM relay_cursor WHERE id = 1"))
    return True if position >= head else None


async def _fresh_at(process: Process, head: int) -> float:
    """When the instance first reported itself fresh with every event up to `head` applied."""
    async with httpx.AsyncClient(timeout=1.0) as http:

        async def check() -> float | None:
            try:
                body = (await http.get(f"{process.base}/readyz")).json()
            except (httpx.HTTPError, ValueError):
                return None
            return time.monotonic() if body["fresh"] and body["applied_position"] >= head else None

        return await _until(f"{process.name} fresh at position {head}", check)


_CUT = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND datname IS NOT NULL"
)


async def _fence(admin: Any, on: bool) -> None:
    """Every new session of the server read-only (or not): no longer a server for read-write."""
    await admin.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
    await admin.execute("SELECT pg_reload_conf()")


async def test_no_writable_server_answers_503_and_recovers_by_itself(amqp_url: str) -> None:
    # Both servers up and neither takes writes (a switchover fences the old primary before it promotes the
    # standby): every new connection is refused by the client library itself, for want of a writable server.
    _need_pair()
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tokenlife-fenced-"))
    await asyncio.to_thread(os.chmod, workdir, 0o755)
    pair = replication.Pair(workdir / "pg", synchronous=False)
    auth: Process | None = None
    try:
        await asyncio.to_thread(pair.start)
        await asyncio.to_thread(upgrade, pair.url())
        await add_user(pair.url(), "fenced@failover.test")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
        env |= auth_env(pair.url(), TOKENLIFE_ISSUER="http://tokenlife.fault")
        auth = Process("auth", ["auth", "serve"], env, free_port(), workdir / "auth.log")
        auth.start()
        await auth.ready()
        admin = await asyncpg.connect(asyncpg_dsn(pair.node_url(pair.primary)))
        try:
            async with httpx.AsyncClient(base_url=auth.base, timeout=5.0) as http:
                tokens = (await http.post("/oauth/token", data=_password("fenced@failover.test"))).json()
                await _fence(admin, True)
                await admin.fetch(_CUT)
                fenced = await _calls(http, tokens["refresh_token"])
                await _fence(admin, False)
                tokens = await _until("a login once a server takes writes", lambda: _tokens(http))
                revoked = await http.post(
                    "/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
                )
        finally:
            await admin.close()
        assert [r.status_code for r in fenced] == [503] * len(fenced)
        assert all(r.headers.get("Retry-After") for r in fenced)
        assert revoked.status_code == 200
    finally:
        if auth is not None:
            auth.kill()
        await asyncio.to_thread(pair.stop)
        shutil.rmtree(workdir, ignore_errors=True)


def _password(email: str) -> dict[str, str]:
    return {"grant_type": "password", "username": email, "password": PASSWORD}


async def _calls(http: httpx.AsyncClient, refresh: str) -> list[httpx.Response]:
    """A read through the engine, a refresh through the request pool and the writer, a login."""
    service = httpx.BasicAuth(*SERVICE_CLIENT)
    return [
        await http.get("/v1/events", params={"after": 0}, auth=service),
        await http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}),
        await http.post("/oauth/token", data=_password("fenced@failover.test")),
    ]


async def _tokens(http: httpx.AsyncClient) -> dict[str, str] | None:
    response = await http.post("/oauth/token", data=_password("fenced@failover.test"))
    return dict(response.json()) if response.status_code == 200 else None


async def test_asynchronous_standby_loses_logouts_answered_2xx_before_the_primary_died(amqp_url: str) -> None:
    # What the docs warn of, shown: with asynchronous replication a logout's 2xx means "on the primary" only.
    # The standby's WAL receiver is stopped (a slow or cut replication link), logouts are answered 2xx, the
    # primary is killed, the receiver is killed too (what it had not flushed is gone with it, as with a link
    # that died), and the standby is promoted: those revocations are not in its log, and the positions they
    # held are handed out again, to other events.
    _need_pair()
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tokenlife-async-"))
    await asyncio.to_thread(os.chmod, workdir, 0o755)
    pair = replication.Pair(workdir / "pg", synchronous=False)
    auth: Process | None = None
    email = "async@failover.test"
    try:
        await asyncio.to_thread(pair.start)
        await asyncio.to_thread(upgrade, pair.url())
        await add_user(pair.url(), email)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
        env |= auth_env(pair.url(), TOKENLIFE_ISSUER="http://tokenlife.fault")
        auth = Process("auth", ["auth", "serve"], env, free_port(), workdir / "auth.log")
        auth.start()
        await auth.ready()
        standby = pair.standby
        async with httpx.AsyncClient(base_url=auth.base, timeout=5.0) as http:
            tokens = [(await http.post("/oauth/token", data=_password(email))).json() for _ in range(3)]
            receiver = await _wal_receiver(pair.node_url(standby))
            os.kill(receiver, signal.SIGSTOP)
            answers = [
                await http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {t['access_token']}"})
                for t in tokens
            ]
            old = await asyncpg.connect(asyncpg_dsn(pair.node_url(pair.primary)))
            try:
                before = dict(await old.fetch("SELECT position, event_id FROM event_log"))
            finally:
                await old.close()
            await asyncio.to_thread(pair.kill_primary)
            os.kill(receiver, signal.SIGKILL)
            await _until("the standby back in recovery", lambda: _answers(pair.node_url(standby)))
            await asyncio.to_thread(pair.promote)
            await _until("a login on the promoted standby", lambda: _tokens_for(http, email))
        new = await asyncpg.connect(asyncpg_dsn(pair.node_url(pair.primary)))
        try:
            covered = [
                await new.fetchval(
                    _COVERED, (c := _claims(t["access_token"]))["jti"], c["sid"], c["sub"], 0.0
                )
                for t in tokens
            ]
            after = dict(await new.fetch("SELECT position, event_id FROM event_log"))
        finally:
            await new.close()
        assert [a.status_code for a in answers] == [200] * len(tokens)
        assert covered == [False] * len(tokens), (
            "a logout answered 2xx was lost, as asynchronous replication may"
        )
        reissued = [p for p, event_id in after.items() if p in before and before[p] != event_id]
        assert reissued != [], "the lost positions were handed out again, to other events"
    finally:
        if auth is not None:
            auth.kill()
        await asyncio.to_thread(pair.stop)
        shutil.rmtree(workdir, ignore_errors=True)


async def _wal_receiver(url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval("SELECT pid FROM pg_stat_wal_receiver"))
    finally:
        await conn.close()


async def _answers(url: str) -> bool | None:
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=1.0)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    await conn.close()
    return True


async def _tokens_for(http: httpx.AsyncClient, email: str) -> dict[str, str] | None:
    response = await http.post("/oauth/token", data=_password(email))
    return dict(response.json()) if response.status_code == 200 else None
