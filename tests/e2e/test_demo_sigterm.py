"""`devassign demo` stopped with SIGTERM (systemd, `timeout`, a container's stop) ends as
Ctrl-C does: its temporary folder (database and simulated hosts) is removed."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.servers import DEVASSIGN, free_port, wait_healthy

pytestmark = pytest.mark.slow


def test_sigterm_removes_the_demos_temporary_folder(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [*DEVASSIGN, "demo", "--keep-running", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", within=120)
        (made,) = list(tmp_path.glob("devassign-demo-*"))
        assert (made / "demo.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert not made.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
