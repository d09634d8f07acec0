"""Plain ASGI middleware, one layer: a body size limit and one structured log line per request."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from tracekit.tracing import Tracing

access_log = logging.getLogger("tokenlife.access")


class BodyTooLarge(Exception):
    """The request body passed the limit."""


class Edge:
    """The app's one middleware, one ASGI layer per request (each layer costs every request its closures):

    - a body size limit: 413 for a body over `max_bytes`, whether announced by Content-Length or streamed;
    - one JSON access-log line per request: method, path (never the query string), status, duration, client,
      and with tracing on the request's trace id, which the answer names too (a `traceresponse` header, W3C
      Trace Context level 2: the console shows it beside a sign-out's figures); a request outside any trace
      (the probes, the scrapes and the long-polls the instrumentation leaves out) runs with library
      instrumentation off, so its queries do not each make a root trace.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = 64 * 1024, tracing: Tracing | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        tracing = self.tracing
        traced = tracing.current_trace() if tracing is not None else None
        quiet = tracing.quiet() if tracing is not None and traced is None else contextlib.nullcontext()
        try:
            for name, value in scope["headers"]:
                if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                    status = 413
                    await _too_large(send)
                    return
            seen = 0
            started = False

            async def limited_receive() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_bytes:
                        raise BodyTooLarge
                return message

            async def tracking_send(message: Message) -> None:
                nonlocal started, status
                if message["type"] == "http.response.start":
                    started = True
                    status = message["status"]
                    if traced is not None:
                        headers = [*message.get("headers", ()), (b"traceresponse", traced[1].encode())]
                        message = {**message, "headers": headers}
                await send(message)

            try:
                with quiet:
                    await self.app(scope, limited_receive, tracking_send)
            except BodyTooLarge:
                if not started:
                    status = 413
                    await _too_large(send)
        finally:
            client = scope.get("client")
            line = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - start) * 1000, 2),
                "client": client[0] if client else None,
            }
            if tracing is not None:
                line["trace_id"] = traced[0] if traced is not None else None
            access_log.info(json.dumps(line))


async def _too_large(send: Send) -> None:
    body = json.dumps({"error": "invalid_request", "error_description": "request body too large"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
