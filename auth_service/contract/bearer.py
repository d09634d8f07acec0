"""The `Authorization: Bearer` header (RFC 6750 §2.1), parsed once for every side that reads one.

Part of the contract because both sides of it read the same header the same way: the auth service for its
own routes, resource services for theirs. Standard library only. `parse_bearer` answers with the token, with
None when the request carries no bearer credentials (RFC 6750 §3.1: another scheme counts as none, so the
answer is a bare challenge), or raises MalformedBearer with the reason for a header that is there but wrong
(400 invalid_request). Each service maps the two to its own errors.
"""

from __future__ import annotations

MAX_HEADER_BYTES = 8192


class MalformedBearer(ValueError):
    """A bearer header that is present but malformed; the message is the reason, safe to show the client."""


def parse_bearer(authorization: str | None, max_bytes: int = MAX_HEADER_BYTES) -> str | None:
    """The token of a "Bearer <token>" header value; None when there are no bearer credentials."""
    if authorization is None or not authorization.strip():
        return None
    if len(authorization) > max_bytes:
        raise MalformedBearer("authorization header too large")
    if not authorization.isascii():
        raise MalformedBearer("authorization header must be ASCII")
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    parts = rest.split()
    if not parts:
        raise MalformedBearer("missing bearer token")
    if len(parts) > 1 or "," in parts[0]:
        raise MalformedBearer("expected exactly one bearer token")
    return parts[0]
