"""The server's token cache never keeps an answer read before a revocation."""

from __future__ import annotations

from typing import Any

from devassign.domain import Role
from devassign.server.auth import TokenCache
from devassign.store import Principal


class _Store:
    """Answers a principal; ``revoke_during`` calls ``forget()`` while the lookup is in flight."""

    def __init__(self) -> None:
        self.cache: TokenCache | None = None
        self.lookups = 0
        self.revoke_during = False

    def lookup_token(self, secret: str) -> Principal | None:
        self.lookups += 1
        if self.revoke_during and self.cache is not None:
            self.cache.forget()  # a revocation commits while this read is in flight
        return Principal(name="alice", role=Role.MEMBER, project="p1")


def _cache() -> tuple[TokenCache, _Store]:
    store = _Store()
    cache = TokenCache(store)  # type: ignore[arg-type]
    store.cache = cache
    return cache, store


def test_answers_are_cached_until_forgotten() -> None:
    cache, store = _cache()
    assert cache.get("s") is not None and cache.get("s") is not None
    assert store.lookups == 1
    cache.forget()
    assert cache.cached("s") == (False, None)
    cache.get("s")
    assert store.lookups == 2


def test_a_lookup_overtaken_by_a_revocation_is_not_cached() -> None:
    cache, store = _cache()
    store.revoke_during = True
    first: Any = cache.get("s")
    assert first is not None  # this request was already in flight when the revocation came
    assert cache.cached("s") == (False, None)  # but the next one asks the database again


class _Nobody:
    def __init__(self) -> None:
        self.lookups = 0

    def lookup_token(self, secret: str) -> Principal | None:
        self.lookups += 1
        return Principal(name="alice", role=Role.ADMIN) if secret == "da_real" else None


def test_made_up_secrets_neither_grow_the_cache_nor_push_out_real_ones() -> None:
    store = _Nobody()
    cache = TokenCache(store)  # type: ignore[arg-type]
    assert cache.get("da_real") is not None
    for i in range(25_000):
        assert cache.get(f"made-up-{i}") is None
    assert len(cache._unknown) <= 10_000
    assert all(len(k) == 32 for k in cache._unknown)  # hashes, never the secrets sent
    lookups = store.lookups
    assert cache.get("da_real") is not None and store.lookups == lookups  # still cached


def test_an_oversized_secret_is_refused_without_a_lookup() -> None:
    store = _Nobody()
    cache = TokenCache(store)  # type: ignore[arg-type]
    assert cache.get("x" * 1_000_000) is None and store.lookups == 0
