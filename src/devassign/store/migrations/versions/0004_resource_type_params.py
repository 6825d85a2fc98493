"""resource_types.params: the request params each type accepts

A type now declares the params a request may give its devices (name, kind, bounds, values per
project); a request with any other param is refused. Types that held SR-IOV VFs, or use the
sriov_vf handler, read ``mac`` and ``vlan`` from requests before: they are declared for them,
so their requests keep working. Every other type starts with none.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
VF_PARAMS = {"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 0, "max": 4094}}


def upgrade() -> None:
    with op.batch_alter_table("resource_types", schema=None) as batch_op:
        batch_op.add_column(sa.Column("params", Json, nullable=True))
    types = sa.table(
        "resource_types",
        sa.column("id", sa.Integer),
        sa.column("handler", sa.String),
        sa.column("params", Json),
    )
    devices = sa.table("devices", sa.column("type_id", sa.Integer), sa.column("kind", sa.String))
    vf_types = sa.select(devices.c.type_id).where(devices.c.kind == "sriov_vf")
    op.execute(
        types.update()
        .where(sa.or_(types.c.handler == "sriov_vf", types.c.id.in_(vf_types)))
        .values(params=VF_PARAMS)
    )


def downgrade() -> None:
    with op.batch_alter_table("resource_types", schema=None) as batch_op:
        batch_op.drop_column("params")
