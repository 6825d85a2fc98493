"""hosts: the live agent process (agent_instance, agent_seen_at)

Each agent process sends a random id chosen at its start; the server keeps the last one it
took per host and when it last heard from it, so a second live agent with the same host id (a
state file cloned into a machine image, or one agent.toml and token on two machines) is
refused instead of both driving the same host.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_instance", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("agent_seen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("agent_seen_at")
        batch_op.drop_column("agent_instance")
