"""The sriov_vf handler against a SYNTHETIC PF with four VFs and a recording netlink."""

from __future__ import annotations

from typing import Any

import pytest

from devassign.domain import DeviceKind
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.sriov import SriovVfHandler, locate_vf
from devassign.lifecycle.host import ZERO_MAC, VfConfig
from tests.unit.lifecycle.support import PF, Machine, device

MAC = "52:54:00:6d:90:02"


def nic(machine: Machine) -> list[str]:
    vfs = machine.h.sriov_pf(
        PF, "8086", "1572", vfs=4, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=40
    )
    for vf in vfs:
        machine.mark(vf, "iavf")
    return vfs


def vf_device(address: str, **kw: Any) -> LifecycleDevice:
    return device(address, DeviceKind.SRIOV_VF, driver="iavf", parent=PF, **kw)


def test_locate_vf_reads_physfn_and_virtfn_links(machine: Machine) -> None:
    vfs = nic(machine)
    where = locate_vf(machine.sysfs, vfs[2])
    assert (where.pf_address, where.pf_ifname, where.vf_index) == (PF, "ens1f0", 2)


def test_setup_configures_the_vf_on_its_pf_and_binds_vfio(machine: Machine) -> None:
    vfs = nic(machine)
    dev = vf_device(vfs[2], params={"mac": MAC, "vlan": 42})
    facts = SriovVfHandler().setup(dev, {}, machine.ops)
    assert machine.netlink.calls == [
        (
            "set_vf",
            "ens1f0",
            2,
            {"mac": MAC, "vlan": 42, "spoofchk": True, "trust": False, "link_state": "auto"},
        )
    ]
    assert machine.driver(vfs[2]) == "vfio-pci"
    assert facts == {"original_driver": "iavf", "pf_ifname": "ens1f0", "vf_index": 2}
    assert SriovVfHandler().health(dev, {}, machine.ops).ok


def test_setup_twice_leaves_the_same_vf_config(machine: Machine) -> None:
    vfs = nic(machine)
    dev = vf_device(vfs[0], params={"mac": MAC, "vlan": 7})
    SriovVfHandler().setup(dev, {}, machine.ops)
    first = machine.netlink.vfs[("ens1f0", 0)]
    SriovVfHandler().setup(dev, {}, machine.ops)
    assert machine.netlink.vfs[("ens1f0", 0)] == first == VfConfig(mac=MAC, vlan=7)


def test_the_type_may_allow_spoofing_trust_and_a_link_state(machine: Machine) -> None:
    vfs = nic(machine)
    config = {"spoofchk": False, "trust": True, "link_state": "enable"}
    SriovVfHandler().setup(vf_device(vfs[1]), config, machine.ops)
    assert machine.netlink.vfs[("ens1f0", 1)] == VfConfig(spoofchk=False, trust=True, link_state="enable")


@pytest.mark.parametrize(
    ("config", "message"),
    [({"spoofchk": "no"}, "spoofchk"), ({"trust": 1}, "trust"), ({"link_state": "up"}, "link")],
)
def test_a_bad_type_config_is_refused(machine: Machine, config: dict[str, object], message: str) -> None:
    vfs = nic(machine)
    with pytest.raises(HandlerError, match=message):
        SriovVfHandler().setup(vf_device(vfs[1]), config, machine.ops)
    assert machine.netlink.calls == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mac": "01:00:5e:00:00:01"}, "unicast"),
        ({"mac": ZERO_MAC}, "unicast"),
        ({"mac": "nonsense"}, "unicast"),
        ({"vlan": 4095}, "VLAN"),
        ({"vlan": "7"}, "VLAN"),
    ],
)
def test_bad_allocation_params_are_refused(machine: Machine, params: dict[str, object], message: str) -> None:
    vfs = nic(machine)
    with pytest.raises(HandlerError, match=message):
        SriovVfHandler().setup(vf_device(vfs[1], params=params), {}, machine.ops)


def test_cleanup_clears_mac_and_vlan_and_returns_the_vf(machine: Machine) -> None:
    vfs = nic(machine)
    dev = vf_device(vfs[3], params={"mac": MAC, "vlan": 42})
    SriovVfHandler().setup(dev, {"trust": True}, machine.ops)
    SriovVfHandler().cleanup(dev, {}, machine.ops)
    assert machine.netlink.vfs[("ens1f0", 3)] == VfConfig(mac=ZERO_MAC, vlan=0, trust=False)
    assert machine.driver(vfs[3]) == "iavf"
    assert machine.writes_to(f"{vfs[3]}/reset") == ["1"]


