"""What the console stands on: its pages' security headers, its config, the live event stream, and CORS."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from auth_service.api.deps import app_state
from auth_service.api.stream import _stream
from auth_service.app import create_app as create_auth_app
from auth_service.log.store import read_head
from auth_service.settings import AuthSettings
from auth_service.use_cases.authn import authenticate
from resource_service.app import create_app as create_resource_app
from resource_service.settings import ResourceSettings, UnsafeResourceSettings
from tests.conftest import PASSWORD, add_user, start_auth_server

pytestmark = pytest.mark.integration

PAGES = ("/console/", "/console/console.js", "/console/console.css", "/console/favicon.svg")


async def test_console_pages_forbid_inline_code_framing_and_sniffing(auth_client: httpx.AsyncClient) -> None:
    for path in (*PAGES, "/console/config.json"):
        response = await auth_client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'self';" in policy
        assert "script-src 'self';" in policy
        assert "style-src 'self';" in policy
        # The dev resource service, and its WebSocket (the live socket).
        assert "connect-src 'self' http://127.0.0.1:8001 ws://127.0.0.1:8001;" in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    page = (await auth_client.get("/console/")).text
    assert '<script src="console.js" defer></script>' in page
    assert "<script>" not in page
    assert "style=" not in page
    config = (await auth_client.get("/console/config.json")).json()
    assert config == {"resource_url": "http://127.0.0.1:8001", "client_id": "tokenlife-console"}
    moved = await auth_client.get("/console")
    assert moved.status_code == 308
    assert moved.headers["location"] == "/console/"
    assert (await auth_client.get("/console/pages.py")).status_code == 404
    assert (await auth_client.get("/console/%2e%2e/settings.py")).status_code == 404


async def test_console_pages_answer_head_like_get_without_a_body(auth_client: httpx.AsyncClient) -> None:
    for path in PAGES:
        got = await auth_client.get(path)
        head = await auth_client.head(path)
        assert head.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == str(len(got.content))
        assert head.headers["content-security-policy"] == got.headers["content-security-policy"]


def test_without_a_resource_service_the_page_may_connect_only_to_its_own_origin() -> None:
    from auth_service.console.pages import security_headers

    policy = security_headers("")["Content-Security-Policy"]
    assert "connect-src 'self';" in policy
    assert (
        "connect-src 'self' https://api.example wss://api.example;"
        in security_headers("https://api.example")["Content-Security-Policy"]
    )


def test_console_resource_url_must_be_a_base_url() -> None:
    with pytest.raises(ValueError, match="console_resource_url"):
        AuthSettings(env="dev", console_resource_url="javascript:alert(1)")
    assert AuthSettings(env="dev", console_resource_url="https://api.example/").console_resource_url == (
        "https://api.example"
    )


async def test_resource_service_allows_only_the_configured_origins() -> None:
    settings = ResourceSettings(env="dev", cors_origins=("https://console.example",))
    transport = httpx.ASGITransport(app=create_resource_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://resource.test") as client:
        asked = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        allowed = await client.options("/v1/whoami", headers={"Origin": "https://console.example"} | asked)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://console.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "POST" not in allowed.headers["access-control-allow-methods"]
        stranger = await client.options("/v1/whoami", headers={"Origin": "https://evil.example"} | asked)
        assert "access-control-allow-origin" not in stranger.headers


def test_resource_cors_defaults_none_outside_dev_and_the_auth_origin_in_dev() -> None:
    prod = ResourceSettings(
        env="prod",
        auth_url="https://auth.example",
        amqp_url="amqp://svc:secret@broker/",
        service_client_id="svc",
        service_client_secret="a-long-enough-secret",
    )
    assert prod.cors_origins == ()
    assert ResourceSettings(env="dev").cors_origins == ("http://127.0.0.1:8000",)
    with pytest.raises(UnsafeResourceSettings, match="TOKENLIFE_CORS_ORIGINS"):
        ResourceSettings(env="dev", cors_origins=("https://console.example/path",))


# --- the live event stream, on a real server (streamed responses need one) -------------------------------


def _login(base: str, email: str) -> str:
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    response = httpx.post(f"{base}/oauth/token", data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _frames(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, object]]]:
    """(event, data) pairs from an SSE line stream; comments skipped."""
    event, data = "message", ""
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data += line.removeprefix("data: ")


def test_event_stream_needs_a_valid_bearer_token(auth_server: str) -> None:
    missing = httpx.get(f"{auth_server}/v1/me/events/stream")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    forged = httpx.get(f"{auth_server}/v1/me/events/stream", headers={"Authorization": "Bearer x.y.z"})
    assert forged.status_code == 401
    assert 'error="invalid_token"' in forged.headers["www-authenticate"]


def test_event_stream_sends_the_callers_events_live_and_ends_after_its_revocation(
    auth_server: str, database_url: str
) -> None:
    ada = asyncio.run(add_user(database_url, "ada@example.com"))
    asyncio.run(add_user(database_url, "bob@example.com"))
    token = _login(auth_server, "ada@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", f"{auth_server}/v1/me/events/stream", headers=headers, timeout=10) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        _login(auth_server, "bob@example.com")  # someone else's: never in this stream
        _login(auth_server, "ada@example.com")  # a second device of ada's
        logout = httpx.post(f"{auth_server}/v1/auth/logout", data={"scope": "all"}, headers=headers)
        assert logout.status_code == 200
        frames = list(_frames(lines))
    types = [event for event, _ in frames]
    assert types == ["session.started", "token.issued", "user.revoked", "end"]
    assert all(data.get("user_id") == ada for _, data in frames[:-1])
    assert frames[-1][1] == {"reason": "token_revoked"}


def test_event_stream_resumes_after_a_position(auth_server: str, database_url: str) -> None:
    asyncio.run(add_user(database_url, "cy@example.com"))
    first = _login(auth_server, "cy@example.com")
    token = _login(auth_server, "cy@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{auth_server}/v1/me/events/stream?after=2"  # after the first login's two events
    with httpx.stream("GET", url, headers=headers, timeout=10) as stream:
        lines = stream.iter_lines()
        httpx.post(f"{auth_server}/v1/auth/logout", headers={"Authorization": f"Bearer {first}"})
        httpx.post(f"{auth_server}/v1/auth/logout", headers=headers)
        frames = list(_frames(lines))
    assert [event for event, _ in frames] == [
        "session.started",
        "token.issued",
        "session.revoked",
        "session.revoked",
        "end",
    ]
    assert [data.get("position") for _, data in frames[:-1]] == [3, 4, 5, 6]
    fresh = {"Authorization": f"Bearer {_login(auth_server, 'cy@example.com')}"}
    bad = httpx.get(f"{auth_server}/v1/me/events/stream?after=-1", headers=fresh)
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_request"


def test_an_open_event_stream_does_not_hold_up_a_stop(database_url: str) -> None:
    asyncio.run(add_user(database_url, "dee@example.com"))
    proc, base = start_auth_server(database_url)
    try:
        headers = {"Authorization": f"Bearer {_login(base, 'dee@example.com')}"}
        with httpx.stream("GET", f"{base}/v1/me/events/stream", headers=headers, timeout=60) as stream:
            assert next(stream.iter_lines()) == ": connected"
            proc.send_signal(signal.SIGTERM)
            try:
                # The token lives 300 s; without the graceful-shutdown cut the server would wait for it.
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail("the auth service did not stop while an event stream was open")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


async def test_event_stream_delivers_a_revocation_that_lands_between_its_read_and_its_check(
    auth_settings: AuthSettings, database_url: str
) -> None:
    await add_user(database_url, "eve@example.com")
    app = create_auth_app(auth_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            form = {"grant_type": "password", "username": "eve@example.com", "password": PASSWORD}
            tokens = [(await client.post("/oauth/token", data=form)).json()["access_token"] for _ in range(2)]
            ctx = app_state(app).context
            assert ctx is not None
            who = await authenticate(ctx, tokens[1])
            async with ctx.engine.connect() as conn:
                start = await read_head(conn)
            listener = app_state(app).log_listener
            assert listener is not None
            stream = _stream(ctx, listener, tokens[1], who, start)
            assert await anext(stream) == b": connected\n\n"

            async def logout(token: str) -> None:
                answer = await client.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 200

            await logout(tokens[0])
            assert b"event: session.revoked" in await anext(stream)  # paused before its validity check
            await logout(tokens[1])  # lands now: after the read, before the check
            last = await anext(stream)
            assert b"event: session.revoked" in last
            assert f"id: {start + 2}".encode() in last
            assert b'"reason":"token_revoked"' in await anext(stream)
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
