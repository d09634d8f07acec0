"""What tracing costs the hot path: a protected request of the sample service (resource_service.app), called
as an ASGI app in process, and the warm check alone, with tracing off against OpenTelemetry not installed,
and with tracing on (reported).

Three worker processes, one per case, each building the sample app as `tokenlife resource serve` does, with
the bench Guard (fixtures.checked: 100k live revocations, always fresh) in its runtime:
- `absent`: the SDK, the instrumentations and the exporters cannot be imported (as without the `otel`
  extra), no OTEL_* variable: the baseline;
- `off`: everything installed, no OTEL_* variable: tracing off, as by default;
- `on`: a tracer provider with a batch processor whose exporter drops the spans (the cost of making them,
  not of a network), every request sampled: the server span of each request.
Rounds are interleaved: the parent asks each worker in turn (rotating the order) for a slice of samples, so a
noisy machine slows every case alike. Run alone: `python -m bench.tracing`.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from bench.results import Results, median_p99

ROOT = Path(__file__).resolve().parent.parent
CASES = ("absent", "off", "on")
ROUNDS = 40
SAMPLES = 6  # per round and case, each the mean of CALLS requests
CALLS = 40
WARM_CALLS = 2000
TARGET = "protected request, tracing off / OpenTelemetry not installed (throughput)"
_HIDDEN = ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter")


def run(results: Results) -> None:
    """Start the three workers, take interleaved rounds, add the rows and the target."""
    workers = {case: _start(case) for case in CASES}
    request: dict[str, list[float]] = {case: [] for case in CASES}
    warm: dict[str, list[float]] = {case: [] for case in CASES}
    try:
        for number in range(ROUNDS):
            # The two compared cases side by side, in turn first: a round's drift touches both alike.
            order = ("absent", "off", "on") if number % 2 == 0 else ("off", "absent", "on")
            for case in order:
                answer = _ask(workers[case])
                request[case] += answer["request_us"]
                warm[case].append(answer["warm_us"])
    finally:
        for worker in workers.values():
            worker.kill()
            worker.wait(timeout=10)
    for case in CASES:
        results.row(
            f"protected request, tracing {case} (sample app, ASGI in process)",
            request[case],
            note=_NOTES[case],
        )
        results.row(f"warm check, tracing {case}", warm[case], note="Guard.check_cached of the same app")
    absent, _, on = (median_p99(request[case])[0] for case in CASES)
    # Paired: the median of the rounds' ratios, each of two slices taken back to back.
    rounds = _ratios(request["absent"], request["off"])
    ratio = statistics.median(rounds)
    spread = (
        f"rounds' ratios: 10th percentile {_quantile(rounds, 0.1):.3f}, 90th {_quantile(rounds, 0.9):.3f}"
    )
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    results.target(TARGET, round(ratio, 3), "x", ">= 0.98x", ratio >= 0.98, f"{spread}; {load}")
    results.row(
        "protected request, tracing on / not installed (throughput)",
        value=round(absent / on, 3),
        unit="x",
        note=f"reported, no target: {on - absent:.1f} us more a request for its server span",
    )


_NOTES = {
    "absent": "baseline: the otel extra's packages cannot be imported",
    "off": "the otel extra installed, no OTEL_* variable (the default)",
    "on": "a server span each request, all sampled, batch processor, exporter dropping spans",
}


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _ratios(baseline: Sequence[float], case: Sequence[float]) -> list[float]:
    per = SAMPLES
    return [
        statistics.median(baseline[i : i + per]) / statistics.median(case[i : i + per])
        for i in range(0, min(len(baseline), len(case)), per)
    ]


def _start(case: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.tracing", "--worker", case],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert worker.stdout is not None
    ready = worker.stdout.readline().strip()
    if ready != "ready":
        worker.kill()
        raise RuntimeError(f"the {case} worker did not start: {ready!r}")
    return worker


def _ask(worker: subprocess.Popen[str]) -> dict[str, Any]:
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.write("run\n")
    worker.stdin.flush()
    answer: dict[str, Any] = json.loads(worker.stdout.readline())
    return answer


# --- the worker ---------------------------------------------------------------------------------------------


def _hide_otel() -> None:
    class Hidden:
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name.startswith(_HIDDEN):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the benchmark)", name=name)

    sys.meta_path.insert(0, Hidden())


def _tracing(case: str) -> Any:
    if case != "on":
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from tracekit.tracing import Tracing

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return Tracing(provider)


def _worker(case: str) -> None:
    if case == "absent":
        _hide_otel()
    from bench import fixtures
    from resource_service.app import create_app
    from resource_service.settings import ResourceSettings

    tracing = _tracing(case)
    settings = ResourceSettings(env="dev", auth_url=fixtures.ISSUER, audience=fixtures.AUDIENCE)
    app = create_app(settings, tracing)  # None: as the (absent) OTEL_* variables say: off
    if case != "on":
        assert tracing is None, case
        assert not any(m.startswith(_HIDDEN) for m in sys.modules), case
    setup = fixtures.checked()
    guard = setup.guard
    if tracing is not None:
        from resource_service.feed.traces import FeedTraces

        # As _build wires it: the refusal hook (never called on an accepted request).
        guard._on_revoked = FeedTraces(tracing.tracer, settings.exchange).refused
    # The guard the routes ask for, without the lifespan's feed (nothing to connect to here): set on the app's
    # Protection (install() put it in the app's lifespan), where the running lifespan would put its Runtime.
    protection = cast(Any, app.router.lifespan_context).protection
    protection._runtime = SimpleNamespace(guard=guard)
    token = fixtures.token(setup.key)
    header = f"Bearer {token}"
    headers = [(b"host", b"bench"), (b"authorization", header.encode("latin-1"))]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    async def call() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/whoami",
            "raw_path": b"/v1/whoami",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)

    async def serve() -> None:
        for _ in range(200):
            await call()  # warm: the guard's warm map, FastAPI's caches
        print("ready", flush=True)  # noqa: T201
        while sys.stdin.readline().strip() == "run":
            samples = []
            for _ in range(SAMPLES):
                start = time.perf_counter()
                for _ in range(CALLS):
                    await call()
                samples.append((time.perf_counter() - start) / CALLS * 1e6)
            headers_ = [(header + " ")[:-1] for _ in range(WARM_CALLS)]
            start = time.perf_counter()
            for value in headers_:
                guard.check_cached(value, ())
            warm = (time.perf_counter() - start) / WARM_CALLS * 1e6
            print(json.dumps({"request_us": samples, "warm_us": warm}), flush=True)  # noqa: T201

    asyncio.run(serve())


def main() -> int:
    """`python -m bench.tracing`: this benchmark alone, printed; `--worker CASE`: one worker."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
        return 0
    results = Results()
    run(results)
    results.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
