"""The auth app's one middleware: the body limit and the access log, in one ASGI layer."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from auth_service.api.middleware import Edge


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=Edge(echo_length, max_bytes=100))
    return httpx.AsyncClient(transport=transport, base_url="http://edge")


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tokenlife.access"]


async def test_one_line_per_request_without_the_query_string(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokenlife.access")
    async with client() as c:
        response = await c.post("/v1/auth/logout?token=secret", content=b"x" * 100)
    assert (response.status_code, response.text) == (201, "100")
    [line] = logged(caplog)
    assert {k: line[k] for k in ("method", "path", "status")} == {
        "method": "POST",
        "path": "/v1/auth/logout",
        "status": 201,
    }
    assert "secret" not in json.dumps(line)


async def test_an_announced_body_over_the_limit_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tokenlife.access")
    async with client() as c:
        response = await c.post("/x", content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"
    assert [line["status"] for line in logged(caplog)] == [413]


async def test_a_streamed_body_over_the_limit_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokenlife.access")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 30

    async with client() as c:
        response = await c.post("/x", content=chunks())  # no Content-Length: chunked
    assert response.status_code == 413
    assert [line["status"] for line in logged(caplog)] == [413]
