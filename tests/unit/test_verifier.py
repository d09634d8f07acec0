"""TokenVerifier: every token a resource service must refuse is refused, and a good one is accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from resource_service.check.keys import JwksKeySource, StaticKeySource, parse_jwks
from resource_service.check.verifier import TokenVerifier
from resource_service.errors import InvalidToken, KeysUnavailable

ISS = "https://auth.example"
AUD = "https://api.example"
NOW = 1_900_000_000
SID = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-8091a2b3c4d5")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private: rsa.RSAPrivateKey, kid: str, alg: str = "RS256") -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


def claims(drop: tuple[str, ...] = (), **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "exp": NOW + 300,
        "iat": NOW,
        "jti": "jti-1",
        "sid": str(SID),
        "client_id": "web",
        "scope": "read write",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if k not in drop}


def sign(private: rsa.RSAPrivateKey, payload: dict[str, Any] | None = None, /, **headers: Any) -> str:
    header = {"kid": "k1", "typ": "at+jwt", **headers}
    return jwt.encode(payload or claims(), private, algorithm=header.pop("alg", "RS256"), headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj).encode())


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def source(key: rsa.RSAPrivateKey) -> StaticKeySource:
    return StaticKeySource.from_jwks({"keys": [public_jwk(key, "k1")]})


@pytest.fixture
def verifier(source: StaticKeySource, clock: Clock) -> TokenVerifier:
    return TokenVerifier(ISS, AUD, source, clock=clock)


async def refused(verifier: TokenVerifier, token: str, match: str) -> None:
    with pytest.raises(InvalidToken, match=match):
        await verifier.verify(token)


# --- the happy path ---


async def test_valid_token_gives_its_principal(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    principal = await verifier.verify(sign(key))
    assert (principal.sub, principal.jti, principal.client_id, principal.kid) == (
        "alice",
        "jti-1",
        "web",
        "k1",
    )
    assert principal.sid == str(SID)
    assert principal.scopes == frozenset({"read", "write"})
    assert (principal.iat, principal.exp) == (NOW, NOW + 300)
    assert principal.claims["iss"] == ISS
    assert principal.facts.sid == principal.sid


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
async def test_access_token_types_are_accepted_in_any_case(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey, typ: str
) -> None:
    assert (await verifier.verify(sign(key, typ=typ))).sub == "alice"


async def test_session_id_in_another_uuid_spelling_is_made_canonical(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    principal = await verifier.verify(sign(key, claims(sid=SID.hex.upper())))
    assert principal.sid == str(SID)


async def test_expiry_within_leeway_is_accepted(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    assert (await verifier.verify(sign(key, claims(exp=NOW - 3)))).exp == NOW - 3


# --- attacks and malformed tokens ---


async def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    header = segment({"alg": "none", "typ": "at+jwt", "kid": "k1"})
    unsigned = f"{header}.{segment(claims())}"
    await refused(verifier, unsigned + ".", "malformed")
    await refused(verifier, unsigned + ".c2ln", "algorithm not allowed")


async def test_hs256_signed_with_the_public_key_pem_is_refused(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'at+jwt', 'kid': 'k1'})}.{segment(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    await refused(verifier, f"{signing_input}.{b64(mac)}", "algorithm not allowed")


async def test_allowed_algorithm_other_than_the_keys_own_is_refused(
    source: StaticKeySource, clock: Clock, key: rsa.RSAPrivateKey
) -> None:
    verifier = TokenVerifier(ISS, AUD, source, algorithms=["RS256", "PS256"], clock=clock)
    await refused(verifier, sign(key, alg="PS256"), "does not match the signing key")


async def test_unknown_kid_is_refused_after_asking_the_source_to_refresh(
    verifier: TokenVerifier, source: StaticKeySource, key: rsa.RSAPrivateKey
) -> None:
    await refused(verifier, sign(key, kid="k9"), "unknown signing key")
    assert source.refreshes == 1


@pytest.mark.parametrize(
    "kid",
    ["../k1", "keys/k1", "k1\\..\\k1", "https://evil.example/k1", "file:k1", "a" * 129, ""],
)
async def test_kid_with_path_or_url_tricks_is_refused_before_any_key_lookup(
    verifier: TokenVerifier, source: StaticKeySource, key: rsa.RSAPrivateKey, kid: Any
) -> None:
    await refused(verifier, sign(key, kid=kid), "kid")
    assert source.refreshes == 0


@pytest.mark.parametrize("kid", [7, None, ["k1"]])
async def test_missing_or_non_string_kid_is_refused(
    verifier: TokenVerifier, source: StaticKeySource, kid: Any
) -> None:
    header = {"alg": "RS256", "typ": "at+jwt"} | ({} if kid is None else {"kid": kid})
    await refused(verifier, f"{segment(header)}.{segment(claims())}.c2ln", "kid|malformed")
    assert source.refreshes == 0


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_headers_are_ignored_so_an_attacker_key_is_refused(
    verifier: TokenVerifier, attacker_key: rsa.RSAPrivateKey, header: str
) -> None:
    await refused(verifier, sign(attacker_key, **{header: "https://evil.example/jwks.json"}), "signature")


async def test_embedded_jwk_header_is_ignored_so_an_attacker_key_is_refused(
    verifier: TokenVerifier, attacker_key: rsa.RSAPrivateKey
) -> None:
    await refused(verifier, sign(attacker_key, jwk=public_jwk(attacker_key, "k1")), "signature")


async def test_expired_token_is_refused(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    await refused(verifier, sign(key, claims(exp=NOW - 6)), "expired")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_token_not_yet_valid_beyond_leeway_is_refused(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey, claim: str
) -> None:
    await refused(verifier, sign(key, claims() | {claim: NOW + 60}), "future|not yet valid")


async def test_wrong_audience_is_refused(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    await refused(verifier, sign(key, claims(aud="https://other.example")), "audience")


async def test_wrong_issuer_is_refused(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    await refused(verifier, sign(key, claims(iss="https://auth.example.evil")), "issuer")


@pytest.mark.parametrize("claim", ["jti", "sid", "exp", "iat", "sub", "iss", "aud"])
async def test_token_missing_a_required_claim_is_refused(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey, claim: str
) -> None:
    await refused(verifier, sign(key, claims(drop=(claim,))), f"missing required claim {claim}")


@pytest.mark.parametrize(
    ("claim", "value"), [("exp", True), ("iat", "now"), ("sid", ""), ("scope", ["read"])]
)
async def test_claims_of_the_wrong_type_are_refused(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey, claim: str, value: Any
) -> None:
    await refused(verifier, sign(key, claims() | {claim: value}), "claim|invalid token")


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt2", None])
async def test_wrong_token_type_is_refused(verifier: TokenVerifier, key: rsa.RSAPrivateKey, typ: Any) -> None:
    token = sign(key, typ=typ)  # PyJWT leaves typ out when it is None
    assert jwt.get_unverified_header(token).get("typ") == typ
    await refused(verifier, token, "type")


async def test_critical_header_extension_is_refused(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    await refused(verifier, sign(key, crit=["exp"], exp=1), "critical|malformed")


async def test_tampered_payload_is_refused(verifier: TokenVerifier, key: rsa.RSAPrivateKey) -> None:
    header, _, signature = sign(key).split(".")
    forged = f"{header}.{segment(claims(sub='admin'))}.{signature}"
    await refused(verifier, forged, "signature")


async def test_oversized_token_is_refused_before_parsing(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    await refused(verifier, sign(key, claims(pad="x" * 8192)), "too large")


@pytest.mark.parametrize(
    "token",
    ["not-a-token", "a.b", "a.b.c.d", "a..c", "e30.e30.", "a$b.c.d", "eyJ=.e30.e30", "é.e30.e30", " a.b.c"],
)
async def test_malformed_token_is_refused(verifier: TokenVerifier, token: str) -> None:
    await refused(verifier, token, "malformed")


async def test_extra_segment_on_a_valid_token_is_refused(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    await refused(verifier, sign(key) + ".e30", "malformed")


@pytest.mark.parametrize("algorithms", [["none"], ["HS256"], ["hs512"], ["RS256", "NONE"], ["XS256"], []])
def test_verifier_refuses_unsafe_or_unknown_algorithms_at_construction(
    source: StaticKeySource, algorithms: list[str]
) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        TokenVerifier(ISS, AUD, source, algorithms=algorithms)


def test_jwks_parsing_keeps_only_public_asymmetric_signing_keys(key: rsa.RSAPrivateKey) -> None:
    private = {**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "private"}
    keys = parse_jwks(
        {
            "keys": [
                public_jwk(key, "good"),
                {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
                private,
                {**public_jwk(key, "enc"), "use": "enc"},
                {**public_jwk(key, "../evil")},
                {"kty": "RSA", "kid": "broken"},
            ]
        }
    )
    assert set(keys) == {"good"}


# --- the claims cache ---


async def test_repeated_token_is_served_from_the_cache(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    token = sign(key)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first
    assert verifier.cache_hits == 1


async def test_cached_token_still_expires(
    verifier: TokenVerifier, key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    token = sign(key)
    await verifier.verify(token)
    clock.now = NOW + 306
    await refused(verifier, token, "expired")


async def test_cache_evicts_the_least_recently_used_token(
    source: StaticKeySource, clock: Clock, key: rsa.RSAPrivateKey
) -> None:
    verifier = TokenVerifier(ISS, AUD, source, cache_size=2, clock=clock)
    a, b, c = (sign(key, claims(jti=j)) for j in "abc")
    for token in (a, b, a, c):  # a was used after b, so b is the one evicted by c
        await verifier.verify(token)
    hits = verifier.cache_hits
    await verifier.verify(a)
    assert verifier.cache_hits == hits + 1
    await verifier.verify(b)
    assert verifier.cache_hits == hits + 1


# --- fetching keys ---


class Jwks:
    """An in-memory JWKS endpoint: the keys it serves and how often it was asked."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.down = False

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise ConnectionError("auth service unreachable")
        return {"keys": list(self.keys)}


