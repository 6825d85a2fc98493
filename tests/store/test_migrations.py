"""The migrations build exactly the tables in ``store/schema.py``, on both databases."""

from __future__ import annotations

import warnings

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from devassign.store import Database, SchemaError
from devassign.store.schema import metadata


def test_migrations_match_the_schema(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.engine.connect() as conn, warnings.catch_warnings():
        # Expression indexes are not reflected; the next test checks the one there is.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
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


def test_old_default_token_names_lose_their_secret_characters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Names made of six characters of the secret (before 0005) become ROLE:SCOPE#ID."""
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from alembic import command

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    with db.engine.connect() as conn:
        command.upgrade(db._alembic_config(conn), "0004")
        conn.commit()
        now = datetime(2026, 1, 1, tzinfo=UTC)
        rows = [
            (1, "admin:cloud:Ab3_x9", "admin", None, None),
            (2, "member:demo:Zz-9aQ", "member", None, "demo"),
            (3, "agent:compute-1:q1W2e3", "agent", "compute-1", None),
            (4, "alice", "admin", None, None),
        ]
        for token_id, name, role, host, project in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO tokens (id, name, secret_hash, role, host, project, created_at) "
                    "VALUES (:i, :n, :h, :r, :host, :p, :t)"
                ),
                {
                    "i": token_id,
                    "n": name,
                    "h": f"{token_id:064d}",
                    "r": role,
                    "host": host,
                    "p": project,
                    "t": now,
                },
            )
        conn.execute(
            sa.text("INSERT INTO events (at, actor, action, message, detail) VALUES (:t, :a, 'x', :m, '{}')"),
            {"t": now, "a": "member:demo:Zz-9aQ", "m": "member token member:demo:Zz-9aQ created"},
        )
        conn.commit()
    db.upgrade()
    with db.engine.connect() as conn:
        names = dict(conn.execute(sa.text("SELECT id, name FROM tokens")).all())
        event = conn.execute(sa.text("SELECT actor, message FROM events")).one()
    db.dispose()
    assert names == {1: "admin#1", 2: "member:demo#2", 3: "agent:compute-1#3", 4: "alice"}
    assert tuple(event) == ("member:demo#2", "member token member:demo#2 created")


def test_a_gangs_allocations_are_found_through_the_live_gang_index(db_url: str) -> None:
    """A gang's id check and its release read live allocations through the partial index that
    the migration built, not the project's whole history: the plan names the index."""
    import sqlalchemy as sa

    from devassign.store.gangs import _of_gang
    from devassign.store.schema import allocations

    db = Database(db_url)
    db.upgrade()
    with db.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(_of_gang("g1"), allocations.c.project == "p")
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
        else:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
        conn.rollback()
    db.dispose()
    assert "ix_allocations_live_gang" in plan, plan


def test_the_migrated_expression_indexes_are_the_schemas(db_url: str) -> None:
    """The schema comparison skips expression indexes: each is compared here through the
    database's own catalog, as the migration built it and as ``schema.py`` builds it (in a
    transaction that is rolled back)."""
    import sqlalchemy as sa
    from sqlalchemy.schema import CreateIndex, DropIndex

    expression_indexes = [
        i for t in metadata.sorted_tables for i in t.indexes if any(
            not isinstance(e, sa.Column) for e in i.expressions
        )
    ]  # fmt: skip
    assert expression_indexes, "the schema has an expression index (ix_allocations_live_gang)"
    db = Database(db_url)
    db.upgrade()
    with db.engine.connect() as conn:
        catalog = (
            "SELECT indexdef FROM pg_indexes WHERE indexname = :n"
            if conn.dialect.name == "postgresql"
            else "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
        )
        for index in expression_indexes:
            migrated = conn.execute(sa.text(catalog), {"n": index.name}).scalar_one()
            conn.execute(DropIndex(index))
            conn.execute(CreateIndex(index))
            declared = conn.execute(sa.text(catalog), {"n": index.name}).scalar_one()
            assert migrated == declared
        conn.rollback()
    db.dispose()


def _old_host(conn, now) -> None:  # type: ignore[no-untyped-def]
    """Host 1, ``h1``, as a database of an older revision holds it (written past the store)."""
    import sqlalchemy as sa

    conn.execute(
        sa.text(
            "INSERT INTO hosts (id, name, generation, last_report_at, last_seen_at, marked_down, "
            "created_at) VALUES (1, 'h1', 1, :t, :t, 0, :t)"
        ),
        {"t": now},
    )


def test_taint_ids_are_never_given_twice_after_the_migration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """0013: a removed taint's id is not the next taint's (SQLite reused the largest), and the
    taints that were there keep their rows."""
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from alembic import command

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.connect() as conn:
        command.upgrade(db._alembic_config(conn), "0012")
        conn.commit()
        _old_host(conn, now)
        for taint_id in (1, 2):
            conn.execute(
                sa.text(
                    "INSERT INTO taints (id, host_id, effect, reason, set_by, created_at) "
                    "VALUES (:i, 1, 'NoSchedule', 'r', 'admin#1', :t)"
                ),
                {"i": taint_id, "t": now},
            )
        conn.commit()
    db.upgrade()
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.text("SELECT id FROM taints ORDER BY id"))] == [1, 2]
        conn.execute(sa.text("DELETE FROM taints WHERE id = 2"))
        made = conn.execute(
            sa.text(
                "INSERT INTO taints (host_id, effect, reason, set_by, created_at) "
                "VALUES (1, 'None', 'r', 'admin#1', :t) RETURNING id"
            ),
            {"t": now},
        ).scalar_one()
        conn.commit()
    db.dispose()
    assert made == 3


def test_taints_set_by_an_agent_are_known_after_the_migration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """0014: a taint is an agent's where its setter's name is an agent token's and no other
    token's; an ambiguous name stays the operators'."""
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from alembic import command

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.connect() as conn:
        command.upgrade(db._alembic_config(conn), "0013")
        conn.commit()
        _old_host(conn, now)
        for i, (name, role) in enumerate(
            (("admin#1", "admin"), ("agent:h1#2", "agent"), ("boss", "admin"), ("boss", "agent")), start=1
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO tokens (id, name, secret_hash, role, created_at) VALUES (:i, :n, :h, :r, :t)"
                ),
                {"i": i, "n": name, "h": f"{i:064d}", "r": role, "t": now},
            )
        for taint_id, set_by in ((1, "admin#1"), (2, "agent:h1#2"), (3, "boss"), (4, "gone")):
            conn.execute(
                sa.text(
                    "INSERT INTO taints (id, host_id, effect, reason, set_by, created_at) "
                    "VALUES (:i, 1, 'NoSchedule', 'r', :s, :t)"
                ),
                {"i": taint_id, "s": set_by, "t": now},
            )
        conn.commit()
    db.upgrade()
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, by_agent FROM taints ORDER BY id")).all()
    db.dispose()
    assert [(i, bool(b)) for i, b in rows] == [(1, False), (2, True), (3, False), (4, False)]
