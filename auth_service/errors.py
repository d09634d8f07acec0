"""The auth service's errors, mapped to HTTP in one place (app.py).

AuthServiceError
├── OAuthError                 RFC 6749 §5.2 body {"error", "error_description"}, status 400 or 401
│   ├── InvalidRequest         invalid_request: missing, repeated or malformed parameters
│   ├── InvalidGrant           invalid_grant: bad credentials, unknown, expired or reused refresh token
│   ├── InvalidClient          invalid_client (401): a service client failed to authenticate
│   └── UnsupportedGrantType   unsupported_grant_type
├── BearerError                RFC 6750 §3: WWW-Authenticate; invalid_request (400): malformed header
│   ├── MissingToken           401, no error code: no bearer credentials at all
│   └── InvalidToken           401 invalid_token: bad, expired or revoked access token
├── TooManyAttempts            429 + Retry-After: login backoff
├── NoSigningKey               503: no active signing key to sign with
├── TooManyWaiters             503 + Retry-After: every long-poll slot of this instance is taken
└── NotFound                   404: a session that is not the caller's, or does not exist
"""

from __future__ import annotations


class AuthServiceError(Exception):
    """Base of every error the auth service turns into an HTTP answer."""

    status = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class OAuthError(AuthServiceError):
    error = "invalid_request"


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class BearerError(AuthServiceError):
    status = 400  # RFC 6750 §3.1: a malformed request is invalid_request, answered 400
    error: str | None = "invalid_request"


class MissingToken(BearerError):
    status = 401
    error = None  # RFC 6750 §3.1: no error code when the request had no credentials at all


class InvalidToken(BearerError):
    status = 401
    error = "invalid_token"


class TooManyAttempts(AuthServiceError):
    status = 429

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class NoSigningKey(AuthServiceError):
    status = 503
    error = "temporarily_unavailable"


class TooManyWaiters(AuthServiceError):
    status = 503
    error = "temporarily_unavailable"

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class NotFound(AuthServiceError):
    status = 404
    error = "not_found"
