"""``devassign nova-listener`` (and ``placement-mirror``) given a wrong option: a message, not a
traceback.

The CLI promises one line on stderr and exit status 2 for a usage error. A mistyped
``--log-level``, or a ``--transport-url`` that is not a RabbitMQ URL (a port that is not a
number, another scheme), once ended the command with a traceback of logging, urllib or kombu
internals in systemd's journal. The broker's password is never printed, even where the URL is so
broken that urllib would quote it as the "port".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        ["--log-level", "bogus"],
        ["--transport-url", "rabbit://nova:secret@rabbit.example:notaport/"],
        ["--transport-url", "http://rabbit.example:5672/"],
        ["--transport-url", "rabbit://nova:secret/"],  # no '@': urllib reads the password as the port
        ["--transport-url", "rabbit://nova:secret@rabbit.example:99999/"],
        ["--transport-url", "rabbit://nova:secret@[::1/"],
        ["--transport-url", "rabbit.example:5672"],
        ["--host-prefix", "a\tb"],
        ["--host-suffix", "x" * 300],
    ],
    ids=["log-level", "port", "scheme", "no-at", "port-range", "ipv6", "no-scheme", "prefix", "suffix"],
)
def test_a_bad_option_is_a_message_not_a_traceback(args: list[str]) -> None:
    _usage_error(["nova-listener", *args])


def test_placement_mirror_log_level_is_checked_too() -> None:
    _usage_error(
        ["placement-mirror", "--placement-url", "http://x", "--placement-token", "t", "--log-level", "x"]
    )


def _usage_error(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from devassign.cli.main import main; main()", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[0]} kept running with an option it cannot use")
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.returncode == 2, (done.returncode, done.stderr[-1500:])
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr[-1500:]
    assert "secret" not in done.stderr  # the broker's password is never printed
