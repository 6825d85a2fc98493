"""server_secrets: the server's own secrets, shared by its replicas

A member's capacity cursor was a host's id of its choosing: two neighbouring cursors'
totals gave one host's capacity. The cursor a member is given is now signed with a key that
every replica reads from here (made at the first read, store/secrets.py).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
