"""``devassign devices --state`` takes a device state: another word is a usage error (exit 2)
that lists the states, before anything is sent."""

from __future__ import annotations

from typer.testing import CliRunner

from devassign.cli.client import CliError, ExitCode
from devassign.cli.main import app as cli_app


def test_an_unknown_state_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        cli_app, ["devices", "--state", "bogus"], env={"DEVASSIGN_URL": "http://127.0.0.1:9"}
    )
    assert isinstance(result.exception, CliError), (result.output, result.exception)
    assert result.exception.exit_status == ExitCode.USAGE
    assert "available" in result.exception.message and "quarantined" in result.exception.message
