"""The simulation held against the real kernel: the same writes on both, the answers compared.

The kernel's side is this guest's /sys (read, or written where the kernel refuses, so nothing
changes); the simulation's side is a SYNTHETIC tree built like the guest's devices
(``devassign.testing.sysfs``) behind ``SimulatedSysfs``, which every handler test uses. A
difference that is listed in :data:`KNOWN` is reported as ``known``; any other one fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.vm import machine
from tests.vm.guest import SYS, Guest
from tests.vm.scenarios import VFIO, Kernel, RealKernel, SimKernel, Where, dev, simulation, vf_list

# Differences between the kernel and the simulation (or devassign), each with why it stays.
KNOWN: dict[str, str] = {}


def run(g: Guest) -> None:
    """What the shared scenarios (tests/vm/scenarios.py) do not already hold both ways: the
    kernel's answers to refused writes, against the simulation's, on the same devices."""
    c, f = g.checks, g.found
    if f is None or not f.vfs:
        return
    with c.part("simulation against the kernel"), tempfile.TemporaryDirectory() as tmp:
        sim = simulation(Path(tmp))
        sim.kernel.write(f"bus/pci/devices/{sim.where.pf}/sriov_drivers_autoprobe", "0")
        sim.kernel.write(f"bus/pci/devices/{sim.where.pf}/sriov_numvfs", str(machine.NVME_VFS))
        for name, kernel, simulated, known in cases(g, sim.kernel, sim.where):
            detail = f"kernel {kernel!r}, simulation {simulated!r}"
            if known is None:
                c.check(name, kernel == simulated, detail)
            else:
                c.known(name, kernel == simulated, KNOWN[known], detail)


def cases(g: Guest, sim: SimKernel, w: Where) -> list[tuple[str, object, object, str | None]]:
    """(what, the kernel's answer, the simulation's, the KNOWN key if they may differ)."""
    f = g.found
    assert f is not None
    real = RealKernel(SYS, "/dev")
    sim_vfs = vf_list(sim, w.pf)
    pairs: list[tuple[Kernel, str, str, str]] = [
        (real, f.nvme_pf, f.vfs[0], f.pair[0]),
        (sim, w.pf, sim_vfs[0], w.pair[0]),
    ]

    def both(what: Callable[[Kernel, str, str, str], object]) -> tuple[object, object]:
        (k1, pf1, vf1, nic1), (k2, pf2, vf2, nic2) = pairs
        return what(k1, pf1, vf1, nic1), what(k2, pf2, vf2, nic2)

    checks: list[tuple[str, Callable[[Kernel, str, str, str], object]]] = [
        ("sriov_vf_device text", lambda k, pf, vf, nic: k.read(f"{dev(pf)}/sriov_vf_device")),
        ("sriov_offset exists", lambda k, pf, vf, nic: k.exists(f"{dev(pf)}/sriov_offset")),
        (
            "bind a host driver to a function it already has",
            lambda k, pf, vf, nic: k.write("bus/pci/drivers/e1000e/bind", nic),
        ),
        (
            "unbind from a driver it is not on",
            lambda k, pf, vf, nic: k.write(f"bus/pci/drivers/{VFIO}/unbind", nic),
        ),
        (
            "drivers_probe an address that does not exist",
            lambda k, pf, vf, nic: k.write("bus/pci/drivers_probe", "0000:7f:1f.7"),
        ),
        (
            "a VF's driver_override, reset_method",
            lambda k, pf, vf, nic: (k.read(f"{dev(vf)}/driver_override"), k.read(f"{dev(vf)}/reset_method")),
        ),
        ("a VF has no remove", lambda k, pf, vf, nic: k.write(f"{dev(vf)}/remove", "0")),
    ]
    out: list[tuple[str, object, object, str | None]] = []
    for name, what in checks:
        kernel, simulated = both(what)
        out.append((name, kernel, simulated, None))
    return out
