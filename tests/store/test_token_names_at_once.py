"""Token names under concurrency: a chosen name is the actor of one token's events, so two
creations of one name at once must not both succeed (PostgreSQL at READ COMMITTED let each
find the name free; there is no unique index on names)."""

from __future__ import annotations

import threading

import pytest

from devassign import errors, schemas
from devassign.store import Store


def _create_at_once(store: Store, name: str, n: int) -> list[str]:
    start = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        start.wait(10)
        try:
            store.create_token(schemas.TokenCreate(role="member", project="p", name=name), "admin")
            got = "created"
        except errors.DevassignError as exc:
            got = exc.code
        with lock:
            outcomes.append(got)

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return sorted(outcomes)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_one_name_created_at_once_is_one_token(store: Store) -> None:
    for attempt in range(5):
        name = f"ops-{attempt}"
        assert _create_at_once(store, name, 4) == ["created", *[errors.TOKEN_NAME_TAKEN] * 3]
        assert [t.name for t in store.list_tokens()].count(name) == 1
