"""Requests per second through uvicorn (1 worker): the tokenlife dependency against a header-only one.

A small HTTP/1.1 load generator on loopback (keep-alive connections, one request in flight on each) drives
the three routes of bench/loadapp.py in interleaved rounds, so a noisy machine slows each route alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from bench import fixtures
from bench.results import Results
from bench.stack import free_port

ROUNDS = 10
SECONDS = 1.0
ASGI_ROUNDS = 15
ASGI_CALLS = 200
CONNECTIONS = 8
ROUTES = ("/open", "/header", "/protected")


async def _connection(port: int, request: bytes, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"answered {head[:40]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _round(port: int, path: str, token: str) -> float:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode(
        "latin-1"
    )
    counts = [0]
    start = time.perf_counter()
    until = start + SECONDS
    await asyncio.gather(*(_connection(port, request, until, counts) for _ in range(CONNECTIONS)))
    return counts[0] / (time.perf_counter() - start)


async def _ready(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


async def run(results: Results) -> None:
    """Rows for each route's requests per second, and the dependency's ratio to the header-only route."""
    key = fixtures.private_key()
    token = fixtures.token(key)
    port = free_port()
    env = os.environ | {"TOKENLIFE_BENCH_JWK": json.dumps(fixtures.public_jwk(key))}
    server = subprocess.Popen(  # noqa: ASYNC220  # started once, before any timing
        [sys.executable, "-m", "uvicorn", "bench.loadapp:app", "--port", str(port), "--workers", "1"]
        + ["--log-level", "warning", "--no-access-log"],
        env=env,
    )
    try:
        await _ready(port)
        for path in ROUTES:  # warm-up: the first request of the token is its cold check
            await _round(port, path, token)
        rates: dict[str, list[float]] = {path: [] for path in ROUTES}
        ratios: list[float] = []
        for number in range(ROUNDS):
            # Forward, then backward: a drift in the machine's load favours no route.
            for path in ROUTES if number % 2 == 0 else ROUTES[::-1]:
                rates[path].append(await _round(port, path, token))
            ratios.append(rates["/protected"][-1] / rates["/header"][-1])
    except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
        results.skipped("protected route / header-only route (uvicorn)", str(exc))
        results.target("protected route / header-only route (uvicorn, 1 worker)", None, "x", ">= 0.9x", None)
        return
    finally:
        server.kill()
        server.wait(timeout=10)
    for path, what in (
        ("/open", "no dependency (what FastAPI and uvicorn cost)"),
        ("/header", "a dependency that reads the header only (baseline)"),
        ("/protected", "the tokenlife dependency (warm token, 100k live revocations)"),
    ):
        results.row(
            f"GET {path}, uvicorn 1 worker",
            value=statistics.median(rates[path]),
            unit="req/s",
            note=f"{what}; {CONNECTIONS} connections, {ROUNDS} interleaved rounds of {SECONDS} s",
        )
    ratio = statistics.median(ratios)
    results.notes["throughput_ratios"] = ratios
    asgi = await _in_process(env["TOKENLIFE_BENCH_JWK"], token)
    for path, micros in asgi.items():
        results.row(
            f"GET {path}, in process (ASGI call, no server)", value=micros, unit="us", note="per request"
        )
    why = (
        f"in process the routes cost {asgi['/open']:.0f} / {asgi['/header']:.0f} / {asgi['/protected']:.0f}"
        " us (none / header-only / tokenlife): FastAPI itself is most of a request, and the tokenlife "
        "dependency adds a few us over the header-only one; under uvicorn the ratio moves with the "
        f"machine's load (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    results.target(
        "protected route / header-only route (uvicorn, 1 worker)",
        ratio,
        "x",
        ">= 0.9x",
        ratio >= 0.9,
        "" if ratio >= 0.9 else why,
    )


async def _in_process(jwk: str, token: str) -> dict[str, float]:
    """Microseconds per request of each route called as an ASGI app, without a server or sockets."""
    os.environ["TOKENLIFE_BENCH_JWK"] = jwk
    from bench.loadapp import app

    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode("latin-1"))]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{message['status']}")

    async def call(path: str) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)  # type: ignore[arg-type]

    for path in ROUTES:
        await call(path)
    micros: dict[str, list[float]] = {path: [] for path in ROUTES}
    for number in range(ASGI_ROUNDS):
        for path in ROUTES if number % 2 == 0 else ROUTES[::-1]:
            start = time.perf_counter()
            for _ in range(ASGI_CALLS):
                await call(path)
            micros[path].append((time.perf_counter() - start) / ASGI_CALLS * 1e6)
    return {path: statistics.median(values) for path, values in micros.items()}