async def test_new_kid_is_fetched_on_demand_at_most_once_per_interval(
    key: rsa.RSAPrivateKey, attacker_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    endpoint = Jwks(public_jwk(key, "k1"))
    monotonic = Clock(0)
    verifier = TokenVerifier(ISS, AUD, JwksKeySource(endpoint, min_interval=10, clock=monotonic), clock=clock)
    assert (await verifier.verify(sign(key))).kid == "k1"
    assert endpoint.calls == 1

    endpoint.keys.append(public_jwk(attacker_key, "k2"))
    for jti in ("x", "y", "z"):  # a burst of unknown kids within the interval costs no fetch
        await refused(verifier, sign(attacker_key, claims(jti=jti), kid="k2"), "unknown signing key")
    assert endpoint.calls == 1

    monotonic.now = 10
    assert (await verifier.verify(sign(attacker_key, kid="k2"))).kid == "k2"
    assert endpoint.calls == 2


async def test_failed_key_fetch_keeps_the_keys_already_known(key: rsa.RSAPrivateKey) -> None:
    endpoint = Jwks(public_jwk(key, "k1"))
    monotonic = Clock(0)
    source = JwksKeySource(endpoint, min_interval=10, clock=monotonic)
    assert await source.get("k1") is not None
    endpoint.down = True
    monotonic.now = 20
    with pytest.raises(KeysUnavailable):
        await source.refresh()
    assert source.failures == 1
    assert "unreachable" in (source.last_error or "")
    assert await source.get("k1") is not None


async def test_token_whose_key_cannot_be_fetched_is_unavailable_not_invalid(
    key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    endpoint = Jwks(public_jwk(key, "k1"))
    endpoint.down = True
    verifier = TokenVerifier(ISS, AUD, JwksKeySource(endpoint, min_interval=10, clock=Clock(0)), clock=clock)
    with pytest.raises(KeysUnavailable) as caught:
        await verifier.verify(sign(key))
    assert caught.value.status_code == 503
    assert caught.value.retry_after >= 1


async def test_failed_key_fetch_is_retried_on_demand_after_a_short_backoff_not_the_interval(
    key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    endpoint = Jwks(public_jwk(key, "k1"))
    endpoint.down = True
    monotonic = Clock(0)
    source = JwksKeySource(endpoint, min_interval=10, retry_min=0.5, retry_max=2, clock=monotonic)
    verifier = TokenVerifier(ISS, AUD, source, clock=clock)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(sign(key))
    calls = endpoint.calls
    with pytest.raises(KeysUnavailable):  # within the backoff: no new fetch, still unavailable
        await verifier.verify(sign(key, claims(jti="again")))
    assert endpoint.calls == calls

    endpoint.down = False
    monotonic.now = 0.5  # the backoff, far short of min_interval
    assert (await verifier.verify(sign(key))).kid == "k1"
    assert endpoint.calls == calls + 1


async def test_backoff_after_repeated_key_fetch_failures_doubles_up_to_its_cap(
    key: rsa.RSAPrivateKey,
) -> None:
    endpoint = Jwks(public_jwk(key, "k1"))
    endpoint.down = True
    monotonic = Clock(0)
    source = JwksKeySource(endpoint, min_interval=10, retry_min=0.5, retry_max=2, clock=monotonic)
    fetched_at: list[float] = []
    for step in range(40):  # 10 s in steps of 0.25 s
        monotonic.now = step * 0.25
        calls = endpoint.calls
        with pytest.raises(KeysUnavailable):
            await source.get("k1")
        if endpoint.calls > calls:
            fetched_at.append(monotonic.now)
    gaps = [b - a for a, b in zip(fetched_at, fetched_at[1:], strict=False)]
    assert gaps[:3] == [0.5, 1.0, 2.0]
    assert set(gaps[3:]) == {2.0}
