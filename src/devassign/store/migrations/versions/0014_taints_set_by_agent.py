"""taints: whether an agent set the taint (by_agent)

A host's agent may lift the taints an agent set and no others. That was told from the taint's
``set_by``, a token's name, looked up among the agent tokens; token names are labels an admin
chooses, so an agent token given an admin's name made that admin's taints an agent's to lift.
The taint now records, when it is set, whether its setter was an agent.

Taints already there count as an agent's where their ``set_by`` is the name of an agent token
and of no other token (an ambiguous name is the operators': an admin lifts it).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("taints", sa.Column("by_agent", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE taints SET by_agent = true "
        "WHERE set_by IN (SELECT name FROM tokens WHERE role = 'agent' AND name IS NOT NULL) "
        "AND set_by NOT IN (SELECT name FROM tokens WHERE role <> 'agent' AND name IS NOT NULL)"
    )


def downgrade() -> None:
    # Recreated on SQLite (no DROP COLUMN before 3.35): ids stay never given twice (0013).
    with warnings.catch_warnings():
        # Reflecting the tables its foreign keys name reaches an expression index (0012),
        # which SQLAlchemy does not reflect; it is not touched.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        with op.batch_alter_table("taints", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
            batch_op.drop_column("by_agent")
