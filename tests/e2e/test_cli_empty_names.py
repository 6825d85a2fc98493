"""An empty name on the command line (``--consumer ''``, ``device show ''``, a shell variable that
was not set) is a usage error (exit 2) that says so; it was sent as ``DELETE /v1/allocations/``,
and the server's redirect printed ``error: HTTP 307`` with exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow

COMMANDS = [
    ["release", "--consumer", ""],
    ["device", "show", ""],
    ["host", "show", ""],
    ["type", "show", ""],
    ["type", "delete", ""],
    ["gang", "release", ""],
]


def test_an_empty_name_is_a_usage_error_that_names_it(tmp_path: Path) -> None:
    with running_server(f"sqlite:///{tmp_path / 'd.db'}", auth=False, log=tmp_path / "server.log") as url:
        bad = []
        for args in COMMANDS:
            result = cli(*args, env={"DEVASSIGN_URL": url}, check=False)
            assert "Traceback" not in result.stderr
            if result.returncode != 2 or "is empty" not in result.stderr:
                bad.append((" ".join(args), result.returncode, result.stderr.strip()[-120:]))
        assert bad == [], bad
