"""Bad input to the Shared Signals API: each a 4xx with an RFC-style error body ({"error",
"error_description"}; RFC 6750 challenges for auth failures), never a 500."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from auth_service.db.engine import create_engine
from auth_service.settings import DEV_KEY_ENCRYPTION_KEY, AuthSettings
from auth_service.tokens import keys
from tests.conftest import SERVICE_CLIENT, add_user, auth_env
from tests.integration.test_ssf_poll import login, serving
from tests.ssf_receiver import (
    POLL,
    PUSH,
    READ_ONLY,
    RECEIVER_A,
    RECEIVER_B,
    SESSION_REVOKED,
    bearer,
    clients_json,
    receiver_token,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ssf_settings(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AuthSettings:
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    for name, value in auth_env(database_url, TOKENLIFE_CLIENTS=clients_json()).items():
        monkeypatch.setenv(name, value)
    return AuthSettings()


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    assert body["error_description"]
    return body


async def test_stream_configurations_that_cannot_be_accepted_are_400(ssf_settings: AuthSettings) -> None:
    async with serving(ssf_settings) as (client, _app):
        token = bearer(await receiver_token(client, RECEIVER_A))
        for body in (
            {"delivery": {"method": "urn:example:carrier-pigeon"}},
            {"delivery": {"method": PUSH}},  # push without an endpoint
            {"delivery": {"method": PUSH, "endpoint_url": "ftp://receiver.example/events"}},
            {"delivery": {"method": PUSH, "endpoint_url": "/events"}},
            {"delivery": {"method": PUSH, "endpoint_url": "https://receiver.example:99999/events"}},
            {"delivery": {"method": PUSH, "endpoint_url": "https://receiver.example:abc/events"}},
            {"delivery": {"method": PUSH, "endpoint_url": "https://u:p@receiver.example/events"}},
            {"delivery": {"method": PUSH, "endpoint_url": "https://[::zz]/events"}},
            {"delivery": {"method": POLL}, "events_requested": ["urn:example:unknown-event"]},
            {"delivery": {"method": POLL}, "events_requested": "not a list"},
            {"delivery": {"method": POLL}, "description": "nul \x00 inside"},
            {"events_requested": [SESSION_REVOKED]},  # no delivery
            {"delivery": {"method": POLL}, "events_requested": [SESSION_REVOKED] * 40},
        ):
            refused(await client.post("/ssf/streams", json=body, headers=token), 400, "invalid_request")
        for content, kind in (
            (b"[1, 2]", "application/json"),
            (b"{not json", "application/json"),
            (b"[" * 50_000 + b"]" * 50_000, "application/json"),
            (b"delivery=poll", "application/x-www-form-urlencoded"),
        ):
            response = await client.post(
                "/ssf/streams", content=content, headers=token | {"content-type": kind}
            )
            assert response.status_code in (400, 413), response.text
            assert response.json()["error"] in ("invalid_request",)
        big = {"delivery": {"method": POLL}, "description": "x" * 70_000}
        response = await client.post("/ssf/streams", json=big, headers=token)
        assert response.status_code == 413


async def test_an_http_push_endpoint_is_refused_outside_dev_mode(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    env = auth_env(
        database_url,
        TOKENLIFE_ENV="prod",
        TOKENLIFE_ISSUER="https://auth.example",
        TOKENLIFE_KEY_ENCRYPTION_KEY=DEV_KEY_ENCRYPTION_KEY[::-1],
        TOKENLIFE_CLIENTS=clients_json().replace(
            '"tokenlife-console": {"type": "public", "grant_types": ["password", "refresh_token"]}, ', ""
        ),
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = AuthSettings()
    engine = create_engine(database_url, pool_size=1)
    async with engine.begin() as conn:
        await keys.rotate(conn, settings.key_encryption_key.get_secret_value())
    await engine.dispose()
    async with serving(settings) as (client, _app):
        token = bearer(await receiver_token(client, RECEIVER_A))
        body = {"delivery": {"method": PUSH, "endpoint_url": "http://receiver.example/events"}}
        error = refused(await client.post("/ssf/streams", json=body, headers=token), 400, "invalid_request")
        assert "https" in error["error_description"]
        body["delivery"]["endpoint_url"] = "https://receiver.example/events"
        assert (await client.post("/ssf/streams", json=body, headers=token)).status_code == 201


async def test_another_receivers_stream_is_not_found(ssf_settings: AuthSettings) -> None:
    async with serving(ssf_settings) as (client, _app):
        mine = bearer(await receiver_token(client, RECEIVER_A))
        theirs = bearer(await receiver_token(client, RECEIVER_B))
        body = {"delivery": {"method": POLL}, "events_requested": [SESSION_REVOKED]}
        stream_id = (await client.post("/ssf/streams", json=body, headers=theirs)).json()["stream_id"]
        params = {"stream_id": stream_id}
        for method, path, kwargs in (
            ("GET", "/ssf/streams", {"params": params}),
            ("PATCH", "/ssf/streams", {"json": params | {"description": "mine now"}}),
            ("PUT", "/ssf/streams", {"json": params | body}),
            ("DELETE", "/ssf/streams", {"params": params}),
            ("GET", "/ssf/status", {"params": params}),
            ("POST", "/ssf/status", {"json": params | {"status": "disabled"}}),
            ("POST", "/ssf/verify", {"json": params}),
            (
                "POST",
                "/ssf/subjects/remove",
                {"json": params | {"subject": {"format": "email", "email": "a@b.c"}}},
            ),
            ("POST", f"/ssf/poll/{stream_id}", {"json": {"returnImmediately": True}}),
        ):
            response = await client.request(method, path, headers=mine, **kwargs)
            refused(response, 404, "not_found")
        assert (await client.get("/ssf/streams", params=params, headers=theirs)).status_code == 200


async def test_requests_the_api_cannot_serve_are_4xx(ssf_settings: AuthSettings, database_url: str) -> None:
    await add_user(database_url, "bad@example.com")
    async with serving(ssf_settings) as (client, _app):
        token = bearer(await receiver_token(client, RECEIVER_A))
        push = {"delivery": {"method": PUSH, "endpoint_url": "http://127.0.0.1:9/events"}}
        push_id = (await client.post("/ssf/streams", json=push, headers=token)).json()["stream_id"]
        poll_id = (
            await client.post("/ssf/streams", json={"delivery": {"method": POLL}}, headers=token)
        ).json()["stream_id"]
        refused(await client.post(f"/ssf/poll/{push_id}", json={}, headers=token), 400, "invalid_request")
        for body in ({"maxEvents": -1}, {"maxEvents": 10**6}, {"ack": "jti"}, {"setErrs": {"j": "no"}}):
            refused(
                await client.post(f"/ssf/poll/{poll_id}", json=body, headers=token), 400, "invalid_request"
            )
        refused(
            await client.get("/ssf/streams", params={"stream_id": "../../etc"}, headers=token),
            400,
            "invalid_request",
        )
        refused(
            await client.post("/ssf/status", json={"stream_id": poll_id, "status": "asleep"}, headers=token),
            400,
            "invalid_request",
        )
        for subject, status, error in (
            ({"format": "phone_number", "phone_number": "+1"}, 400, "invalid_request"),
            ({"format": "iss_sub", "iss": "https://elsewhere.example", "sub": "x"}, 400, "invalid_request"),
            ({"format": "email", "email": "nobody@example.com"}, 404, "not_found"),
        ):
            response = await client.post(
                "/ssf/subjects/add", json={"stream_id": poll_id, "subject": subject}, headers=token
            )
            refused(response, status, error)
        # An unknown ack is ignored (RFC 8936 gives it no error), and the poll still answers.
        response = await client.post(
            f"/ssf/poll/{poll_id}",
            json={"ack": ["nonsense", f"{poll_id}-99999999-0"], "returnImmediately": True},
            headers=token,
        )
        assert response.status_code == 200


async def test_callers_not_authorised_for_shared_signals_get_401_or_403(
    ssf_settings: AuthSettings, database_url: str
) -> None:
    await add_user(database_url, "user@example.com")
    async with serving(ssf_settings) as (client, _app):
        user = await login(client, "user@example.com")
        for headers in ({}, bearer("not-a-token"), bearer(user["access_token"])):
            response = await client.get("/ssf/streams", headers=headers)
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"].startswith("Bearer")
        reader = bearer(await receiver_token(client, READ_ONLY))
        assert (await client.get("/ssf/streams", headers=reader)).status_code == 200
        response = await client.post("/ssf/streams", json={"delivery": {"method": POLL}}, headers=reader)
        refused(response, 403, "insufficient_scope")
        assert 'scope="ssf.manage"' in response.headers["www-authenticate"]
        # The token endpoint: a service client has no client_credentials grant; secret and scope are checked.
        data = {"grant_type": "client_credentials"}
        refused(await client.post("/oauth/token", data=data, auth=SERVICE_CLIENT), 400, "unauthorized_client")
        refused(
            await client.post("/oauth/token", data=data, auth=(RECEIVER_A[0], "wrong")), 401, "invalid_client"
        )
        refused(await client.post("/oauth/token", data=data), 401, "invalid_client")
        response = await client.post("/oauth/token", data=data | {"scope": "read"}, auth=READ_ONLY)
        refused(response, 400, "invalid_scope")
        response = await client.post("/oauth/token", data=data | {"scope": "ssf.manage"}, auth=READ_ONLY)
        refused(response, 400, "invalid_scope")
