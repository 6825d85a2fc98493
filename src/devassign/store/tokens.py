"""Bearer tokens: only their SHA-256 is stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.store.events import aware, record
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
    token_id = conn.execute(
        tokens.insert()
        .values(
            name=body.name,
            secret_hash=hash_secret(secret),
            role=body.role.value,
            host=body.host,
            project=body.project,
            created_at=now,
        )
        .returning(tokens.c.id)
    ).scalar_one()
    name = body.name
    if name is None:
        name = default_name(body.role, body.host or body.project, token_id)
        conn.execute(tokens.update().where(tokens.c.id == token_id).values(name=name))
    record(
        conn,
        at=now,
        actor=actor,
        action="token_created",
        host=body.host,
        message=f"{body.role.value} token {name} created",
        detail={"role": body.role.value, "project": body.project},
    )
    return schemas.TokenCreated(
        token=secret, id=token_id, name=name, role=body.role, host=body.host, project=body.project
    )


def default_name(role: Role, scope: str | None, token_id: int) -> str:
    """``admin#3``, ``agent:compute-1#5``, ``member:demo#17``: from public data only. The name is
    the actor of the token's events, which other tenants may read; it never holds any part of
    the secret. Fits the 128-character column (a host name alone may have 253)."""
    if role is Role.ADMIN or not scope:
        return f"{role.value}#{token_id}"
    return f"{role.value}:{scope[:100]}#{token_id}"


def list_tokens(conn: sa.Connection, *, revoked: bool = False) -> list[schemas.Token]:
    """Tokens, oldest first; revoked ones only when asked for."""
    q = sa.select(tokens).order_by(tokens.c.id)
    if not revoked:
        q = q.where(tokens.c.revoked_at.is_(None))
    return [_token(r) for r in conn.execute(q)]


def revoke(conn: sa.Connection, token_id: int, *, now: datetime, actor: str) -> schemas.Token:
    """Revoke a token (its secret stops working); revoking it again changes nothing.

    The last live admin token is never revoked (nobody could administer the cloud after it).
    Two revocations of the last two admin tokens at once must not both pass: the live admin
    tokens are locked together, in id order, before counting them (PostgreSQL re-reads a row
    it waited for, so the second one sees the first one's revocation; SQLite has one writer).
    """
    row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
    if row is None:
        raise errors.DevassignError(
            errors.TOKEN_NOT_FOUND, f"no token {token_id}: `devassign token list` shows their ids"
        )
    if row.revoked_at is None and row.role == Role.ADMIN.value:
        live_admins = (
            conn.execute(
                sa.select(tokens.c.id)
                .where(tokens.c.role == Role.ADMIN.value, tokens.c.revoked_at.is_(None))
                .order_by(tokens.c.id)
                .with_for_update()
            )
            .scalars()
            .all()
        )
        if token_id in live_admins and len(live_admins) == 1:
            raise errors.DevassignError(
                errors.INVALID_STATE,
                f"token {token_id} is the last admin token; create another admin token first "
                "(`devassign token create --role admin`), then revoke this one",
            )
    else:
        conn.execute(sa.select(tokens.c.id).where(tokens.c.id == token_id).with_for_update())
    row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one()
    if row.revoked_at is None:
        conn.execute(tokens.update().where(tokens.c.id == token_id).values(revoked_at=now))
        record(
            conn,
            at=now,
            actor=actor,
            action="token_revoked",
            host=row.host,
            message=f"{row.role} token {row.name} revoked",
            detail={"id": token_id, "role": row.role, "project": row.project},
        )
        row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one()
    return _token(row)


def _token(r: Any) -> schemas.Token:
    return schemas.Token(
        id=r.id,
        name=r.name or "",
        role=Role(r.role),
        host=r.host,
        project=r.project,
        created_at=aware(r.created_at),
        revoked_at=aware(r.revoked_at),
    )


def lookup(conn: sa.Connection, secret: str) -> Principal | None:
    row = conn.execute(
        sa.select(tokens).where(tokens.c.secret_hash == hash_secret(secret), tokens.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return Principal(name=row.name, role=Role(row.role), host=row.host, project=row.project)
