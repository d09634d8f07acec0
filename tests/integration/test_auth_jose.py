"""Our access tokens, JWKS and discovery document, checked by an independent JOSE library (joserfc).

PyJWT signs and verifies inside the service; verifying with a second implementation catches a token or JWKS
that only our own code can read. Rotation and revocation are checked the way a resource service sees them:
through the published JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db.engine import asyncpg_dsn
from auth_service.log.writer import LogWriter
from auth_service.settings import AuthSettings
from auth_service.tokens import keys
from auth_service.tokens.keyring import ALGORITHMS
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user

pytestmark = pytest.mark.integration

EMAIL = "jose@example.com"
KEY_RELOAD_DEADLINE = 10.0  # seconds: far above the reload period below, so only a broken reload fails


@pytest.fixture
def auth_settings(auth_settings: AuthSettings) -> AuthSettings:
    """The shared dev settings, reloading signing keys often so a rotation shows up within the test."""
    return auth_settings.model_copy(update={"key_refresh_seconds": 0.05})


async def login(client: httpx.AsyncClient) -> dict[str, Any]:
    """A password-grant token response."""
    response = await client.post(
        "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def fetch_jwks(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def kids(jwks: dict[str, Any]) -> set[str]:
    return {str(k["kid"]) for k in jwks["keys"]}


async def jwks_when(client: httpx.AsyncClient, condition: Callable[[set[str]], bool]) -> dict[str, Any]:
    """The JWKS once its kids satisfy `condition`: the service reloads keys in the background."""
    deadline = time.monotonic() + KEY_RELOAD_DEADLINE
    while True:
        jwks = await fetch_jwks(client)
        if condition(kids(jwks)):
            return jwks
        assert time.monotonic() < deadline, f"JWKS never changed as expected; kids: {kids(jwks)}"
        await asyncio.sleep(0.05)


# What a published key may be: its kty, crv, alg and use, per algorithm we sign with.
KEY_TYPES = {
    ("EC", "P-256", "ES256", "sig"),
    ("OKP", "Ed25519", "EdDSA", "sig"),
    ("RSA", None, "RS256", "sig"),
}


def verify(token: str, jwks: dict[str, Any]) -> jwt.Token:
    """Verify a token's signature with joserfc against a published JWKS (the algorithms we sign with)."""
    keyset = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    decoded = jwt.decode(token, keyset, algorithms=list(ALGORITHMS))
    jwk = next(k for k in jwks["keys"] if k["kid"] == decoded.header["kid"])
    assert decoded.header["alg"] == jwk["alg"], "a token must name its key's own algorithm"
    return decoded


def claims_registry(settings: AuthSettings, user_id: str) -> jwt.JWTClaimsRegistry:
    """RFC 9068 §2.2: the claims every access token must carry, with the values we know."""
    return jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": settings.issuer},
        aud={"essential": True, "value": settings.audience},
        sub={"essential": True, "value": user_id},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
        client_id={"essential": True, "value": settings.default_client_id},
        sid={"essential": True},
    )


def service_auth() -> dict[str, str]:
    raw = f"{SERVICE_CLIENT[0]}:{SERVICE_CLIENT[1]}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode()}


async def test_access_token_verifies_with_joserfc_against_the_jwks(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings, database_url: str
) -> None:
    user_id = await add_user(database_url, EMAIL)
    response = await login(auth_client)
    jwks = await fetch_jwks(auth_client)

    token = verify(response["access_token"], jwks)

    assert token.header["alg"] == auth_settings.signing_algorithm == "ES256"  # the default
    assert token.header["typ"] == "at+jwt"
    assert token.header["kid"] in kids(jwks)
    claims_registry(auth_settings, user_id).validate(token.claims)
    assert uuid.UUID(token.claims["sid"])
    assert token.claims["jti"]
    assert token.claims["exp"] - token.claims["iat"] == response["expires_in"]
    assert response["token_type"] == "Bearer"
    for jwk in jwks["keys"]:
        assert (jwk["kty"], jwk.get("crv"), jwk["alg"], jwk["use"]) in KEY_TYPES, jwk
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk), "the JWKS publishes private key material"


