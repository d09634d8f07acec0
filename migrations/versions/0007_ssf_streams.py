"""Shared Signals streams: each a receiver's configuration and its cursor on the log; the subjects a
receiver took out, poll acknowledgements ahead of a cursor, and the push deliverer's leader lease.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssf_streams",
        sa.Column("stream_id", sa.Text, primary_key=True),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("delivery_method", sa.Text, nullable=False),
        sa.Column("endpoint_url", sa.Text),
        sa.Column("authorization_header", sa.Text),
        sa.Column("events_requested", JSONB, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="enabled"),
        sa.Column("status_reason", sa.Text),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('enabled', 'paused', 'disabled')", name="ssf_streams_status"),
    )
    op.create_index("ix_ssf_streams_client_id", "ssf_streams", ["client_id"])
    op.create_table(
        "ssf_subjects",
        sa.Column(
            "stream_id", sa.Text, sa.ForeignKey("ssf_streams.stream_id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("included", sa.Boolean, nullable=False),
    )
    op.create_table(
        "ssf_acks",
        sa.Column(
            "stream_id", sa.Text, sa.ForeignKey("ssf_streams.stream_id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("position", sa.BigInteger, primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
    )
    op.create_table(
        "ssf_leader",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("leader_pid", sa.Integer),
        sa.Column("lease_renewed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("id = 1", name="ssf_leader_single_row"),
    )
    op.execute("INSERT INTO ssf_leader (id) VALUES (1)")


def downgrade() -> None:
    for table in ("ssf_leader", "ssf_acks", "ssf_subjects", "ssf_streams"):
        op.drop_table(table)
