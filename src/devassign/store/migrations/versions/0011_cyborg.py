"""cyborg_device_profiles, cyborg_arqs: Cyborg's API as Nova uses it

Device profiles (a flavor's ``accel:device_profile``) and accelerator requests (ARQs): one
per device, bound to an instance on a host through one devassign allocation per instance.
No profile or ARQ exists before this revision.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cyborg_device_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("groups", _JSON, nullable=False),
        sa.Column("created_at", _STAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cyborg_device_profiles")),
        sa.UniqueConstraint("name", name=op.f("uq_cyborg_device_profiles_name")),
        sa.UniqueConstraint("uuid", name=op.f("uq_cyborg_device_profiles_uuid")),
    )
    op.create_table(
        "cyborg_arqs",
        sa.Column("id", _ID, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("profile_name", sa.String(length=255), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("type_name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=True),
        sa.Column("device_rp_uuid", sa.String(length=36), nullable=True),
        sa.Column("instance_uuid", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("attach_handle_type", sa.String(length=16), nullable=True),
        sa.Column("attach_handle_info", _JSON, nullable=True),
        sa.Column("attach_handle_uuid", sa.String(length=36), nullable=True),
        sa.Column("event", sa.String(length=16), nullable=True),
        sa.Column("created_at", _STAMP, nullable=False),
        sa.Column("updated_at", _STAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cyborg_arqs")),
        sa.UniqueConstraint("uuid", name=op.f("uq_cyborg_arqs_uuid")),
    )
    with op.batch_alter_table("cyborg_arqs", schema=None) as batch_op:
        batch_op.create_index("ix_cyborg_arqs_instance", ["instance_uuid"], unique=False)
        batch_op.create_index("ix_cyborg_arqs_state", ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cyborg_arqs", schema=None) as batch_op:
        batch_op.drop_index("ix_cyborg_arqs_state")
        batch_op.drop_index("ix_cyborg_arqs_instance")
    op.drop_table("cyborg_arqs")
    op.drop_table("cyborg_device_profiles")
