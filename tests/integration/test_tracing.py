"""One revocation, one trace: a logout through two resource instances, over each transport, with the SDK's
in-memory span exporter shared by the auth service (uvicorn on loopback, relay on the real RabbitMQ) and two
resource instances in this process, on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from auth_service.app import create_app as create_auth_app
from auth_service.settings import AuthSettings
from resource_service.app import Runtime
from resource_service.app import create_app as create_resource_app
from resource_service.settings import ResourceSettings
from tests.conftest import PASSWORD, add_user, auth_env, free_port
from tests.integration.test_feed import eventually, login, resource_settings, whoami
from tracekit.tracing import Tracing

pytestmark = pytest.mark.integration

DEADLINE = 10.0


@dataclass
class Spans:
    """The tracing every service of the test shares, and what it exported."""

    tracing: Tracing
    exporter: InMemorySpanExporter

    def finished(self) -> list[ReadableSpan]:
        """Every span ended so far."""
        return list(self.exporter.get_finished_spans())

    def of_trace(self, trace_id: int) -> list[ReadableSpan]:
        """The ended spans of one trace, in order of their start."""
        found = [s for s in self.finished() if s.context is not None and s.context.trace_id == trace_id]
        return sorted(found, key=lambda s: s.start_time or 0)

    def named(self, name: str) -> list[ReadableSpan]:
        """The ended spans of this name."""
        return [s for s in self.finished() if s.name == name]


@pytest.fixture
def spans() -> Iterator[Spans]:
    """An SDK tracer provider exporting to memory, span by span as each ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Spans(Tracing(provider), exporter)
    provider.shutdown()


@asynccontextmanager
async def served(app: FastAPI, port: int) -> AsyncIterator[str]:
    """The app under uvicorn on a loopback port in this event loop, once it answers /readyz."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            end = time.monotonic() + DEADLINE
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < end, "the service did not become ready"
                assert not task.done(), "uvicorn stopped"
                await asyncio.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)


@asynccontextmanager
async def resource(
    settings: ResourceSettings, tracing: Tracing
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """A traced resource instance in this process (its lifespan running): a client and its runtime."""
    app = create_resource_app(settings, tracing)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resource.test") as client:
            yield client, app.state.runtime


@dataclass
class Stack:
    """A traced auth service and how resource instances reach it."""

    auth_url: str
    amqp_url: str
    exchange: str
    transport: str

    def resource_settings(self) -> ResourceSettings:
        """Settings of a resource instance on this stack's transport."""
        extra = {"transport": "stream"} if self.transport == "stream" else {}
        return resource_settings(self.auth_url, self.amqp_url, self.exchange, **extra)


@asynccontextmanager
async def traced_stack(
    request: pytest.FixtureRequest, database_url: str, exchange: str, spans: Spans, transport: str
) -> AsyncIterator[Stack]:
    """The auth service (its relay on RabbitMQ unless long-poll alone), traced, on a loopback port."""
    amqp_url = "" if transport == "long_poll" else request.getfixturevalue("amqp_url")
    if transport == "stream":
        request.getfixturevalue("stream")  # the plugin answers; the stream is deleted after the test
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = auth_env(database_url, amqp_url, TOKENLIFE_ISSUER=base, TOKENLIFE_EXCHANGE=exchange)
    if transport == "stream":
        env["TOKENLIFE_TRANSPORT"] = "stream"
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        settings = AuthSettings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    async with served(create_auth_app(settings, spans.tracing), port) as url:
        yield Stack(url, amqp_url, exchange, transport)


async def _refused(client: httpx.AsyncClient, token: str) -> bool:
    return (await whoami(client, token)).status_code == 401


def _hex(trace_id: int) -> str:
    return f"{trace_id:032x}"


def _parent_ids(spans: list[ReadableSpan]) -> dict[int, int | None]:
    return {s.context.span_id: s.parent.span_id if s.parent else None for s in spans if s.context}


