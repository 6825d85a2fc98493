"""devices.pool, pool_counters, consumes, mode: partitionable devices

A partition (a vGPU slot, a MIG placement, a VF sharing its PF's bandwidth) names its
``pool`` (the device it is carved from, its parent by default), the pool's named counters
(``pool_counters``: the same on every partition of one pool), what it ``consumes`` of them
while held, and a ``mode`` that every partition held from one pool at the same time must
share (one vGPU type per time-sliced GPU). The claim checks them under the host's lock. Rows
before this revision carve nothing.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pool_counters", _JSON, nullable=True))
        batch_op.add_column(sa.Column("consumes", _JSON, nullable=True))
        batch_op.add_column(sa.Column("pool", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("mode", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("consumed", _JSON, nullable=True))
    with op.batch_alter_table("inventory", schema=None) as batch_op:
        batch_op.add_column(sa.Column("carved", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("inventory", schema=None) as batch_op:
        batch_op.drop_column("carved")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("consumed")
        batch_op.drop_column("mode")
        batch_op.drop_column("pool")
        batch_op.drop_column("consumes")
        batch_op.drop_column("pool_counters")
