"""devices.health_reason: why a device's last health check failed

The agent checks every device, free or held, and reports why a failing one failed; the
server keeps the reason beside ``healthy`` so ``devices``, the dashboard and the events say
it, and clears it when the device is healthy again. Rows before this revision have none.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("health_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("health_reason")
