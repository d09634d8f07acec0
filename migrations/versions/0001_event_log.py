"""The event log, its projections, credentials and the relay cursor.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("user_id", sa.Text),
        sa.Column("session_id", sa.Uuid),
        sa.Column("jti", sa.Text),
        sa.Column("expires_at", TS),
        sa.Column("schema_version", sa.SmallInteger, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.CheckConstraint("position > 0", name="event_log_position_positive"),
    )
    op.create_index("ix_event_log_session_id", "event_log", ["session_id", "position"])
    op.create_index("ix_event_log_user_id", "event_log", ["user_id", "position"])
    # The log is append-only, enforced by the database for every client, not only by our code.
    op.execute(
        """
        CREATE FUNCTION tokenlife_event_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'event_log is append-only: % is refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER event_log_no_update_delete BEFORE UPDATE OR DELETE ON event_log "
        "FOR EACH ROW EXECUTE FUNCTION tokenlife_event_log_append_only()"
    )
    op.execute(
        "CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION tokenlife_event_log_append_only()"
    )

    op.create_table(
        "users",
        sa.Column("user_id", sa.Uuid, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("password_changed_at", TS),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_refreshed_at", TS),
        sa.Column("user_agent", sa.Text),
        sa.Column("client_address", sa.Text),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
        sa.Column("revoked_reason", sa.Text),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("session_id", sa.Uuid, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("rotated_at", TS),
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"])
    op.create_table(
        "revocations",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("subject", sa.Text, primary_key=True),
        sa.Column("not_before", TS),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"])
    op.create_table(
        "relay_cursor",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="relay_cursor_single_row"),
    )
    op.execute("INSERT INTO relay_cursor (id, position) VALUES (1, 0)")


def downgrade() -> None:
    for table in ("relay_cursor", "revocations", "refresh_tokens", "sessions", "users"):
        op.drop_table(table)
    op.execute("DROP TABLE event_log")
    op.execute("DROP FUNCTION tokenlife_event_log_append_only()")