@pytest.mark.parametrize("claimed_kid", ["ours", "foreign"])
async def test_token_signed_by_another_key_is_rejected(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings, database_url: str, claimed_kid: str
) -> None:
    user_id = await add_user(database_url, EMAIL)
    genuine = verify((await login(auth_client))["access_token"], await fetch_jwks(auth_client))
    alg = genuine.header["alg"]
    stranger: ECKey | RSAKey | OKPKey
    if alg == "ES256":
        stranger = ECKey.generate_key("P-256")
    elif alg == "RS256":
        stranger = RSAKey.generate_key(2048)
    else:
        stranger = OKPKey.generate_key("Ed25519")
    kid = genuine.header["kid"] if claimed_kid == "ours" else uuid.uuid4().hex[:16]
    forged = jwt.encode({"alg": alg, "typ": "at+jwt", "kid": kid}, genuine.claims, stranger)

    expected = BadSignatureError if claimed_kid == "ours" else InvalidKeyIdError
    with pytest.raises(expected):
        verify(forged, await fetch_jwks(auth_client))
    # The service itself refuses it too.
    response = await auth_client.get("/v1/sessions", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert genuine.claims["sub"] == user_id


async def test_discovery_document_names_endpoints_grants_and_algorithm(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    response = await auth_client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200, response.text
    meta = response.json()

    issuer = auth_settings.issuer.rstrip("/")
    assert meta["issuer"] == issuer
    assert meta["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert meta["token_endpoint"] == f"{issuer}/oauth/token"
    assert meta["revocation_endpoint"] == f"{issuer}/oauth/revoke"
    assert meta["introspection_endpoint"] == f"{issuer}/oauth/introspect"
    assert meta["grant_types_supported"] == ["password", "refresh_token", "client_credentials"]
    # No ID tokens and no authorization endpoint, so no OpenID configuration that could not be true.
    assert (await auth_client.get("/.well-known/openid-configuration")).status_code == 404


async def test_rotation_publishes_both_keys_and_old_tokens_still_verify(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings, database_url: str, engine: AsyncEngine
) -> None:
    await add_user(database_url, EMAIL)
    old_token = (await login(auth_client))["access_token"]
    old_kid = verify(old_token, await fetch_jwks(auth_client)).header["kid"]

    async with engine.begin() as conn:
        new_kid = await keys.rotate(conn, auth_settings.key_encryption_key.get_secret_value())
    jwks = await jwks_when(auth_client, lambda published: new_kid in published)

    assert kids(jwks) == {old_kid, new_kid}
    assert verify(old_token, jwks).header["kid"] == old_kid
    still = await auth_client.get("/v1/sessions", headers={"authorization": f"Bearer {old_token}"})
    assert still.status_code == 200, still.text
    new_token = (await login(auth_client))["access_token"]
    assert verify(new_token, jwks).header["kid"] == new_kid


async def test_revoked_key_leaves_the_jwks_and_is_logged(
    auth_client: httpx.AsyncClient, auth_settings: AuthSettings, database_url: str, engine: AsyncEngine
) -> None:
    await add_user(database_url, EMAIL)
    old_token = (await login(auth_client))["access_token"]
    old_kid = verify(old_token, await fetch_jwks(auth_client)).header["kid"]

    kek = auth_settings.key_encryption_key.get_secret_value()
    async with engine.begin() as conn:
        new_kid = await keys.rotate(conn, kek)
    async with (
        LogWriter.running(asyncpg_dsn(database_url), lock_timeout_ms=5000, access_token_ttl=300) as writer,
        engine.connect() as conn,
    ):
        await keys.revoke(writer, conn, old_kid, kek, "compromised")
    jwks = await jwks_when(auth_client, lambda published: old_kid not in published)

    assert kids(jwks) == {new_kid}
    with pytest.raises(InvalidKeyIdError):
        verify(old_token, jwks)
    refused = await auth_client.get("/v1/sessions", headers={"authorization": f"Bearer {old_token}"})
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    page = await auth_client.get("/v1/events", params={"after": 0}, headers=service_auth())
    assert page.status_code == 200, page.text
    revoked = [e for e in page.json()["events"] if e["type"] == "key.revoked"]
    assert [(e["kid"], e["reason"]) for e in revoked] == [(old_kid, "compromised")]
