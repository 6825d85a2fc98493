"""Bearer tokens, looked up once and cached briefly.

Who may call what is ``server/access.py``; this module only answers "whose token is this".
"""

from __future__ import annotations

import time

from devassign.store import Principal, Store

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
