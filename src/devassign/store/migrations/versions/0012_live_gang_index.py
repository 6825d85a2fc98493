"""ix_allocations_live_gang: a gang's live allocations by its id and project

A gang's id is kept in its allocations' request documents. Claiming a gang counts the live
allocations that name its id, and releasing one lists them; both read the project's
allocations through ``ix_allocations_project``, released ones included, so they slowed as a
project's history grew. This partial index holds live allocations only, keyed by the id as
the queries write it (``schema.GANG_OF``).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_GANG_OF = {
    "postgresql": "(request ->> 'gang')",
    "sqlite": "json_extract(request, '$.gang')",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_index(
        "ix_allocations_live_gang",
        "allocations",
        [sa.text(_GANG_OF[dialect]), "project"],
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_allocations_live_gang", table_name="allocations")
