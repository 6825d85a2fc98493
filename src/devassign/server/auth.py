"""Bearer tokens, looked up once and cached briefly.

Who may call what is ``server/access.py``; this module only answers "whose token is this".
"""

from __future__ import annotations

import hashlib
import threading
import time

from devassign.store import Principal, Store

_CACHE_SECONDS = 10.0
# Issued secrets are ~46 characters; anything much longer is not one of ours and is refused
# before it is hashed, looked up or cached.
MAX_SECRET_LENGTH = 128
_MAX_KNOWN = 100_000
_MAX_UNKNOWN = 10_000


class TokenCache:
    """Token lookups cached briefly: a claim should not pay a database round trip for auth.

    Keyed by the secret's SHA-256, never the secret itself. Unknown secrets are cached apart
    (and dropped together when there are too many), so a flood of made-up tokens can neither
    grow the cache without bound nor push out the answers for real ones.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[bytes, tuple[float, Principal]] = {}
        self._unknown: dict[bytes, float] = {}
        self._lock = threading.Lock()
        # Bumped by forget(): a lookup that began before a revocation must not cache its
        # (possibly pre-revocation) answer after it.
        self._generation = 0

    @staticmethod
    def _key(secret: str) -> bytes:
        return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()

    def cached(self, secret: str) -> tuple[bool, Principal | None]:
        """(found in the cache, principal): no database, so the event loop may ask."""
        if len(secret) > MAX_SECRET_LENGTH:
            return True, None
        key = self._key(secret)
        now = time.monotonic()
        hit = self._known.get(key)
        if hit and now - hit[0] < _CACHE_SECONDS:
            return True, hit[1]
        miss = self._unknown.get(key)
        if miss is not None and now - miss < _CACHE_SECONDS:
            return True, None
        return False, None

    def forget(self) -> None:
        """Drop every cached answer (after a revocation), and any lookup in flight."""
        with self._lock:
            self._generation += 1
            self._known = {}
            self._unknown = {}

    def get(self, secret: str) -> Principal | None:
        known, found = self.cached(secret)
        if known:
            return found
        generation = self._generation
        principal = self.store.lookup_token(secret)
        key = self._key(secret)
        with self._lock:  # the check and the write as one, against a forget() in between
            if generation == self._generation:
                if principal is None:
                    if len(self._unknown) >= _MAX_UNKNOWN:
                        self._unknown = {}
                    self._unknown[key] = time.monotonic()
                else:
                    if len(self._known) >= _MAX_KNOWN:
                        self._known = {}
                    self._known[key] = (time.monotonic(), principal)
        return principal
