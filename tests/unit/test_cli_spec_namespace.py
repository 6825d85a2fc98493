"""Each ``--spec`` asks for devices: one in another namespace (``resource_hw:``, ``hw:``) is a
typo that would ask for nothing, and is refused before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devassign.cli.client import CliError, ExitCode
from devassign.cli.main import app as cli_app


@pytest.mark.parametrize("command", [["claim", "--consumer", "vm-1"], ["explain"], ["capacity"]])
def test_a_spec_outside_the_device_namespace_is_refused(command: list[str]) -> None:
    argv = [*command, "--spec", "hardware_resource:GPU=1", "--spec", "resource_hw:NIC_VF_1G=1"]
    result = CliRunner().invoke(cli_app, argv, env={"DEVASSIGN_URL": "http://127.0.0.1:9"})
    assert isinstance(result.exception, CliError), (result.output, result.exception)
    assert result.exception.exit_status == ExitCode.USAGE
    assert "resource_hw:NIC_VF_1G=1" in result.exception.message
    assert "only hardware_resource:TYPE=N" in result.exception.message


def test_a_spec_for_a_type_the_request_file_asks_for_is_refused(tmp_path: Path) -> None:
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"requests": [{"name": "x", "type": "NIC_VF_1G"}]}))
    argv = ["explain", "--spec", "hardware_resource:NIC_VF_1G=1", "--request", str(request)]
    result = CliRunner().invoke(cli_app, argv, env={"DEVASSIGN_URL": "http://127.0.0.1:9"})
    assert isinstance(result.exception, CliError), (result.output, result.exception)
    assert result.exception.exit_status == ExitCode.USAGE
    assert "request 'x'" in result.exception.message and "total in one place" in result.exception.message
