"""Signing a Security Event Token (RFC 8417) for one stream: the claims SSF 1.0 and the CAEP
Interoperability Profile ask for, signed with the service's active key (ES256 by default), `typ`
secevent+jwt."""

from __future__ import annotations

import time
from typing import Any

import jwt

from auth_service.ssf.events import SetBody
from auth_service.tokens.keyring import SigningKey

SET_TYPE = "secevent+jwt"


def set_claims(
    issuer: str, audience: str, jti: str, body: SetBody, now: float | None = None
) -> dict[str, Any]:
    """The SET's claims: iss, aud (the receiver), jti, iat, txn (the log event's id), sub_id, one event."""
    return {
        "iss": issuer,
        "aud": audience,
        "jti": jti,
        "iat": int(time.time() if now is None else now),
        "txn": body.txn,
        "sub_id": body.sub_id,
        "events": {body.event_type: body.event},
    }


def sign_set(key: SigningKey, claims: dict[str, Any]) -> str:
    """The compact JWS of a SET."""
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": SET_TYPE})
