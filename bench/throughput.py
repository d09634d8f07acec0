"""Requests per second through uvicorn (1 worker): the tokenlife dependency against a header-only one.

Three servers, one app each (bench/loadapp.py: the same single route, without a dependency, with a
header-only one, and protected the way the README shows), driven in interleaved rounds so a noisy machine
slows each alike. The load comes from wrk when it is installed (a C load generator: it leaves the cores to the
server), otherwise from a small asyncio HTTP/1.1 client (keep-alive connections, one request in flight on
each), which competes with the server for the 2 cores and makes the ratio noisier; the row says which.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bench import fixtures
from bench import wrk as load
from bench.results import Results
from bench.stack import free_port

ROUNDS = 16
# The servers on one core and wrk on the other (taskset), so the load generator never takes the measured
# server's core and each round measures the server alone on a core of its own.
SERVER_CPU, LOAD_CPU = 0, 1
SECONDS = 2.0
ASGI_ROUNDS = 15
ASGI_CALLS = 200
CONNECTIONS = 8
CASES = ("open", "header", "protected")
PATH = fixtures.ROUTE
APPS = {case: f"bench.loadapp:{case}_app" for case in CASES}
TARGET = "protected route / header-only route (uvicorn, 1 worker)"


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


async def _python_round(port: int, token: str) -> float:
    request = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode(
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


@contextmanager
def _servers(env: dict[str, str]) -> Iterator[dict[str, int]]:
    """One uvicorn process (1 worker) per app; their ports by case."""
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for case in CASES:
            port = free_port()
            server = subprocess.Popen(
                [*load.pinned(SERVER_CPU), sys.executable, "-m", "uvicorn", APPS[case], "--port", str(port)]
                + ["--workers", "1"]
                + ["--log-level", "warning", "--no-access-log"],
                env=env,
            )
            stack.callback(server.wait, 10)
            stack.callback(server.kill)
            ports[case] = port
        yield ports


async def run(results: Results) -> None:
    """Rows for each app's requests per second, and the dependency's ratio to the header-only one."""
    key = fixtures.private_key()
    token = fixtures.token(key)
    env = os.environ | {"TOKENLIFE_BENCH_JWK": json.dumps(fixtures.public_jwk(key))}
    wrk = load.available()
    generator = "wrk -t1" if wrk else "an asyncio client in the same machine (wrk not installed)"

    async def one_round(port: int) -> float:
        if wrk is None:
            return await _python_round(port, token)
        url = f"http://127.0.0.1:{port}{PATH}"
        done = await load.run(
            wrk,
            url,
            seconds=SECONDS,
            connections=CONNECTIONS,
            headers={"Authorization": f"Bearer {token}"},
            cpu=LOAD_CPU,
        )
        if done["non_2xx"] or done["socket_errors"]:
            raise RuntimeError(
                f"wrk: {done['non_2xx']} non-2xx answers, {done['socket_errors']} socket errors"
            )
        rate: float = done["rate"]
        return rate

    rates: dict[str, list[float]] = {case: [] for case in CASES}
    ratios: list[float] = []
    try:
        with _servers(env) as ports:
            for case in CASES:
                await _ready(ports[case])
                await _python_round(ports[case], token)  # warm-up: the token's cold check, imports
            for number in range(ROUNDS):
                # Forward, then backward: a drift in the machine's load favours no app.
                for case in CASES if number % 2 == 0 else CASES[::-1]:
                    rates[case].append(await one_round(ports[case]))
                ratios.append(rates["protected"][-1] / rates["header"][-1])
    except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
        results.skipped("protected route / header-only route (uvicorn)", str(exc))
        results.target(TARGET, None, "x", ">= 0.9x", None)
        return
    for case, what in (
        ("open", "no dependency (what FastAPI and uvicorn cost)"),
        ("header", "a dependency that reads the header only (baseline)"),
        ("protected", "the tokenlife dependency, AnswerGate, error handler (warm token, 100k live)"),
    ):
        results.row(
            f"GET {PATH} ({case}), uvicorn 1 worker",
            value=statistics.median(rates[case]),
            unit="req/s",
            note=(
                f"{what}; {CONNECTIONS} connections from {generator}, the server pinned to CPU"
                f" {SERVER_CPU} and the load to CPU {LOAD_CPU};"
                f" {ROUNDS} interleaved rounds of {SECONDS:.0f} s"
            ),
        )
    ratio = statistics.median(ratios)
    results.notes["throughput_ratios"] = ratios
    asgi = await _in_process(env["TOKENLIFE_BENCH_JWK"], token)
    for case, micros in asgi.items():
        results.row(
            f"GET {PATH} ({case}), in process (ASGI call, no server)",
            value=micros,
            unit="us",
            note="per request",
        )
    why = (
        f"in process the apps cost {asgi['open']:.0f} / {asgi['header']:.0f} / {asgi['protected']:.0f}"
        " us a request (none / header-only / tokenlife): FastAPI itself is most of a request; under uvicorn"
        f" the ratio moves with the machine's load (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    results.target(TARGET, ratio, "x", ">= 0.9x", ratio >= 0.9, "" if ratio >= 0.9 else why)


async def _in_process(jwk: str, token: str) -> dict[str, float]:
    """Microseconds per request of each route called as an ASGI app, without a server or sockets."""
    os.environ["TOKENLIFE_BENCH_JWK"] = jwk
    from bench import loadapp

    apps = {case: getattr(loadapp, f"{case}_app") for case in CASES}

    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode("latin-1"))]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{message['status']}")

    async def call(case: str) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await apps[case](scope, receive, send)

    for case in CASES:
        await call(case)
    micros: dict[str, list[float]] = {case: [] for case in CASES}
    for number in range(ASGI_ROUNDS):
        for case in CASES if number % 2 == 0 else CASES[::-1]:
            start = time.perf_counter()
            for _ in range(ASGI_CALLS):
                await call(case)
            micros[case].append((time.perf_counter() - start) / ASGI_CALLS * 1e6)
    return {case: statistics.median(values) for case, values in micros.items()}
