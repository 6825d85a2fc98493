"""IOMMU isolation on real layouts: a group is offered only where VFIO could take it whole."""

from __future__ import annotations

from pathlib import Path

from devassign.agent.inventory import MAX_LISTED_PEERS
from devassign.agent.model import FLAG_IOMMU_SHARED, FLAG_NOT_ENDPOINT
from tests.fixtures.sysfs import host
from tests.unit.agent.test_agent_inventory import by_address, inventory, rule

T4_1B = "num_heads=4, frl_config=45, framebuffer=1024M, max_resolution=5120x2880, max_instance=16"


def test_a_typed_mate_that_is_not_offered_blocks_the_group(tmp_path: Path) -> None:
    """A GPU carved into running mdevs stays with its host driver: its HDMI audio function, in
    the same group, must not go to a guest even though a rule types it."""
    h = host(tmp_path)
    h.mdev_parent(
        "0000:3b:00.0",
        "10de",
        "1eb8",
        iommu_group=7,
        types={"nvidia-222": {"name": "GRID T4-1B", "available": 15, "instances": 1, "description": T4_1B}},
    )
    h.pci("0000:3b:00.1", "10de", "10fa", cls="040300", iommu_group=7, driver="snd_hda_intel")
    devs = by_address(
        inventory(
            h,
            device=[rule("GPU_T4", product_id="1eb8"), rule("GPU_AUDIO", product_id="10fa")],
        )
    )
    assert not devs["0000:3b:00.0"].offered
    assert FLAG_IOMMU_SHARED in devs["0000:3b:00.1"].flags and not devs["0000:3b:00.1"].offered


def test_vfs_in_their_pfs_group_are_blocked_when_the_pf_is_typed(tmp_path: Path) -> None:
    """No ACS below the root port: PF and VFs share a group. Typing the PF (which stays with
    its driver while its VFs are enabled) must not make the VFs look isolated."""
    h = host(tmp_path)
    vfs = h.sriov_pf("0000:3b:00.0", "8086", "1572", vfs=2, vf_device="154c", iommu_group=9)
    for vf in vfs:
        h.group(vf, 9)
    inv = inventory(
        h,
        device=[
            rule("NIC_VF", vendor_id="8086", product_id="154c"),
            rule("NIC_PF", vendor_id="8086", product_id="1572"),
        ],
    )
    assert inv.reported() == []
    assert all(FLAG_IOMMU_SHARED in by_address(inv)[vf].flags for vf in vfs)


def test_a_vgpu_is_checked_in_its_vfs_group(tmp_path: Path) -> None:
    """A vGPU 17+ device is its VF passed through whole: an NVMe of the host in the VF's group
    keeps it from a guest; in its own group it is offered."""
    h = host(tmp_path)
    vfs = h.vgpu_gpu("0000:3b:00.0", "26b9", vfs=2, types={1153: ("NVIDIA L40S-24Q", 2)}, iommu_group=9)
    h.group(vfs[0], 9)
    h.group(vfs[1], 10)
    h.pci("0000:3c:00.0", "144d", "a808", cls="010802", iommu_group=9, driver="nvme")
    devs = by_address(inventory(h, device=[rule("L40S_24Q", vgpu_type="NVIDIA L40S-24Q")]))
    shared, alone = devs[f"{vfs[0]}/vgpu/1153"], devs[f"{vfs[1]}/vgpu/1153"]
    assert (shared.iommu_group, alone.iommu_group) == (9, 10)
    assert FLAG_IOMMU_SHARED in shared.flags and not shared.offered
    assert alone.offered and alone.flags == []


def test_amds_dummy_host_bridge_does_not_block_the_gpu(tmp_path: Path) -> None:
    """Zen 1 and Zen+: a driverless host bridge, the GPP bridge and the GPU with its audio in
    one group, which VFIO accepts. A host bridge a driver holds would keep the group."""
    h = host(tmp_path)
    h.pci("0000:00:03.0", "1022", "1452", cls="060000", iommu_group=13, reset=None)
    h.pci("0000:00:03.1", "1022", "1453", cls="060400", iommu_group=13, driver="pcieport", reset="pm")
    h.pci("0000:0a:00.0", "10de", "1b81", cls="030000", iommu_group=13, driver="vfio-pci")
    h.pci("0000:0a:00.1", "10de", "10f0", cls="040300", iommu_group=13, driver="vfio-pci")
    h.pci("0000:00:00.0", "8086", "1234", cls="060000", iommu_group=14, driver="ie31200_edac")
    h.pci("0000:01:00.0", "10de", "1b82", cls="030000", iommu_group=14, driver="vfio-pci")
    rules = [rule("GTX", vendor_id="10de", product_id=p) for p in ("1b81", "10f0", "1b82")]
    devs = by_address(inventory(h, device=rules))
    assert devs["0000:0a:00.0"].offered and devs["0000:0a:00.1"].offered
    assert FLAG_IOMMU_SHARED in devs["0000:01:00.0"].flags


def test_a_bridge_matched_by_a_broad_rule_is_not_offered(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:00:1c.0", "8086", "a110", cls="060400", iommu_group=3, driver="pcieport", reset="pm")
    h.pci("0000:02:00.0", "8086", "1533", cls="020000", iommu_group=4, driver="igb")
    devs = by_address(inventory(h, device=[rule("INTEL_ANY", vendor_id="8086")]))
    assert FLAG_NOT_ENDPOINT in devs["0000:00:1c.0"].flags and not devs["0000:00:1c.0"].offered
    assert devs["0000:02:00.0"].offered


def test_a_huge_group_lists_a_bounded_number_of_peers(tmp_path: Path) -> None:
    """A switch without ACS puts hundreds of VFs in one group: each lists a few peers and the
    group's size, not every other member (the report grew with the square of the group)."""
    h = host(tmp_path)
    vfs = h.sriov_pf("0000:3b:00.0", "8086", "1572", vfs=100, vf_device="154c", iommu_group=9)
    for vf in vfs:
        h.group(vf, 9)
    inv = inventory(h, device=[{**rule("NIC_VF", product_id="154c"), "allow_shared_iommu_group": True}])
    devs = by_address(inv)
    assert len(inv.reported()) == 100
    attrs = devs[vfs[0]].attributes
    assert attrs["iommu_group_size"] == 101 and len(attrs["iommu_group_peers"]) == MAX_LISTED_PEERS
