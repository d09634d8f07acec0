"""Every write at the log's speed: refreshes, logins and a mixed load through the log writer, each beside a
bare-INSERT route in the same rounds; two auth processes against one; logouts on stale statistics.

`python -m bench.grant_speed` (or `run()`) measures, rounds interleaved, on one fresh database:
- refreshes/s sustained by one `tokenlife auth serve` (relay on, publishing to a bound queue), closed loop,
  64 connections (bench/log_load.py, wrk when installed), against the bare-INSERT route of bench/log_speed.py,
  and p50/p99 of each at 500 requests/s offered (open loop);
- the auth process's CPU per refresh (relay included, counted until it confirmed the round's last event)
  beside the bare route's CPU per request, and the append lock's hold per event at saturation, from the
  writer's own counters (/metrics: tokenlife_log_lock_held_seconds over tokenlife_log_events_appended);
- logins/s (closed loop) for users the benchmark registers with a deliberately cheap argon2id hash
  (t=1, m=8 KiB, written by SQL: the service only verifies), so the figure is the write path's, not argon2's;
- a mixed load, 70% refresh, 20% login, 10% logout: events/s and p99 (closed loop);
- refreshes/s with two auth processes on the database, half the connections each, against one process in
  the same round, and the append-lock wait p99 the writers report;
and, on two more databases, logouts/s after 100,000 revocations were written into a table whose statistics
date from when it was empty (autovacuum off for it, never analyzed), against a fresh table.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import uuid
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import httpx

from bench import log_load
from bench import wrk as load
from bench.log_speed import _cpu_seconds, _mint_tokens, _relay_caught_up, _target
from bench.stack import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    _asyncpg_url,
    _database,
    _serve,
    free_port,
    ready,
)

ROUNDS = 2
# Where a refresh's time goes, profiled apart from the run (py-spy, see the module's closing note).
REFRESH_PROFILE = (
    "py-spy at saturation (refresh closed loop, 64 connections, 2026-12-05): RS256 signing of the new access "
    "token 28% of the auth process's samples, the pool read of the token's state 14%, the log writer 8%, "
    "FastAPI, Starlette and uvicorn around the route most of the rest; per batch of about 10 refreshes the "
    "append function held the lock 0.75 ms (measured apart: the event_log INSERT is the largest statement, "
    "then the sessions' last_refreshed_at and the refresh-token rows), so the hold per event is per-batch "
    "cost over small batches; a PyJWT signature took 350 us with RS256 against 56 us with ES256 on this "
    "machine that day (bench/jwt_algorithms.py measures both)"
)
USERS = 500
PER_CLOSED = 15_000  # refresh tokens a closed round may use (never one twice: a repeat is another path)
OFFERED_RATE = 500
OFFERED_SECONDS = 4
STALE_REVOCATIONS = 100_000
LOGOUTS = 12_000
TOKEN = "/oauth/token"
PASSWORD = "bench-password"
# The benchmark's users only: argon2id at its cheapest, so a login measures the write path. The service
# verifies whatever parameters a hash names; it never makes such a hash (passwords.py uses the defaults).

# Sessions with a refresh token each, for the given users, as the log and its projections would have them:
# session.started in the log (projected by the rebuild), the token's hash in refresh_tokens.
_SESSIONS = """
WITH s AS (SELECT gen_random_uuid() AS sid, u, h, row_number() OVER () AS n
           FROM unnest($1::text[], $2::bytea[]) AS x(u, h)),
logged AS (
    INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, expires_at,
                           schema_version, payload)
    SELECT $3 + n, id, 'session.started', now() - interval '10 seconds', u, sid, now() + interval '1 day', 1,
           jsonb_build_object('schema_version', 1, 'type', 'session.started', 'event_id', id,
               'occurred_at', now() - interval '10 seconds', 'user_id', u, 'session_id', sid,
               'client_id', 'tokenlife-console', 'expires_at', now() + interval '1 day', 'position', $3 + n,
               'prev_position', $3 + n - 1)
    FROM (SELECT *, gen_random_uuid() AS id FROM s) AS e)
INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at, expires_at)
SELECT h, sid, 1, now(), now() + interval '1 day' FROM s
"""


def _cheap_hash() -> str:
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)


async def _prepare(dsn: str, database_url: str, kek: str, refreshes: int) -> dict[str, list[str]]:
    """Users and refresh tokens in the database; the request lines (bench/wrk.py) that use them."""
    from auth_service.maintenance import rebuild_projections
    from auth_service.settings import AuthSettings
    from auth_service.tokens.access import hash_refresh_token

    conn = await asyncpg.connect(dsn)
    try:
        cheap = await asyncio.to_thread(_cheap_hash)
        users = [str(uuid.uuid4()) for _ in range(USERS)]
        await conn.execute(
            "INSERT INTO users (user_id, email, password_hash)"
            " SELECT u::uuid, 'u' || n || '@bench.example', $2"
            " FROM unnest($1::text[]) WITH ORDINALITY AS x(u, n)",
            users,
            cheap,
        )
        tokens = [secrets.token_urlsafe(32) for _ in range(refreshes)]
        owners = [users[i % USERS] for i in range(refreshes)]
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM event_log")
        await conn.execute(_SESSIONS, owners, [hash_refresh_token(t) for t in tokens], head)
    finally:
        await conn.close()
    await rebuild_projections(AuthSettings(database_url=database_url, key_encryption_key=kek, env="dev"))
    logins = [
        f"form:grant_type=password&username=u{n}%40bench.example&password={PASSWORD}&client_id="
        for n in range(1, USERS + 1)
    ]
    return {"refresh": [f"form:grant_type=refresh_token&refresh_token={t}" for t in tokens], "login": logins}


def _bearer(lines: list[str]) -> list[str]:
    """The same number of requests for the bare route: its body is the line, as a bearer token."""
    return ["bearer:" + line.split("=", 2)[-1] for line in lines]


async def _metrics(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics")).text
    found = re.findall(r"^(tokenlife_log_[a-z0-9_]+?)(?:_total)? ([0-9.e+-]+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


class _Servers:
    """The run's processes: auth services (one relay leads), the bare-INSERT route."""

    def __init__(
        self, stack: AsyncExitStack, url: str, dsn: str, amqp_url: str, exchange: str, kek: str
    ) -> None:
        self.stack, self.url, self.dsn = stack, url, dsn
        self.env = {
            "TOKENLIFE_ENV": "dev",
            "TOKENLIFE_DATABASE_URL": url,
            "TOKENLIFE_AMQP_URL": amqp_url,
            "TOKENLIFE_EXCHANGE": exchange,
            "TOKENLIFE_KEY_ENCRYPTION_KEY": kek,
            "TOKENLIFE_RELAY_ENABLED": "true",
        }

    async def auth(self) -> tuple[str, int]:
        url, proc, log = _serve(self.stack, "auth", self.env)
        await ready(url, proc, log, "auth service")
        return url, proc.pid

    async def bare(self) -> tuple[str, int]:
        port = free_port()
        log = self.stack.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
            [sys.executable, "-m", "bench.log_load", "--bare", str(port), self.dsn], stderr=log
        )
        self.stack.callback(proc.wait, 10)
        self.stack.callback(proc.kill)
        url = f"http://127.0.0.1:{port}"
        await ready(url, proc, log, "bare-INSERT route")
        return url, proc.pid


async def _closed(
    wrk: str | None, url: str, path: str, lines: list[str], connections: int = 64
) -> dict[str, Any]:
    if wrk is None:
        return await log_load.load(url, path, lines, 0)
    done = await load.run(
        wrk, url + path, seconds=log_load.CLOSED_SECONDS, connections=connections, method="POST", tokens=lines
    )
    return {**done, "statuses": {"2xx": done["requests"] - done["non_2xx"], "non-2xx": done["non_2xx"]}}


