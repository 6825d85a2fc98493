"""The pci handler against SYNTHETIC sysfs trees (see support.py)."""

from __future__ import annotations

import pytest

from devassign.domain import DeviceKind
from devassign.hostio import HostIOError
from devassign.lifecycle.base import HandlerError
from devassign.lifecycle.handlers.pci import PciHandler, reset_capability, reset_refusal
from devassign.lifecycle.simulated import SimulatedSysfs
from tests.unit.lifecycle.support import GPU, GPU_AUDIO, Machine, device

BRIDGE = "0000:3a:00.0"


def gpu(machine: Machine, reset: str | None = "flr bus") -> None:
    machine.pci(GPU, driver="nvidia", group=12, reset=reset)


def test_setup_moves_the_function_to_vfio_and_remembers_its_driver(machine: Machine) -> None:
    gpu(machine)
    facts = PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    assert machine.driver(GPU) == "vfio-pci"
    assert machine.read(f"bus/pci/devices/{GPU}/driver_override") == "vfio-pci"
    assert facts == {"original_driver": "nvidia"}
    assert machine.writes_to("/unbind") == [GPU]
    assert len(machine.sysfs.writes) == SETUP_WRITES


def test_setup_twice_changes_nothing_the_second_time(machine: Machine) -> None:
    gpu(machine)
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    first = PciHandler().setup(dev, {}, machine.ops)
    writes = len(machine.sysfs.writes)
    second = PciHandler().setup(dev, {}, machine.ops)
    assert second == first
    assert len(machine.sysfs.writes) == writes
    assert machine.driver(GPU) == "vfio-pci"


def test_cleanup_resets_and_returns_the_function_to_its_driver(machine: Machine) -> None:
    gpu(machine)
    facts = PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    # Discovery now sees vfio-pci: the recorded fact is what brings it home.
    dev = device(GPU, DeviceKind.PCI, driver="vfio-pci", facts=facts)
    PciHandler().cleanup(dev, {}, machine.ops)
    assert machine.driver(GPU) == "nvidia"
    assert machine.read(f"bus/pci/devices/{GPU}/driver_override") == "(null)"
    assert machine.writes_to(f"{GPU}/reset") == ["1"]
    reset_at = machine.sysfs.writes.index((f"bus/pci/devices/{GPU}/reset", "1"))
    unbind_at = machine.sysfs.writes.index(("bus/pci/drivers/vfio-pci/unbind", GPU))
    assert reset_at < unbind_at, "reset while no host driver can touch the function"
    PciHandler().cleanup(dev, {}, machine.ops)  # a second cleanup is harmless
    assert machine.driver(GPU) == "nvidia"


def test_cleanup_without_known_driver_lets_the_kernel_pick(machine: Machine) -> None:
    gpu(machine)
    PciHandler().setup(device(GPU, DeviceKind.PCI), {}, machine.ops)
    PciHandler().cleanup(device(GPU, DeviceKind.PCI, driver="vfio-pci"), {}, machine.ops)
    assert machine.driver(GPU) == "nvidia"


