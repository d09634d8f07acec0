"""The write-path benchmark's load: the asyncio HTTP/1.1 client (closed and open loop), wrk rounds, and the
bare-INSERT route it is compared with (bench/log_speed.py drives them).

`python -m bench.log_load --load URL PATH TOKEN_FILE RATE` runs the client in a process of its own and prints
its figures as JSON (rate 0: closed loop over every token); `--bare PORT DSN` serves the bare-INSERT route.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
from starlette.requests import Request

from bench import wrk as wrk_load
from bench.stack import free_port, ready

CONNECTIONS = 64
CLOSED_SECONDS = 3
BARE = "/v1/insert"


async def load(url: str, path: str, tokens: list[str], rate: float) -> dict[str, Any]:
    """Run the load generator process; rate 0 is a closed loop over every token."""
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
        f.write("\n".join(tokens))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.log_load", "--load", url, path, f.name, str(rate),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        os.unlink(f.name)


async def closed_round(
    wrk: str | None,
    url: str,
    path: str,
    tokens: list[str],
    seconds: float = CLOSED_SECONDS,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """A closed-loop round: wrk for `seconds` when it is installed, else the asyncio client over every token
    (which shares the cores with the server, so it caps the rate it can measure)."""
    if wrk is None:
        return await load(url, path, tokens, 0)
    done = await wrk_load.run(
        wrk, url + path, seconds=seconds, connections=connections, method="POST", tokens=tokens
    )
    ok = done["requests"] - done["non_2xx"]
    return {**done, "statuses": {"200": ok, "non-2xx": done["non_2xx"]}, "generator": "wrk"}


async def serve_bare(stack: AsyncExitStack, dsn: str) -> tuple[str, int]:
    """Create the bare route's table on `dsn` and serve the route from a process of its own (stopped when
    `stack` closes); its base URL and pid."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_bare"
            " (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), body text)"
        )
    finally:
        await conn.close()
    port = free_port()
    log = stack.enter_context(tempfile.TemporaryFile())
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
        [sys.executable, "-m", "bench.log_load", "--bare", str(port), dsn], stderr=log
    )
    stack.callback(proc.wait, 10)
    stack.callback(proc.kill)
    url = f"http://127.0.0.1:{port}"
    await ready(url, proc, log, "bare-INSERT route")
    return url, proc.pid


def _request(host: str, path: str, line: str) -> bytes:
    """One request, as bench/wrk.py's script makes it: "form:<body>" posts to the token endpoint, anything
    else is the bearer token of a POST to `path`."""
    if line.startswith("form:"):
        body = line[5:].encode()
        return (
            f"POST /oauth/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    token = line.removeprefix("bearer:")
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


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
        writer.write(_request(host, path, token))
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["--load"]:
        url, path, token_file, rate = argv[1:5]
        print(json.dumps(asyncio.run(_client(url, path, token_file, float(rate)))))  # noqa: T201
        return 0
    if argv[:1] == ["--bare"]:
        import uvicorn

        uvicorn.run(_bare_app(argv[2]), host="127.0.0.1", port=int(argv[1]), log_level="warning")
        return 0
    raise SystemExit("usage: python -m bench.log_load --load URL PATH TOKEN_FILE RATE | --bare PORT DSN")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
