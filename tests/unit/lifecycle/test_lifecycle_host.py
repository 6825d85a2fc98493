"""The host boundary: pyroute2 translation (with a fake IPRoute), fakes, device building."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devassign.domain import DeviceKind, DeviceState
from devassign.hostio import HostIOError, Sysfs
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.common import write
from devassign.lifecycle.host import (
    ConfinedSysfs,
    HostOps,
    PyrouteNetlink,
    RecordingNetlink,
    RecordingRunner,
    VfConfig,
)
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.schemas import Device


class Msg:
    """Enough of a pyroute2 netlink message: nested ``get_attr`` / ``get_attrs``."""

    def __init__(self, attrs: dict[str, Any], many: dict[str, list[Msg]] | None = None) -> None:
        self.attrs, self.many = attrs, many or {}

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)

    def get_attrs(self, name: str) -> list[Msg]:
        return self.many.get(name, [])


class FakeIPRoute:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname == "ens1f0" else []

    def link(self, command: str, **kw: Any) -> list[Msg]:
        self.calls.append((command, kw))
        infos = [
            Msg(
                {
                    "IFLA_VF_MAC": {"vf": vf, "mac": f"52:54:00:00:00:0{vf}"},
                    "IFLA_VF_VLAN": {"vf": vf, "vlan": 40 + vf, "qos": 0},
                    "IFLA_VF_SPOOFCHK": {"vf": vf, "spoofchk": 1},
                    "IFLA_VF_TRUST": {"vf": vf, "trust": 0},
                    "IFLA_VF_LINK_STATE": {"vf": vf, "link_state": 2},
                }
            )
            for vf in range(2)
        ]
        return [Msg({"IFLA_VFINFO_LIST": Msg({}, {"IFLA_VF_INFO": infos})})]


def netlink_with_fake() -> tuple[PyrouteNetlink, FakeIPRoute]:
    nl, ipr = PyrouteNetlink(), FakeIPRoute()
    nl._ipr = ipr
    return nl, ipr


def test_set_vf_speaks_pyroute2s_vf_spec() -> None:
    nl, ipr = netlink_with_fake()
    nl.set_vf("ens1f0", 3, mac="52:54:00:00:00:01", vlan=42, spoofchk=True, trust=False)
    nl.set_vf("ens1f0", 3, link_state="disable")
    assert ipr.calls == [
        (
            "set",
            {
                "index": 7,
                "vf": {"vf": 3, "mac": "52:54:00:00:00:01", "vlan": 42, "spoofchk": 1, "trust": 0},
            },
        ),
        ("set", {"index": 7, "vf": {"vf": 3, "link_state": 2}}),
    ]


def test_get_vf_reads_the_vf_info_list() -> None:
    nl, _ = netlink_with_fake()
    assert nl.get_vf("ens1f0", 1) == VfConfig(
        mac="52:54:00:00:00:01", vlan=41, spoofchk=True, trust=False, link_state="disable"
    )
    with pytest.raises(HostIOError, match="has no VF 5"):
        nl.get_vf("ens1f0", 5)


def test_an_unknown_pf_is_a_host_error() -> None:
    nl, _ = netlink_with_fake()
    with pytest.raises(HostIOError, match="no network interface 'eth9'"):
        nl.set_vf("eth9", 0, vlan=1)


def test_recording_netlink_knows_its_pfs() -> None:
    nl = RecordingNetlink({"ens1f0": 2})
    nl.set_vf("ens1f0", 1, vlan=5)
    assert nl.get_vf("ens1f0", 1) == VfConfig(vlan=5)
    with pytest.raises(HostIOError):
        nl.set_vf("ens1f0", 2, vlan=5)


def test_a_device_is_built_from_the_wire_model() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    wire = Device(
        id="d1",
        host="compute-1",
        address="0000:5e:10.1",
        kind=DeviceKind.SRIOV_VF,
        type="NIC_VF_1G",
        state=DeviceState.RESERVED,
        healthy=True,
        vendor_id="8086",
        product_id="154c",
        numa_node=0,
        iommu_group=41,
        driver="iavf",
        parent="0000:5e:00.0",
        attributes={"physical_network": "physnet1", "vlan": 9},
        consumer="c1",
        state_changed_at=now,
        created_at=now,
    )
    dev = LifecycleDevice.from_schema(wire, params={"vlan": 42}, facts={"vf_index": 1})
    assert (dev.address, dev.kind, dev.driver, dev.parent, dev.consumer) == (
        "0000:5e:10.1",
        DeviceKind.SRIOV_VF,
        "iavf",
        "0000:5e:00.0",
        "c1",
    )
    assert dev.requested("vlan") == 42 and dev.known("vlan") == 9, "params and what the host said apart"
    assert dev.known("vf_index") == 1 and dev.known("physical_network") == "physnet1"
    assert dev.requested("mac", "none") == "none"


def test_params_never_supply_a_fact() -> None:
    dev = LifecycleDevice(
        address="0000:3b:00.0",
        kind=DeviceKind.PCI,
        type="GPU",
        params={"original_driver": "../../../../tmp/x", "mdev_uuid": "victim"},
    )
    assert dev.known("original_driver") is None and dev.known("mdev_uuid") is None
    with pytest.raises(HandlerError, match="never a request parameter"):
        dev.requested("original_driver")


def test_simulated_ops_are_built_on_a_tree(tmp_path: Any) -> None:
    ops = HostOps.simulated(tmp_path, {"0000:3b:00.0": "nvidia"})
    assert isinstance(ops.sysfs, SimulatedSysfs)
    assert ops.sysfs.native_drivers == {"0000:3b:00.0": "nvidia"}


def _escape_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A root whose ``bus/pci/drivers/evil`` links outside it, and the outside folder."""
    root, outside = tmp_path / "sys", tmp_path / "outside"
    (root / "bus/pci/drivers").mkdir(parents=True)
    outside.mkdir()
    (root / "bus/pci/drivers/evil").symlink_to(outside)
    return root, outside


