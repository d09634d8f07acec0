"""The log at database speed: logouts against a bare-INSERT route, auth CPU per logout, rebuild events/s.

`python -m bench.log_speed` (or `run()`) measures, each beside its baseline in one run, rounds interleaved:
- logouts/s sustained by one `tokenlife auth serve` (relay on, publishing to a bound queue), closed loop, 64
  connections, against a FastAPI route that does one asyncpg INSERT per request (same server stack: uvicorn,
  uvloop, httptools), and p50/p99 with 500 requests/s offered (open loop: latency counted from when each
  request was due, so a stall is not hidden); each server first serves one unmeasured second of closed loop;
- the auth process's CPU time (user + system, /proc) per logout over the closed-loop rounds, relay included:
  counted until the relay has confirmed the round's last event (the cursor at the head), and how far behind
  it was when the round ended is reported beside it;
- `tokenlife log rebuild` over 1,000,000 generated events (INSERT ... SELECT into a throwaway database),
  against the event-by-event path (`projections.project`) over the first 20,000 of them.
The closed-loop load comes from wrk when it is installed (bench/wrk.py: C, so the load takes little of the 2
cores), else from a separate process (bench/log_load.py): a raw HTTP/1.1 client on asyncio streams, off the
measured process but on the same cores; the bare-INSERT route is served from there too, and the rebuild's
figures come from bench/rebuild_speed.py. The open loop at 500/s is always the asyncio client (wrk cannot
pace). Tokens are minted with the service's own key for sessions made by SQL (logins, which hash passwords,
are not what is measured).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench import log_load, rebuild_speed
from bench import wrk as load
from bench.stack import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    _asyncpg_url,
    _database,
    _serve,
    ready,
)

ROUNDS = 2
WARM_UP = 1500  # tokens for one second of closed loop on each server before the first round (not counted)
# Tokens a closed-loop round may use (wrk runs for log_load.CLOSED_SECONDS and would reuse them: a reused one
# is refused, 401, and the round's rate would stop at this many over 3 s).
CLOSED_REQUESTS = 12_000
CATCH_UP_TIMEOUT = 30.0
OFFERED_RATE = 500
OFFERED_SECONDS = 4
LOGOUT = "/v1/auth/logout"
BARE = log_load.BARE

# Sessions for the logout rounds: session.started events made by SQL, projected by the set-based rebuild.
_SESSIONS = """
INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, expires_at, schema_version,
                       payload)
SELECT g, id, 'session.started', now() - interval '10 seconds', 'user-' || (g % $2), sid,
       now() + interval '1 day', 1,
       jsonb_build_object('schema_version', 1, 'type', 'session.started', 'event_id', id,
           'occurred_at', now() - interval '10 seconds', 'user_id', 'user-' || (g % $2), 'session_id', sid,
           'client_id', 'web', 'expires_at', now() + interval '1 day', 'position', g, 'prev_position', g - 1)
FROM (SELECT g, gen_random_uuid() AS id, gen_random_uuid() AS sid FROM generate_series(1, $1) AS g) AS s
RETURNING session_id, user_id
"""


async def _relay_caught_up(dsn: str) -> dict[str, float]:
    """Wait until the relay's cursor reaches the log's head as it is now: how far behind it was, and how long
    it took (the cursor is written every relay.pump.CURSOR_EVERY, so to that resolution)."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM event_log")
        behind = head - await conn.fetchval("SELECT position FROM relay_cursor")
        while await conn.fetchval("SELECT position FROM relay_cursor") < head:
            if time.monotonic() - started > CATCH_UP_TIMEOUT:
                raise RuntimeError(f"the relay did not reach position {head} within {CATCH_UP_TIMEOUT} s")
            await asyncio.sleep(0.01)
        return {"relay_behind_events": float(behind), "relay_caught_up_s": time.monotonic() - started}
    finally:
        await conn.close()


