"""The log at database speed: logouts against a bare-INSERT route, auth CPU per logout, rebuild events/s.

`python -m bench.log_speed` (or `run()`) measures, each beside its baseline in one run, rounds interleaved:
- logouts/s sustained by one `tokenlife auth serve` (relay on, publishing to a bound queue), closed loop, 64
  connections, against a FastAPI route that does one asyncpg INSERT per request (same server stack: uvicorn,
  uvloop, httptools), and p50/p99 with 500 requests/s offered (open loop: latency counted from when each
  request was due, so a stall is not hidden);
- the auth process's CPU time (user + system, /proc) per logout over the closed-loop rounds, relay included;
- `tokenlife log rebuild` over 1,000,000 generated events (INSERT ... SELECT into a throwaway database),
  against the event-by-event path (`projections.project`) over the first 20,000 of them.
The closed-loop load comes from wrk when it is installed (bench/wrk.py: C, so the load takes little of the 2
cores), else from a separate process (`--load`): a raw HTTP/1.1 client on asyncio streams, off the measured
process but on the same cores. The open loop at 500/s is always the asyncio client (wrk cannot pace).
Tokens are minted with the service's own key for sessions made by SQL (logins, which hash passwords, are not
what is measured).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text
from starlette.requests import Request

from bench import wrk as load
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
CLOSED_REQUESTS = 5000  # tokens a closed-loop round may use (wrk: it runs for CLOSED_SECONDS)
CLOSED_SECONDS = 3
CONNECTIONS = 64
OFFERED_RATE = 500
OFFERED_SECONDS = 4
REBUILD_EVENTS = 1_000_000
BASELINE_EVENTS = 20_000
LOGOUT = "/v1/auth/logout"
BARE = "/v1/insert"

# One generated history: per group of 20 positions, 5 logins (session.started + token.issued each),
# 4 refreshes, 3 token revocations, 2 session revocations and 1 logout-all watermark; 5 sessions a group.
# It starts at $3, one event a millisecond, and every revocation expires a day after its event: started
# shortly before the run, every revocation is live, so the prune after the rebuild deletes none of them
# (from a fixed date in the past, the timed rebuild would also have deleted every row it wrote).
_GENERATE = """
INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, jti, expires_at,
                       schema_version, payload)
SELECT g, id, type, at, usr, sid, jti, exp, 1,
       jsonb_strip_nulls(jsonb_build_object(
           'schema_version', 1, 'type', type, 'event_id', id, 'occurred_at', at, 'position', g,
           'prev_position', g - 1, 'user_id', usr, 'session_id', sid, 'jti', jti, 'expires_at', exp,
           'client_id', CASE WHEN type = 'session.started' THEN 'web' END,
           'kid', CASE WHEN type = 'token.issued' THEN 'k1' END,
           'issued_at', CASE WHEN type = 'token.issued' THEN at END,
           'cause', CASE WHEN k BETWEEN 5 AND 9 THEN 'login' WHEN k BETWEEN 10 AND 13 THEN 'refresh' END,
           'not_before',
               CASE WHEN type = 'user.revoked' THEN date_trunc('second', at) + interval '1 second' END,
           'reason', CASE WHEN type LIKE '%.revoked' THEN 'bench' END))
FROM (SELECT g, k, gen_random_uuid() AS id,
             CASE WHEN k < 5 THEN 'session.started' WHEN k < 14 THEN 'token.issued'
                  WHEN k < 17 THEN 'token.revoked' WHEN k < 19 THEN 'session.revoked' ELSE 'user.revoked' END
                 AS type,
             $3::timestamptz + g * interval '1 millisecond' AS at,
             'u' || ((g / 20 * 5 + g % 5) % 50000) AS usr,
             md5('s' || (g / 20 * 5 + g % 5))::uuid AS sid,
             CASE WHEN k >= 5 AND k < 17 THEN md5('j' || g) END AS jti,
             $3::timestamptz + g * interval '1 millisecond' + interval '1 day' AS exp
      FROM (SELECT g, g % 20 AS k FROM generate_series($1::bigint, $2::bigint) AS g) AS n) AS e
