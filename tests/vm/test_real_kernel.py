"""The real-kernel checks (``python -m tests.vm --short``) as a pytest test, on demand.

Boots a QEMU guest (TCG), so it takes minutes: it runs only with ``DEVASSIGN_VM=1`` and needs
``apt-get install -y qemu-system-x86 busybox-static`` and apt to fetch Debian's kernel
(docs/agent.md, "Checked on a real kernel"). ``DEVASSIGN_VM=full`` runs the full set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm.runner import REPO, TOTAL, VmError, preflight

pytestmark = [pytest.mark.slow, pytest.mark.vm]

WANTED = os.environ.get("DEVASSIGN_VM", "")


@pytest.mark.skipif(
    WANTED not in ("1", "full"),
    reason="boots a real kernel under QEMU (minutes): set DEVASSIGN_VM=1 to run it "
    "(or run `python -m tests.vm --short` directly); needs qemu-system-x86 and busybox-static",
)
def test_discovery_and_handlers_on_a_real_kernel(tmp_path: Path) -> None:
    try:
        preflight()  # asked for and impossible is a failure, never a silent skip
    except VmError as exc:
        pytest.fail(f"DEVASSIGN_VM={WANTED} is set but the guest cannot run: {exc}", pytrace=False)
    mode = "full" if WANTED == "full" else "short"
    summary = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "tests.vm", "--quiet", "--json", str(summary)]
    done = subprocess.run(
        [*argv, *(["--short"] if mode == "short" else [])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TOTAL[mode] + 600,
        check=False,
    )
    print(done.stdout[-20000:])
    assert summary.is_file(), f"no summary written:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    result = json.loads(summary.read_text())
    failed = [
        f"{c['section']}: {c['name']} -- {c['detail']}" for c in result["checks"] if c["status"] == "fail"
    ]
    assert result["ok"] and done.returncode == 0, "\n".join([result.get("error") or "", *failed])