def relay_note(row: dict[str, Any]) -> str:
    """How far behind the relay was when a logout round ended, and how long it took to catch up ("" for a
    row without)."""
    if "relay_behind_events" not in row:
        return ""
    return (
        f"the relay {row['relay_behind_events']:.0f} events behind at the end,"
        f" caught up in {row['relay_caught_up_s']:.2f} s"
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _mint_tokens(database_url: str, kek: str, issuer: str, count: int) -> list[str]:
    from auth_service.db.engine import create_engine
    from auth_service.maintenance import rebuild_projections
    from auth_service.settings import AuthSettings
    from auth_service.tokens import keys as keystore
    from auth_service.tokens.access import sign_access_token

    dsn = _asyncpg_url(database_url, database_url.rsplit("/", 1)[1])
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_SESSIONS, count, max(1, count // 4))
    finally:
        await conn.close()
    settings = AuthSettings(database_url=database_url, key_encryption_key=kek, env="dev")
    await rebuild_projections(settings)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as sa:
            ring = await keystore.load(sa, kek, 300)
    finally:
        await engine.dispose()
    assert ring.active is not None
    now = datetime.now(UTC)
    return [
        sign_access_token(
            ring.active,
            issuer=issuer,
            audience="tokenlife",
            subject=r["user_id"],
            session_id=r["session_id"],
            client_id="web",
            scope="",
            ttl=300,
            now=now,
        ).token
        for r in rows
    ]


async def _write_path(server_url: str, amqp_url: str) -> dict[str, Any]:
    import aio_pika

    from auth_service.tokens.keys import new_key_encryption_key

    run_id = uuid.uuid4().hex[:8]
    exchange = f"tokenlife.bench.logspeed.{run_id}"
    kek = new_key_encryption_key()
    async with AsyncExitStack() as stack:
        url = await _database(stack, server_url, f"tokenlife_bench_logspeed_{run_id}", None)
        dsn = _asyncpg_url(server_url, url.rsplit("/", 1)[1])
        broker = await aio_pika.connect(amqp_url)
        stack.push_async_callback(broker.close)
        channel = await broker.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(f"{exchange}.q", arguments={"x-max-length": 10000})
        await queue.bind(ex, "#")
        stack.push_async_callback(channel.exchange_delete, exchange)
        stack.push_async_callback(channel.queue_delete, f"{exchange}.q")

        auth_url, auth_proc, auth_log = _serve(
            stack,
            "auth",
            {
                "TOKENLIFE_ENV": "dev",
                "TOKENLIFE_DATABASE_URL": url,
                "TOKENLIFE_AMQP_URL": amqp_url,
                "TOKENLIFE_EXCHANGE": exchange,
                "TOKENLIFE_KEY_ENCRYPTION_KEY": kek,
                "TOKENLIFE_RELAY_ENABLED": "true",
            },
        )
        await ready(auth_url, auth_proc, auth_log, "auth service")
        bare_url, bare_pid = await log_load.serve_bare(stack, dsn)

        wrk = load.available()
        per_round = CLOSED_REQUESTS + OFFERED_RATE * OFFERED_SECONDS
        tokens = await _mint_tokens(url, kek, auth_url, per_round * ROUNDS + WARM_UP)
        # Both servers warm up alike first (pools connected, statements prepared, caches filled): the rounds
        # measure a server that has served before, as in production.
        warm_up, tokens = tokens[:WARM_UP], tokens[WARM_UP:]
        await log_load.closed_round(wrk, auth_url, LOGOUT, warm_up, seconds=1)
        await log_load.closed_round(wrk, bare_url, BARE, warm_up, seconds=1)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in ("logout", "bare", "logout@", "bare@")}
        cpu = {"logout": [0.0, 0], "bare": [0.0, 0]}
        for r in range(ROUNDS):
            batch = tokens[r * per_round : (r + 1) * per_round]
            closed, offered = batch[:CLOSED_REQUESTS], batch[CLOSED_REQUESTS:]
            for name, base, path, pid in (
                ("logout", auth_url, LOGOUT, auth_proc.pid),
                ("bare", bare_url, BARE, bare_pid),
            ):
                before = _cpu_seconds(pid)
                result = await log_load.closed_round(wrk, base, path, closed)
                if name == "logout":  # the relay's share of the round, done after it, counts too
                    result |= await _relay_caught_up(dsn)
                cpu[name][0] += _cpu_seconds(pid) - before
                cpu[name][1] += result["statuses"].get("200", 0)
                results[name].append(result)
            results["logout@"].append(await log_load.load(auth_url, LOGOUT, offered, OFFERED_RATE))
            results["bare@"].append(await log_load.load(bare_url, BARE, offered, OFFERED_RATE))
        return {"results": results, "cpu_ms": {k: 1000 * v[0] / max(1, v[1]) for k, v in cpu.items()}}


def _target(name: str, value: float, unit: str, target: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": round(value, 3), "unit": unit, "target": target, "met": met}


async def _run() -> dict[str, Any]:
    server_url = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    amqp_url = os.environ.get("TOKENLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL)
    write = await _write_path(server_url, amqp_url)
    if os.environ.get("TOKENLIFE_BENCH_SKIP_REBUILD"):
        rebuild_rate, baseline_rate = float("nan"), float("nan")
    else:
        rebuild_rate, baseline_rate = await rebuild_speed.measure(server_url)
    res = write["results"]
    logout_rate = min(r["rate"] for r in res["logout"])
    bare_rate = min(r["rate"] for r in res["bare"])
    p99 = max(r["p99_ms"] for r in res["logout@"])
    rows = [{"case": f"{name} round {i + 1}", **r} for name, runs in res.items() for i, r in enumerate(runs)]
    # The ratio within each round (the machine's load changes between rounds); the worst round counts.
    ratio = min(lo["rate"] / b["rate"] for lo, b in zip(res["logout"], res["bare"], strict=True))
    cpu_ms = write["cpu_ms"]["logout"]
    targets = [
        _target(
            "logouts/s sustained (closed loop, worst round)",
            logout_rate,
            "1/s",
            ">= 1000",
            logout_rate >= 1000,
        ),
        _target("logout p99 at 500/s offered (worst round)", p99, "ms", "<= 20", p99 <= 20),
        _target(
            "logouts/s over the bare-INSERT route's, same round (worst)", ratio, "x", ">= 0.5", ratio >= 0.5
        ),
        _target("auth CPU per logout, relay included", cpu_ms, "ms", "<= 1", cpu_ms <= 1),
        _target("rebuild events/s over 1M events", rebuild_rate, "1/s", ">= 300000", rebuild_rate >= 300_000),
    ]
    return {
        "rows": rows,
        "baselines": {
            "bare_insert_rate": bare_rate,
            "bare_cpu_ms_per_request": write["cpu_ms"]["bare"],
            "bare_p99_ms_at_500": max(r["p99_ms"] for r in res["bare@"]),
            "event_by_event_rebuild_rate": baseline_rate,
        },
        "targets": targets,
    }


def run() -> dict[str, Any]:
    """Measure, print the table, and return the rows, baselines and targets."""
    figures = asyncio.run(_run())
    for row in figures["rows"]:
        print(  # noqa: T201
            f"{row['case']:<18} {row['requests']:>6} req {row['rate']:>8.0f}/s  p50 {row['p50_ms']:7.2f} ms"
            f"  p99 {row['p99_ms']:7.2f} ms  {row['statuses']}  {relay_note(row)}"
        )
    for key, value in figures["baselines"].items():
        print(f"baseline {key}: {value:.3f}")  # noqa: T201
    for t in figures["targets"]:
        verdict = "MET " if t["met"] else "MISS"
        print(f"{verdict} {t['name']}: {t['value']} {t['unit']} (target {t['target']})")  # noqa: T201
    return figures


if __name__ == "__main__":
    run()
