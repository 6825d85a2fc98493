"""allocations: why one ended (release_reason, release_detail)

A claim whose setup failed was released like one its holder released: a client polling its
allocation for ``assigned`` saw ``released`` and nothing more, the agent's reason only in the
event log. Allocations released before this revision have none.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("allocations", sa.Column("release_reason", sa.String(32)))
    op.add_column("allocations", sa.Column("release_detail", sa.String(1000)))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35 and later have it): a batch copy of the table would drop
    # its partial indexes (the live gang index), which SQLAlchemy cannot reflect.
    for column in ("release_detail", "release_reason"):
        op.execute(f"ALTER TABLE allocations DROP COLUMN {column}")
