"""Tracing: off unless the OTEL_* variables turn it on, nothing of it loaded or run when off, and every trace
context that comes in (a client's header, a message's, an answer's) parsed safely or ignored."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.types import Receive, Scope, Send

from auth_service import contract as c
from auth_service.api.middleware import Edge
from auth_service.log.intents import EndSessions, RevokeToken
from auth_service.traces import RevocationTraces
from resource_service.check.state import ApplyResult, RevocationReason, TokenFacts
from resource_service.check.verifier import Principal
from resource_service.feed.traces import FeedTraces
from tracekit import TraceSettings, TracingUnavailable, load
from tracekit.page import MAX_ENTRIES, format_contexts, parse_contexts
from tracekit.tracing import Tracing, extract, traceparent

ROOT = Path(__file__).resolve().parents[2]
TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable from whoever runs the tests."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    """A Tracing that keeps its spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


# --- on or off ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_otel_env")
def test_tracing_is_off_by_default() -> None:
    assert TraceSettings().exporter is None
    assert load(TraceSettings(), "tokenlife-test") is None


@pytest.mark.usefixtures("no_otel_env")
@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_the_standard_variables_turn_tracing_on_or_off(
    env: dict[str, str], exporter: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert TraceSettings().exporter == exporter


@pytest.mark.usefixtures("no_otel_env")
def test_an_unknown_exporter_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(TracingUnavailable, match="OTEL_TRACES_EXPORTER='zipkin'"):
        _ = TraceSettings().exporter


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TOKENLIFE_"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean | {"PYTHONPATH": str(ROOT)} | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_with_tracing_off_neither_service_loads_the_sdk_nor_wires_a_hook() -> None:
    code = """
import asyncio, sys
from auth_service.app import create_app as auth_app
from auth_service.settings import AuthSettings
from resource_service.app import create_app as resource_app
from resource_service.settings import ResourceSettings

auth = auth_app(AuthSettings(env="dev", database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none"))
resource = resource_app(ResourceSettings(env="dev", auth_url="http://127.0.0.1:1"))

async def main():
    async with resource.router.lifespan_context(resource):
        rt = resource.state.runtime
        assert rt.feed.traces is None and rt.guard._on_revoked is None
asyncio.run(main())
edge = auth.user_middleware[0]
assert edge.kwargs["tracing"] is None, edge
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.instr")))
print(loaded)
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tracing_asked_for_without_the_extra_says_what_to_install() -> None:
    code = """
import sys
sys.modules["opentelemetry.sdk"] = None  # as if the otel extra were not installed
from tracekit import TraceSettings, TracingUnavailable, load
try:
    load(TraceSettings(), "tokenlife-test")
except TracingUnavailable as exc:
    print(exc)
"""
    done = _python(code, OTEL_TRACES_EXPORTER="otlp")
    assert done.returncode == 0, done.stderr
    assert "pip install 'tokenlife[otel]'" in done.stdout
    assert "OTEL_TRACES_EXPORTER=otlp" in done.stdout


# --- what comes in -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "carrier",
    [
        None,
        {},
        {"traceparent": "garbage"},
        {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},
        {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},
        {"traceparent": f"ff-{TRACE}-{SPAN}-01"},
        {"traceparent": VALID.upper()},
        {"traceparent": VALID + "-" + "x" * 600},
        {"traceparent": b"\xff\xfe"},
        {"traceparent": 42},
        {"traceparent": ["not", "a", "string"]},
    ],
)
def test_a_malformed_trace_context_is_no_context(carrier: dict[Any, Any] | None) -> None:
    assert extract(carrier) is None


@pytest.mark.parametrize(
    "carrier",
    [{"traceparent": VALID}, {b"traceparent": VALID.encode()}, {"traceparent": VALID, "tracestate": "a=1"}],
)
def test_a_well_formed_trace_context_is_read_from_str_or_bytes(carrier: dict[Any, Any]) -> None:
    from opentelemetry import trace

    context = extract(carrier)
    assert context is not None
    span = trace.get_current_span(context).get_span_context()
    assert traceparent(span) == VALID


def test_the_events_api_header_names_positions_and_skips_what_does_not_parse() -> None:
    value = format_contexts([(41, VALID), (42, VALID)]) + ",x=1,=2,43,-5=" + VALID + ",44=" + "y" * 200
    assert parse_contexts(value) == {41: VALID, 42: VALID}
    assert len(parse_contexts(",".join(f"{i}={VALID}" for i in range(100)))) == MAX_ENTRIES


@given(st.text(max_size=3000))
def test_the_events_api_header_parser_never_raises(value: str) -> None:
    found = parse_contexts(value)
    assert len(found) <= MAX_ENTRIES
    assert all(isinstance(k, int) and k >= 0 for k in found)


# --- the services' pieces ----------------------------------------------------------------------------------


def _session_revoked(position: int, occurred_at: datetime, session_id: uuid.UUID) -> c.SessionRevoked:
    return c.SessionRevoked(
        session_id=session_id,
        user_id="u1",
        expires_at=occurred_at + timedelta(minutes=5),
        reason="logout_session",
        occurred_at=occurred_at,
        position=position,
        prev_position=position - 1,
    )


def test_a_waiting_request_lends_its_context_only_to_the_event_it_caused(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = memory
    traces = RevocationTraces(tracing.tracer)
    sid = uuid.uuid4()
    before = _session_revoked(7, datetime.now(UTC) - timedelta(seconds=5), sid)
    with traces.appending([EndSessions("u1", (sid,), "logout_session")]) as appended:
        after = _session_revoked(9, datetime.now(UTC) + timedelta(milliseconds=1), sid)
        # An older event of the same session (a republish) is not this request's: no context, no span.
        assert traces.publish(7, c.to_json_dict(before), "x", "session.revoked") is None
        found = traces.publish(9, c.to_json_dict(after), "x", "session.revoked")
        assert found is not None
        found[1](None)
        appended([after])
    # Its position stays known after the request returned (a republish, a long-poll of another instance).
    assert traces.page_header([c.to_json_dict(before), c.to_json_dict(after)]) is not None
    assert "9=00-" in (traces.page_header([c.to_json_dict(after)]) or "")
    publish = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER)
    commit = next(s for s in exporter.get_finished_spans() if s.name == "tokenlife.log.commit")
    assert publish.parent is not None
    assert commit.context is not None
    assert publish.parent.span_id == commit.context.span_id
    assert publish.attributes is not None
    assert publish.attributes["tokenlife.event_id"] == str(after.event_id)


def test_a_revoked_token_lends_its_context_by_event_id_only(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, _ = memory
    traces = RevocationTraces(tracing.tracer)
    exp = datetime.now(UTC) + timedelta(minutes=5)
    mine = c.TokenRevoked(jti="j1", expires_at=exp, reason="revoked")
    other = c.TokenRevoked(jti="j1", expires_at=exp, reason="revoked", occurred_at=datetime.now(UTC))
    with traces.appending([RevokeToken(mine)]):
        assert traces.context_for(3, c.to_json_dict(other.model_copy(update={"position": 3}))) is None
        assert traces.context_for(4, c.to_json_dict(mine.model_copy(update={"position": 4}))) is not None


def test_an_instance_traces_an_apply_only_with_a_context_and_only_the_first_refusal(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = memory
    traces = FeedTraces(tracing.tracer, "tokenlife.events", instance="r1")
    sid = uuid.uuid4()
    event = _session_revoked(5, datetime.now(UTC), sid)
    for carrier in (None, {}, {"traceparent": "garbage"}, {b"traceparent": b"\x00" * 55}):
        assert traces.processed(event, ApplyResult.CHANGED, (carrier, 0.0, "queues"), 0.0) is None
    assert exporter.get_finished_spans() == ()
    exemplar = traces.processed(event, ApplyResult.CHANGED, ({"traceparent": VALID}, 1.0, "queues"), 1.25)
    assert exemplar == {"trace_id": TRACE}
    (applied,) = exporter.get_finished_spans()
    assert applied.kind is SpanKind.CONSUMER
    assert applied.parent is not None
    assert f"{applied.parent.span_id:016x}" == SPAN
    assert applied.end_time is not None
    assert applied.start_time is not None
    assert abs((applied.end_time - applied.start_time) / 1e9 - 0.25) < 0.01  # from receipt to apply
    facts = TokenFacts(jti="j", sid=str(sid), sub="u1", iat=0, exp=2**31, kid="k")
    who = Principal("u1", str(sid), "j", None, frozenset(), 0, 2**31, "k", {}, facts)
    traces.refused(who, RevocationReason.SESSION)
    traces.refused(who, RevocationReason.SESSION)
    refusals = [s for s in exporter.get_finished_spans() if s.name == "tokenlife.first_refusal"]
    assert len(refusals) == 1
    assert refusals[0].parent is not None
    assert applied.context is not None
    assert refusals[0].parent.span_id == applied.context.span_id


# --- the access log and the answer -------------------------------------------------------------------------


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _through_edge(
    tracing: Tracing | None, caplog: pytest.LogCaptureFixture, app: Any = _ok
) -> tuple[httpx.Response, dict[str, Any]]:
    caplog.set_level(logging.INFO, logger="tokenlife.access")
    transport = httpx.ASGITransport(app=Edge(app, tracing=tracing))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        answer = await client.get("/v1/sessions")
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tokenlife.access"]
    return answer, line


async def test_the_access_log_and_the_answer_name_the_trace_when_tracing_is_on(
    caplog: pytest.LogCaptureFixture, memory: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, _ = memory
    with tracing.tracer.start_as_current_span("GET /v1/sessions") as span:  # as the instrumentation does
        answer, line = await _through_edge(tracing, caplog)
    assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert answer.headers["traceresponse"] == traceparent(span.get_span_context())


async def test_a_request_outside_any_trace_runs_with_library_instrumentation_off(
    caplog: pytest.LogCaptureFixture, memory: tuple[Tracing, InMemorySpanExporter]
) -> None:
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(is_instrumentation_enabled())
        await _ok(scope, receive, send)

    _, line = await _through_edge(memory[0], caplog, app)
    assert seen == [False]  # a long-poll's queries would each be a root trace
    assert line["trace_id"] is None
    assert is_instrumentation_enabled()  # and only for that request


async def test_off_the_access_log_and_the_answer_are_as_before(caplog: pytest.LogCaptureFixture) -> None:
    answer, line = await _through_edge(None, caplog)
    assert set(line) == {"method", "path", "status", "ms", "client"}
    assert "traceresponse" not in answer.headers
