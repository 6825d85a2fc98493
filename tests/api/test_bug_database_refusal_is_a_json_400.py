"""Backstop: a value the database refuses that validation let through (``DataError``: out of
range, too long, NUL) is a 400 ``invalid_request`` with the usual error body, not a 500.

Every such case found by fuzzing is validated before the store (see the other
``test_bug_*`` files); this pins what happens to the next one.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign.server import access
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Store


def test_a_database_refusal_is_a_400_with_the_error_body(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings(auth=False, sweep_interval=0), store=store)
    # A route added after start-up must be in the access table too, or it answers 403.
    monkeypatch.setitem(access.POLICY, ("GET", "/v1/test-refusal"), access.Need.ADMIN)

    @app.get("/v1/test-refusal")
    def refusal() -> None:
        with store.db.read() as conn:
            if store.db.is_sqlite:  # SQLite stores nearly anything: raise what PostgreSQL would
                orig = ValueError("value too long for type character varying(64)")
                raise sa.exc.DataError("SELECT", {}, orig)
            conn.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": 2**40}).scalar()

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/test-refusal")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert "cannot store a value" in err["message"]
