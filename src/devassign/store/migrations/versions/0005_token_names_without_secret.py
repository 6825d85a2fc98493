"""tokens: default names without characters of the secret

Earlier servers named a token without an explicit name ``ROLE:SCOPE:XXXXXX``, where XXXXXX
were six characters of its secret, and that name is the actor of the token's events, which
other tenants may read. Such names become ``ROLE:SCOPE#ID`` (``admin#ID``), as new tokens are
named, in the tokens and in the events that name them.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD_DEFAULT = re.compile(r"^(admin|agent|member):(.*):[A-Za-z0-9_-]{6}$")


def upgrade() -> None:
    conn = op.get_bind()
    tokens = sa.table("tokens", sa.column("id"), sa.column("name"), sa.column("role"))
    events = sa.table("events", sa.column("actor"), sa.column("message"))
    for token_id, name, role in conn.execute(sa.select(tokens.c.id, tokens.c.name, tokens.c.role)).all():
        found = _OLD_DEFAULT.match(name or "")
        if not found or found.group(1) != role:
            continue
        scope = found.group(2)
        new = f"{role}#{token_id}" if role == "admin" or scope == "cloud" else f"{role}:{scope}#{token_id}"
        conn.execute(tokens.update().where(tokens.c.id == token_id).values(name=new))
        conn.execute(events.update().where(events.c.actor == name).values(actor=new))
        conn.execute(
            events.update()
            .where(events.c.message.contains(name, autoescape=True))
            .values(message=sa.func.replace(events.c.message, name, new))
        )


def downgrade() -> None:
    """The old names held part of the secret; they are not brought back."""
