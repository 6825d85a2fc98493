"""ix_allocations_live_gang: a gang's live allocations by its id and project

A gang's id is kept in its allocations' request documents. Claiming a gang counts the live
allocations that name its id, and releasing one lists them; both read the project's
allocations through ``ix_allocations_project``, released ones included, so they slowed as a
project's history grew. This partial index holds live allocations only, keyed by the id as
the queries write it (``schema.GANG_OF``).

On PostgreSQL the index is built ``CONCURRENTLY``, outside the migration's transaction:
servers still running go on claiming while it reads the table (a plain ``CREATE INDEX``
would hold off every write to ``allocations`` until it is done). A build that was cut short
leaves an invalid index behind; it is dropped and built again here.

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

_NAME = "ix_allocations_live_gang"
_GANG_OF = {
    "postgresql": "(request ->> 'gang')",
    "sqlite": "json_extract(request, '$.gang')",
}


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect != "postgresql":
        op.create_index(
            _NAME,
            "allocations",
            [sa.text(_GANG_OF[dialect]), "project"],
            sqlite_where=sa.text("released_at IS NULL"),
        )
        return
    with op.get_context().autocommit_block():
        invalid = bind.execute(
            sa.text(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = :n AND NOT i.indisvalid"
            ),
            {"n": _NAME},
        ).first()
        if invalid is not None:
            op.drop_index(_NAME, table_name="allocations", postgresql_concurrently=True)
        op.create_index(
            _NAME,
            "allocations",
            [sa.text(_GANG_OF[dialect]), "project"],
            postgresql_where=sa.text("released_at IS NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="allocations")
