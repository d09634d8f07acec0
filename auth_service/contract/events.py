"""The events: their types and models, the heartbeat, the events API's page, and their JSON encoding.

The wire form, the watermark rule and the error tree are described in the package (auth_service/contract).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION: Final = 1


class ContractError(ValueError):
    """A message or stored event does not follow the contract; the text names the problem."""


class EventType(StrEnum):
    SESSION_STARTED = "session.started"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REVOKED = "token.revoked"
    SESSION_REVOKED = "session.revoked"
    USER_REVOKED = "user.revoked"
    KEY_REVOKED = "key.revoked"
    GLOBAL_REVOKED = "global.revoked"
    CREDENTIAL_CHANGED = "credential.changed"
    SSF_VERIFICATION = "ssf.verification"
    SSF_STREAM_UPDATED = "ssf.stream_updated"


HEARTBEAT_TYPE: Final = "relay.heartbeat"
# The expires_at of a revocation that must never be pruned (a revoked key: forged tokens can claim any exp).
FOREVER: Final = datetime(9999, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class _EventBase(BaseModel):
    # Unknown fields are ignored rather than refused: a newer producer may add fields within a version.
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    position: int | None = Field(default=None, ge=1)
    prev_position: int | None = Field(default=None, ge=0)


class SessionStarted(_EventBase):
    """A user logged in: a new session (a refresh-token family) exists."""

    type: Literal[EventType.SESSION_STARTED] = EventType.SESSION_STARTED
    user_id: str
    session_id: uuid.UUID
    client_id: str
    user_agent: str | None = None
    client_address: str | None = None
    expires_at: AwareDatetime = Field(description="When the session's refresh token stops working.")


class TokenIssued(_EventBase):
    """An access token was signed."""

    type: Literal[EventType.TOKEN_ISSUED] = EventType.TOKEN_ISSUED
    user_id: str
    session_id: uuid.UUID
    jti: str
    kid: str
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    cause: Literal["login", "refresh"]


class TokenRevoked(_EventBase):
    """One access token (by jti) must no longer be accepted."""

    type: Literal[EventType.TOKEN_REVOKED] = EventType.TOKEN_REVOKED
    jti: str
    user_id: str | None = None
    session_id: uuid.UUID | None = None
    expires_at: AwareDatetime = Field(description="The token's own exp: the revocation matters until then.")
    reason: str


class SessionRevoked(_EventBase):
    """A session and every token issued in it are revoked (logout, refresh-token reuse, admin)."""

    type: Literal[EventType.SESSION_REVOKED] = EventType.SESSION_REVOKED
    session_id: uuid.UUID
    user_id: str
    expires_at: AwareDatetime = Field(description="The latest exp of any access token of the session.")
    reason: str


class UserRevoked(_EventBase):
    """Every token of the user issued before not_before is revoked (logout everywhere, password change)."""

    type: Literal[EventType.USER_REVOKED] = EventType.USER_REVOKED
    user_id: str
    not_before: AwareDatetime
    expires_at: AwareDatetime = Field(description="The latest exp of any token the watermark covers.")
    reason: str


class KeyRevoked(_EventBase):
    """Every token signed by the key with this kid is revoked."""

    type: Literal[EventType.KEY_REVOKED] = EventType.KEY_REVOKED
    kid: str
    expires_at: AwareDatetime = Field(
        default=FOREVER, description="FOREVER by default: a leaked key can sign tokens with any exp."
    )
    reason: str


class GlobalRevoked(_EventBase):
    """Every token issued before not_before, of every user, is revoked."""

    type: Literal[EventType.GLOBAL_REVOKED] = EventType.GLOBAL_REVOKED
    not_before: AwareDatetime
    expires_at: AwareDatetime
    reason: str


class CredentialChanged(_EventBase):
    """A user's credential changed (a password change); it revokes nothing by itself (the sessions it ends
    are session.revoked events of their own), but Shared Signals receivers are told (ssf/)."""

    type: Literal[EventType.CREDENTIAL_CHANGED] = EventType.CREDENTIAL_CHANGED
    user_id: str
    credential_type: Literal["password"] = "password"
    change_type: Literal["create", "revoke", "update", "delete"] = "update"
    expires_at: AwareDatetime = Field(
        default_factory=utcnow, description="Nothing to revoke: when it happened (resource services skip it)."
    )
    reason: str


class SsfVerification(_EventBase):
    """A Shared Signals receiver asked for a verification event on its stream (ssf/); logged so that it
    reaches the receiver in log order, after every event committed before the request."""

    type: Literal[EventType.SSF_VERIFICATION] = EventType.SSF_VERIFICATION
    stream_id: str
    state: str | None = Field(default=None, max_length=256)
    expires_at: AwareDatetime = Field(
        default_factory=utcnow,
        description="Nothing to revoke: when it was asked (resource services skip it).",
    )


class SsfStreamUpdated(_EventBase):
    """The Shared Signals transmitter changed a stream's status, or what it says about it, without the
    receiver asking (ssf/): e.g. events dropped past retention. Logged so that the stream-updated SET reaches
    the receiver in log order, at least once, like every other SET."""

    type: Literal[EventType.SSF_STREAM_UPDATED] = EventType.SSF_STREAM_UPDATED
    stream_id: str
    status: Literal["enabled", "paused", "disabled"]
    reason: str | None = Field(default=None, max_length=512)
    expires_at: AwareDatetime = Field(
        default_factory=utcnow,
        description="Nothing to revoke: when it changed (resource services skip it).",
    )


Event = Annotated[
    SessionStarted
    | TokenIssued
    | TokenRevoked
    | SessionRevoked
    | UserRevoked
    | KeyRevoked
    | GlobalRevoked
    | CredentialChanged
    | SsfVerification
    | SsfStreamUpdated,
    Field(discriminator="type"),
]
KNOWN_TYPES = frozenset(t.value for t in EventType)


class UnknownEvent(_EventBase):
    """An event of a type this code does not know: consumers ignore it but still advance their position."""

    model_config = ConfigDict(frozen=True, extra="allow")
    type: str


class Heartbeat(BaseModel):
    """Published by the relay every heartbeat interval, never logged: the head of the log and the time."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["relay.heartbeat"] = HEARTBEAT_TYPE
    head_position: int = Field(ge=0)
    sent_at: AwareDatetime = Field(default_factory=utcnow)


