"""JSON the user hands the CLI (``--request FILE``, ``--config``, ``--params``) with NaN,
Infinity or 1e400: Python's decoder takes them and the body could not be sent (a traceback);
the CLI refuses them with one line, before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.servers import cli

ENV = {"DEVASSIGN_URL": "http://127.0.0.1:9", "DEVASSIGN_RETRY_SECONDS": "0"}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e400"])
def test_a_request_file_with_a_non_finite_number_is_one_error_line(tmp_path: Path, literal: str) -> None:
    path = tmp_path / "req.json"
    path.write_text('{"requests": [{"name": "a", "type": "NIC_VF_1G", "count": ' + literal + "}]}")
    for args in (
        ["claim", "--consumer", "vm-1", "--request", str(path)],
        ["explain", "--request", str(path)],
        ["capacity", "--request", str(path)],
    ):
        result = cli(*args, env=ENV, check=False)
        assert "Traceback" not in result.stderr, (args, result.stderr[-300:])
        assert result.returncode in (1, 2), (args, result.returncode, result.stderr[-300:])
        assert result.stderr.strip().startswith("error: "), result.stderr[-300:]


@pytest.mark.parametrize(
    "args",
    [
        ["type", "create", "T1", "--config", '{"x": NaN}'],
        ["type", "update", "T1", "--config", '{"x": Infinity}'],
        ["type", "create", "T1", "--params", '{"x": {"type": "integer", "max": 1e400}}'],
    ],
    ids=["create-config", "update-config", "create-params"],
)
def test_a_type_option_with_a_non_finite_number_is_one_error_line(args: list[str]) -> None:
    result = cli(*args, env=ENV, check=False)
    assert "Traceback" not in result.stderr, result.stderr[-300:]
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-300:])
    assert result.stderr.strip().startswith("error: "), result.stderr[-300:]


def test_a_request_file_that_repeats_a_key_is_one_error_line(tmp_path: Path) -> None:
    """``{"count": 1, "count": 8}`` would have been sent as 8 (the last wins): the file says
    two things, so the CLI asks which, as the server would."""
    path = tmp_path / "req.json"
    path.write_text('{"requests": [{"name": "a", "type": "NIC_VF_1G", "count": 1, "count": 8}]}')
    result = cli("claim", "--consumer", "vm-1", "--request", str(path), env=ENV, check=False)
    assert "Traceback" not in result.stderr, result.stderr[-300:]
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-300:])
    assert result.stderr.strip().startswith("error: "), result.stderr[-300:]
    assert "'count' appears twice" in result.stderr, result.stderr[-300:]