@pytest.mark.parametrize("rel", ["bus/pci/drivers/../../../../outside/bind", "bus/pci/drivers/evil/bind"])
@pytest.mark.parametrize("kind", ["plain", "simulated"])
def test_no_write_lands_outside_the_sysfs_root(tmp_path: Path, rel: str, kind: str) -> None:
    root, outside = _escape_tree(tmp_path)
    ops = (
        HostOps(Sysfs(root), RecordingNetlink(), RecordingRunner())
        if kind == "plain"
        else HostOps.simulated(root)
    )
    assert isinstance(ops.sysfs, ConfinedSysfs), "HostOps confines a plain Sysfs"
    with pytest.raises(HostIOError, match="outside the sysfs root"):
        ops.sysfs.write(rel, "0000:3b:00.0")
    with pytest.raises(HandlerError, match="outside the sysfs root"):
        write(ops.sysfs, rel, "0000:3b:00.0", "bind")
    assert list(outside.iterdir()) == []
    if isinstance(ops.sysfs, SimulatedSysfs):
        assert ops.sysfs.writes == [], "refused before the write is even logged"


def test_the_write_helper_confines_any_sysfs(tmp_path: Path) -> None:
    """A Sysfs subclass HostOps does not replace is still checked by the handlers' helper."""

    class Custom(Sysfs):
        pass

    root, outside = _escape_tree(tmp_path)
    ops = HostOps(Custom(root), RecordingNetlink(), RecordingRunner())
    assert type(ops.sysfs) is Custom
    with pytest.raises(HandlerError, match="outside the sysfs root"):
        write(ops.sysfs, "bus/pci/drivers/evil/bind", "x", "bind")
    assert list(outside.iterdir()) == []
    write(ops.sysfs, "bus/pci/drivers/new_id", "8086 154c", "add an id")
    assert (root / "bus/pci/drivers/new_id").read_text() == "8086 154c"
