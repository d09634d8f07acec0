"""The database tables, as SQLAlchemy Core metadata (the migrations under migrations/ create them).

- event_log: the append-only log, the truth. Positions are gap-free and equal commit order (see log/store.py).
- sessions, revocations: projections of the log, updated in the appending transaction and rebuildable.
- users, refresh_tokens: credentials. They are not projections: a password or refresh-token hash must be
  erasable, and nothing can be erased from the log.
- refresh_successors: a rotated refresh token's successor pair, encrypted, for the grace window only.
- signing_keys: the asymmetric keys; private halves encrypted at rest.
- login_failures: failed logins per account and per address, for the backoff every instance shares.
- relay_cursor: one row, the last position the broker confirmed, and the relay leader's lease.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
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
