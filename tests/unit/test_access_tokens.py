"""The auth service's own verification of its access tokens: one parse, one signature check, claims once."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth_service.errors import InvalidToken
from auth_service.tokens.access import parse_token, sign_access_token, unverified_kid, verify_access_token
from auth_service.tokens.keyring import (
    ALGORITHMS,
    Algorithm,
    KeyRing,
    PrivateKey,
    SigningKey,
    VerifyingKey,
    algorithm_of,
)

ISS = "https://auth.example"
AUD = "tokenlife"
NOW = 1_900_000_000


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ring(key: rsa.RSAPrivateKey) -> KeyRing:
    return KeyRing(
        SigningKey("k1", key),
        {"keys": []},
        {"k1": VerifyingKey("RS256", key.public_key())},
        datetime.now(UTC),
    )


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 300,
        "jti": "j1",
        "sid": str(uuid.uuid4()),
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def sign(key: rsa.RSAPrivateKey, body: dict[str, Any], **header: Any) -> str:
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"} | header)


def verify(ring: KeyRing, token: str, **options: Any) -> dict[str, Any]:
    _kid, found = verify_access_token(token, ring, issuer=ISS, audience=AUD, now=NOW, **options)
    return dict(found)


def test_a_token_we_sign_verifies_with_its_claims(ring: KeyRing) -> None:
    assert ring.active is not None
    issued = sign_access_token(
        ring.active, issuer=ISS, audience=AUD, subject="alice", session_id=uuid.uuid4(), client_id="web",
        scope="read", ttl=300, now=datetime.fromtimestamp(NOW, UTC),
    )  # fmt: skip
    found = verify(ring, issued.token)
    assert (found["sub"], found["jti"], found["scope"]) == ("alice", issued.jti, "read")
    assert unverified_kid(issued.token) == "k1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (claims(exp=NOW - 5), "expired"),
        (claims(iat=NOW + 6), "future"),
        (claims(nbf=NOW + 6), "not yet valid"),
        (claims(iss="https://elsewhere"), "issuer"),
        (claims(aud="another-api"), "audience"),
        (claims(aud=["another-api"]), "audience"),
        (claims(jti=None), "missing required claim jti"),
        (claims(sid=None), "missing required claim sid"),
        (claims(exp="tomorrow"), "number"),
        (claims(exp=True), "number"),
        (claims(sub=42), "string"),
    ],
)
def test_claims_are_checked(
    ring: KeyRing, key: rsa.RSAPrivateKey, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidToken, match=message):
        verify(ring, sign(key, body))


def test_leeway_and_a_list_audience_are_accepted(ring: KeyRing, key: rsa.RSAPrivateKey) -> None:
    assert verify(ring, sign(key, claims(exp=NOW - 4, iat=NOW + 5, aud=["x", AUD])))["sub"] == "alice"
    assert verify(ring, sign(key, claims(exp=NOW - 60)), verify_exp=False)["sub"] == "alice"


def test_header_rules(ring: KeyRing, key: rsa.RSAPrivateKey) -> None:
    body = claims()
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verify(ring, sign(key, body, kid="k9"))
    with pytest.raises(InvalidToken, match="not an access token"):
        verify(ring, sign(key, body, typ="JWT"))
    with pytest.raises(InvalidToken, match="critical"):
        verify(ring, sign(key, body, crit=["exp"]))
    # The public key as an HMAC secret, the classic confusion: refused by the allow-list before any check.
    with pytest.raises(InvalidToken, match="algorithm"):
        verify(ring, jwt.encode(body, "k" * 32, algorithm="HS256", headers={"kid": "k1", "typ": "at+jwt"}))


def test_signature_is_verified(ring: KeyRing, key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidToken, match="signature"):
        verify(ring, sign(other, claims()))
    header, payload, signature = sign(key, claims()).split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(sub="mallory")).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        verify(ring, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "a.b.c", "not a token", "e30.e30.", "W10.e30.c2ln", "x" * 9000, "e30=.e30.c2ln"],
)
def test_malformed_tokens_are_refused_before_any_key_is_looked_up(ring: KeyRing, token: str) -> None:
    signed = parse_token(token)
    assert signed is None or signed.kid is None
    with pytest.raises(InvalidToken):
        verify(ring, token)


PRIVATE_KEYS: dict[str, Callable[[], PrivateKey]] = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_each_algorithm_signs_what_its_key_verifies_and_nothing_else(alg: Algorithm) -> None:
    private = PRIVATE_KEYS[alg]()
    signer = SigningKey("k1", private)
    assert signer.alg == alg
    mine = KeyRing(signer, {"keys": []}, {"k1": VerifyingKey(alg, private.public_key())}, datetime.now(UTC))
    issued = sign_access_token(
        signer,
        issuer=ISS,
        audience=AUD,
        subject="alice",
        session_id=uuid.uuid4(),
        client_id="web",
        scope="read",
        ttl=300,
        now=datetime.fromtimestamp(NOW, UTC),
    )
    assert jwt.get_unverified_header(issued.token)["alg"] == alg
    assert verify(mine, issued.token)["sub"] == "alice"
    # PyJWT, a second implementation, agrees the signature is the algorithm's own (RFC 7518 encodings).
    assert jwt.decode(
        issued.token,
        private.public_key(),
        algorithms=[alg],
        audience=AUD,
        options={"verify_exp": False, "verify_iat": False},
    )
    # Another key of the same kind, this key under another algorithm's name, a cut signature: refused.
    with pytest.raises(InvalidToken, match="signature"):
        verify(
            mine,
            jwt.encode(claims(), PRIVATE_KEYS[alg](), algorithm=alg, headers={"kid": "k1", "typ": "at+jwt"}),
        )
    other_alg = next(a for a in ALGORITHMS if a != alg)
    header, payload, signature = issued.token.split(".")
    renamed = (
        base64.urlsafe_b64encode(json.dumps({"alg": other_alg, "kid": "k1", "typ": "at+jwt"}).encode())
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(InvalidToken, match="algorithm"):
        verify(mine, f"{renamed}.{payload}.{signature}")
    with pytest.raises(InvalidToken, match="signature"):
        verify(mine, f"{header}.{payload}.{signature[:-8]}")


def test_an_ec_key_off_p256_has_no_algorithm_here() -> None:
    with pytest.raises(ValueError, match="P-256"):
        algorithm_of(ec.generate_private_key(ec.SECP384R1()))
