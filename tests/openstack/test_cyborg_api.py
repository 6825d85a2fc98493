"""devassign's Cyborg API under Nova's own Cyborg client, conductor, compute utilities and
libvirt driver code, in the Nova venv (tests/openstack/nova_venv.sh builds it; skipped
without it, failed under DEVASSIGN_REQUIRE_NOVA=1).

The checks are in in_nova/cyborg_checks.py, which needs Nova importable; here they run as
one subprocess, so the main test run neither imports Nova nor needs it installed.
"""

from __future__ import annotations

from tests.openstack.conftest import run_in_nova


def test_cyborg_api_inside_nova() -> None:
    run_in_nova("cyborg_checks.py")
