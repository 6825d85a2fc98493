"""An agent token for a host name of 100+ characters (names may have 253) was a 500 on
PostgreSQL: its default name ``agent:HOST:xxxxxx`` did not fit the 128-character column."""

from __future__ import annotations

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store


def test_agent_token_for_a_253_character_host(api: TestClient, store: Store) -> None:
    host = "h" * 253
    r = api.post("/v1/tokens", json={"role": "agent", "host": host})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["host"] == host
    found = store.lookup_token(made["token"])
    assert found is not None and found.role is Role.AGENT and found.host == host
    assert len(found.name) <= 128 and found.name.startswith("agent:hhh")
    other = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p" * 64), actor="test")
    assert other.project == "p" * 64