class EventPage(BaseModel):
    """One page of the events API: events after a position, in position order, and the head of the log.

    Events are kept as raw JSON objects so that one a reader cannot decode does not make the page unreadable:
    decode each with `decode()`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    head: int = Field(ge=0)
    events: list[dict[str, Any]]
    # Heartbeat information, so that an idle long-poll still confirms freshness. Optional: older servers
    # omit them, and a reader then knows only that the page was read after its request was sent.
    server_time: AwareDatetime | None = Field(default=None, description="The server's clock at its answer.")
    held: float | None = Field(
        default=None,
        ge=0,
        description="Seconds a long-poll was held before the server's last read of the log (0: at once).",
    )


_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def encode(event: Event | UnknownEvent | Heartbeat) -> bytes:
    """Encode an event or heartbeat as compact UTF-8 JSON."""
    return event.model_dump_json(exclude_none=False).encode()


def to_json_dict(event: Event | UnknownEvent) -> dict[str, Any]:
    """The event as a JSON-compatible dict (the form stored in the log's payload column)."""
    return event.model_dump(mode="json")


def _load(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess UTF-16/32 from bytes.
        obj = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        raise ContractError(f"message is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ContractError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ContractError(f"an event must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_version(obj: dict[str, Any]) -> None:
    if "schema_version" not in obj:
        raise ContractError("missing field 'schema_version'")
    version = obj["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ContractError(
            f"unsupported schema_version {version!r}: this code reads version {SCHEMA_VERSION}"
        )


def describe(exc: ValidationError) -> str:
    """The problems a validation found, in one line: `field: message; ...`."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode(raw: bytes | str | dict[str, Any]) -> Event | UnknownEvent:
    """Decode one logged event; an unknown type gives an UnknownEvent, anything malformed a ContractError."""
    obj = _load(raw)
    _check_version(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ContractError("missing or non-string field 'type'")
    try:
        if kind in KNOWN_TYPES:
            return _event_adapter.validate_python(obj)
        return UnknownEvent.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid {kind} event: {describe(exc)}") from None


def decode_heartbeat(raw: bytes | str | dict[str, Any]) -> Heartbeat:
    """Decode a relay heartbeat; anything malformed gives a ContractError."""
    obj = _load(raw)
    _check_version(obj)
    try:
        return Heartbeat.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid heartbeat: {describe(exc)}") from None
