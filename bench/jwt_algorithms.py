"""Sign and verify cost of the asymmetric JWT algorithms with PyJWT: the basis of the ES256 default."""

from __future__ import annotations

import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bench.timing import summarise, time_sync

N = 2000
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def run() -> list[dict[str, object]]:
    """Rows for RS256, ES256 and EdDSA, signing and verifying a typical access token."""
    now = int(time.time())
    claims = {
        "iss": "https://auth.example.com",
        "aud": "tokenlife",
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "client_id": "web",
        "sid": str(uuid.uuid4()),
    }
    keys: dict[str, PrivateKey] = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    rows: list[dict[str, object]] = []
    for alg, private in keys.items():
        rows += _measure(alg, private, claims)
    return rows


def _measure(alg: str, private: PrivateKey, claims: dict[str, object]) -> list[dict[str, object]]:
    public = private.public_key()
    token = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k", "typ": "at+jwt"})
    return [
        summarise(f"jwt sign {alg}", time_sync(lambda: jwt.encode(claims, private, algorithm=alg), N // 4)),
        summarise(
            f"jwt verify {alg}",
            time_sync(lambda: jwt.decode(token, public, algorithms=[alg], audience="tokenlife"), N),
            "paid per request by every resource service (uncached)",
        ),
    ]
