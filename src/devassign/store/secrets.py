"""The server's own secrets: made once, at the first read, and the same for every replica.

Kept in the database, not in each process, so that a value one replica signed is good on
another (a member's capacity walk is served by whichever replica the balancer picks) and
after a restart. Whoever reads the database reads them: as the tokens' hashes, they are as
safe as the database is.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from devassign.store.schema import server_secrets

CURSOR_KEY = "cursor_key"


def secret(conn: sa.Connection, name: str) -> str:
    """The secret called ``name``; made (64 random hex digits) where there is none yet. Two
    replicas making it at once both keep the one stored first."""
    found = conn.execute(sa.select(server_secrets.c.value).where(server_secrets.c.name == name)).scalar()
    if found is not None:
        return str(found)
    values = {"name": name, "value": secrets.token_hex(32)}
    insert: sa.Insert
    if conn.dialect.name == "postgresql":
        insert = postgresql.insert(server_secrets).values(values).on_conflict_do_nothing()
    else:
        insert = sqlite.insert(server_secrets).values(values).on_conflict_do_nothing()
    conn.execute(insert)
    return str(
        conn.execute(sa.select(server_secrets.c.value).where(server_secrets.c.name == name)).scalar_one()
    )
