"""The database tables, as SQLAlchemy Core metadata (the migrations under migrations/ create them).

- event_log: the append-only log, the truth. Positions are gap-free and equal commit order (see log/store.py).
- sessions, revocations: projections of the log, updated in the appending transaction and rebuildable.
- users, refresh_tokens: credentials. They are not projections: a password or refresh-token hash must be
  erasable, and nothing can be erased from the log.
- refresh_successors: a rotated refresh token's successor pair, encrypted, for the grace window only.
- signing_keys: the asymmetric keys; private halves encrypted at rest.
- login_failures: failed logins per account and per address, for the backoff every instance shares.
- relay_cursor: one row, the last position the broker confirmed, and the relay leader's lease.
- ssf_streams, ssf_subjects, ssf_acks, ssf_leader: the Shared Signals transmitter (ssf/): each receiver's
  stream with its cursor on the log, the subjects it took out, poll acknowledgements ahead of a cursor, and
  the push deliverer's leader lease.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

event_log = Table(
    "event_log",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("type", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # The insert's moment, under the append lock (migration 0006), not the transaction's start.
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()),
    Column("user_id", Text),
    Column("session_id", Uuid),
    Column("jti", Text),
    Column("expires_at", DateTime(timezone=True)),
    Column("schema_version", SmallInteger, nullable=False),
    Column("payload", JSONB, nullable=False),
    Index("ix_event_log_session_id", "session_id", "position"),
    Index("ix_event_log_user_id", "user_id", "position"),
)

users = Table(
    "users",
    metadata,
    Column("user_id", Uuid, primary_key=True),
    Column("email", Text, nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("password_changed_at", DateTime(timezone=True)),
    Column("disabled", Boolean, nullable=False, server_default="false"),
    Column("scopes", Text, nullable=False, server_default=""),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", Text, primary_key=True),
    Column("alg", Text, nullable=False),
    Column("public_jwk", JSONB, nullable=False),
    # The PKCS#8 private key, AES-256-GCM encrypted with the key-encryption key from the settings.
    Column("private_key_encrypted", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("retired_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", Uuid, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_refreshed_at", DateTime(timezone=True)),
    Column("user_agent", Text),
    Column("client_address", Text),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_reason", Text),
    Index("ix_sessions_user_id", "user_id"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    # SHA-256 of the opaque token: the token itself is never stored.
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("session_id", Uuid, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("rotated_at", DateTime(timezone=True)),
    Index("ix_refresh_tokens_session_id", "session_id"),
)

revocations = Table(
    "revocations",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("not_before", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("position", BigInteger, nullable=False),
    Index("ix_revocations_expires_at", "expires_at"),
)

login_failures = Table(
    "login_failures",
    metadata,
    # "account:<email>" or "address:<client address>"
    Column("key", Text, primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    Index("ix_login_failures_last_at", "last_at"),
)

# The successor pair of a rotated refresh token, AES-GCM sealed (successors.py), until its grace window ends.
refresh_successors = Table(
    "refresh_successors",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_refresh_successors_expires_at", "expires_at"),
)

relay_cursor = Table(
    "relay_cursor",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The leader's lease (relay/leader.py): its backend pid and its last renewal, on the database's clock.
    Column("leader_pid", Integer, nullable=True),
    Column("lease_renewed_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("id = 1", name="relay_cursor_single_row"),
)


ssf_streams = Table(
    "ssf_streams",
    metadata,
    Column("stream_id", Text, primary_key=True),
    Column("client_id", Text, nullable=False),  # the receiver: owner of the stream and `aud` of its SETs
    Column("delivery_method", Text, nullable=False),
    Column("endpoint_url", Text),
    Column("authorization_header", Text),  # what push presents to the receiver; never read back out
    Column("events_requested", JSONB, nullable=False),
    Column("description", Text),
    Column("status", Text, nullable=False, server_default="enabled"),
    Column("status_reason", Text),
    Column(
        "cursor", BigInteger, nullable=False
    ),  # every event up to here was delivered (push) or acked (poll)
    Column("verified_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('enabled', 'paused', 'disabled')", name="ssf_streams_status"),
    Index("ix_ssf_streams_client_id", "client_id"),
)

ssf_subjects = Table(
    "ssf_subjects",
    metadata,
    Column("stream_id", Text, ForeignKey("ssf_streams.stream_id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("included", Boolean, nullable=False),
)

ssf_acks = Table(
    "ssf_acks",
    metadata,
    Column("stream_id", Text, ForeignKey("ssf_streams.stream_id", ondelete="CASCADE"), primary_key=True),
    Column("position", BigInteger, primary_key=True),
    Column("idx", Integer, primary_key=True),
)

ssf_leader = Table(
    "ssf_leader",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("leader_pid", Integer, nullable=True),
    Column("lease_renewed_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("id = 1", name="ssf_leader_single_row"),
)
