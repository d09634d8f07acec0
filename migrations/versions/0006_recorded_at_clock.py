"""event_log.recorded_at defaults to clock_timestamp(): the moment of the insert, under the append lock.

now() is the transaction's start: for an appender that waited for the lock, a moment before the wait, so
recorded_at could run backwards along the positions and the relay's publish latency counted the wait.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("event_log", "recorded_at", server_default=sa.text("clock_timestamp()"))


def downgrade() -> None:
    op.alter_column("event_log", "recorded_at", server_default=sa.text("now()"))
