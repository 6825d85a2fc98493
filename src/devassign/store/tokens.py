"""Bearer tokens: only their SHA-256 is stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from devassign import schemas
from devassign.domain import Role
from devassign.store.events import record
from devassign.store.schema import tokens

PREFIX = "da_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role and its scope (the host of an agent, the project of a member)."""

    name: str
    role: Role
    host: str | None = None
    project: str | None = None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    conn: sa.Connection, body: schemas.TokenCreate, *, now: datetime, actor: str
) -> schemas.TokenCreated:
    secret = PREFIX + secrets.token_urlsafe(32)
    # The column holds 128 characters; a host name alone may have 253.
    scope = (body.host or body.project or "cloud")[:100]
    name = body.name or f"{body.role.value}:{scope}:{secret[3:9]}"
    conn.execute(
        tokens.insert().values(
            name=name,
            secret_hash=hash_secret(secret),
            role=body.role.value,
            host=body.host,
            project=body.project,
            created_at=now,
        )
    )
    record(
        conn,
        at=now,
        actor=actor,
        action="token_created",
        host=body.host,
        message=f"{body.role.value} token {name} created",
        detail={"role": body.role.value, "project": body.project},
    )
    return schemas.TokenCreated(token=secret, role=body.role, host=body.host, project=body.project)


def lookup(conn: sa.Connection, secret: str) -> Principal | None:
    row = conn.execute(
        sa.select(tokens).where(tokens.c.secret_hash == hash_secret(secret), tokens.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return Principal(name=row.name, role=Role(row.role), host=row.host, project=row.project)
