"""login_codes: one-time sign-in links to the dashboard

An admin makes a short-lived, single-use code for an existing token (``POST
/v1/tokens/{token_id}/login-link``, ``devassign token login-link ID``); a browser exchanges it
once at ``GET /ui/login/once`` for a dashboard session of that token. Codes and sessions are
stored as their SHA-256, like the tokens.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("session_hash", sa.String(length=64), nullable=True),
        sa.Column("session_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], name=op.f("fk_login_codes_token_id_tokens")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_login_codes_code_hash")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_login_codes_session_hash")),
    )


def downgrade() -> None:
    op.drop_table("login_codes")
