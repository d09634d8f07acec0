"""What the in-process and load benchmarks check tokens against: a key, a token, a Guard over a full state."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from auth_service import contract as c
from resource_service.check.freshness import FreshnessTracker
from resource_service.check.guard import Freshness, Guard
from resource_service.check.keys import StaticKeySource
from resource_service.check.state import RevocationState
from resource_service.check.verifier import TokenVerifier

ISSUER = "https://auth.bench.example"
AUDIENCE = "https://api.bench.example"
KID = "bench-1"
ALGORITHM = "ES256"  # what the auth service signs with by default
LIVE = 100_000
# The one route of each app of the hot-path load benchmark (loadapp.py serves it, throughput.py loads it).
ROUTE = "/r"


def private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh signing key of the auth service's default algorithm (ES256)."""
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The JWKS entry of the key."""
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": KID, "alg": ALGORITHM, "use": "sig"}


def token(key: ec.EllipticCurvePrivateKey, *, scope: str = "read") -> str:
    """An access token as the auth service issues them (RFC 9068 claims, uuid jti and sid)."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "exp": now + 3600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sid": str(uuid.uuid4()),
        "client_id": "web",
        "scope": scope,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": KID, "typ": "at+jwt"})


def live_snapshot(count: int, *, position: int | None = None) -> c.ColumnarSnapshot:
    """A snapshot of `count` live revocations: nine in ten tokens, one in ten sessions, as uuids."""
    expires = float(int(time.time()) + 3600)
    sessions = count // 10
    jtis = count - sessions

    def columns(subjects: list[str], first: int) -> c.RevocationColumns:
        return c.RevocationColumns(
            subjects=subjects,
            # Tokens expire on whole seconds over their lifetime: spread them over an hour of seconds.
            expires_at=[expires - (i % 3600) for i in range(len(subjects))],
            positions=list(range(first, first + len(subjects))),
        )

    return c.ColumnarSnapshot(
        position=position if position is not None else count,
        taken_at=datetime.now(UTC),
        columns={
            c.RevocationKind.JTI: columns([uuid.uuid4().hex for _ in range(jtis)], 1),
            c.RevocationKind.SESSION: columns([str(uuid.uuid4()) for _ in range(sessions)], jtis + 1),
        },
    )


class FeedLike:
    """Freshness exactly as the Feed answers it (a tracker judged on the monotonic clock), always at head."""

    def __init__(self) -> None:
        self.tracker = FreshnessTracker(5.0, 1.0, time.monotonic())
        self.tracker.at_head(time.monotonic() + 10 * 365 * 86400.0)

    def freshness(self) -> Freshness:
        """The Guard's view, as Feed.freshness computes it."""
        return self.tracker.freshness(time.monotonic())


@dataclass
class Checked:
    """A Guard over LIVE revocations and what it checks."""

    guard: Guard
    verifier: TokenVerifier
    state: RevocationState
    key: ec.EllipticCurvePrivateKey
    jwk: dict[str, Any]


def checked(key: ec.EllipticCurvePrivateKey | None = None) -> Checked:
    """A Guard as the sample service builds it, over LIVE live revocations, always fresh."""
    key = key or private_key()
    jwk = public_jwk(key)
    verifier = TokenVerifier(ISSUER, AUDIENCE, StaticKeySource.from_jwks({"keys": [jwk]}))
    state = RevocationState()
    state.load_snapshot(live_snapshot(LIVE))
    feed = FeedLike()
    guard = Guard(verifier, state, feed.freshness, fresh_until=feed.tracker)
    return Checked(guard, verifier, state, key, jwk)
