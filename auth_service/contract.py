"""The event contract: versioned event types and their JSON encoding.

This module imports only the standard library and pydantic. The producer (auth_service) owns it; consumers
(resource_service, and anyone else reading the exchange or the events API) import it and nothing else of
auth_service.

Wire form of a logged event (message body on the exchange, item of the events API, `payload` in the log)::

    {"schema_version": 1, "type": "token.revoked", "event_id": "...", "occurred_at": "...",
     "position": 42, "prev_position": 41, ...the type's own fields...}

`position` and `prev_position` are null before the event is appended. A token is covered by a not-before
watermark (`user.revoked`, `global.revoked`) when its `iat` is strictly less than `not_before`; producers
set `not_before` to a whole second past the `iat` of every token issued before the revocation.

Error tree::

    ContractError (ValueError)    malformed JSON, wrong schema_version, missing or invalid fields
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

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


Event = Annotated[
    SessionStarted | TokenIssued | TokenRevoked | SessionRevoked | UserRevoked | KeyRevoked | GlobalRevoked,
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


class RevocationKind(StrEnum):
    JTI = "jti"
    SESSION = "session"
    USER = "user"
    KEY = "key"
    GLOBAL = "global"


GLOBAL_SUBJECT = "*"


class Revocation(BaseModel):
    """One live revocation: a jti, a session, a key, or a not-before watermark for a user or everyone."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: RevocationKind
    subject: str = Field(description="The jti, session id, user id or kid; '*' for the global watermark.")
    not_before: AwareDatetime | None = Field(
        default=None, description="For user and global watermarks: tokens with iat before this are revoked."
    )
    expires_at: AwareDatetime = Field(description="After this (plus leeway) no token it covers is alive.")
    position: int = Field(ge=1, description="The position of the last event that changed this entry.")


class RevocationSnapshot(BaseModel):
    """Every live revocation, consistent with exactly the log up to and including `position`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    position: int = Field(ge=0)
    taken_at: AwareDatetime
    revocations: list[Revocation]


class RevocationColumns(BaseModel):
    """The live revocations of one kind, column by column: item i of every list is one revocation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    subjects: list[str]
    expires_at: list[float] = Field(description="Seconds since the epoch.")
    positions: list[Annotated[int, Field(ge=1)]]
    not_before: list[float] | None = Field(
        default=None, description="Seconds since the epoch; for user and global watermarks only."
    )

    @model_validator(mode="after")
    def _same_length(self) -> RevocationColumns:
        size = len(self.subjects)
        if len(self.expires_at) != size or len(self.positions) != size:
            raise ValueError("columns differ in length")
        if self.not_before is not None and len(self.not_before) != size:
            raise ValueError("columns differ in length")
        return self


class ColumnarSnapshot(BaseModel):
    """The same content as RevocationSnapshot in a compact form (`GET /v1/revocations?form=columns`).

    A cold start with many live revocations reads this one: a few long lists instead of an object with two
    timestamps per revocation, so it is smaller on the wire and folds in without a model per row.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    form: Literal["columns"] = "columns"
    position: int = Field(ge=0)
    taken_at: AwareDatetime
    columns: dict[RevocationKind, RevocationColumns]


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


def _describe(exc: ValidationError) -> str:
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
        raise ContractError(f"invalid {kind} event: {_describe(exc)}") from None


def decode_heartbeat(raw: bytes | str | dict[str, Any]) -> Heartbeat:
    """Decode a relay heartbeat; anything malformed gives a ContractError."""
    obj = _load(raw)
    _check_version(obj)
    try:
        return Heartbeat.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid heartbeat: {_describe(exc)}") from None


def decode_snapshot(raw: bytes | str) -> ColumnarSnapshot | RevocationSnapshot:
    """Decode a snapshot in either form; anything else gives a ContractError."""
    # json.loads, then validation of the plain lists: as fast as validating the JSON text directly, and the
    # process keeps less of the parser's transient memory afterwards (measured by bench/memory.py).
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"malformed snapshot JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("a snapshot must be a JSON object")
    model: type[ColumnarSnapshot] | type[RevocationSnapshot] = (
        ColumnarSnapshot if obj.get("form") == "columns" else RevocationSnapshot
    )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid snapshot: {_describe(exc)}") from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every event type, the heartbeat and the snapshot (docs/event-schema.json)."""
    schema = TypeAdapter(Event | Heartbeat | RevocationSnapshot | ColumnarSnapshot | EventPage).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"tokenlife events, schema_version {SCHEMA_VERSION}",
        **schema,
    }


def json_schema_text() -> str:
    """The exported schema file's exact text."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m auth_service.contract > docs/event-schema.json
    sys.stdout.write(json_schema_text())
