"""``devassign token create --db``: what it tells about the database it wrote to, and its
usage errors as one plain line."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.cli.main import run


def test_a_new_sqlite_file_is_said_to_be_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped path makes a database no server uses: the user is told it was not there."""
    url = f"sqlite:///{tmp_path / 'typo' / 'db.sqlite'}"
    assert run(["token", "create", "--role", "member", "--project", "p1", "--db", url]) == 0
    first = capsys.readouterr()
    assert first.out.startswith("da_") and "a new one was created for this token" in first.err, first.err
    assert run(["token", "create", "--role", "member", "--project", "p1", "--db", url]) == 0
    assert "a new one was created" not in capsys.readouterr().err


def test_a_rule_between_options_reads_without_a_field_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["token", "create", "--role", "member", "--db", "sqlite://"]) == 2
    err = capsys.readouterr().err
    assert "error: a member token belongs to a project: give project" in err and "value:" not in err, err


def test_a_database_at_an_older_schema_is_not_migrated_by_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rollout: the new CLI on an operator's machine, servers of the release before still on
    the database. Making a token migrated it, and the old servers then refused to start."""
    from alembic import command

    from devassign.store import Database

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Database(url)
    db.upgrade()
    with db.engine.connect() as conn:
        command.downgrade(db._alembic_config(conn), "-1")
        conn.commit()
    before = db.current_revision()
    assert run(["token", "create", "--role", "admin", "--db", url]) == 1
    err = capsys.readouterr().err
    assert "devassign db upgrade" in err, err
    assert db.current_revision() == before
    db.dispose()