@pytest.mark.parametrize("transport", ["queues", "stream", "long_poll"])
async def test_one_logout_through_two_instances_is_one_connected_trace(
    request: pytest.FixtureRequest,
    transport: str,
    database_url: str,
    exchange_name: str,
    spans: Spans,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with traced_stack(request, database_url, exchange_name, spans, transport) as stack:
        await add_user(database_url, "ada@example.com")
        token = await login(stack.auth_url, "ada@example.com")
        async with (
            resource(stack.resource_settings(), spans.tracing) as (one, rt_one),
            resource(stack.resource_settings(), spans.tracing) as (two, rt_two),
        ):
            for client, rt in ((one, rt_one), (two, rt_two)):
                await eventually(functools.partial(_ok, client, token), "both instances accept the token")
                await eventually(functools.partial(_carrying, rt, transport), "the transport carries")
            caplog.set_level(logging.INFO, logger="tokenlife.access")
            async with httpx.AsyncClient(base_url=stack.auth_url) as http:
                answer = await http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            position = answer.json()["position"]
            for client in (one, two):
                await eventually(functools.partial(_refused, client, token), "both instances refuse")
            await eventually(lambda: _count(spans, "tokenlife.first_refusal", 2), "two first refusals")
            # Refused again: no second first refusal.
            assert (await whoami(one, token)).status_code == 401
            async with httpx.AsyncClient(base_url=stack.auth_url, auth=_service()) as http:
                page = (await http.get("/v1/events", params={"after": position - 1})).json()
            event_id = page["events"][0]["event_id"]
            metrics = await one.get("/metrics", headers={"Accept": "application/openmetrics-text"})

    logout_span = next(s for s in spans.named("POST /v1/auth/logout") if s.kind is SpanKind.SERVER)
    assert logout_span.context is not None
    trace_id = logout_span.context.trace_id
    trace = spans.of_trace(trace_id)
    names = [s.name for s in trace]
    # One trace, connected: every span but the request's has its parent in it.
    parents = _parent_ids(trace)
    assert [s for s in trace if parents[s.context.span_id] not in parents] == [logout_span]
    by_id = {s.context.span_id: s for s in trace if s.context}

    commit = next(s for s in trace if s.name == "tokenlife.log.commit")
    assert commit.attributes is not None
    assert list(commit.attributes["tokenlife.positions"]) == [position]  # type: ignore[arg-type]
    assert list(commit.attributes["tokenlife.event_ids"]) == [event_id]  # type: ignore[arg-type]
    processed = [s for s in trace if s.name == f"process {exchange_name}"]
    refusals = [s for s in trace if s.name == "tokenlife.first_refusal"]
    assert len(processed) == 2, names
    assert len(refusals) == 2, names
    assert {s.attributes["tokenlife.instance"] for s in processed if s.attributes} == {
        rt_one.feed.traces.instance,  # type: ignore[union-attr]
        rt_two.feed.traces.instance,  # type: ignore[union-attr]
    }
    if transport == "long_poll":
        deliverer = commit
        assert not [s for s in trace if s.kind is SpanKind.PRODUCER]
    else:
        (deliverer,) = [s for s in trace if s.kind is SpanKind.PRODUCER]
        assert deliverer.name == f"publish {exchange_name}"
        assert by_id[parents[deliverer.context.span_id]] is commit
        assert deliverer.attributes is not None
        assert deliverer.attributes["messaging.system"] == "rabbitmq"
        assert deliverer.attributes["messaging.message.id"] == event_id
        assert deliverer.attributes["tokenlife.position"] == position
    carried = []
    for span in processed:
        assert span.kind is SpanKind.CONSUMER
        assert span.attributes is not None
        assert span.attributes["tokenlife.position"] == position
        assert span.attributes["tokenlife.event_id"] == event_id
        carried.append(span.attributes["tokenlife.transport"])
        # An instance whose long-poll took over for a moment (the broker quiet on a loaded machine) gets the
        # event from the events API, its context from the answer's header: a child of the commit.
        via_long_poll = span.attributes["tokenlife.transport"] == "long_poll"
        assert by_id[parents[span.context.span_id]] is (commit if via_long_poll else deliverer)
    assert transport in carried, carried  # at least one instance took it over the transport under test
    for refusal in refusals:
        apply = by_id[parents[refusal.context.span_id]]
        assert apply in processed
        assert refusal.attributes is not None
        assert apply.attributes is not None
        assert refusal.attributes["tokenlife.instance"] == apply.attributes["tokenlife.instance"]
        assert refusal.attributes["tokenlife.position"] == position
        # Linked to the refused request's own span, in its own trace.
        (link,) = refusal.links
        refused_request = next(s for s in spans.finished() if s.context == link.context)
        assert refused_request.name == "GET /v1/whoami"
        assert link.context.trace_id != trace_id
    # In order: the request, its commit, the publish, each instance's apply, then its first refusal.
    assert logout_span.start_time <= commit.start_time <= deliverer.start_time  # type: ignore[operator]
    for refusal in refusals:
        apply = by_id[parents[refusal.context.span_id]]
        assert deliverer.start_time <= apply.start_time <= apply.end_time <= refusal.start_time  # type: ignore[operator]

    # The answer names the trace, and so does the access log line.
    assert answer.headers["traceresponse"].split("-")[1] == _hex(trace_id)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tokenlife.access"]
    assert {"method": "POST", "path": "/v1/auth/logout", "trace_id": _hex(trace_id)}.items() <= next(
        line.items() for line in lines if line["path"] == "/v1/auth/logout"
    )
    # The propagation histogram's exemplar links to the trace.
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert f'# {{trace_id="{_hex(trace_id)}"}}' in metrics.text


async def _ok(client: httpx.AsyncClient, token: str) -> bool:
    return (await whoami(client, token)).status_code == 200


async def _carrying(rt: Runtime, transport: str) -> bool:
    return transport == "long_poll" or (rt.feed.live and rt.feed.counters["heartbeats"] >= 2)


async def _count(spans: Spans, name: str, at_least: int) -> bool:
    return len(spans.named(name)) >= at_least


def _service() -> httpx.BasicAuth:
    from tests.conftest import SERVICE_CLIENT

    return httpx.BasicAuth(*SERVICE_CLIENT)


FORGED = {
    "not a traceparent": "garbage",
    "all-zero ids": f"00-{'0' * 32}-{'0' * 16}-01",
    "version ff": f"ff-{'a' * 32}-{'b' * 16}-01",
    "upper case": f"00-{'A' * 32}-{'B' * 16}-01",
    "short trace id": f"00-{'a' * 31}-{'b' * 16}-01",
    "8 kB": f"00-{'a' * 32}-{'b' * 16}-01-{'x' * 8000}",
    "not ASCII": "00-\u00e9t\u00e9",
}


@asynccontextmanager
async def traced_auth(auth_settings: AuthSettings, spans: Spans) -> AsyncIterator[httpx.AsyncClient]:
    """The auth service in-process with its lifespan running, traced; a client."""
    app = create_auth_app(auth_settings, spans.tracing)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            yield client


async def _token(client: httpx.AsyncClient) -> str:
    form = {"grant_type": "password", "username": "ada@example.com", "password": PASSWORD}
    answer = await client.post("/oauth/token", data=form)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


@pytest.mark.parametrize("forged", list(FORGED.values()), ids=list(FORGED))
async def test_a_malformed_traceparent_starts_a_trace_of_its_own_and_changes_nothing_else(
    forged: str, auth_settings: AuthSettings, database_url: str, spans: Spans
) -> None:
    await add_user(database_url, "ada@example.com")
    async with traced_auth(auth_settings, spans) as client:
        bearer = {"Authorization": f"Bearer {await _token(client)}"}
        plain = await client.get("/v1/sessions", headers=bearer)
        spans.exporter.clear()
        raw = forged.encode()  # as the bytes a client may send, not only ASCII
        headers = {k.encode(): v.encode() for k, v in bearer.items()} | {
            b"traceparent": raw,
            b"tracestate": raw,
        }
        answer = await client.get("/v1/sessions", headers=headers)
        logout = await client.post("/v1/auth/logout", headers=headers)
    assert (answer.status_code, answer.json()) == (plain.status_code, plain.json())
    assert logout.status_code == 200, logout.text
    servers = [s for s in spans.finished() if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET /v1/sessions", "POST /v1/auth/logout"]
    for server in servers:
        assert server.parent is None  # a root: the forged value named no parent
        assert server.context is not None
        assert _hex(server.context.trace_id) not in forged
    # The logout's revocation is traced all the same, in the trace the request started.
    (commit,) = spans.named("tokenlife.log.commit")
    assert commit.context is not None
    assert servers[1].context is not None
    assert commit.context.trace_id == servers[1].context.trace_id


async def test_a_well_formed_traceparent_is_continued_per_the_spec(
    auth_settings: AuthSettings, database_url: str, spans: Spans
) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await add_user(database_url, "ada@example.com")
    async with traced_auth(auth_settings, spans) as client:
        bearer = {"Authorization": f"Bearer {await _token(client)}"}
        plain = await client.get("/v1/sessions", headers=bearer)
        spans.exporter.clear()
        parent = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
        answer = await client.get("/v1/sessions", headers=bearer | parent)
    assert (answer.status_code, answer.json()) == (plain.status_code, plain.json())
    (server,) = [s for s in spans.finished() if s.kind is SpanKind.SERVER]
    assert server.context is not None
    assert server.parent is not None
    assert (_hex(server.context.trace_id), f"{server.parent.span_id:016x}") == (caller_trace, caller_span)
    assert answer.headers["traceresponse"].split("-")[1] == caller_trace


async def test_a_client_traceparent_on_a_refused_request_is_only_linked_from_the_revocation_trace(
    request: pytest.FixtureRequest, database_url: str, exchange_name: str, spans: Spans
) -> None:
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    async with traced_stack(request, database_url, exchange_name, spans, "long_poll") as stack:
        await add_user(database_url, "ada@example.com")
        token = await login(stack.auth_url, "ada@example.com")
        async with resource(stack.resource_settings(), spans.tracing) as (client, _rt):
            await eventually(functools.partial(_ok, client, token), "the instance accepts the token")
            async with httpx.AsyncClient(base_url=stack.auth_url) as http:
                answer = await http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            await eventually(functools.partial(_applied, client), "the instance applied the logout")
            headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{client_trace}-{'1' * 16}-01"}
            assert (await client.get("/v1/whoami", headers=headers)).status_code == 401
    (refusal,) = spans.named("tokenlife.first_refusal")
    assert refusal.context is not None
    # In the logout's trace, not the client's: a client cannot pull a revocation into a trace of its own.
    assert _hex(refusal.context.trace_id) == answer.headers["traceresponse"].split("-")[1]
    (link,) = refusal.links
    assert _hex(link.context.trace_id) == client_trace  # the refused request continued the client's trace


async def _applied(client: httpx.AsyncClient) -> bool:
    body = (await client.get("/readyz")).json()
    return bool(body["applied_position"] >= 3)
