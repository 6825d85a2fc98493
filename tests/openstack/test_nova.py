"""devassign inside Nova: the scheduler filter and the extra-spec validators, run in the Nova
venv (tests/openstack/nova_venv.sh builds it; skipped without it, failed under
DEVASSIGN_REQUIRE_NOVA=1).

The checks themselves are in in_nova/filter_checks.py (and, for ``agent import-nova`` against
Nova's own ``device_spec`` matching, in_nova/devspec_checks.py), which need Nova importable; here
each runs as one subprocess, so the main test run neither imports Nova nor needs it installed.
"""

from __future__ import annotations

from tests.openstack.conftest import run_in_nova


def test_filter_and_validators_inside_nova() -> None:
    run_in_nova("filter_checks.py")


def test_import_nova_types_what_nova_whitelists() -> None:
    run_in_nova("devspec_checks.py")
