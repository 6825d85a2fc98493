"""Mediated-device types as real drivers show them, odd ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.agent.config import parse_config
from devassign.agent.discovery import MAX_MDEV_SLOTS, scan_pci
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FLAG_MDEV_IN_USE
from devassign.domain import DeviceKind
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host

GVT = {"name": "GVTg_V5_4", "available": 0, "instances": 1, "description": "weight: 4"}


@pytest.mark.parametrize("odd", ["missing", "not text", "-1"])
def test_an_unreadable_count_still_shows_the_running_instances(tmp_path: Path, odd: str) -> None:
    """A GPU with an instance running is in use whatever its type's count says: never offered whole."""
    h = host(tmp_path)
    h.mdev_parent("0000:00:02.0", "8086", "3e92", cls="030000", driver="i915", types={"i915-GVTg_V5_4": GVT})
    count = h.root / h.dev("0000:00:02.0") / "mdev_supported_types/i915-GVTg_V5_4/available_instances"
    if odd == "missing":
        count.unlink()
    else:
        count.write_bytes(b"\xff\xfe\n" if odd == "not text" else b"-1\n")
    config = parse_config({"device": [{"type": "IGPU", "match": {"product_id": "3e92"}}]})
    inv = build_inventory(Sysfs(h.root), config, pci_ids=None)
    gpu = {d.address: d for d in inv.devices}["0000:00:02.0"]
    assert FLAG_MDEV_IN_USE in gpu.flags and inv.reported() == []


def test_mig_backed_mdev_types_are_not_offered_as_time_slices(tmp_path: Path) -> None:
    """A100 on vGPU 13-16: ``A100D-1-10C`` runs in a MIG GPU instance, not in a time slice."""
    h = host(tmp_path)
    fb = "num_heads=1, frl_config=60, framebuffer={}M, max_resolution=4096x2400, max_instance={}"
    h.mdev_parent(
        "0000:3b:00.0",
        "10de",
        "20b5",
        types={
            "nvidia-472": {"name": "GRID A100D-1-10C", "available": 7, "description": fb.format(10240, 7)},
            "nvidia-474": {"name": "GRID A100D-20C", "available": 4, "description": fb.format(20480, 4)},
        },
    )
    slots = [d for d in scan_pci(Sysfs(h.root), pci_ids=None).devices if d.kind is DeviceKind.MDEV_TYPE]
    assert {d.attributes["mdev_name"] for d in slots} == {"GRID A100D-20C"} and len(slots) == 4
    assert {d.pool_counters["framebuffer_mb"] for d in slots} == {81920}


def test_a_huge_instance_count_is_capped(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.mdev_parent("0000:00:02.0", "8086", "3e92", types={"t": {"available": 100_000}})
    slots = [d for d in scan_pci(Sysfs(h.root), pci_ids=None).devices if d.kind is DeviceKind.MDEV_TYPE]
    assert len(slots) == MAX_MDEV_SLOTS


def test_a_running_mdev_under_an_odd_type_name_still_blocks_the_whole_gpu(tmp_path: Path) -> None:
    """A type whose folder name discovery cannot offer (a blank in it) is skipped, but its running
    instance still counts: the GPU was offered whole while a mediated device ran on it."""
    h = host(tmp_path)
    h.mdev_parent(
        "0000:00:02.0",
        "8086",
        "3e92",
        cls="030000",
        driver="i915",
        iommu_group=0,
        types={"i915-GVTg V5 4": GVT},
    )
    config = parse_config({"device": [{"type": "IGPU", "match": {"product_id": "3e92"}}]})
    inv = build_inventory(Sysfs(h.root), config, pci_ids=None)
    gpu = {d.address: d for d in inv.devices}["0000:00:02.0"]
    assert FLAG_MDEV_IN_USE in gpu.flags and inv.reported() == []
