"""Start real ``devassign server`` processes on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

DEVASSIGN = [sys.executable, "-m", "devassign.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the ``devassign`` program as a user would, returning its output."""
    result = subprocess.run(
        [*DEVASSIGN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"devassign {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def wait_healthy(
    proc: subprocess.Popen[bytes], url: str, *, log: Path | None = None, within: float = 60
) -> None:
    """Wait until the server process ``proc`` answers ``GET {url}/healthz``; fails if it exits
    first (with its ``log``) or takes longer than ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited with {proc.returncode}" + (f"; log: {log.read_text()}" if log else "")
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"server did not start within {within:.0f} s")


@contextlib.contextmanager
def running_server(
    db_url: str, *, auth: bool = True, log: Path | None = None, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """A ``devassign server`` process on a free port; yields its URL and stops it afterwards."""
    port = free_port()
    args = [*DEVASSIGN, "server", "--db", db_url, "--port", str(port), *extra]
    if not auth:
        args.append("--no-auth")
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log=log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]
