"""``devassign demo`` runs end to end: the README's first command must work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.servers import cli, free_port

pytestmark = pytest.mark.slow  # runs the demo: a server and agents as processes


def test_demo_runs_and_shows_usage(tmp_path: Path) -> None:
    result = cli("demo", "--hosts", "2", "--port", str(free_port()), "--data-dir", str(tmp_path / "demo"))
    out = result.stdout
    assert result.returncode == 0, result.stderr
    for expected in (
        "resource types",
        "NIC_VF_1G",
        "VGPU_T4_4Q",
        "-> assigned",
        "-> available",
        "devassign demo --keep-running",
    ):
        assert expected in out, expected
    # Its server has stopped: no dashboard address to visit. Its folder is marked as the demo's.
    assert "dashboard:" not in out
    assert "with the dashboard at http://127.0.0.1:" in out  # where --keep-running serves it
    assert (tmp_path / "demo" / ".devassign-demo").is_file()
    # The request that cannot be placed says why.
    assert "refused" in out and "too few free GPU_A100" in out
    assert "<interface" in out and "52:54:00:00:00:01" in out