class Killed(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs."""


SETUP_WRITES = 3  # driver_override, unbind, drivers_probe


class CrashAfter(SimulatedSysfs):
    """Dies (like a SIGKILLed agent) instead of its ``limit``-th write."""

    limit = 0

    def write(self, rel: str, value: str) -> None:
        if self.limit == 0:
            raise Killed(rel)
        self.limit -= 1
        super().write(rel, value)


@pytest.mark.parametrize("writes_before_crash", range(SETUP_WRITES))
def test_cleanup_after_a_setup_killed_at_any_step(machine: Machine, writes_before_crash: int) -> None:
    gpu(machine)
    crashing = CrashAfter(machine.sysfs.root, machine.sysfs.native_drivers)
    crashing.limit = writes_before_crash
    machine.sysfs = crashing
    with pytest.raises(Killed):
        PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    crashing.limit = 100
    PciHandler().cleanup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    assert machine.driver(GPU) == "nvidia"
    assert machine.read(f"bus/pci/devices/{GPU}/driver_override") == "(null)"


@pytest.mark.parametrize("writes_before_crash", range(SETUP_WRITES))
def test_setup_rerun_after_a_kill_finishes(machine: Machine, writes_before_crash: int) -> None:
    gpu(machine)
    crashing = CrashAfter(machine.sysfs.root, machine.sysfs.native_drivers)
    crashing.limit = writes_before_crash
    machine.sysfs = crashing
    with pytest.raises(Killed):
        PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    crashing.limit = 100
    facts = PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    assert machine.driver(GPU) == "vfio-pci"
    assert facts == {"original_driver": "nvidia"}


def test_a_group_peer_on_a_host_driver_refuses_the_setup(machine: Machine) -> None:
    gpu(machine)
    machine.pci(GPU_AUDIO, driver="snd_hda_intel", group=12, cls="040300")
    with pytest.raises(HandlerError, match=rf"IOMMU group 12 also holds {GPU_AUDIO}"):
        PciHandler().setup(device(GPU, DeviceKind.PCI), {}, machine.ops)


def test_a_group_peer_held_by_the_same_consumer_may_follow(machine: Machine) -> None:
    gpu(machine)
    machine.pci(GPU_AUDIO, driver="snd_hda_intel", group=12, cls="040300")
    both = frozenset({GPU, GPU_AUDIO})
    PciHandler().setup(device(GPU, DeviceKind.PCI, companions=both), {}, machine.ops)
    assert not PciHandler().health(device(GPU, DeviceKind.PCI), {}, machine.ops).ok
    PciHandler().setup(device(GPU_AUDIO, DeviceKind.PCI, companions=both), {}, machine.ops)
    assert PciHandler().health(device(GPU, DeviceKind.PCI), {}, machine.ops).ok


def test_bridges_and_driverless_peers_do_not_block_the_group(machine: Machine) -> None:
    gpu(machine)
    machine.pci(BRIDGE, driver="pcieport", group=12, cls="060400")
    machine.pci(GPU_AUDIO, driver=None, group=12, cls="040300")
    PciHandler().setup(device(GPU, DeviceKind.PCI), {}, machine.ops)
    assert machine.driver(BRIDGE) == "pcieport"


def test_no_iommu_group_is_refused(machine: Machine) -> None:
    machine.pci(GPU, driver="nvidia", group=None)
    with pytest.raises(HandlerError, match="no IOMMU group") as err:
        PciHandler().setup(device(GPU, DeviceKind.PCI), {}, machine.ops)
    # Said plainly, not as a group mate "which this consumer does not hold", and before the
    # function is taken from its driver.
    assert "does not hold" not in str(err.value)
    assert "intel_iommu=on" in str(err.value)
    assert machine.driver(GPU) == "nvidia"


def test_a_function_without_reset_is_refused_unless_allowed(machine: Machine) -> None:
    gpu(machine, reset=None)
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    assert reset_capability(dev, machine.sysfs).resettable is False
    assert "supports no reset" in (reset_refusal(dev, {}, machine.sysfs) or "")
    with pytest.raises(HandlerError, match="supports no reset"):
        PciHandler().setup(dev, {}, machine.ops)
    assert machine.driver(GPU) == "nvidia"
    config = {"reset": "none-ok"}
    assert reset_refusal(dev, config, machine.sysfs) is None
    PciHandler().setup(dev, config, machine.ops)
    PciHandler().cleanup(dev, config, machine.ops)
    assert machine.writes_to("/reset") == []
    assert machine.driver(GPU) == "nvidia"


def test_reset_capability_reads_the_methods(machine: Machine) -> None:
    gpu(machine, reset="flr bus")
    cap = reset_capability(GPU, machine.sysfs)
    assert cap.resettable and cap.methods == ("flr", "bus")


def test_bus_reset_policy_selects_the_bus_method(machine: Machine) -> None:
    gpu(machine, reset="flr bus")
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    PciHandler().setup(dev, {"reset": "bus"}, machine.ops)
    PciHandler().cleanup(dev, {"reset": "bus"}, machine.ops)
    # Bus reset for this cleanup only: the methods the function had are written back.
    assert machine.writes_to("/reset_method") == ["bus", "flr bus"]
    assert machine.writes_to("/reset") == ["1"]
    assert machine.read(f"bus/pci/devices/{GPU}/reset_method") == "flr bus"


def test_bus_reset_policy_refuses_a_function_with_flr_only(machine: Machine) -> None:
    gpu(machine, reset="flr")
    assert "cannot be bus-reset" in (reset_refusal(GPU, {"reset": "bus"}, machine.sysfs) or "")


def test_a_misspelt_reset_policy_is_an_error(machine: Machine) -> None:
    gpu(machine)
    with pytest.raises(HandlerError, match="reset='none_ok'"):
        reset_refusal(GPU, {"reset": "none_ok"}, machine.sysfs)


def test_a_failed_reset_fails_the_cleanup_and_keeps_the_function_on_vfio(
    machine: Machine,
) -> None:
    gpu(machine)
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    PciHandler().setup(dev, {}, machine.ops)
    machine.sysfs.fail(f"bus/pci/devices/{GPU}/reset")
    with pytest.raises(HandlerError, match=f"reset of {GPU} failed"):
        PciHandler().cleanup(dev, {}, machine.ops)
    assert machine.driver(GPU) == "vfio-pci"


def test_setup_needs_the_vfio_driver(machine: Machine) -> None:
    gpu(machine)
    (machine.sysfs.root / "bus/pci/drivers/vfio-pci").rmdir()
    with pytest.raises(HandlerError, match="modprobe vfio-pci"):
        PciHandler().setup(device(GPU, DeviceKind.PCI), {}, machine.ops)


def test_an_absent_device_fails_every_action(machine: Machine) -> None:
    dev = device(GPU, DeviceKind.PCI)
    with pytest.raises(HandlerError, match="not present"):
        PciHandler().setup(dev, {}, machine.ops)
    with pytest.raises(HandlerError, match="not present"):
        PciHandler().cleanup(dev, {}, machine.ops)
    assert not PciHandler().health(dev, {}, machine.ops).ok


def test_an_address_cannot_escape_the_sysfs_root(machine: Machine) -> None:
    with pytest.raises(HandlerError, match="not a PCI address"):
        PciHandler().setup(device("../../etc", DeviceKind.PCI), {}, machine.ops)


def test_health_of_an_assigned_function_wants_vfio(machine: Machine) -> None:
    gpu(machine)
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    assert not PciHandler().health(dev, {}, machine.ops).ok
    PciHandler().setup(dev, {}, machine.ops)
    assert PciHandler().health(dev, {}, machine.ops).ok
    free = device(GPU, DeviceKind.PCI, consumer=None)
    assert PciHandler().health(free, {}, machine.ops).ok


def test_simulated_unbind_of_a_wrong_driver_fails(machine: Machine) -> None:
    gpu(machine)
    with pytest.raises(HostIOError):
        machine.sysfs.write("bus/pci/drivers/vfio-pci/unbind", GPU)


def test_a_failed_bus_reset_still_restores_the_reset_methods(machine: Machine) -> None:
    gpu(machine, reset="flr bus")
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    PciHandler().setup(dev, {"reset": "bus"}, machine.ops)
    machine.sysfs.fail(f"bus/pci/devices/{GPU}/reset")
    with pytest.raises(HandlerError, match=f"reset of {GPU} failed"):
        PciHandler().cleanup(dev, {"reset": "bus"}, machine.ops)
    assert machine.read(f"bus/pci/devices/{GPU}/reset_method") == "flr bus"


def test_a_bus_reset_that_was_already_the_only_method_writes_no_method(machine: Machine) -> None:
    gpu(machine, reset="bus")
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    PciHandler().setup(dev, {"reset": "bus"}, machine.ops)
    PciHandler().cleanup(dev, {"reset": "bus"}, machine.ops)
    assert machine.writes_to("/reset_method") == []
    assert machine.writes_to("/reset") == ["1"]


def test_cleanup_while_a_guest_holds_the_group_fails_before_writing(machine: Machine) -> None:
    """The kernel would block the unbind while the guest has the device open (and the agent
    with it): the cleanup fails at once, names the holder, and leaves the function as it is."""
    gpu(machine)
    dev = device(GPU, DeviceKind.PCI, driver="nvidia")
    PciHandler().setup(dev, {}, machine.ops)
    machine.sysfs.hold_group(12, "pid 4242 (qemu-system-x86)", devices=[GPU])
    writes = len(machine.sysfs.writes)
    with pytest.raises(HandlerError, match=r"in use through VFIO \(IOMMU group 12 open by pid 4242"):
        PciHandler().cleanup(dev, {}, machine.ops)
    assert len(machine.sysfs.writes) == writes
    assert machine.driver(GPU) == "vfio-pci"
    machine.sysfs.release_group(12)
    PciHandler().cleanup(dev, {}, machine.ops)
    assert machine.driver(GPU) == "nvidia"


def test_a_gpu_running_an_mdev_is_not_assigned_whole(machine: Machine) -> None:
    """The server never hands out a GPU whole beside a held vGPU slot, and the agent keeps one
    with an mdev made by hand out of its report; this is the last line where neither knew."""
    machine.h.mdev_parent(
        GPU, types={"nvidia-230": {"name": "GRID T4-4Q", "available": 3, "instances": 1}}, iommu_group=12
    )
    machine.mark(GPU, "nvidia", "flr bus")
    with pytest.raises(
        HandlerError, match=r"runs mdev 00000000-0000-0000-0000-000000000001 \(a vGPU in use\)"
    ):
        PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    assert machine.driver(GPU) == "nvidia" and machine.writes_to("/unbind") == []
