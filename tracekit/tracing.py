"""The tracer provider of one process, the instrumented libraries, and the W3C trace context in and out of
carriers (message headers, an HTTP header, a log line). Imported only when tracing is on (tracekit.load).

Trace context crosses our own boundaries as one `traceparent` (and `tracestate` when there is one), never
baggage: a client's baggage is not ours to forward into the broker. What comes in is parsed by the SDK's
W3C propagator, which takes only the exact format (version 00, lowercase hex, non-zero ids); anything else,
from a client, a message or an answer, is no context at all, never an error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracekit.settings import TraceSettings

__all__ = [
    "TRACEPARENT",
    "Tracing",
    "extract",
    "inject",
    "quiet",
    "trace_id",
    "traceparent",
]

log = logging.getLogger("tokenlife.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
# A carrier value past this is not a trace context anyone sent in good faith: not even parsed.
_MAX_VALUE = 512
SCOPE = "tokenlife"


class Tracing:
    """One process's tracer provider and tokenlife's tracer on it; `owned`: made here, shut down here."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(SCOPE)
        self._owned = owned

    @classmethod
    def from_settings(cls, settings: TraceSettings, service_name: str) -> Tracing:
        """A provider exporting in batches to the exporter the OTEL_* variables name (the SDK reads the rest:
        the endpoint, the sampler, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, which win over ours)."""
        exporter: SpanExporter
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing on: spans of %s go to the %s exporter", service_name, settings.exporter)
        return cls(provider, owned=True)

    def instrument_app(self, app: Any, excluded: Sequence[str]) -> None:
        """Server spans for every request of a FastAPI app but the `excluded` paths (health, metrics, polls);
        an incoming `traceparent` is continued, per the W3C spec, a malformed one ignored."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls=",".join(excluded),
            # The ASGI receive and send spans: two more spans a request, and nothing an operator asks for.
            exclude_spans=["receive", "send"],
        )

    @contextlib.contextmanager
    def asyncpg_spans(self) -> Iterator[None]:
        """asyncpg's queries traced while the block runs (the instrumentation patches asyncpg process-wide);
        undone at the end unless something else had instrumented it first."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        mine = not instrumentor.is_instrumented_by_opentelemetry
        if mine:
            instrumentor.instrument(tracer_provider=self.provider)
        try:
            yield
        finally:
            if mine:
                instrumentor.uninstrument()

    @staticmethod
    def quiet() -> contextlib.AbstractContextManager[None]:
        """`quiet()`, for a caller that holds a Tracing and no import of this module."""
        return quiet()

    @staticmethod
    def current_trace() -> tuple[str, str] | None:
        """The current span's trace id and traceparent (for a log line, an answer), or None outside one."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return trace_id(context), traceparent(context)

    def shutdown(self) -> None:
        """Export what is pending and stop the exporter, if this process made the provider."""
        if self._owned:
            self.provider.shutdown()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Library instrumentation off for what runs (and for the tasks started) in the block: the background
    loops (the log writer, the relay, the listener) would make a root trace of every query they run."""
    with suppress_instrumentation():
        yield


def traceparent(context: SpanContext) -> str:
    """The W3C traceparent of a span context."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def trace_id(context: SpanContext) -> str:
    """The trace id as the W3C spelling (32 lowercase hex digits), as trace viewers search for it."""
    return f"{context.trace_id:032x}"


def inject(context: SpanContext) -> dict[str, str]:
    """The carrier entries that continue this span context elsewhere: traceparent (and tracestate)."""
    carrier = {TRACEPARENT: traceparent(context)}
    state = context.trace_state.to_header()
    if state:
        carrier[TRACESTATE] = state
    return carrier


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and len(value) <= _MAX_VALUE else None


def extract(carrier: Mapping[Any, Any] | None) -> Context | None:
    """The remote parent a carrier names (str or bytes keys and values, as AMQP headers come), or None when it
    names none or a malformed one."""
    if not carrier:
        return None
    parent = _text(carrier.get(TRACEPARENT, carrier.get(TRACEPARENT.encode())))
    if parent is None:
        return None
    entries = {TRACEPARENT: parent}
    state = _text(carrier.get(TRACESTATE, carrier.get(TRACESTATE.encode())))
    if state:
        entries[TRACESTATE] = state
    context = _PROPAGATOR.extract(entries)
    span = trace.get_current_span(context).get_span_context()
    return context if span.is_valid else None


def remote(context: SpanContext) -> Context:
    """A context whose current span is `context` (to start a child of a span that lives elsewhere)."""
    return trace.set_span_in_context(NonRecordingSpan(context))
