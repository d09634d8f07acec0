"""The successor pair of a rotated refresh token, encrypted, kept for the grace window only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refresh_successors",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_refresh_successors_expires_at", "refresh_successors", ["expires_at"])


def downgrade() -> None:
    op.drop_table("refresh_successors")
