"""What each built-in handler's health check says of a free or held device on a SYNTHETIC host:
a PCI function that reads 0xFF from its config space (dead until the host reboots), a VF whose
PF lost its link, an mdev slot whose parent GPU is gone or dead, a USB device unplugged."""

from __future__ import annotations

from devassign.domain import DeviceKind, mdev_address
from devassign.lifecycle.handlers.mdev import MdevHandler
from devassign.lifecycle.handlers.pci import PciHandler
from devassign.lifecycle.handlers.sriov import SriovVfHandler
from devassign.lifecycle.handlers.usb import UsbHandler
from tests.unit.lifecycle.support import GPU, PF, Machine, device
from tests.unit.lifecycle.test_handler_usb import TOKEN


def test_a_function_reading_0xff_from_its_config_space_is_dead(machine: Machine) -> None:
    machine.pci(GPU, driver="nvidia", group=12)
    dev = device(GPU, DeviceKind.PCI, consumer=None)
    assert PciHandler().health(dev, {}, machine.ops).ok
    machine.h.fall_off_bus(GPU)
    result = PciHandler().health(dev, {}, machine.ops)
    assert not result.ok and "0xFF" in (result.reason or "") and "reboot" in (result.reason or "")
    # Held or free: the same answer.
    held = device(GPU, DeviceKind.PCI)
    assert not PciHandler().health(held, {}, machine.ops).ok


def test_a_reset_that_kills_the_function_is_seen_by_the_next_check(machine: Machine) -> None:
    machine.pci(GPU, driver="nvidia", group=12)
    machine.h.dies_on_reset(GPU)
    dev = device(GPU, DeviceKind.PCI)
    facts = PciHandler().setup(dev, {}, machine.ops)
    PciHandler().cleanup(device(GPU, DeviceKind.PCI, facts=facts), {}, machine.ops)  # "succeeds"
    result = PciHandler().health(device(GPU, DeviceKind.PCI, consumer=None), {}, machine.ops)
    assert not result.ok and "0xFF" in (result.reason or "")


def test_a_function_without_a_config_file_is_not_called_dead(machine: Machine) -> None:
    machine.pci(GPU, driver="nvidia", group=12)
    (machine.h.root / machine.h.dev(GPU) / "config").unlink()
    assert PciHandler().health(device(GPU, DeviceKind.PCI, consumer=None), {}, machine.ops).ok


def _nic(machine: Machine) -> list[str]:
    vfs = machine.h.sriov_pf(
        PF, "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=40
    )
    for vf in vfs:
        machine.mark(vf, "iavf")
    return vfs


def test_a_vf_whose_pf_link_is_down_is_unhealthy_free_or_held(machine: Machine) -> None:
    vfs = _nic(machine)
    dev = device(vfs[0], DeviceKind.SRIOV_VF, consumer=None, parent=PF)
    assert SriovVfHandler().health(dev, {}, machine.ops).ok
    for state in ("down", "lowerlayerdown"):
        machine.h.netdev(PF, "ens1f0", state)
        result = SriovVfHandler().health(dev, {}, machine.ops)
        assert (result.ok, result.reason) == (False, f"the link of PF {PF} (ens1f0) is {state}")
    machine.h.netdev(PF, "ens1f0", "unknown")  # drivers that do not track it: no opinion
    assert SriovVfHandler().health(dev, {}, machine.ops).ok
    machine.h.netdev(PF, "ens1f0", "down")
    assert SriovVfHandler().health(dev, {"pf_link": "ignore"}, machine.ops).ok
    held = device(vfs[1], DeviceKind.SRIOV_VF, parent=PF)
    facts = SriovVfHandler().setup(held, {}, machine.ops)
    result = SriovVfHandler().health(
        device(vfs[1], DeviceKind.SRIOV_VF, parent=PF, facts=facts), {}, machine.ops
    )
    assert not result.ok and "is down" in (result.reason or "")


def test_a_free_vf_of_a_pf_without_netdev_is_unhealthy(machine: Machine) -> None:
    """Its setup can never set its MAC and VLAN: no claim should land on it."""
    vfs = machine.h.sriov_pf(PF, "8086", "1572", vfs=1, vf_device="154c", vf_iommu_group_start=40)
    machine.mark(vfs[0], "iavf")
    result = SriovVfHandler().health(device(vfs[0], DeviceKind.SRIOV_VF, consumer=None), {}, machine.ops)
    assert not result.ok and f"its PF {PF} has no network interface" in (result.reason or "")


def test_an_mdev_slot_whose_parent_is_gone_or_dead_is_unhealthy(machine: Machine) -> None:
    machine.h.mdev_parent(GPU, types={"nvidia-230": {"available": 2}}, iommu_group=12)
    slot = device(mdev_address(GPU, "nvidia-230", 0), DeviceKind.MDEV_TYPE, parent=GPU, consumer=None)
    assert MdevHandler().health(slot, {}, machine.ops).ok
    machine.h.fall_off_bus(GPU)
    result = MdevHandler().health(slot, {}, machine.ops)
    assert not result.ok and (result.reason or "").startswith(f"parent {GPU} reads 0xFF")
    machine.h.remove(GPU)
    result = MdevHandler().health(slot, {}, machine.ops)
    assert not result.ok and "is gone" in (result.reason or "")


def test_an_unplugged_usb_device_is_unhealthy(machine: Machine) -> None:
    machine.h.usb("1-2", "0529", "0620", serial="ABC123")
    dev = device(TOKEN, DeviceKind.USB, consumer=None)
    assert UsbHandler().health(dev, {}, machine.ops).ok
    machine.h.remove("1-2")
    result = UsbHandler().health(dev, {}, machine.ops)
    assert not result.ok and "not plugged in" in (result.reason or "")


def test_a_live_vf_whose_ids_read_0xffff_is_not_dead(machine: Machine) -> None:
    """On real hardware a VF's vendor and device id registers read 0xFFFF (the kernel shows the
    PF's ids in sysfs); only a header of all ones is a dead function."""
    vfs = _nic(machine)
    head = (machine.h.root / machine.h.dev(vfs[0]) / "config").read_bytes()
    assert head[:4] == b"\xff" * 4 and head != b"\xff" * len(head)
    dev = device(vfs[0], DeviceKind.SRIOV_VF, consumer=None, parent=PF)
    assert SriovVfHandler().health(dev, {}, machine.ops).ok
    machine.h.fall_off_bus(vfs[0])
    assert not SriovVfHandler().health(dev, {}, machine.ops).ok
