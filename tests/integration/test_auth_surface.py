"""What the auth service says about itself is what it does: metadata, scopes, registered clients, the
password change's backoff, and RFC 7009's leniency."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from auth_service.accounts.clients import secret_hash
from auth_service.settings import AuthSettings
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, serve_auth

pytestmark = pytest.mark.integration

EMAIL = "surface@example.com"
CONSOLE = "tokenlife-console"
PROD_AMQP = "amqp://tokenlife:not-the-guest-account@127.0.0.1:5672/"  # the relay is off in these tests


def _password(**extra: str) -> dict[str, str]:
    return {"grant_type": "password", "username": EMAIL, "password": PASSWORD, **extra}


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.fixture
async def user(database_url: str) -> str:
    return await add_user(database_url, EMAIL, scopes="read write")


def _settings(auth_settings: AuthSettings, **changes: Any) -> AuthSettings:
    """The test's settings with some fields changed, validated again as the environment would be."""
    values = auth_settings.model_dump()
    values["service_clients"] = {k: v.get_secret_value() for k, v in auth_settings.service_clients.items()}
    values["amqp_url"] = auth_settings.amqp_url.get_secret_value()
    values["key_encryption_key"] = auth_settings.key_encryption_key.get_secret_value()
    return AuthSettings.model_validate(values | changes)


# --- metadata ---------------------------------------------------------------------------------------------