def test_cleanup_after_a_setup_that_failed_on_netlink(machine: Machine) -> None:
    vfs = nic(machine)
    dev = vf_device(vfs[3], params={"mac": MAC})
    machine.netlink.fail_with = "RTNETLINK answers: Operation not permitted"
    with pytest.raises(HandlerError, match="not permitted"):
        SriovVfHandler().setup(dev, {}, machine.ops)
    assert machine.driver(vfs[3]) == "iavf"
    machine.netlink.fail_with = None
    SriovVfHandler().cleanup(dev, {}, machine.ops)
    assert machine.netlink.vfs[("ens1f0", 3)].mac == ZERO_MAC


def test_health_notices_a_vf_changed_behind_our_back(machine: Machine) -> None:
    vfs = nic(machine)
    dev = vf_device(vfs[0], params={"mac": MAC, "vlan": 42})
    SriovVfHandler().setup(dev, {}, machine.ops)
    machine.netlink.set_vf("ens1f0", 0, vlan=43)
    result = SriovVfHandler().health(dev, {}, machine.ops)
    assert not result.ok and "vlan=43" in (result.reason or "")


def test_a_pf_is_not_a_vf(machine: Machine) -> None:
    nic(machine)
    with pytest.raises(HandlerError, match="not an SR-IOV VF"):
        SriovVfHandler().setup(vf_device(PF), {}, machine.ops)


def test_a_pf_without_netdev_is_refused(machine: Machine) -> None:
    vfs = machine.h.sriov_pf(PF, "8086", "1572", vfs=1, vf_iommu_group_start=40)
    with pytest.raises(HandlerError, match="has no network interface"):
        SriovVfHandler().setup(vf_device(vfs[0]), {}, machine.ops)


def test_a_free_vf_of_a_pf_without_netdev_is_unhealthy_and_its_failed_setup_cleans_up(
    machine: Machine,
) -> None:
    """A PF on vfio-pci (DPDK made its VFs): every setup of a network VF fails, so the free VF
    is unhealthy (no claim lands on it), and a setup that failed leaves a cleanup that succeeds
    (nothing was set on the PF), instead of quarantining VF after VF."""
    vfs = machine.h.sriov_pf(PF, "8086", "1572", vfs=2, vf_iommu_group_start=40, driver="vfio-pci")
    dev = vf_device(vfs[0])
    health = SriovVfHandler().health(vf_device(vfs[0], consumer=None), {}, machine.ops)
    assert not health.ok and "has no network interface" in (health.reason or "")
    assert 'handler = "pci"' in (health.reason or "")
    with pytest.raises(HandlerError, match="has no network interface"):
        SriovVfHandler().setup(dev, {}, machine.ops)
    SriovVfHandler().cleanup(dev, {}, machine.ops)  # no error: nothing to undo on the PF
    assert machine.netlink.calls == []
    # A VF set up through its PF's interface, which has gone since: its settings cannot be
    # reset, so the cleanup fails (the device is quarantined, not handed out as it is).
    set_up = vf_device(vfs[1], facts={"pf_ifname": "ens1f0", "vf_index": 1})
    with pytest.raises(HandlerError, match="has no network interface"):
        SriovVfHandler().cleanup(set_up, {}, machine.ops)


def test_cleanup_while_a_guest_holds_the_vf_keeps_its_mac(machine: Machine) -> None:
    """The guest still runs with the VF: nothing is changed, not even its MAC on the PF."""
    vfs = nic(machine)
    dev = vf_device(vfs[1], params={"mac": MAC, "vlan": 42})
    SriovVfHandler().setup(dev, {}, machine.ops)
    machine.sysfs.hold_group(41, "pid 99 (qemu-system-x86)", devices=[vfs[1]])
    with pytest.raises(HandlerError, match=r"in use through VFIO .*pid 99"):
        SriovVfHandler().cleanup(dev, {}, machine.ops)
    assert machine.netlink.vfs[("ens1f0", 1)] == VfConfig(mac=MAC, vlan=42)
    assert machine.driver(vfs[1]) == "vfio-pci"


def test_transmit_rates_are_set_from_the_request_and_cleared_at_cleanup(machine: Machine) -> None:
    vfs = nic(machine)
    dev = vf_device(vfs[1], params={"mac": MAC, "min_tx_rate_mbps": 2500, "max_tx_rate_mbps": 9000})
    facts = SriovVfHandler().setup(dev, {}, machine.ops)
    have = machine.netlink.vfs[("ens1f0", 1)]
    assert (have.min_tx_rate, have.max_tx_rate) == (2500, 9000)
    held = vf_device(vfs[1], params=dev.params, facts=facts)
    assert SriovVfHandler().health(held, {}, machine.ops).ok
    machine.netlink.set_vf("ens1f0", 1, min_tx_rate=100)  # changed behind our back
    assert not SriovVfHandler().health(held, {}, machine.ops).ok
    SriovVfHandler().cleanup(held, {}, machine.ops)
    have = machine.netlink.vfs[("ens1f0", 1)]
    assert (have.min_tx_rate, have.max_tx_rate) == (0, 0)


