"""Bearer tokens: only their SHA-256 is stored; the secret is shown once, at creation.

One-time sign-in links to the dashboard live here too: a code made for a token by an admin,
stored hashed with its expiry, exchanged once for a dashboard session of that token. The
session's secret (the dashboard's cookie) is stored hashed as well, and is looked up with the
tokens; it ends at its expiry, at sign-out, or when its token is revoked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.store.events import aware, record
from devassign.store.schema import login_codes, tokens

PREFIX = "da_"
# A dashboard session started by a sign-in link (the cookie's value), never an API token's.
SESSION_PREFIX = "ds_"
# How long a sign-in link may wait to be used, and how long the session it starts lasts.
LOGIN_CODE_TTL = timedelta(minutes=10)
SESSION_TTL = timedelta(hours=12)
# Links used or expired this long ago are deleted when a new one is made.
LOGIN_CODE_KEPT = timedelta(days=1)


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
    if body.name is not None:
        _check_chosen_name(conn, body.name)
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


# The form of the names made for tokens created without one (:func:`default_name`).
# Any case: ``Admin#1`` as an actor reads as the made name of an admin token.
_MADE_NAME = re.compile("({})(:.*)?#[0-9]+".format("|".join(r.value for r in Role)), re.IGNORECASE)


def _check_chosen_name(conn: sa.Connection, name: str) -> None:
    """A chosen name is one token's only: it is the actor of the token's events, and naming a
    second token like an admin's (or like the name made for another, ``admin#1``) would put
    that admin's name on its actions. Revoked tokens keep theirs (their events name them)."""
    if _MADE_NAME.fullmatch(name):
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"name: {name!r} has the form of the names made for tokens created without one "
            "(role, scope, #id): choose another, or leave name out to get one made",
        )
    if conn.dialect.name == "postgresql":
        # Two creations of one name at once each found it free (READ COMMITTED, no unique index
        # on names): the second waits for the first to commit, then finds its token.
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 7))"), {"k": f"token\x1f{name}"}
        )
    taken = conn.execute(sa.select(tokens.c.id).where(tokens.c.name == name).limit(1)).scalar_one_or_none()
    if taken is not None:
        raise errors.DevassignError(
            errors.TOKEN_NAME_TAKEN,
            f"name: token {taken} is already named {name!r} (names are the actors of events, one "
            "token's each, revoked ones included): choose another",
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


def lookup(conn: sa.Connection, secret: str, *, now: datetime | None = None) -> Principal | None:
    """The token whose secret this is, or whose live dashboard session this is (``now``: the
    clock sessions expire by); None for anything unknown, revoked or expired."""
    if secret.startswith(SESSION_PREFIX):
        if now is None:
            return None
        row = conn.execute(
            sa.select(tokens)
            .join(login_codes, login_codes.c.token_id == tokens.c.id)
            .where(
                login_codes.c.session_hash == hash_secret(secret),
                login_codes.c.session_expires_at > now,
                tokens.c.revoked_at.is_(None),
            )
        ).first()
    else:
        row = conn.execute(
            sa.select(tokens).where(
                tokens.c.secret_hash == hash_secret(secret), tokens.c.revoked_at.is_(None)
            )
        ).first()
    if row is None:
        return None
    return Principal(name=row.name, role=Role(row.role), host=row.host, project=row.project)


def create_login_code(
    conn: sa.Connection, token_id: int, *, now: datetime, actor: str, ttl: timedelta = LOGIN_CODE_TTL
) -> tuple[str, datetime]:
    """A new one-time sign-in code for a live token, and when it expires; only its hash is kept."""
    row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
    if row is None:
        raise errors.DevassignError(
            errors.TOKEN_NOT_FOUND, f"no token {token_id}: `devassign token list` shows their ids"
        )
    if row.revoked_at is not None:
        raise errors.DevassignError(
            errors.INVALID_STATE, f"token {token_id} ({row.name}) is revoked: no sign-in link for it"
        )
    if row.role == Role.MONITOR.value:
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"token {token_id} ({row.name}) is a monitor token, which reads only /metrics: "
            "no dashboard sign-in for it",
        )
    conn.execute(
        login_codes.delete().where(
            login_codes.c.expires_at < now - LOGIN_CODE_KEPT,
            sa.or_(
                login_codes.c.session_expires_at.is_(None),
                login_codes.c.session_expires_at < now - LOGIN_CODE_KEPT,
            ),
        )
    )
    code = secrets.token_urlsafe(32)
    expires_at = now + ttl
    conn.execute(
        login_codes.insert().values(
            token_id=token_id, code_hash=hash_secret(code), created_at=now, expires_at=expires_at
        )
    )
    record(
        conn,
        at=now,
        actor=actor,
        action="login_link_created",
        host=row.host,
        message=f"one-time sign-in link for {row.role} token {row.name} created",
        detail={
            "id": token_id,
            "role": row.role,
            "project": row.project,
            "expires_at": expires_at.isoformat(),
        },
    )
    return code, expires_at


def use_login_code(
    conn: sa.Connection, code: str, *, now: datetime, session_ttl: timedelta = SESSION_TTL
) -> str | None:
    """Exchange a sign-in code, once, for the secret of a new dashboard session of its token.

    None when the code is unknown, used, expired, or its token was revoked. The code is marked
    used by a compare-and-swap on ``used_at``, so two browsers racing with one link cannot both
    get a session.
    """
    if not code:
        return None
    row = conn.execute(
        sa.select(
            login_codes.c.id, tokens.c.name, tokens.c.role, tokens.c.host, tokens.c.id.label("token_id")
        )
        .join(tokens, tokens.c.id == login_codes.c.token_id)
        .where(
            login_codes.c.code_hash == hash_secret(code),
            login_codes.c.used_at.is_(None),
            login_codes.c.expires_at > now,
            tokens.c.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    session = SESSION_PREFIX + secrets.token_urlsafe(32)
    taken = conn.execute(
        login_codes.update()
        .where(login_codes.c.id == row.id, login_codes.c.used_at.is_(None))
        .values(used_at=now, session_hash=hash_secret(session), session_expires_at=now + session_ttl)
    ).rowcount
    if taken != 1:
        return None
    record(
        conn,
        at=now,
        actor=row.name,
        action="login_link_used",
        host=row.host,
        message=f"{row.role} token {row.name} signed in to the dashboard with a one-time link",
        detail={"id": row.token_id, "role": row.role},
    )
    return session


def end_session(conn: sa.Connection, secret: str, *, now: datetime) -> bool:
    """Sign a dashboard session out (its cookie stops working); False if it was not a live one."""
    if not secret.startswith(SESSION_PREFIX):
        return False
    ended = conn.execute(
        login_codes.update()
        .where(login_codes.c.session_hash == hash_secret(secret), login_codes.c.session_expires_at > now)
        .values(session_expires_at=now)
    ).rowcount
    return bool(ended)
