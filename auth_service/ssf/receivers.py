"""Who is calling the SSF API: a receiver, from a client_credentials access token (client_grant.py).

The token must verify against the key ring (with the algorithm of the kid's key, `typ` at+jwt), be issued
by us for us (`iss` and `aud` the issuer), unexpired, and name a client that is still registered for
client_credentials; its scopes count only as far as the registry still gives them. A failure is
InvalidToken (401, RFC 6750); a token without the scope a route needs is InsufficientScope (403).
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from auth_service.accounts.clients import ClientRegistry
from auth_service.errors import InsufficientScope, InvalidToken
from auth_service.tokens.access import ACCESS_TOKEN_TYPE, parse_token
from auth_service.tokens.keyring import KeyRing
from auth_service.use_cases.client_grant import client_token_audience

READ, MANAGE = "ssf.read", "ssf.manage"


@dataclass(frozen=True)
class Receiver:
    """An authenticated receiver: its client id and the SSF scopes it holds now."""

    client_id: str
    scopes: frozenset[str]

    def require(self, *any_of: str) -> None:
        """Refuse (403 insufficient_scope) unless the receiver holds one of these scopes."""
        if not self.scopes & set(any_of):
            raise InsufficientScope(f"this operation needs the scope {' or '.join(any_of)}", " ".join(any_of))


def authenticate_receiver(token: str, ring: KeyRing, registry: ClientRegistry, issuer: str) -> Receiver:
    """The receiver a bearer token stands for, or InvalidToken saying why not."""
    signed = parse_token(token)
    if signed is None:
        raise InvalidToken("malformed access token")
    kid = signed.kid
    key = ring.public_keys.get(kid) if kid is not None else None
    if key is None:
        raise InvalidToken("unknown signing key")
    if str(signed.header.get("typ", "")).lower() != ACCESS_TOKEN_TYPE:
        raise InvalidToken("not an access token")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            audience=client_token_audience(issuer),
            issuer=issuer,
            leeway=5,
            options={"require": ["exp", "iat", "sub", "client_id", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid token: {exc}"[:200]) from None
    client_id = claims["client_id"]
    if not isinstance(client_id, str) or claims["sub"] != client_id or "sid" in claims:
        raise InvalidToken("not a receiver's token")
    spec = registry.receiver(client_id)
    if spec is None:
        raise InvalidToken("the client is no longer a registered receiver")
    held = str(claims.get("scope", "")).split()
    return Receiver(client_id, frozenset(held) & frozenset(spec.scopes or ()))