"""

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


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _mint_tokens(database_url: str, kek: str, issuer: str, count: int) -> list[str]:
    from auth_service import keys as keystore
    from auth_service.db import create_engine
    from auth_service.maintenance import rebuild_projections
    from auth_service.settings import AuthSettings
    from auth_service.tokens import sign_access_token

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


async def _load(url: str, path: str, tokens: list[str], rate: float) -> dict[str, Any]:
    """Run the load generator process; rate 0 is a closed loop over every token."""
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
        f.write("\n".join(tokens))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.log_speed", "--load", url, path, f.name, str(rate),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        os.unlink(f.name)


async def _closed_round(wrk: str | None, url: str, path: str, tokens: list[str]) -> dict[str, Any]:
    """A closed-loop round: wrk for CLOSED_SECONDS when it is installed, else the asyncio client over every
    token (which shares the cores with the server, so it caps the rate it can measure)."""
    if wrk is None:
        return await _load(url, path, tokens, 0)
    done = await load.run(
        wrk, url + path, seconds=CLOSED_SECONDS, connections=CONNECTIONS, method="POST", tokens=tokens
    )
    ok = done["requests"] - done["non_2xx"]
    return {**done, "statuses": {"200": ok, "non-2xx": done["non_2xx"]}, "generator": "wrk"}


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _client(url: str, path: str, token_file: str, rate: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    tokens = open(token_file).read().split("\n")  # noqa: ASYNC230 - before the clock starts
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        conns.put_nowait(await asyncio.open_connection(host, int(port)))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(token: str, due: float) -> None:
        reader, writer = await conns.get()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - due)
        status = int(head.split(b" ", 2)[1])
        statuses[status] = statuses.get(status, 0) + 1
        conns.put_nowait((reader, writer))

    started = time.perf_counter()
    if rate <= 0:
        await asyncio.gather(*(one(t, time.perf_counter()) for t in tokens))
    else:
        tasks = []
        for i, token in enumerate(tokens):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(token, due)))
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {
        "requests": len(tokens),
        "seconds": elapsed,
        "rate": len(tokens) / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "statuses": statuses,
    }


def _bare_app(dsn: str) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    pool: Any = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post(BARE)
    async def insert(
        request: Request,
    ) -> JSONResponse:  # Request imported at module level: FastAPI resolves it
        async with pool.acquire() as conn:
            position = await conn.fetchval(
                "INSERT INTO bench_bare (body) VALUES ($1) RETURNING id", request.headers.get("authorization")
            )
        return JSONResponse({"position": position})

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


async def _rebuild(server_url: str) -> tuple[float, float]:
    """(rebuild events/s over REBUILD_EVENTS, event-by-event events/s over BASELINE_EVENTS)."""
    from auth_service import projections
    from auth_service.db import create_engine
    from auth_service.log import read_after
    from auth_service.maintenance import rebuild_projections
    from auth_service.settings import AuthSettings

    async with AsyncExitStack() as stack:
        url = await _database(stack, server_url, f"tokenlife_bench_rebuild_{uuid.uuid4().hex[:8]}", None)
        conn = await asyncpg.connect(_asyncpg_url(server_url, url.rsplit("/", 1)[1]))
        try:
            step = 100_000
            start = datetime.now(UTC) - REBUILD_EVENTS * timedelta(milliseconds=1)
            for first in range(1, REBUILD_EVENTS + 1, step):
                await conn.execute(_GENERATE, first, min(first + step - 1, REBUILD_EVENTS), start)
            await conn.execute("ANALYZE event_log")
        finally:
            await conn.close()
        settings = AuthSettings(database_url=url, env="dev")
        began = time.perf_counter()
        replayed, _pruned = await rebuild_projections(settings)
        rebuild_rate = replayed / (time.perf_counter() - began)

        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as sa:
                await sa.execute(text("TRUNCATE sessions, revocations"))
                events: list[Any] = []
                while len(events) < BASELINE_EVENTS:
                    events += await read_after(sa, len(events), 1000)
                began = time.perf_counter()
                for event in events:
                    await projections.project(sa, event)
                baseline = len(events) / (time.perf_counter() - began)
                await sa.rollback()
        finally:
            await engine.dispose()
    return rebuild_rate, baseline


async def _write_path(server_url: str, amqp_url: str) -> dict[str, Any]:
    import aio_pika

    from auth_service.keys import new_key_encryption_key

    run_id = uuid.uuid4().hex[:8]
    exchange = f"tokenlife.bench.logspeed.{run_id}"
    kek = new_key_encryption_key()
    async with AsyncExitStack() as stack:
        url = await _database(stack, server_url, f"tokenlife_bench_logspeed_{run_id}", None)
        dsn = _asyncpg_url(server_url, url.rsplit("/", 1)[1])
        conn = await asyncpg.connect(dsn)
        await conn.execute(
            "CREATE TABLE bench_bare (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), body text)"
        )
        await conn.close()
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
        bare_port = free_port()
        bare_log = stack.enter_context(tempfile.TemporaryFile())
        bare_proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
            [sys.executable, "-m", "bench.log_speed", "--bare", str(bare_port), dsn], stderr=bare_log
        )
        stack.callback(bare_proc.wait, 10)
        stack.callback(bare_proc.kill)
        bare_url = f"http://127.0.0.1:{bare_port}"
        await ready(bare_url, bare_proc, bare_log, "bare-INSERT route")

        wrk = load.available()
        per_round = CLOSED_REQUESTS + OFFERED_RATE * OFFERED_SECONDS
        tokens = await _mint_tokens(url, kek, auth_url, per_round * ROUNDS)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in ("logout", "bare", "logout@", "bare@")}
        cpu = {"logout": [0.0, 0], "bare": [0.0, 0]}
        for r in range(ROUNDS):
            batch = tokens[r * per_round : (r + 1) * per_round]
            closed, offered = batch[:CLOSED_REQUESTS], batch[CLOSED_REQUESTS:]
            for name, base, path, pid in (
                ("logout", auth_url, LOGOUT, auth_proc.pid),
                ("bare", bare_url, BARE, bare_proc.pid),
            ):
                before = _cpu_seconds(pid)
                result = await _closed_round(wrk, base, path, closed)
                cpu[name][0] += _cpu_seconds(pid) - before
                cpu[name][1] += result["statuses"].get("200", 0)
                results[name].append(result)
            results["logout@"].append(await _load(auth_url, LOGOUT, offered, OFFERED_RATE))
            results["bare@"].append(await _load(bare_url, BARE, offered, OFFERED_RATE))
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
        rebuild_rate, baseline_rate = await _rebuild(server_url)
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
            f"  p99 {row['p99_ms']:7.2f} ms  {row['statuses']}"
        )
    for key, value in figures["baselines"].items():
        print(f"baseline {key}: {value:.3f}")  # noqa: T201
    for t in figures["targets"]:
        verdict = "MET " if t["met"] else "MISS"
        print(f"{verdict} {t['name']}: {t['value']} {t['unit']} (target {t['target']})")  # noqa: T201
    return figures


def main(argv: list[str]) -> int:
    if argv[:1] == ["--load"]:
        url, path, token_file, rate = argv[1:5]
        print(json.dumps(asyncio.run(_client(url, path, token_file, float(rate)))))  # noqa: T201
        return 0
    if argv[:1] == ["--bare"]:
        import uvicorn

        uvicorn.run(_bare_app(argv[2]), host="127.0.0.1", port=int(argv[1]), log_level="warning")
        return 0
    run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
