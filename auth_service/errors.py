"""The auth service's errors, mapped to HTTP in one place (api/errors.py).

AuthServiceError
├── OAuthError                 RFC 6749 §5.2 body {"error", "error_description"}, status 400 or 401
│   ├── InvalidRequest         invalid_request: missing, repeated or malformed parameters
│   ├── InvalidGrant           invalid_grant: bad credentials, unknown or expired refresh token
│   │   └── RefreshTokenReused invalid_grant, raised after the session's revocation: the transaction commits
│   ├── InvalidScope           invalid_scope: none of the requested scopes can be granted
│   ├── InvalidClient          invalid_client (401): unknown client, or a service client failed Basic
│   ├── UnauthorizedClient     unauthorized_client: the client is not registered for this grant type
│   └── UnsupportedGrantType   unsupported_grant_type
├── BearerError                RFC 6750 §3: WWW-Authenticate; invalid_request (400): malformed header
│   ├── MissingToken           401, no error code in the challenge; body error "missing_token"
│   ├── InvalidToken           401 invalid_token: bad, expired or revoked access token
│   └── InsufficientScope      403 insufficient_scope: the token lacks the scope the route needs (SSF)
├── TooManyAttempts            429 + Retry-After, error "temporarily_unavailable": login/password backoff,
│                              an SSF verification sooner than min_verification_interval
├── NoSigningKey               503: no active signing key to sign with
├── AppendError                503 + Retry-After: the log's append lock was not free in time (one whose
│                              cause is a database outage is answered as DatabaseUnavailable)
├── TooManyWaiters             503 + Retry-After: every long-poll slot of this instance is taken
├── DatabaseUnavailable        503 + Retry-After: PostgreSQL down or unreachable (db/errors.py)
└── NotFound                   404: a session that is not the caller's, or does not exist

An error whose `keeps_writes` is true still commits the request's transaction before it is answered.
"""

from __future__ import annotations


class AuthServiceError(Exception):
    """Base of every error the auth service turns into an HTTP answer."""

    status = 400
    keeps_writes = False

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class OAuthError(AuthServiceError):
    error = "invalid_request"


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class RefreshTokenReused(InvalidGrant):
    keeps_writes = True  # the session's revocation must stick, though the answer is an error


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class InvalidScope(OAuthError):
    error = "invalid_scope"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class BearerError(AuthServiceError):
    status = 400  # RFC 6750 §3.1: a malformed request is invalid_request, answered 400
    error: str | None = "invalid_request"


class MissingToken(BearerError):
    status = 401
    error = None  # RFC 6750 §3.1: no error code in the challenge when the request had no credentials at all
    # The JSON body still names the problem, with the resource service's code for the same case: neither
    # RFC 6750 code is true here (invalid_token says a token was presented, invalid_request goes with 400).
    body_error = "missing_token"


class InvalidToken(BearerError):
    status = 401
    error = "invalid_token"


class InsufficientScope(BearerError):
    status = 403
    error = "insufficient_scope"

    def __init__(self, description: str, scope: str) -> None:
        super().__init__(description)
        self.scope = scope  # RFC 6750 §3: the scope the challenge names


class TooManyAttempts(AuthServiceError):
    status = 429
    # RFC 6749 defines no code for throttling. temporarily_unavailable (registered, RFC 6749 §4.1.2.1) says
    # "retry later", which Retry-After quantifies; invalid_grant would tell the user the password was wrong.
    error = "temporarily_unavailable"

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class NoSigningKey(AuthServiceError):
    status = 503
    error = "temporarily_unavailable"


class AppendError(AuthServiceError):
    """The log could not be appended to (lock wait timed out, wrong isolation level)."""

    status = 503
    error = "temporarily_unavailable"
    public_description = "the event log is busy; retry"


class TooManyWaiters(AuthServiceError):
    status = 503
    error = "temporarily_unavailable"

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class DatabaseUnavailable(AuthServiceError):
    status = 503
    error = "temporarily_unavailable"
    public_description = "the database is unavailable; retry"
    retry_after = 1


class NotFound(AuthServiceError):
    status = 404
    error = "not_found"
