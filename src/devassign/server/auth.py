"""Bearer-token authentication and the role rules every route applies.

Admins run the cloud; an agent token speaks for one host only (Kubernetes' node authorizer);
a member sees cloud-wide availability and only its own project's allocations.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from devassign import errors
from devassign.domain import Role
from devassign.store import Principal, Store

ANONYMOUS_ADMIN = Principal(name="no-auth", role=Role.ADMIN)
_CACHE_SECONDS = 10.0


class TokenCache:
    """Token lookups cached briefly: a claim should not pay a database round trip for auth."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        # Bumped by forget(): a lookup that began before a revocation must not cache its
        # (possibly pre-revocation) answer after it.
        self._generation = 0

    def cached(self, secret: str) -> tuple[bool, Principal | None]:
        """(found in the cache, principal): no database, so the event loop may ask."""
        hit = self._entries.get(secret)
        if hit and time.monotonic() - hit[0] < _CACHE_SECONDS:
            return True, hit[1]
        return False, None

    def forget(self) -> None:
        """Drop every cached answer (after a revocation), and any lookup in flight."""
        self._generation += 1
        self._entries = {}

    def get(self, secret: str) -> Principal | None:
        known, found = self.cached(secret)
        if known:
            return found
        generation = self._generation
        principal = self.store.lookup_token(secret)
        if generation == self._generation:
            if len(self._entries) > 10_000:
                self._entries = {}
            self._entries[secret] = (time.monotonic(), principal)
        return principal


async def principal(request: Request) -> Principal:
    """The caller, from the ``Authorization: Bearer`` header (or the admin when auth is off).

    Async so that a cached token costs no trip through the thread pool (a sync dependency
    does, on every request); only a cache miss reads the database, in a worker thread.
    """
    state = request.app.state
    if not state.settings.auth:
        return ANONYMOUS_ADMIN
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise errors.DevassignError(
            errors.UNAUTHENTICATED,
            "send a token: `Authorization: Bearer TOKEN` (create one with `devassign token create`)",
        )
    tokens: TokenCache = state.tokens
    known, found = tokens.cached(secret.strip())
    if not known:
        found = await run_in_threadpool(tokens.get, secret.strip())
    if found is None:
        raise errors.DevassignError(errors.UNAUTHENTICATED, "unknown or revoked token")
    return found


Caller = Annotated[Principal, Depends(principal)]


def require_admin(p: Principal) -> None:
    if p.role is not Role.ADMIN:
        raise errors.DevassignError(
            errors.FORBIDDEN, f"this needs an admin token; {p.name} is {p.role.value}"
        )


def require_host(p: Principal, host: str) -> None:
    """Admins, or the agent bound to ``host``."""
    if p.role is Role.ADMIN:
        return
    if p.role is Role.AGENT and p.host == host:
        return
    raise errors.DevassignError(
        errors.FORBIDDEN,
        f"only an admin or the agent of host {host!r} may do this; {p.name} is "
        f"{p.role.value}" + (f" of host {p.host!r}" if p.host else ""),
    )


def require_operator(p: Principal) -> None:
    """Infrastructure views (hosts, devices, events): admins and agents, not members."""
    if p.role is Role.MEMBER:
        raise errors.DevassignError(
            errors.FORBIDDEN,
            "members see resource types and their own project's allocations, not the hosts",
        )


def project_scope(p: Principal) -> str | None:
    """The project a caller is limited to (None: all of them)."""
    return p.project if p.role is Role.MEMBER else None
