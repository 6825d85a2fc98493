"""The kernel scenarios of tests/vm/scenarios.py, on the simulation and on a real kernel.

``simulation``: each scenario (after the ones it builds on) against ``SimulatedSysfs`` on a
SYNTHETIC tree shaped like the guest's devices. ``guest``: the same scenarios as the QEMU guest
ran them on Debian's kernel (``python -m tests.vm --short``, once for this module); only with
``DEVASSIGN_VM=1`` (or ``full``), and then a missing QEMU fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.vm import runner, scenarios

WANTED = os.environ.get("DEVASSIGN_VM", "")


def _failures(steps: list[scenarios.Step]) -> list[str]:
    return [f"{s.name}: got {s.got!r}, expected {s.want!r}" for s in steps if not s.ok]


@pytest.fixture(scope="module")
def guest_run() -> runner.Outcome:
    if WANTED not in ("1", "full"):
        pytest.skip(
            "the guest side boots a real kernel under QEMU (minutes): set DEVASSIGN_VM=1 "
            "(needs qemu-system-x86 and busybox-static)"
        )
    try:
        runner.preflight()
    except runner.VmError as exc:
        pytest.fail(f"DEVASSIGN_VM={WANTED} is set but the guest cannot run: {exc}", pytrace=False)
    outcome = runner.run("full" if WANTED == "full" else "short", echo=False)
    if not outcome.checks:
        pytest.fail(f"the guest ran no checks: {outcome.error}", pytrace=False)
    return outcome


@pytest.mark.parametrize("name", list(scenarios.ALL))
@pytest.mark.parametrize("side", ["simulation", "guest"])
def test_scenario(side: str, name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if side == "simulation":
        sim = scenarios.simulation(tmp_path)
        steps = scenarios.run_all(sim.kernel, sim.where, until=name)[name]
        assert steps, f"scenario {name} has no steps"
        assert not _failures(steps), "\n".join(_failures(steps))
        return
    outcome: runner.Outcome = request.getfixturevalue("guest_run")
    section = f"scenario: {name}"
    mine: list[dict[str, Any]] = [c for c in outcome.checks if c["section"] == section]
    assert mine, f"the guest ran no section {section!r}: {outcome.error or 'see its summary'}"
    failed = [f"{c['name']} -- {c['detail']}" for c in mine if c["status"] == "fail"]
    assert not failed, "\n".join(failed)