async def test_every_url_in_the_metadata_answers(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    meta = (await auth_client.get("/.well-known/oauth-authorization-server")).json()
    urls = {name: value for name, value in meta.items() if name == "jwks_uri" or name.endswith("_endpoint")}
    assert set(urls) == {
        "jwks_uri",
        "token_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    }
    for name, url in urls.items():
        assert url.startswith(auth_settings.issuer.rstrip("/") + "/"), (name, url)
        path = urlsplit(url).path
        if name == "jwks_uri":
            response = await auth_client.get(path)
            assert response.status_code == 200
            assert response.json()["keys"]
            continue
        # Each endpoint answers its own protocol: an empty form is an RFC 6749 error, not a 404 or 405.
        headers = _basic(*SERVICE_CLIENT) if name == "introspection_endpoint" else {}
        response = await auth_client.post(path, data={}, headers=headers)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"] == "invalid_request"


async def test_metadata_lists_exactly_what_exists(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    meta = (await auth_client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == auth_settings.issuer.rstrip("/")
    assert meta["scopes_supported"] == ["read", "write", "admin"]  # TOKENLIFE_SCOPES' default
    assert meta["grant_types_supported"] == ["password", "refresh_token", "client_credentials"]
    assert meta["response_types_supported"] == []  # no authorization endpoint
    assert "authorization_endpoint" not in meta
    assert meta["token_endpoint_auth_methods_supported"] == ["none", "client_secret_basic"]
    assert meta["introspection_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    assert (await auth_client.get("/.well-known/openid-configuration")).status_code == 404


async def test_scopes_supported_come_from_configuration(auth_settings: AuthSettings) -> None:
    async with serve_auth(_settings(auth_settings, scopes="orders:read orders:write")) as client:
        meta = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["scopes_supported"] == ["orders:read", "orders:write"]


# --- scopes -----------------------------------------------------------------------------------------------


async def test_a_narrowed_scope_is_in_the_answer_and_the_token(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    response = await auth_client.post("/oauth/token", data=_password(scope="read admin"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "read"
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["scope"] == "read"


async def test_asking_only_for_scopes_the_user_lacks_is_invalid_scope(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    response = await auth_client.post("/oauth/token", data=_password(scope="admin"))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    tokens = (await auth_client.post("/oauth/token", data=_password())).json()
    refreshed = await auth_client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "admin"},
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_scope"


async def test_a_client_never_gets_more_than_its_registered_scopes(
    auth_settings: AuthSettings, user: str
) -> None:
    clients = {"reader": {"type": "public", "grant_types": ["password"], "scopes": ["read"]}}
    async with serve_auth(_settings(auth_settings, clients=clients)) as client:
        body = (await client.post("/oauth/token", data=_password(client_id="reader"))).json()
        assert body["scope"] == "read"  # the user holds read and write; the client may have read only
        denied = await client.post("/oauth/token", data=_password(client_id="reader", scope="write"))
        assert denied.json()["error"] == "invalid_scope"


# --- registered clients -----------------------------------------------------------------------------------


async def test_unknown_clients_are_invalid_client(auth_client: httpx.AsyncClient, user: str) -> None:
    response = await auth_client.post("/oauth/token", data=_password(client_id="someone-else"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    # A service (confidential client) gets no tokens: it is no public client.
    service = await auth_client.post("/oauth/token", data=_password(client_id=SERVICE_CLIENT[0]))
    assert service.json()["error"] == "invalid_client"


async def test_dev_registers_the_console_and_it_is_the_default(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    for extra in ({"client_id": CONSOLE}, {}):
        body = (await auth_client.post("/oauth/token", data=_password(**extra))).json()
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == CONSOLE


async def test_a_client_uses_only_its_grant_types_and_its_own_refresh_tokens(
    auth_settings: AuthSettings, user: str
) -> None:
    clients = {"cli": {"type": "public", "grant_types": ["password"]}}
    async with serve_auth(_settings(auth_settings, clients=clients)) as client:
        tokens = (await client.post("/oauth/token", data=_password(client_id="cli"))).json()
        refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        own = await client.post("/oauth/token", data={**refresh, "client_id": "cli"})
        assert own.status_code == 400
        assert own.json()["error"] == "unauthorized_client"
        other = await client.post("/oauth/token", data={**refresh, "client_id": CONSOLE})
        assert other.status_code == 400
        assert other.json()["error"] == "invalid_grant"


async def test_a_client_revokes_only_tokens_issued_to_it(auth_settings: AuthSettings, user: str) -> None:
    clients = {"app": {"type": "public", "grant_types": ["password", "refresh_token"]}}
    async with serve_auth(_settings(auth_settings, clients=clients)) as client:
        tokens = (await client.post("/oauth/token", data=_password(client_id=CONSOLE))).json()
        for name in ("refresh_token", "access_token"):
            foreign = {"token": tokens[name], "token_type_hint": name, "client_id": "app"}
            # The answer of any revocation (RFC 7009 §2.2): it does not tell "app" whose token it sent.
            assert (await client.post("/oauth/revoke", data=foreign)).status_code == 200
        # Nothing was revoked: the access token is still accepted and the refresh token still refreshes.
        bearer = {"authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/v1/sessions", headers=bearer)).status_code == 200
        refresh = {"grant_type": "refresh_token", "client_id": CONSOLE}
        renewed = await client.post(
            "/oauth/token", data={**refresh, "refresh_token": tokens["refresh_token"]}
        )
        assert renewed.status_code == 200
        # The client it was issued to revokes it; a client the registry does not know is refused.
        successor = renewed.json()["refresh_token"]
        own = {"token": successor, "token_type_hint": "refresh_token", "client_id": CONSOLE}
        assert (await client.post("/oauth/revoke", data=own)).status_code == 200
        ended = await client.post("/oauth/token", data={**refresh, "refresh_token": successor})
        assert ended.json()["error"] == "invalid_grant"
        unknown = await client.post("/oauth/revoke", data={**own, "client_id": "someone-else"})
        assert unknown.status_code == 401
        assert unknown.json()["error"] == "invalid_client"


async def test_without_a_default_client_the_client_id_is_required(
    auth_settings: AuthSettings, user: str
) -> None:
    clients = {"app": {"type": "public", "grant_types": ["password", "refresh_token"]}}
    async with serve_auth(_settings(auth_settings, clients=clients, default_client_id="app")) as client:
        assert (await client.post("/oauth/token", data=_password())).status_code == 200
    # Dev registers the console as the default; a production registry without a default needs client_id.
    prod = _settings(auth_settings, env="prod", amqp_url=PROD_AMQP, clients=clients, default_client_id="")
    async with serve_auth(prod) as client:
        response = await client.post("/oauth/token", data=_password())
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_client", "error_description": "client_id is required"}
        assert (await client.post("/oauth/token", data=_password(client_id="app"))).status_code == 200


async def test_services_are_confidential_clients_of_the_same_registry(auth_settings: AuthSettings) -> None:
    secret = "a-registry-secret-with-plenty-of-entropy-0123456789"
    clients = {"orders": {"type": "confidential", "secret_hash": secret_hash(secret)}}
    async with serve_auth(_settings(auth_settings, clients=clients)) as client:
        assert (await client.get("/v1/revocations", headers=_basic("orders", secret))).status_code == 200
        # The TOKENLIFE_SERVICE_CLIENTS shorthand registers confidential clients too.
        assert (await client.get("/v1/revocations", headers=_basic(*SERVICE_CLIENT))).status_code == 200
        wrong = await client.get("/v1/revocations", headers=_basic("orders", secret + "x"))
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_client"
        # A public client has no secret to present.
        public = await client.get("/v1/revocations", headers=_basic(CONSOLE, ""))
        assert public.status_code == 401


# --- the password change shares the login backoff ---------------------------------------------------------


async def test_password_guessing_through_the_password_change_stops_and_throttles_login(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    tokens = (await auth_client.post("/oauth/token", data=_password())).json()
    headers = {"authorization": f"Bearer {tokens['access_token']}"}
    statuses = []
    for n in range(13):
        guess = {"current_password": f"guess number {n}", "new_password": "a brand new passphrase"}
        response = await auth_client.post("/v1/auth/password", data=guess, headers=headers)
        statuses.append(response.status_code)
    assert statuses[:5] == [400] * 5  # TOKENLIFE_LOGIN_MAX_FAILURES wrong guesses are answered
    assert statuses[5:] == [429] * 8, statuses  # then every guess is refused unread, for the backoff
    right = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
    throttled = await auth_client.post("/v1/auth/password", data=right, headers=headers)
    assert throttled.status_code == 429  # even the right password: guessing has stopped
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["error"] == "temporarily_unavailable"
    login = await auth_client.post("/oauth/token", data=_password())
    assert login.status_code == 429  # one backoff per account: login is throttled too
    assert int(login.headers["retry-after"]) >= 1


# --- RFC 7009 ---------------------------------------------------------------------------------------------


async def test_an_unknown_token_type_hint_is_ignored_and_every_type_searched(
    auth_client: httpx.AsyncClient, user: str
) -> None:
    tokens = (await auth_client.post("/oauth/token", data=_password())).json()
    response = await auth_client.post(
        "/oauth/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "id_token"}
    )
    assert response.status_code == 200, response.text
    refreshed = await auth_client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.json()["error"] == "invalid_grant"  # found and revoked, though the hint named no type


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token", "saml"])
async def test_a_5000_character_token_is_no_error_to_revoke(
    auth_client: httpx.AsyncClient, hint: str | None
) -> None:
    data = {"token": "x" * 5000} | ({"token_type_hint": hint} if hint else {})
    response = await auth_client.post("/oauth/revoke", data=data)
    assert response.status_code == 200, response.text
    introspected = await auth_client.post("/oauth/introspect", data=data, headers=_basic(*SERVICE_CLIENT))
    assert introspected.json() == {"active": False}
