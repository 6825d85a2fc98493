"""``devassign server --bind/--port`` this machine cannot listen on is a usage error said before
anything starts, not the HTTP server's log line after the database was opened."""

from __future__ import annotations

import socket

import pytest

from devassign.cli.client import CliError, ExitCode
from devassign.cli.main import _check_listen


@pytest.mark.parametrize("bind", ["256.1.1.1", "no-such-host.invalid"])
def test_an_address_that_is_none_is_a_usage_error(bind: str) -> None:
    with pytest.raises(CliError) as bad:
        _check_listen(bind, 0)
    assert bad.value.exit_status == ExitCode.USAGE and f"--bind {bind}" in bad.value.message


def test_a_port_in_use_is_a_usage_error_and_a_free_one_passes() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CliError, match=f"cannot listen on 127.0.0.1 port {port}: Address already in use"):
            _check_listen("127.0.0.1", port)
    _check_listen("127.0.0.1", 0)
