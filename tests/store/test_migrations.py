"""The migrations build exactly the tables in ``store/schema.py``, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from devassign.store import Database, SchemaError
from devassign.store.schema import metadata


def test_migrations_match_the_schema(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    db.dispose()
    assert diff == []


def test_upgrade_is_idempotent_and_reports_revisions(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    before, after = db.upgrade()
    assert before == after == db.head_revision()
    db.ensure_schema(migrate=False)  # at head: no complaint
    db.dispose()


def test_refuses_an_unmigrated_database_with_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        db.ensure_schema(migrate=False)
    except SchemaError as exc:
        assert "devassign db upgrade" in str(exc)
    else:
        raise AssertionError("an empty database must be refused without --migrate")
    finally:
        db.dispose()


def test_refuses_a_database_from_a_newer_devassign(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    db.upgrade()
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
    try:
        db.ensure_schema(migrate=True)
    except SchemaError as exc:
        assert "newer version" in str(exc)
    else:
        raise AssertionError("a newer schema must be refused")
    finally:
        db.dispose()
