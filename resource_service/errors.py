"""Errors of resource_service and their RFC 6750 form.

Error tree::

    ResourceError                     status, error code, description
     ├── AuthenticationError          answered with WWW-Authenticate: Bearer ...
     │    ├── MissingToken            401, no error code: no bearer credentials were sent (RFC 6750 §3.1)
     │    ├── InvalidRequest          400 invalid_request: the Authorization header is malformed
     │    ├── InvalidToken            401 invalid_token: bad signature, expired, wrong audience, ...
     │    │    └── TokenRevoked       401 invalid_token "token has been revoked" (reason kept for metrics)
     │    └── InsufficientScope       403 insufficient_scope, with the scope the request needs
     └── Unavailable                  503 + Retry-After: this instance cannot judge the token right now
          ├── StateStale              it cannot confirm its revocation state is fresh, so it refuses to
          │                           accept any token (fail closed)
          └── KeysUnavailable         the token's signing key is not held and the key set cannot be
                                      fetched now: neither valid nor invalid, so asked to retry, not refused

`error_headers()` and `error_body()` turn any of them into the response parts, so the FastAPI dependency and
the ASGI middleware answer the same way.
"""

from __future__ import annotations

import re

__all__ = [
    "AuthenticationError",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "MissingToken",
    "KeysUnavailable",
    "ResourceError",
    "StateStale",
    "TokenRevoked",
    "Unavailable",
    "error_body",
    "error_headers",
    "www_authenticate",
]


class ResourceError(Exception):
    """Base of every error resource_service raises on purpose."""

    status_code: int = 500
    error: str | None = None
    # The JSON body needs a code even where RFC 6750 says the header must carry none.
    body_code: str = "server_error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class AuthenticationError(ResourceError):
    """The request's bearer credentials are missing, malformed, invalid or not enough."""

    status_code = 401


class MissingToken(AuthenticationError):
    """No bearer token was sent: the challenge carries no error code (RFC 6750 §3.1)."""

    body_code = "missing_token"

    def __init__(self, description: str = "bearer token required") -> None:
        super().__init__(description)


class InvalidRequest(AuthenticationError):
    """The Authorization header is malformed (RFC 6750 §3.1 asks for 400 here)."""

    status_code = 400
    error = "invalid_request"
    body_code = "invalid_request"


class InvalidToken(AuthenticationError):
    """The token is not one this service accepts (signature, claims, time, type)."""

    error = "invalid_token"
    body_code = "invalid_token"


class TokenRevoked(InvalidToken):
    """The token is valid but revoked; the reason (e.g. "session_revoked") is for logs and metrics only."""

    def __init__(self, reason: str) -> None:
        super().__init__("token has been revoked")
        self.reason = reason


class InsufficientScope(AuthenticationError):
    """The token is fine but lacks a scope the request needs."""

    status_code = 403
    error = "insufficient_scope"
    body_code = "insufficient_scope"

    def __init__(self, scope: str, description: str = "the token lacks a required scope") -> None:
        super().__init__(description)
        self.scope = scope


class Unavailable(ResourceError):
    """The instance cannot judge the token right now; the client should retry after `retry_after` seconds."""

    status_code = 503
    body_code = "temporarily_unavailable"

    def __init__(self, retry_after: int, description: str) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))


class StateStale(Unavailable):
    """The revocation state may be behind the log for too long: refuse rather than risk a revoked token."""

    def __init__(self, retry_after: int, description: str = "revocation state is not fresh") -> None:
        super().__init__(retry_after, description)


class KeysUnavailable(Unavailable):
    """The token names a key this instance does not hold, and the key set cannot be fetched right now."""

    def __init__(
        self, retry_after: int, description: str = "the signing keys cannot be fetched right now"
    ) -> None:
        super().__init__(retry_after, description)


# RFC 6750 §3: error_description and scope allow only %x20-21 / %x23-5B / %x5D-7E (no '"', no '\').
_NOT_RFC6750_CHAR = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_CONTROL_OR_NON_ASCII = re.compile(r"[^\x20-\x7e]")


def _description(text: str) -> str:
    # A description may carry text from elsewhere (an exception message); a quote or a CR/LF there must
    # not break out of the header value, so anything outside the RFC's character set is replaced.
    return _NOT_RFC6750_CHAR.sub("?", text.replace('"', "'").replace("\\", "/"))


def _quoted(text: str) -> str:
    # realm is an ordinary quoted-string (RFC 9110 §5.6.4): escape '"' and '\', drop control characters.
    clean = _CONTROL_OR_NON_ASCII.sub("", text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(err: AuthenticationError, realm: str) -> str:
    """The WWW-Authenticate header value (RFC 6750 §3) for an authentication error."""
    params = [f"realm={_quoted(realm)}"]
    if err.error is not None:
        params.append(f'error="{err.error}"')
        params.append(f'error_description="{_description(err.description)}"')
    if isinstance(err, InsufficientScope):
        params.append(f'scope="{_NOT_RFC6750_CHAR.sub("", err.scope)}"')
    return "Bearer " + ", ".join(params)


def error_headers(err: ResourceError, realm: str) -> dict[str, str]:
    """The response headers for an error: the Bearer challenge, or Retry-After when unavailable."""
    headers = {"Cache-Control": "no-store"}
    if isinstance(err, AuthenticationError):
        headers["WWW-Authenticate"] = www_authenticate(err, realm)
    if isinstance(err, Unavailable):
        headers["Retry-After"] = str(err.retry_after)
    return headers


def error_body(err: ResourceError) -> dict[str, str]:
    """The JSON body for an error, in the OAuth 2.0 error response shape."""
    return {"error": err.error or err.body_code, "error_description": err.description}
