"""The claim's statements run on psycopg's cursor: their failures must look like SQLAlchemy's."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from devassign.store.db import Database, busy_error, driver_rows


def test_rows_and_errors_are_those_of_sqlalchemy(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with db.write() as conn:
            rows = driver_rows(conn, "SELECT %(a)s::int + 1 AS b, %(s)s::text AS s", {"a": 1, "s": "x"})
            assert [(r.b, r.s) for r in rows] == [(2, "x")]
        with pytest.raises(sa.exc.ProgrammingError) as bad, db.write() as conn:
            driver_rows(conn, "SELECT nope FROM hosts", {})
        assert isinstance(bad.value.orig, psycopg.errors.UndefinedColumn)
        assert not bad.value.connection_invalidated and busy_error(bad.value) is None
        # A connection the database dropped is invalidated, as SQLAlchemy does for its own
        # statements: a retry gets a fresh one, and the error is a 503, not a 500.
        with db.engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with db.engine.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            with pytest.raises(sa.exc.DBAPIError) as lost:
                driver_rows(conn, "SELECT 1 AS one", {})
            assert conn.invalidated
        assert lost.value.connection_invalidated
        assert busy_error(lost.value) is not None
        assert db.retrying(lambda c: driver_rows(c, "SELECT 1 AS one", {})[0].one) == 1
    finally:
        db.dispose()
