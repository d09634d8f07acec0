"""OpenTelemetry for both services: whether tracing is on, the tracer, and the W3C trace context carried in
message headers, in the events API's answer and in log lines.

A top-level package because the auth service (the revoking request, the commit, the relay's publish) and the
resource service (each instance's apply and first refusal) build one trace together and neither may import
the other. It imports nothing of the project.

Off by default, and free when off: `settings.TraceSettings` reads the standard OTEL_* variables, and tracing
is on only when OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`) or an OTLP endpoint is set, and
OTEL_SDK_DISABLED is not `true`. Off, `load()` returns None without importing the OpenTelemetry SDK, and each
service holds None where a tracer would be: its hooks are one `is not None` test, none on the path that
accepts a request. On, `tracing.Tracing` holds the tracer provider; the SDK and the instrumentations come
from the optional extra `tokenlife[otel]`.

Modules: settings (the OTEL_* variables, no OpenTelemetry import), tracing (the provider, the instrumented
apps, and the trace context in and out of carriers: imported only when tracing is on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tracekit.settings import TraceSettings, TracingUnavailable

if TYPE_CHECKING:
    from tracekit.tracing import Tracing

__all__ = ["TraceSettings", "TracingUnavailable", "load", "serving", "untraced"]


def load(settings: TraceSettings, service_name: str) -> Tracing | None:
    """The process's Tracing when the OTEL_* settings turn it on, else None (and the SDK is not imported).

    TracingUnavailable, in one line, when tracing is asked for but the `otel` extra is not installed."""
    if settings.exporter is None:
        return None
    try:
        from tracekit.tracing import Tracing
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing is on ({settings.why_on}) but OpenTelemetry is not installed ({exc.name}): "
            "pip install 'tokenlife[otel]'"
        ) from None
    return Tracing.from_settings(settings, service_name)


@contextlib.contextmanager
def serving(tracing: Tracing | None, *, owned: bool, asyncpg: bool = False) -> Iterator[None]:
    """For an app's lifespan: asyncpg's queries traced meanwhile (`asyncpg`), and the provider shut down at
    the end (exporting what is pending) when this app made it (`owned`). Nothing when tracing is off."""
    if tracing is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        if asyncpg:
            stack.enter_context(tracing.asyncpg_spans())
        if owned:
            stack.callback(tracing.shutdown)
        yield


def untraced(tracing: Tracing | None) -> contextlib.AbstractContextManager[None]:
    """Library instrumentation off in the block (tracing.quiet), for the start of background loops."""
    return contextlib.nullcontext() if tracing is None else tracing.quiet()
