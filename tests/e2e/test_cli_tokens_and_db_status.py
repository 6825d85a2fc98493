"""Operations commands of docs/operations.md run as an operator runs them: bad arguments are a
usage error (exit 2, one line), read-only commands change nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.e2e.servers import cli

pytestmark = pytest.mark.slow  # every test runs devassign as a process


@pytest.mark.parametrize(
    "scope",
    [
        ["--role", "admin", "--host", "compute-1"],
        ["--role", "admin", "--project", "p1"],
        ["--role", "member", "--project", "p1", "--host", "compute-1"],
        ["--role", "agent", "--host", "compute-1", "--project", "p1"],
    ],
)
def test_token_create_refuses_a_scope_its_role_ignores(tmp_path: Path, scope: list[str]) -> None:
    """``devassign token create --role admin --host compute-1`` (an operator who meant an agent
    token, or believes admins can be limited to a host) prints a secret at once: the token is a
    full, unscoped admin, yet ``token list`` shows it with host compute-1 as if it were limited
    to it. The same for a member given a host and an agent given a project. The monitor role
    already refuses a host or project (exit 2); these should too, and nothing be written."""
    db = tmp_path / "d.db"
    result = cli("token", "create", *scope, "--db", f"sqlite:///{db}", check=False)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, f"a token was made for {scope}: {result.stdout.strip()}"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM tokens").fetchone() == (0,)


def test_db_status_does_not_create_a_database_where_there_is_none(tmp_path: Path) -> None:
    """``devassign db status --db sqlite:///PATH`` with a mistyped PATH (docs: "the schema's
    revision ... and the one needed") creates the missing folders and an empty database file
    there and answers ``current: empty`` with exit 0: the operator is told their database is
    empty instead of that it does not exist, and a stray database is left behind (which a
    server started with the same typo would then use). A read-only status should say the file
    does not exist and leave the disk as it was."""
    missing = tmp_path / "no-such-folder" / "devassign.db"
    result = cli("db", "status", "--db", f"sqlite:///{missing}", check=False)
    assert "Traceback" not in result.stderr
    assert not missing.exists(), "db status created a database file"
    assert not missing.parent.exists(), "db status created the folder"
    assert result.returncode == 3, result.stderr  # docs/cli.md: a database that does not exist


def test_token_create_says_which_database_it_wrote_to(tmp_path: Path) -> None:
    """With ``DEVASSIGN_URL`` pointing at a server on PostgreSQL, ``token create`` without
    ``--db`` wrote the token to the local SQLite default and said nothing: the operator got a
    token the server refuses. stdout stays the secret alone (scripts capture it); stderr names
    the database and the way through the server."""
    result = cli(
        "token",
        "create",
        "--role",
        "admin",
        env={"DEVASSIGN_DATA_DIR": str(tmp_path), "DEVASSIGN_URL": "http://127.0.0.1:9"},
    )
    assert result.stdout.count("\n") == 1 and " " not in result.stdout.strip()
    assert str(tmp_path / "devassign.db") in result.stderr and "--via-api" in result.stderr


def test_token_create_with_an_admin_token_and_no_database_goes_through_the_server(tmp_path: Path) -> None:
    """An operator with the admin's ``DEVASSIGN_TOKEN`` and ``DEVASSIGN_URL`` set (a server
    on another machine's database) makes an agent token as the docs show it: the token must
    be the server's, not one written to a local file the server never reads."""
    from tests.e2e.servers import running_server

    server_db = f"sqlite:///{tmp_path / 'server.db'}"
    admin = cli("token", "create", "--role", "admin", "--db", server_db).stdout.strip()
    with running_server(server_db, log=tmp_path / "server.log") as url:
        env = {
            "DEVASSIGN_DATA_DIR": str(tmp_path / "operator"),
            "DEVASSIGN_URL": url,
            "DEVASSIGN_TOKEN": admin,
        }
        made = cli("token", "create", "--role", "agent", "--host", "compute-4b", env=env)
        secret = made.stdout.strip()
        assert secret and " " not in secret
        works = cli("hosts", env={**env, "DEVASSIGN_TOKEN": secret}, check=False)
        assert works.returncode == 0, works.stderr
    assert not (tmp_path / "operator" / "devassign.db").exists()


def test_db_status_refuses_a_schema_a_newer_devassign_wrote(tmp_path: Path) -> None:
    """As ``db upgrade`` and ``server`` do, with a non-zero exit: "needed: 0014" under a newer
    revision read as if a downgrade were called for."""
    path = tmp_path / "d.db"
    cli("db", "upgrade", "--db", f"sqlite:///{path}")
    ok = cli("db", "status", "--db", f"sqlite:///{path}")
    assert ok.returncode == 0 and "needed:" in ok.stdout
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    newer = cli("db", "status", "--db", f"sqlite:///{path}", check=False)
    assert newer.returncode == 1 and "newer version" in newer.stderr and "needed:" not in newer.stdout
