"""The relay leader's lease: its backend pid and when it last renewed, on the cursor's row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("relay_cursor", sa.Column("leader_pid", sa.Integer, nullable=True))
    op.add_column("relay_cursor", sa.Column("lease_renewed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("relay_cursor", "lease_renewed_at")
    op.drop_column("relay_cursor", "leader_pid")
