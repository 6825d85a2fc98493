"""moves: a consumer's allocation moving to another host (live or cold migration)

A move holds the devices on the target host under an internal allocation of its own (its
consumer a reserved ``move:`` id) while the consumer's allocation on the source host stays
live. Commit releases the source and re-points the target allocation to the consumer; abort
or expiry releases the target. ``device_map`` pairs each source device with its target.
At most one pending move per consumer. No move exists before this revision.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "moves",
        sa.Column("id", _ID, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("target_consumer", sa.String(length=64), nullable=False),
        sa.Column("source_allocation_id", _ID, nullable=False),
        sa.Column("target_allocation_id", _ID, nullable=False),
        sa.Column("source_host_id", sa.Integer(), nullable=False),
        sa.Column("target_host_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("device_map", _JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["consumer"], ["consumers.uuid"], name=op.f("fk_moves_consumer_consumers")),
        sa.ForeignKeyConstraint(
            ["source_allocation_id"],
            ["allocations.id"],
            name=op.f("fk_moves_source_allocation_id_allocations"),
        ),
        sa.ForeignKeyConstraint(
            ["target_allocation_id"],
            ["allocations.id"],
            name=op.f("fk_moves_target_allocation_id_allocations"),
        ),
        sa.ForeignKeyConstraint(["source_host_id"], ["hosts.id"], name=op.f("fk_moves_source_host_id_hosts")),
        sa.ForeignKeyConstraint(["target_host_id"], ["hosts.id"], name=op.f("fk_moves_target_host_id_hosts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_moves")),
    )
    with op.batch_alter_table("moves", schema=None) as batch_op:
        batch_op.create_index("ix_moves_consumer", ["consumer", "id"], unique=False)
        batch_op.create_index("ix_moves_target_allocation", ["target_allocation_id"], unique=False)
        batch_op.create_index(
            "uq_moves_pending_consumer",
            ["consumer"],
            unique=True,
            sqlite_where=sa.text("finished_at IS NULL"),
            postgresql_where=sa.text("finished_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("moves", schema=None) as batch_op:
        batch_op.drop_index("uq_moves_pending_consumer")
        batch_op.drop_index("ix_moves_target_allocation")
        batch_op.drop_index("ix_moves_consumer")
    op.drop_table("moves")
