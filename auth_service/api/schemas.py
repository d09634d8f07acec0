"""What the auth service answers, as models for the OpenAPI document (handlers build their JSON directly).

One error object for every error status: RFC 6749 §5.2's `{"error", "error_description"}`, which RFC 6750 and
RFC 7662 reuse, with the codes this server sends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ErrorCode = Literal[
    "invalid_request",
    "invalid_grant",
    "invalid_client",
    "invalid_scope",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_token",
    "missing_token",
    "temporarily_unavailable",
    "not_found",
]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OAuthErrorBody(_Closed):
    """An error answer (RFC 6749 §5.2, RFC 6750 §3): a code, and a sentence for people."""

    error: ErrorCode
    error_description: str


class TokenResponse(_Closed):
    """RFC 6749 §5.1; `scope` is present whenever a scope was granted (also when narrowed)."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(gt=0)
    refresh_token: str
    scope: str = Field(default="", min_length=1)


class IntrospectionResponse(BaseModel):
    """RFC 7662 §2.2: `active`, and for an active token its claims."""

    model_config = ConfigDict(extra="allow")

    active: bool
    token_type: Literal["access_token", "refresh_token"] | None = None
    sub: str | None = None
    client_id: str | None = None
    sid: str | None = None
    exp: int | None = None
    iat: int | None = None
    scope: str | None = None


class LogoutResponse(_Closed):
    """What a logout ended: how many revocations, and the log position of the last (null if none)."""

    scope: Literal["session", "others", "all"]
    revoked: int = Field(ge=0)
    position: int | None


class SessionView(_Closed):
    """One live session of the caller."""

    session_id: str
    client_id: str
    created_at: str
    last_refreshed_at: str | None
    user_agent: str | None
    client_address: str | None
    expires_at: str
    current: bool


class SessionList(_Closed):
    sessions: list[SessionView]


class SessionTimeline(_Closed):
    """A session's events from the log, in position order (the event contract's wire form)."""

    session_id: str
    events: list[dict[str, Any]]


class PasswordChanged(_Closed):
    sessions_ended: int = Field(ge=0)


class JWKS(_Closed):
    """RFC 7517 §5: the public keys."""

    keys: list[dict[str, Any]]


class ServerMetadata(_Closed):
    """RFC 8414 §2 authorization server metadata."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    revocation_endpoint: str
    introspection_endpoint: str
    scopes_supported: list[str]
    response_types_supported: list[str]
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]


class Health(_Closed):
    status: Literal["ok"]


class Readiness(_Closed):
    status: Literal["ready", "unavailable"]
    reason: str = Field(default="", min_length=1)
