"""Matching rules, IOMMU isolation and what ends up reported, over synthetic trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devassign.agent.config import parse_config
from devassign.agent.inventory import Inventory, build_inventory
from devassign.agent.model import FLAG_IOMMU_SHARED, FLAG_VFS_ENABLED, FoundDevice
from devassign.domain import DeviceKind
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import SyntheticHost, host


def inventory(h: SyntheticHost, **raw: Any) -> Inventory:
    return build_inventory(Sysfs(h.root), parse_config(raw), pci_ids=None)


def by_address(inv: Inventory) -> dict[str, FoundDevice]:
    return {d.address: d for d in inv.devices}


def rule(type_: str, **match: str) -> dict[str, Any]:
    return {"type": type_, "match": match}


def test_first_matching_rule_wins_and_adds_attributes(tmp_path: Path) -> None:
    h = host(tmp_path)
    vfs = h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_device="154c", vf_iommu_group_start=10)
    inv = inventory(
        h,
        device=[
            {
                **rule("NIC_VF_1G", vendor_id="8086", product_id="154c"),
                "attributes": {"physical_network": "physnet1"},
            },
            rule("ANY_INTEL", vendor_id="8086"),
        ],
    )
    devs = by_address(inv)
    assert devs[vfs[0]].type == "NIC_VF_1G"
    assert devs[vfs[0]].attributes["physical_network"] == "physnet1"
    pf = devs["0000:5e:00.0"]
    assert pf.type == "ANY_INTEL" and FLAG_VFS_ENABLED in pf.flags and not pf.offered
    reported = inv.reported()
    assert sorted(r.address for r in reported) == vfs
    assert reported[0].kind is DeviceKind.SRIOV_VF and reported[0].parent == "0000:5e:00.0"


def test_match_keys(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", driver="vfio-pci", iommu_group=1)
    h.pci("0000:3c:00.0", "10de", "1eb8", cls="030200", driver="nvidia", iommu_group=2)
    h.pci("0000:af:00.0", "15b3", "101b", cls="020700", driver="mlx5_core", iommu_group=3)
    inv = inventory(
        h,
        device=[
            rule("BY_DRIVER", driver="vfio-pci"),
            rule("BY_ADDRESS", address="0000:3c:*"),
            rule("BY_CLASS", **{"class": "0207"}),
        ],
    )
    devs = by_address(inv)
    assert devs["0000:3b:00.0"].type == "BY_DRIVER"
    assert devs["0000:3c:00.0"].type == "BY_ADDRESS"
    assert devs["0000:af:00.0"].type == "BY_CLASS"
    assert len(inv.reported()) == 3


def test_unmatched_devices_are_never_reported(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", iommu_group=1)
    h.usb("1-2", "0529", "0620", serial="S1")
    inv = inventory(h, device=[rule("OTHER", vendor_id="1234")])
    assert [d.type for d in inv.devices] == [None, None]
    assert inv.reported() == []


def test_mdev_slots_need_an_mdev_rule(tmp_path: Path) -> None:
    """A rule for whole GPUs by vendor must not also hand out their vGPU slots."""
    h = host(tmp_path)
    h.mdev_parent("0000:3b:00.0", "10de", "1eb8", iommu_group=5, types={"nvidia-230": {"available": 2}})
    inv = inventory(
        h,
        device=[
            rule("GPU_T4", vendor_id="10de"),
            rule("VGPU_T4_4Q", kind="mdev_type", mdev_type="nvidia-230"),
        ],
    )
    types = {d.address: d.type for d in inv.devices}
    assert types == {
        "0000:3b:00.0": "GPU_T4",
        "0000:3b:00.0/nvidia-230/0": "VGPU_T4_4Q",
        "0000:3b:00.0/nvidia-230/1": "VGPU_T4_4Q",
    }


def test_usb_rule_and_static_resources(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.usb("1-2", "0529", "0620", serial="S1")
    inv = inventory(
        h,
        device=[rule("USB_TOKEN", vendor_id="0529", product_id="0620")],
        resource=[{"type": "Encryption_card", "count": 2, "information": "HSM"}],
    )
    reported = {r.address: r for r in inv.reported()}
    assert set(reported) == {"usb:0529:0620:S1", "static:Encryption_card/0", "static:Encryption_card/1"}
    assert reported["static:Encryption_card/1"].kind is DeviceKind.STATIC


def test_shared_iommu_group_with_unassignable_endpoint_is_not_offered(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:00:01.0", "8086", "1901", cls="060400", iommu_group=1)  # bridge: does not count
    h.pci("0000:01:00.0", "10de", "1eb8", cls="030000", iommu_group=1)
    h.pci("0000:01:00.1", "10de", "10f8", cls="040300", iommu_group=1)  # GPU audio, no rule
    h.pci("0000:02:00.0", "10de", "1eb8", cls="030000", iommu_group=2)
    h.pci("0000:02:00.1", "10de", "10f8", cls="040300", iommu_group=2)

    only_gpu = by_address(inventory(h, device=[rule("GPU", product_id="1eb8")]))
    assert FLAG_IOMMU_SHARED in only_gpu["0000:01:00.0"].flags
    assert not only_gpu["0000:01:00.0"].offered
    assert only_gpu["0000:01:00.0"].attributes["iommu_group_peers"] == ["0000:00:01.0", "0000:01:00.1"]

    both = inventory(h, device=[rule("GPU", product_id="1eb8"), rule("GPU_AUDIO", product_id="10f8")])
    assert len(both.reported()) == 4

    allowed = by_address(
        inventory(h, device=[{**rule("GPU", product_id="1eb8"), "allow_shared_iommu_group": True}])
    )
    assert allowed["0000:01:00.0"].offered


def test_discover_json_shape(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", numa=0, iommu_group=4, driver="vfio-pci")
    (dev,) = inventory(h).devices
    out = dev.to_json()
    for key in (
        "address",
        "kind",
        "vendor_id",
        "product_id",
        "numa_node",
        "iommu_group",
        "driver",
        "parent",
        "type",
    ):
        assert key in out
    assert out["type"] is None and out["kind"] == "pci" and out["numa_node"] == 0