def _qat(machine: Machine) -> list[str]:
    """An Intel QAT C62x (class 0b4000, a crypto coprocessor) with VFs: no network interface."""
    vfs = machine.h.sriov_pf(
        PF,
        "8086",
        "37c8",
        vfs=2,
        vf_device="37c9",
        cls="0b4000",
        driver="c6xx",
        vf_driver="c6xxvf",
        vf_iommu_group_start=40,
    )
    for vf in vfs:
        machine.mark(vf, "c6xxvf")
    return vfs


def test_a_vf_that_is_no_network_function_is_set_up_and_cleaned_as_a_pci_function(machine: Machine) -> None:
    """A QAT or NVMe VF has no MAC or VLAN: its setup and cleanup are the pci handler's, never
    a failure for want of a network interface on its PF (which would quarantine it)."""
    vfs = _qat(machine)
    dev = device(vfs[1], DeviceKind.SRIOV_VF, driver="c6xxvf", parent=PF)
    facts = SriovVfHandler().setup(dev, {}, machine.ops)
    assert machine.driver(vfs[1]) == "vfio-pci"
    assert facts == {"original_driver": "c6xxvf"}
    assert SriovVfHandler().health(dev, {}, machine.ops).ok
    SriovVfHandler().cleanup(dev, {}, machine.ops)
    assert machine.driver(vfs[1]) == "c6xxvf"
    assert machine.writes_to(f"{vfs[1]}/reset") == ["1"]
    assert machine.netlink.calls == []


def test_a_vf_that_is_no_network_function_refuses_network_settings(machine: Machine) -> None:
    vfs = _qat(machine)
    dev = device(vfs[0], DeviceKind.SRIOV_VF, driver="c6xxvf", parent=PF, params={"mac": MAC, "vlan": 5})
    with pytest.raises(HandlerError, match="not a network function: it has no mac, vlan to set"):
        SriovVfHandler().setup(dev, {}, machine.ops)
    assert machine.driver(vfs[0]) == "c6xxvf"
    SriovVfHandler().cleanup(dev, {}, machine.ops)  # nothing was changed: nothing fails
    assert machine.netlink.calls == []


def test_a_switchdev_pf_sets_its_vfs_through_its_uplink_not_a_representor(machine: Machine) -> None:
    """In switchdev mode the PF's ``net/`` lists its VFs' representors (``phys_port_name``
    pf0vfN) beside the uplink (p0): VF settings go through the uplink, whatever the names."""
    vfs = nic(machine)
    machine.h.netdev(PF, "p3p1")
    machine.h.write(f"{machine.h.dev(PF)}/net/p3p1/phys_port_name", "p0")
    for i in range(4):
        machine.h.netdev(PF, f"eth{4 + i}")
        machine.h.write(f"{machine.h.dev(PF)}/net/eth{4 + i}/phys_port_name", f"pf0vf{i}")
    machine.h.write(f"{machine.h.dev(PF)}/net/ens1f0/phys_port_name", "pf0vf9")  # renamed representor
    assert locate_vf(machine.sysfs, vfs[2]).pf_ifname == "p3p1"
    SriovVfHandler().setup(vf_device(vfs[2], params={"mac": MAC}), {}, machine.ops)
    assert [c[1] for c in machine.netlink.calls] == ["p3p1"]


def test_a_free_vf_a_guest_started_by_hand_holds_is_unhealthy_and_never_set_up(machine: Machine) -> None:
    """A VF on vfio-pci that a guest devassign never started has open (a host adopted with
    running VMs, a DPDK application): not free. Its free health check says so (it is not
    offered), and a setup refuses before its MAC or VLAN is touched."""
    vfs = nic(machine)
    dev = vf_device(vfs[1], params={"mac": MAC, "vlan": 42})
    SriovVfHandler().setup(vf_device(vfs[1]), {}, machine.ops)  # on vfio-pci, as an operator binds it
    machine.netlink.calls.clear()
    machine.sysfs.hold_group(41, "pid 777 (qemu-system-x86_64)", devices=[vfs[1]])
    free = SriovVfHandler().health(vf_device(vfs[1], consumer=None), {}, machine.ops)
    assert not free.ok and "pid 777" in (free.reason or "") and "did not give it" in (free.reason or "")
    with pytest.raises(HandlerError, match="open through VFIO by pid 777"):
        SriovVfHandler().setup(dev, {}, machine.ops)
    assert machine.netlink.calls == []
    machine.sysfs.release_group(41)
    assert SriovVfHandler().health(vf_device(vfs[1], consumer=None), {}, machine.ops).ok
