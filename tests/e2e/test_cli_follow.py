"""``devassign events --follow`` and ``devassign types --watch`` against real server processes.

The CLI runs as a process; its output is read line by line in a thread, and each test waits for
the line it expects with a deadline. Ctrl-C is a SIGINT to the CLI, which must end with 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import DEVASSIGN, cli, free_port, running_server

pytestmark = pytest.mark.slow  # real server and CLI processes

DEADLINE = 60.0  # seconds to wait for a line that should come at once


class Output:
    """The lines a process writes, collected by a thread; ``wait_for`` waits with a deadline."""

    def __init__(self, read: Callable[[], bytes | None]) -> None:
        self.text = ""
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=True)
        self._thread.start()

    def _run(self, read: Callable[[], bytes | None]) -> None:
        while True:
            try:
                chunk = read()
            except OSError:  # a terminal whose other end closed
                chunk = b""
            if chunk is None:  # nothing yet
                continue
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self.text += chunk.decode(errors="replace")
                self._cond.notify_all()

    def wait_for(self, what: str, check: Callable[[str], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        with self._cond:
            while not check(self.text):
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} within {DEADLINE:.0f} s; output:\n{self.text[-3000:]}"
                self._cond.wait(timeout=min(left, 0.5))


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """The CLI with its stdout (and stderr) read by an :class:`Output`; stopped afterwards."""
    proc = subprocess.Popen(
        [*DEVASSIGN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    try:
        yield proc, Output(lambda: os.read(stdout.fileno(), 65536))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)
        stdout.close()


def interrupt(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C: the exit status it ends with."""
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=DEADLINE)


def test_events_follow_prints_new_events_and_ends_on_ctrl_c(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "BEFORE", env=env)
        with running(["events", "--follow", "--limit", "5"], env) as (proc, out):
            # The last events first, then what happens from now on.
            out.wait_for("the earlier event", lambda t: "resource type BEFORE created" in t)
            cli("type", "create", "FOLLOWED", env=env)
            out.wait_for("the new event", lambda t: "resource type FOLLOWED created" in t)
            assert out.text.count("resource type BEFORE created") == 1
            assert interrupt(proc) == 0
        # JSON Lines with -f json, each an event as /v1/events has it.
        with running(["events", "--follow", "-f", "json"], env) as (proc, out):
            out.wait_for("the events as JSON", lambda t: '"FOLLOWED"' in t)
            lines = [json.loads(line) for line in out.text.splitlines() if line.startswith("{")]
            assert [e["type"] for e in lines if e["action"] == "type_created"] == ["BEFORE", "FOLLOWED"]
            assert interrupt(proc) == 0


def _server(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*DEVASSIGN, "server", "--db", db, "--port", str(port), "--no-auth"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + DEADLINE
    while True:
        assert proc.poll() is None, f"server exited: {log.read_text()}"
        assert time.monotonic() < deadline, "server did not start"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)


def test_events_follow_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    """The server stops while the CLI follows (its stream ends, so it stops promptly); the CLI
    connects again to the new server with the last id it printed: nothing twice, nothing lost."""
    db, port, log = f"sqlite:///{tmp_path / 'devassign.db'}", free_port(), tmp_path / "server.log"
    env = {"DEVASSIGN_URL": f"http://127.0.0.1:{port}"}
    server = _server(db, port, log)
    try:
        with running(["events", "--follow"], env) as (proc, out):
            cli("type", "create", "FIRST", env=env)
            out.wait_for("the first event", lambda t: "resource type FIRST created" in t)
            server.terminate()  # SIGTERM, as systemd stops it
            server.wait(timeout=DEADLINE)  # uvicorn ends by the signal it was sent, once shut down
            assert "Application shutdown complete" in log.read_text()
            out.wait_for("a note that the connection is gone", lambda t: "connecting again" in t)
            server = _server(db, port, log)
            cli("type", "create", "SECOND", env=env)
            out.wait_for("the event after the restart", lambda t: "resource type SECOND created" in t)
            assert out.text.count("resource type FIRST created") == 1
            assert interrupt(proc) == 0
    finally:
        server.terminate()
        server.wait(timeout=DEADLINE)


def test_types_watch_refreshes_the_table(db_url: str, tmp_path: Path) -> None:
    with running_server(
        db_url, auth=False, log=tmp_path / "server.log", extra=("--metrics-per-host",)
    ) as url:
        env = {"DEVASSIGN_URL": url}
        # (The server's option reaches its scrapes: per-host series are described.)
        assert "# TYPE devassign_host_devices gauge" in httpx.get(f"{url}/metrics").text
        cli("type", "create", "SEEN_FIRST", env=env)
        # Output to a pipe: the table again at each refresh.
        with running(["types", "--watch", "--interval", "0.5"], env) as (proc, out):
            out.wait_for("the table", lambda t: "SEEN_FIRST" in t)
            cli("type", "create", "ADDED_LATER", env=env)
            out.wait_for("the new type", lambda t: "ADDED_LATER" in t)
            assert interrupt(proc) == 0
        # On a terminal: Rich Live redraws the table in place.
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        env_tty = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        proc = subprocess.Popen(
            [*DEVASSIGN, "types", "--watch", "--interval", "0.5"],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env={**env_tty, "TERM": "xterm-256color", **env},
        )
        os.close(follower)

        def read() -> bytes | None:
            ready, _, _ = select.select([leader], [], [], 1.0)
            return os.read(leader, 65536) if ready else None

        try:
            out = Output(read)
            out.wait_for("the table on the terminal", lambda t: "ADDED_LATER" in t and "SEEN_FIRST" in t)
            cli("type", "create", "ON_SCREEN", env=env)
            out.wait_for("the redrawn table", lambda t: "ON_SCREEN" in t)
            assert "\x1b[" in out.text  # cursor movement: redrawn in place, not appended
            assert interrupt(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=DEADLINE)
            os.close(leader)
