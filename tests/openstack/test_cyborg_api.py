"""devassign's Cyborg API under Nova's own Cyborg client, conductor, compute utilities and
libvirt driver code, in the Nova venv (tests/openstack/nova_venv.sh builds it; skipped
without it, failed under DEVASSIGN_REQUIRE_NOVA=1).

The checks are in in_nova/cyborg_checks.py, which needs Nova importable; here they run as
one subprocess, so the main test run neither imports Nova nor needs it installed.
"""

from __future__ import annotations

import os
import subprocess

from tests.openstack.conftest import HERE, ROOT, need_nova_venv


def test_cyborg_api_inside_nova() -> None:
    python = need_nova_venv()
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:warnings",  # Nova's imports warn (eventlet); the main run's -W error is not for them
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            str(HERE / "in_nova" / "cyborg_checks.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
