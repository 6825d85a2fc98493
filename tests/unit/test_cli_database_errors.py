"""What the CLI says when the database fails a command: a connection that cannot be made names
the URL to check; a statement the database stopped on a working connection (an upgrade
cancelled by a DBA, a server shutting down) says so, and what to do, not "check the URL"."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from devassign.cli.client import CliError, ExitCode
from devassign.cli.main import _database_errors

URL = "postgresql+psycopg://postgres:secret@127.0.0.1:5432/devassign"


class _Driver(Exception):
    def __init__(self, text: str, sqlstate: str | None) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


def _fail(text: str, sqlstate: str | None, interrupted: str | None) -> CliError:
    with pytest.raises(CliError) as caught, _database_errors(URL, interrupted):
        raise OperationalError("CREATE INDEX CONCURRENTLY ...", {}, _Driver(text, sqlstate))
    assert caught.value.exit_status == ExitCode.UNREACHABLE and "secret" not in caught.value.message
    return caught.value


def test_an_upgrade_cancelled_on_a_working_connection_says_to_run_it_again() -> None:
    said = _fail(
        "canceling statement due to user request", "57014", "run `devassign db upgrade` again"
    ).message
    assert "stopped it: canceling statement due to user request" in said and "db upgrade` again" in said
    assert "cannot connect" not in said and "check the URL" not in said


@pytest.mark.parametrize(("sqlstate", "interrupted"), [(None, "again"), ("08006", "again"), ("57014", None)])
def test_a_connection_that_fails_names_the_url_to_check(
    sqlstate: str | None, interrupted: str | None
) -> None:
    said = _fail("connection refused", sqlstate, interrupted).message
    assert said.startswith("cannot connect to the database") and "check the URL" in said