async def _bare_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_bare"
            " (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), body text)"
        )
    finally:
        await conn.close()


async def _grants(server_url: str, amqp_url: str) -> dict[str, Any]:
    import aio_pika

    from auth_service.tokens.keys import new_key_encryption_key

    run_id = uuid.uuid4().hex[:8]
    exchange = f"tokenlife.bench.grants.{run_id}"
    kek = new_key_encryption_key()
    per_round = 3 * PER_CLOSED + OFFERED_RATE * OFFERED_SECONDS
    async with AsyncExitStack() as stack:
        url = await _database(stack, server_url, f"tokenlife_bench_grants_{run_id}", None)
        dsn = _asyncpg_url(server_url, url.rsplit("/", 1)[1])
        await _bare_table(dsn)
        broker = await aio_pika.connect(amqp_url)
        stack.push_async_callback(broker.close)
        channel = await broker.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(f"{exchange}.q", arguments={"x-max-length": 10000})
        await queue.bind(ex, "#")
        stack.push_async_callback(channel.exchange_delete, exchange)
        stack.push_async_callback(channel.queue_delete, f"{exchange}.q")
        servers = _Servers(stack, url, dsn, amqp_url, exchange, kek)
        (auth, auth_pid), (second, _), (bare, bare_pid) = (
            await servers.auth(),
            await servers.auth(),
            await servers.bare(),
        )
        # Sessions for the logouts first (they are numbered from the log's start), then the refresh tokens.
        logouts = [f"bearer:{t}" for t in await _mint_tokens(url, kek, auth, LOGOUTS)]
        lines = await _prepare(dsn, url, kek, per_round * ROUNDS + 2000)
        wrk = load.available()
        refresh = lines["refresh"]
        warm, refresh = refresh[:2000], refresh[2000:]
        await _closed(wrk, auth, TOKEN, warm[:1000], 64)
        await _closed(wrk, second, TOKEN, warm[1000:], 64)
        await _closed(wrk, bare, log_load.BARE, _bearer(warm), 64)
        out: dict[str, list[dict[str, Any]]] = {}
        cpu = {"refresh": [0.0, 0], "bare": [0.0, 0]}

        def keep(name: str, result: dict[str, Any]) -> None:
            out.setdefault(name, []).append(result)
            rate, p99 = result.get("rate", 0), result.get("p99_ms", 0)
            print(f"{name}: {rate:.0f}/s p99 {p99:.1f} ms", file=sys.stderr)  # noqa: T201

        for r in range(ROUNDS):
            mine = refresh[r * per_round : (r + 1) * per_round]
            closed, two, mixed_r, offered = (
                mine[:PER_CLOSED],
                mine[PER_CLOSED : 2 * PER_CLOSED],
                mine[2 * PER_CLOSED : 3 * PER_CLOSED],
                mine[3 * PER_CLOSED :],
            )
            before, cpu0 = await _metrics(auth), _cpu_seconds(auth_pid)
            result = await _closed(wrk, auth, TOKEN, closed)
            after = await _metrics(auth)
            result |= await _relay_caught_up(dsn)
            cpu["refresh"][0] += _cpu_seconds(auth_pid) - cpu0
            cpu["refresh"][1] += result["statuses"].get("2xx", result["statuses"].get("200", 0))
            events = after["tokenlife_log_events_appended"] - before["tokenlife_log_events_appended"]
            held = after["tokenlife_log_lock_held_seconds"] - before["tokenlife_log_lock_held_seconds"]
            result["lock_held_us_per_event"] = 1e6 * held / max(1.0, events)
            keep("refresh", result)
            cpu0 = _cpu_seconds(bare_pid)
            result = await _closed(wrk, bare, log_load.BARE, _bearer(closed))
            cpu["bare"][0] += _cpu_seconds(bare_pid) - cpu0
            cpu["bare"][1] += result["statuses"].get("2xx", result["statuses"].get("200", 0))
            keep("bare", result)
            keep("login", await _closed(wrk, auth, TOKEN, lines["login"]))
            mixed = [
                (mixed_r[i] if i % 10 < 7 else lines["login"][i % USERS] if i % 10 < 9 else logouts.pop())
                for i in range(min(len(mixed_r), 10 * len(logouts) // 2))
            ]
            keep("mixed", await _closed(wrk, auth, "/v1/auth/logout", mixed))
            half = len(two) // 2
            one_of_two, other_of_two = await asyncio.gather(
                _closed(wrk, auth, TOKEN, two[:half], 32), _closed(wrk, second, TOKEN, two[half:], 32)
            )
            keep(
                "two processes",
                {"rate": one_of_two["rate"] + other_of_two["rate"], "parts": [one_of_two, other_of_two]},
            )
            keep("refresh@", await log_load.load(auth, TOKEN, offered, OFFERED_RATE))
            keep("bare@", await log_load.load(bare, log_load.BARE, _bearer(offered), OFFERED_RATE))
        waits = await _metrics(auth), await _metrics(second)
        return {
            "results": out,
            "cpu_ms": {k: 1000 * v[0] / max(1, v[1]) for k, v in cpu.items()},
            "lock_wait_p99_ms": max(
                1000 * w.get("tokenlife_log_lock_wait_p99_seconds", float("nan")) for w in waits
            ),
        }


async def _stale(server_url: str, amqp_url: str) -> dict[str, list[float]]:
    """Logouts/s on a fresh revocations table against one holding 100,000 rows it was never analyzed with."""
    from auth_service.tokens.keys import new_key_encryption_key

    run_id = uuid.uuid4().hex[:8]
    kek = new_key_encryption_key()
    rates: dict[str, list[float]] = {"fresh": [], "stale": []}
    per_round = 9000
    async with AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        tokens: dict[str, list[str]] = {}
        for name in rates:
            url = await _database(stack, server_url, f"tokenlife_bench_{name}_{run_id}", None)
            if name == "stale":
                conn = await asyncpg.connect(_asyncpg_url(server_url, url.rsplit("/", 1)[1]))
                try:  # the table's statistics stay those of an empty table: autovacuum off, never analyzed
                    await conn.execute("ALTER TABLE revocations SET (autovacuum_enabled = false)")
                    await conn.execute(_OLD_REVOCATIONS, STALE_REVOCATIONS)
                finally:
                    await conn.close()
            env = {
                "TOKENLIFE_ENV": "dev",
                "TOKENLIFE_DATABASE_URL": url,
                "TOKENLIFE_KEY_ENCRYPTION_KEY": kek,
                "TOKENLIFE_RELAY_ENABLED": "false",
            }
            auth, proc, log = _serve(stack, "auth", env)
            await ready(auth, proc, log, "auth service")
            urls[name] = auth
            tokens[name] = await _mint_tokens(url, kek, auth, ROUNDS * per_round + 1000)
        wrk = load.available()
        for name in rates:  # warm-up, not counted
            await _closed(wrk, urls[name], "/v1/auth/logout", tokens[name][-1000:])
        for r in range(ROUNDS):
            for name in rates:
                mine = tokens[name][r * per_round : (r + 1) * per_round]
                rates[name].append((await _closed(wrk, urls[name], "/v1/auth/logout", mine))["rate"])
    return rates


_OLD_REVOCATIONS = """
INSERT INTO revocations (kind, subject, expires_at, position)
SELECT 'jti', 'old-' || g, now() + interval '1 hour', g FROM generate_series(1, $1) AS g
"""


def _rate(rows: list[dict[str, Any]]) -> float:
    return min(float(r["rate"]) for r in rows)


async def _run() -> dict[str, Any]:
    server_url = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    amqp_url = os.environ.get("TOKENLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL)
    grants = await _grants(server_url, amqp_url)
    stale = await _stale(server_url, amqp_url)
    res = grants["results"]
    refresh, bare = _rate(res["refresh"]), _rate(res["bare"])
    ratio = min(a["rate"] / b["rate"] for a, b in zip(res["refresh"], res["bare"], strict=True))
    p99 = max(r["p99_ms"] for r in res["refresh@"])
    login = _rate(res["login"])
    held = max(r["lock_held_us_per_event"] for r in res["refresh"])
    two = min(t["rate"] / o["rate"] for t, o in zip(res["two processes"], res["refresh"], strict=True))
    stale_ratio = min(s / f for s, f in zip(stale["stale"], stale["fresh"], strict=True))
    cpu = grants["cpu_ms"]
    rows = [
        {"case": f"{name} round {i + 1}", **{k: v for k, v in r.items() if k != "parts"}}
        for name, runs in res.items()
        for i, r in enumerate(runs)
    ] + [
        {"case": f"logouts, {name} revocations round {i + 1}", "rate": v}
        for name, vs in stale.items()
        for i, v in enumerate(vs)
    ]
    targets = [
        _target(
            "refreshes/s sustained (closed loop, one process, worst round)",
            refresh,
            "1/s",
            ">= 1500",
            refresh >= 1500,
        ),
        _target(
            "refreshes/s over the bare-INSERT route's, same round (worst)", ratio, "x", ">= 0.5", ratio >= 0.5
        ),
        _target("refresh p99 at 500/s offered (worst round)", p99, "ms", "<= 20", p99 <= 20),
        _target(
            "logins/s (cheap bench-only hash, closed loop, worst round)",
            login,
            "1/s",
            ">= 1000",
            login >= 1000,
        ),
        _target(
            "append lock held per event at saturation (refresh rounds, worst)",
            held,
            "us",
            "<= 50",
            held <= 50,
        ),
        _target("two auth processes over one, refreshes/s (worst round)", two, "x", ">= 1.0", two >= 1.0),
        _target(
            "logouts/s after 100k revocations on stale statistics over a fresh table (worst)",
            stale_ratio,
            "x",
            ">= 0.9",
            stale_ratio >= 0.9,
        ),
    ]
    return {
        "rows": rows,
        "baselines": {
            "bare_insert_rate": bare,
            "bare_cpu_ms_per_request": cpu["bare"],
            "refresh_cpu_ms": cpu["refresh"],
            "bare_p99_ms_at_500": max(r["p99_ms"] for r in res["bare@"]),
            "mixed_events_per_s": _rate(res["mixed"]),
            "mixed_p99_ms": max(r["p99_ms"] for r in res["mixed"]),
            "lock_wait_p99_ms_two_processes": grants["lock_wait_p99_ms"],
        },
        "targets": targets,
    }


def run() -> dict[str, Any]:
    """Measure, print the table, and return the rows, baselines and targets."""
    figures = asyncio.run(_run())
    for row in figures["rows"]:
        extra = {k: row[k] for k in ("p50_ms", "p99_ms", "statuses", "lock_held_us_per_event") if k in row}
        print(f"{row['case']:<40} {row['rate']:>8.0f}/s  {extra}")  # noqa: T201
    for key, value in figures["baselines"].items():
        print(f"baseline {key}: {value:.3f}")  # noqa: T201
    for t in figures["targets"]:
        verdict = "MET " if t["met"] else "MISS"
        print(f"{verdict} {t['name']}: {t['value']} {t['unit']} (target {t['target']})")  # noqa: T201
    return figures


if __name__ == "__main__":
    # `python -m bench.grant_speed --write PATH`: the figures, the machine and its load, as JSON too.
    measured = run()
    if sys.argv[1:2] == ["--write"] and len(sys.argv) > 2:
        import json
        import platform
        from datetime import UTC, datetime

        measured |= {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load_average_at_end": os.getloadavg(),
        }
        with open(sys.argv[2], "w") as out:
            json.dump(measured, out, indent=1, default=str)
