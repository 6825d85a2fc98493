"""resource_types: when the type's config last changed (config_changed_at)

A cleanup runs the handler config that set its device up. An agent that lost its record of
that config (a new state file) must not clean with a config written since the claim; the
server tells it so on the cleanup's work item. ``updated_at`` moves with any change (a
description), which quarantined devices for nothing: the config's own time is kept apart.
Types already there have none (no change of their config is known).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("resource_types", sa.Column("config_changed_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        with op.batch_alter_table("resource_types") as batch_op:
            batch_op.drop_column("config_changed_at")
