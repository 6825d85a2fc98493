"""taints: devices and hosts taken out of service (NoSchedule, Drain, None)

An operator or a host's agent taints a device, a parent device with everything under it, or a
whole host. ``devices.taint`` holds the phrase of the taint that keeps a device from new
claims (NULL: schedulable), recomputed with every taint, untaint and expiry, so the claim and
the inventory counts read one column. No device is tainted before this revision.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "taints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("parent", sa.String(length=256), nullable=True),
        sa.Column("effect", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_taints_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_taints_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_taints")),
    )
    op.create_index("ix_taints_host", "taints", ["host_id"], unique=False)
    op.create_index("ix_taints_expires", "taints", ["expires_at"], unique=False)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("taint", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("taint")
    op.drop_index("ix_taints_expires", table_name="taints")
    op.drop_index("ix_taints_host", table_name="taints")
    op.drop_table("taints")
